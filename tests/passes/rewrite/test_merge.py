"""The merge rewrite (C-SGD): duplicated channels merge without loss; drop loses them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from irprune.api import Result, prune
from irprune.frontends.onnx import import_model
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.rewrite.merge import consumer_spaces, kmeans
from tests.conftest import STYLES
from tests.helpers import feeds_for, rel_diff, run, written_widths
from tests.oracles import count_macs


def _duplicate(model: onnx.ModelProto, src: int, dst: int) -> tuple[onnx.ModelProto, float]:
    """Channel ``dst`` of every prunable group becomes a copy of channel ``src`` (producers and
    per-channel parameters; the consumers' weights stay distinct). Returns the model and the MAC
    ratio of removing exactly one channel per group."""
    graph = import_model(model)
    analysis = analyze(graph)
    consumers = consumer_spaces(graph)
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    for g in analysis.prunable:
        for space in g.members:
            if space in consumers or space.value not in arrays:
                continue
            layout = analysis.layout(space.value, space.axis)
            moved = np.moveaxis(arrays[space.value], space.axis, 0)
            for pos in lay.channel_positions(layout, g.id):
                moved[pos[:, dst, :]] = moved[pos[:, src, :]]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    cost = build_cost_model(graph, analysis)
    widths = cost.base_widths.copy()
    for g in analysis.prunable:
        widths[g.id] -= 1
    return out, cost.macs_at(widths) / cost.macs_at(cost.base_widths)


def _merges_losslessly(model: onnx.ModelProto, ratio: float) -> Result:
    """Merge at ``ratio`` (one channel fewer in every prunable group): the written model is
    one channel narrower in every group (by its weights), costs ``ratio`` by the independent
    counter and computes what the original computes."""
    feeds = feeds_for(model, batch=2, seed=5)
    expected = run(model, feeds)[0]
    kw = dict(target_flops=ratio + 1e-9, criterion="similarity", round_to=1, measure_latency=False)
    merged = prune(model, rewrite="merge", **kw)
    full = written_widths(model, merged.analysis)
    assert written_widths(merged.model, merged.analysis) == {g: w - 1 for g, w in full.items()}
    assert count_macs(merged.model) / count_macs(model) == pytest.approx(ratio, rel=1e-9)
    assert rel_diff(expected, run(merged.model, feeds)[0]) <= 1e-4
    return merged


@pytest.mark.parametrize("style", STYLES)
def test_duplicates_merge_losslessly_and_drop_does_not(style: str) -> None:
    from irprune.demo import build_demo_model

    model, ratio = _duplicate(build_demo_model(explicit_bn=style == "explicit"), 1, 3)
    _merges_losslessly(model, ratio)
    kw = dict(target_flops=ratio + 1e-9, criterion="similarity", round_to=1, measure_latency=False)
    dropped = prune(model, rewrite="drop", **kw)
    feeds = feeds_for(model, batch=2, seed=5)
    assert rel_diff(run(model, feeds)[0], run(dropped.model, feeds)[0]) > 1e-3


def test_kmeans_finds_exact_duplicates() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((5, 7))
    feats = base[[0, 1, 2, 3, 4, 1, 3, 0]]
    labels = kmeans(feats, 5, seed=0)
    assert len(set(labels)) == 5
    for i, j in [(0, 7), (1, 5), (3, 6)]:
        assert labels[i] == labels[j]


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet_small"])
def test_merge_on_reference_models_is_valid_and_on_target(reference_onnx, name: str) -> None:
    """Valid: the written model passes the full checker and strict shape inference and runs in
    a plain onnxruntime session on new inputs, with the original's output shapes and finite
    values; on target: the independent counter's MAC ratio. (No fidelity bound here: a
    data-free merge of random-weight nets at half the MACs is far from the original, measured
    cosine 0.16-0.49 and below drop's; merge's fidelity is the lossless oracle's, below.)"""
    import onnxruntime as ort

    model = onnx.load(reference_onnx(name, "explicit"))
    result = prune(model, target_flops=0.5, rewrite="merge", measure_latency=False)
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, strict_mode=True)
    assert 0.48 <= count_macs(result.model) / count_macs(model) <= 0.5
    cpu = ["CPUExecutionProvider"]
    sess = ort.InferenceSession(result.model.SerializeToString(), providers=cpu)
    feeds = feeds_for(model, batch=2, seed=9)
    got = sess.run(None, feeds)
    assert [g.shape for g in got] == [e.shape for e in run(model, feeds)]
    assert all(np.isfinite(g).all() for g in got)


def test_duplicates_merge_losslessly_on_a_reference_model(reference_onnx) -> None:
    """The lossless-merge oracle on a real architecture (DenseNet: concat everywhere)."""
    model, ratio = _duplicate(onnx.load(reference_onnx("densenet_small", "explicit")), 1, 3)
    _merges_losslessly(model, ratio)
