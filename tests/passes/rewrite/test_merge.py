"""The merge rewrite (C-SGD): duplicated channels merge without loss; drop loses them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from irprune.api import prune
from irprune.frontends.onnx import import_model
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.rewrite.merge import consumer_spaces, kmeans
from tests.conftest import STYLES
from tests.helpers import feeds_for, rel_diff, run


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


@pytest.mark.parametrize("style", STYLES)
def test_duplicates_merge_losslessly_and_drop_does_not(style: str) -> None:
    from irprune.demo import build_demo_model

    model, ratio = _duplicate(build_demo_model(explicit_bn=style == "explicit"), 1, 3)
    feeds = feeds_for(model, batch=2, seed=5)
    expected = run(model, feeds)[0]
    kw = dict(target_flops=ratio + 1e-9, criterion="similarity", round_to=1, measure_latency=False)
    merged = prune(model, rewrite="merge", **kw)
    assert merged.report["cost"]["ratio"]["macs"] == pytest.approx(ratio)
    assert rel_diff(expected, run(merged.model, feeds)[0]) <= 1e-4
    dropped = prune(model, rewrite="drop", **kw)
    assert rel_diff(expected, run(dropped.model, feeds)[0]) > 1e-3


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
    model = onnx.load(reference_onnx(name, "explicit"))
    result = prune(model, target_flops=0.5, rewrite="merge", measure_latency=False)
    assert 0.48 <= result.report["cost"]["ratio"]["macs"] <= 0.5
    assert result.report["fidelity"]["cosine"] > 0
