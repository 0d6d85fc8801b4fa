"""Resize with ``sizes`` computed at run time (rules/resample.py, rules/dynamic_shape.py).

``F.interpolate(x, size=y.shape[-2:])`` exports ``sizes`` as ``Shape(x)[:2]`` + ``y``'s spatial
size: the channel entry is x's own channel count at run time, so it follows the pruning by
itself and the Resize leaves the channel axis alone (FPN top-down paths, DeepLab heads). A
channel count of another tensor, or one landing on a spatial axis, still freezes the groups.
Each model is pruned (half of every prunable group, at random) and checked against the
masked-original oracle."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from irprune.api import prune
from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from tests.helpers import feeds_for, make_model, rel_diff, run
from tests.passes.analysis.test_rules import drop_half_and_check
from tests.passes.analysis.test_rules_indexmaps import group_of, ints, reasons, w
from tests.reference_mask import masked_reference


def _fpn(channel_source: str = "low", spatial: str = "up") -> onnx.ModelProto:
    """x -> c_up (8 ch, 4x4) -> Resize to the 8x8 of c_lat (8 ch) -> Add -> c2 -> out.

    ``sizes`` = Slice(Shape(channel_source), 0, 2) ++ H, W from Shape(lat) (as torch exports
    ``F.interpolate(low, size=lat.shape[-2:])``); ``spatial="channel"`` takes H and W from
    low's channel count instead (8: the model runs, but a pruned width would change them)."""
    hw_from, hw_idx = ("s_lat", ints(2, 3)) if spatial == "up" else ("s_nc", ints(1, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w_up"], ["low"], "c_up", strides=[2, 2]),
        helper.make_node("Conv", ["x", "w_lat"], ["lat"], "c_lat"),
        helper.make_node("Conv", ["x", "w_other"], ["other"], "c_other", strides=[2, 2]),
        helper.make_node("Shape", [channel_source], ["s_nc"]),
        helper.make_node("Slice", ["s_nc", "zero", "two"], ["nc"]),
        helper.make_node("Shape", ["lat"], ["s_lat"]),
        helper.make_node("Gather", [hw_from, "hw_idx"], ["hw"], axis=0),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["low", "", "", "sizes"], ["up"], "rs", mode="nearest"),
        helper.make_node("Add", ["up", "lat"], ["s"]),
        helper.make_node("Add", ["other", "other"], ["o2"]),
        helper.make_node("Conv", ["s", "w2"], ["out"], "c2"),
        helper.make_node("Conv", ["o2", "w3"], ["out2"], "c3"),
    ]
    return make_model(
        nodes,
        [("x", ["N", 3, 8, 8])],
        [("out", ["N", 2, 8, 8]), ("out2", ["N", 2, 4, 4])],
        {
            "w_up": w(8, 3, 1, 1),
            "w_lat": w(8, 3, 1, 1),
            "w_other": w(8, 3, 1, 1),
            "w2": w(2, 8, 1, 1),
            "w3": w(2, 8, 1, 1),
            "zero": ints(0),
            "two": ints(2),
            "hw_idx": hw_idx,
        },
        opset=13,
    )


def test_runtime_sizes_from_the_inputs_own_shape_leave_channels_alone() -> None:
    model = _fpn()
    analysis = drop_half_and_check(model)
    group = group_of(analysis, "c_up")
    assert group.prunable, group.frozen
    assert {s.node for s in group.sources} == {"c_up", "c_lat"}  # joined through Resize + Add
    assert group_of(analysis, "c_other").prunable


def test_fpn_pattern_prunes_end_to_end_with_the_drop_oracle() -> None:
    model = _fpn()
    result = prune(model, target_flops=0.5, round_to=1, rewrite="drop", measure_latency=False)
    assert result.plan is not None
    gid = group_of(result.analysis, "c_up").id
    assert result.plan.widths[gid] < 8
    feeds = feeds_for(model)
    expected = run(masked_reference(model, result.analysis, result.plan), feeds)
    for e, g in zip(expected, run(result.model, feeds), strict=True):
        assert e.shape == g.shape and rel_diff(e, g) <= 1e-5


def test_channel_count_of_another_tensor_freezes() -> None:
    """sizes[1] is c_other's channel count: after pruning it need not match c_up's width."""
    model = _fpn(channel_source="other")
    assert "resizes a channel axis" in reasons(model, "c_up")
    assert "a channel count flows into Resize" in reasons(model, "c_other")
    analysis = analyze(import_model(model))
    assert not group_of(analysis, "c_up").prunable


def test_channel_count_on_a_spatial_axis_freezes() -> None:
    """sizes = [N, C, C, C] of low: its channel count sets the output height and width."""
    model = _fpn(spatial="channel")
    run(model, feeds_for(model))  # a valid model (C = 8 = lat's height and width)
    assert "a channel count flows into Resize" in reasons(model, "c_up")
    assert not group_of(analyze(import_model(model)), "c_up").prunable


def test_constant_sizes_unchanged() -> None:
    """The constant-sizes path still rewrites the channel entry (regression guard)."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Resize", ["a", "", "", "sz"], ["m"], "rs", mode="nearest"),
            helper.make_node("Conv", ["m", "w2"], ["out"], "c2"),
        ],
        [("x", [1, 3, 4, 4])],
        [("out", [1, 2, 8, 8])],
        {"w1": w(8, 3, 1, 1), "w2": w(2, 8, 1, 1), "sz": ints(1, 8, 8, 8)},
        opset=13,
    )
    assert group_of(drop_half_and_check(model), "c1").prunable
    assert np.array_equal(ints(1, 8, 8, 8), onnx.numpy_helper.to_array(model.graph.initializer[2]))
