"""Tile with ``repeats`` computed at run time (rules/resample.py, rules/dynamic_shape.py).

``x.repeat(1, 1, H, 1)`` / ``pos.repeat(B, 1, 1, 1)`` lower to Tile(x, Concat(literals,
Unsqueeze(Shape(y)[k]))): an entry that reads as the literal 1 repeats its axis once whatever the
run-time values, so a channel axis there passes through Tile (the identity map). A channel axis
whose entry is a run-time size freezes, even when that size is 1 when the model runs (the rule
reads no values). Each model is pruned (half of every prunable group, at random) and checked
against the masked-original oracle."""

from __future__ import annotations

import onnx
from onnx import helper

from irprune.api import prune
from tests.helpers import feeds_for, make_model, rel_diff, run
from tests.passes.analysis.test_rules import drop_half_and_check
from tests.passes.analysis.test_rules_indexmaps import group_of, ints, reasons, w
from tests.reference_mask import masked_reference


def _row_tile(channel_entry: str = "one") -> onnx.ModelProto:
    """x -> c1 (8 ch) -> a; top = a[:, :, :1]; Tile(top, [1, C, H, 1]) with H = Shape(a)[2] at
    run time -> Add a -> c2 -> out. ``channel_entry="one"``: C is the literal 1;
    ``"runtime"``: C = Shape(top)[2], a run-time size that is 1 when the model runs."""
    channel = "one" if channel_entry == "one" else "c_rt"
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
        helper.make_node("Slice", ["a", "zero", "one", "two"], ["top"], "rows"),
        helper.make_node("Shape", ["a"], ["s_a"]),
        helper.make_node("Gather", ["s_a", "two_0d"], ["h"], axis=0),
        helper.make_node("Unsqueeze", ["h", "zero"], ["h1"]),
        helper.make_node("Shape", ["top"], ["s_top"]),
        helper.make_node("Gather", ["s_top", "two_0d"], ["c"], axis=0),
        helper.make_node("Unsqueeze", ["c", "zero"], ["c_rt"]),
        helper.make_node("Concat", ["one", channel, "h1", "one"], ["reps"], axis=0),
        helper.make_node("Tile", ["top", "reps"], ["tiled"], "t"),
        helper.make_node("Add", ["a", "tiled"], ["m"]),
        helper.make_node("Conv", ["m", "w2"], ["out"], "c2"),
    ]
    return make_model(
        nodes,
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": w(8, 3, 1, 1),
            "w2": w(2, 8, 1, 1),
            "zero": ints(0),
            "one": ints(1),
            "two": ints(2),
            "two_0d": ints(2).reshape(()),
        },
        opset=13,
    )


def test_runtime_repeats_with_a_literal_one_leave_channels_alone() -> None:
    model = _row_tile()
    analysis = drop_half_and_check(model)
    group = group_of(analysis, "c1")
    assert group.prunable, group.frozen
    assert group.size == 8


def test_runtime_repeats_prune_end_to_end_with_the_drop_oracle() -> None:
    model = _row_tile()
    result = prune(model, target_flops=0.5, round_to=1, rewrite="drop", measure_latency=False)
    assert result.plan is not None and result.analysis is not None
    assert result.plan.widths[group_of(result.analysis, "c1").id] < 8
    for batch in (1, 3):
        feeds = feeds_for(model, batch=batch)
        expected = run(masked_reference(model, result.analysis, result.plan), feeds)
        for e, g in zip(expected, run(result.model, feeds), strict=True):
            assert e.shape == g.shape and rel_diff(e, g) <= 1e-5


def test_runtime_size_on_the_channel_axis_freezes() -> None:
    """repeats[1] = Shape(top)[2]: 1 at run time, but a run-time value: the axis is tiled."""
    model = _row_tile(channel_entry="runtime")
    run(model, feeds_for(model))  # a valid model (the channel axis is repeated once)
    assert "tiles a channel axis" in reasons(model, "c1")
