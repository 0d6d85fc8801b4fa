"""The drop rewrite against the DESIGN.md oracles: masked equivalence and dead channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from irprune.api import prune
from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.layout import Segment
from tests.conftest import REFERENCE, STYLES
from tests.helpers import feeds_for, node_weight, rel_diff, run, written_widths
from tests.oracles import count_macs
from tests.reference_mask import masked_reference


def _check_masked(model: onnx.ModelProto, criterion: str, target: float = 0.5) -> float:
    result = prune(
        model, target_flops=target, criterion=criterion, rewrite="drop", measure_latency=False
    )
    assert result.plan is not None and result.plan.kept, "nothing was pruned"
    feeds = feeds_for(model, batch=2, seed=1)
    expected = run(masked_reference(model, result.analysis, result.plan), feeds)
    got = run(result.model, feeds)
    assert [o.shape for o in got] == [o.shape for o in expected]
    err = max(rel_diff(e, g) for e, g in zip(expected, got, strict=True))
    assert err <= 1e-4, f"masked equivalence violated: {err:.3g}"
    ratio = count_macs(result.model) / count_macs(model)
    assert target - 0.02 <= ratio <= target
    return err


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_masked_equivalence_demo(demo_model: onnx.ModelProto, criterion: str) -> None:
    _check_masked(demo_model, criterion)


@pytest.mark.parametrize("criterion", ["l1", "random"])
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", REFERENCE)
def test_masked_equivalence_reference(
    reference_onnx, name: str, style: str, criterion: str
) -> None:
    model = onnx.load(reference_onnx(name, style))
    _check_masked(model, criterion)


def _dead_positions(layout, dead: dict[int, list[int]]) -> list[int]:
    out, offset = [], 0
    for seg in layout:
        if seg.root in dead:
            out += [offset + c for c in dead[seg.root]]
        offset += seg.span
    return out


def _kill_channels(model: onnx.ModelProto, dead: dict[int, list[int]]) -> onnx.ModelProto:
    """Zero the channels: BN scale and bias (explicit BN), or conv weight and bias (folded)."""
    analysis = analyze(import_model(model))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    explicit = any(n.op_type == "BatchNormalization" for n in out.graph.node)
    for node in out.graph.node:
        layout = analysis.layout(node.output[0], 1)
        chans = _dead_positions(layout or (), dead)
        if not chans or node.op_type != ("BatchNormalization" if explicit else "Conv"):
            continue
        for name in node.input[1:3]:
            arr = numpy_helper.to_array(inits[name]).copy()
            arr[chans] = 0
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    return out


def test_dead_channels_go_first_and_change_nothing(demo_model: onnx.ModelProto) -> None:
    analysis = analyze(import_model(demo_model))
    dead = {g.id: [1, 3] for g in analysis.prunable}
    model = _kill_channels(demo_model, dead)
    from irprune.passes.analysis.cost import build_cost_model

    graph = import_model(model)
    cost = build_cost_model(graph, analysis)
    widths = cost.base_widths.copy()
    for gid, chans in dead.items():
        widths[gid] -= len(chans)
    ratio = cost.macs_at(widths) / cost.macs_at(cost.base_widths)
    result = prune(
        model,
        target_flops=ratio + 1e-9,
        criterion="l1",
        round_to=1,
        rewrite="drop",
        measure_latency=False,
    )
    # read off the written model: every group is 2 channels narrower, and no dead channel is
    # left (the killed parameters are the only zeros: a kept dead channel would leave a zero
    # BN scale, or an all-zero conv filter)
    widths = written_widths(result.model, analysis)
    assert widths == {gid: analysis.groups[gid].size - len(chans) for gid, chans in dead.items()}
    explicit = any(n.op_type == "BatchNormalization" for n in model.graph.node)
    for node in result.model.graph.node:
        if node.op_type == ("BatchNormalization" if explicit else "Conv"):
            param = node_weight(result.model, node.name)
            filters = np.abs(param).reshape(len(param), -1).max(axis=1)
            assert filters.min() > 0, f"{node.name} kept a dead channel"
    assert count_macs(result.model) == pytest.approx(ratio * count_macs(model), rel=1e-9)
    feeds = feeds_for(model, batch=2, seed=3)
    assert rel_diff(run(model, feeds)[0], run(result.model, feeds)[0]) <= 1e-5


def test_flatten_to_gemm_drops_whole_column_blocks() -> None:
    """Channel c of a [N, 4, 2, 2] map feeds Gemm columns 4c..4c+3 after Flatten."""
    from onnx import helper

    from irprune.passes.allocation import Plan
    from irprune.passes.rewrite.drop import drop
    from tests.helpers import make_model

    rng = np.random.default_rng(0)
    w_fc = rng.standard_normal((16, 5)).astype(np.float32)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], "conv"),
            helper.make_node("Flatten", ["y"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["out"], "fc"),
        ],
        [("x", ["N", 3, 2, 2])],
        [("out", ["N", 5])],
        {"w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "fc": w_fc},
    )
    graph = import_model(model)
    analysis = analyze(graph)
    (conv_group,) = [g for g in analysis.groups if g.sources[0].node == "conv"]
    assert analysis.layout("f", 1) == (Segment(conv_group.id, 4, inner=4),)
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    widths[conv_group.id] = 2
    drop(graph, analysis, Plan(widths, {conv_group.id: np.array([0, 2])}, 0.5))
    graph.verify()
    expected = np.concatenate([w_fc[0:4], w_fc[8:12]])
    np.testing.assert_array_equal(graph.values["fc"].const, expected)
