"""Allocation: targets land in [F - 0.02, F] by an independent counter; rounding, floors, ignore."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.api import Result, prune
from irprune.demo import build_demo_model
from irprune.errors import TargetError
from tests.conftest import REFERENCE
from tests.helpers import kept_channels, make_model, node_weight, written_widths
from tests.oracles import count_macs, count_params


def _mac_ratio(original: onnx.ModelProto, pruned: onnx.ModelProto) -> float:
    return count_macs(pruned) / count_macs(original)


def _widths(original: onnx.ModelProto, result: Result) -> list[tuple[int, int]]:
    """(kept, full) width of every prunable group, both read off the models' weights."""
    full = written_widths(original, result.analysis)
    kept = written_widths(result.model, result.analysis)
    return [(kept[g], full[g]) for g in sorted(full)]


@pytest.mark.parametrize("strategy", ["global", "uniform"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_demo_hits_flops_target(strategy: str, target: float) -> None:
    model = build_demo_model()
    result = prune(model, target_flops=target, strategy=strategy, measure_latency=False)
    assert target - 0.02 <= _mac_ratio(model, result.model) <= target


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_hits_half_flops(reference_onnx, name: str) -> None:
    model = onnx.load(reference_onnx(name, "explicit"))
    result = prune(model, target_flops=0.5, measure_latency=False)
    ratio = _mac_ratio(model, result.model)
    assert 0.48 <= ratio <= 0.50
    assert ratio == pytest.approx(result.report["cost"]["ratio"]["macs"], rel=1e-9)


def test_params_target() -> None:
    model = build_demo_model()
    result = prune(model, target_params=0.5, measure_latency=False)
    assert 0.48 <= count_params(result.model) / count_params(model) <= 0.5


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_round_to(round_to: int) -> None:
    model = build_demo_model()
    result = prune(model, target_flops=0.5, round_to=round_to, measure_latency=False)
    widths = _widths(model, result)
    assert any(kept < full for kept, full in widths)
    assert all(kept == full or kept % round_to == 0 for kept, full in widths), widths
    assert 0.48 <= _mac_ratio(model, result.model) <= 0.5


def test_max_prune_floor() -> None:
    """At 0.6 with at most 30% of any group removed, the floors bind: every group keeps at
    least 70% of its width, and some group sits exactly on its floor."""
    model = build_demo_model()
    result = prune(model, target_flops=0.6, max_prune=0.3, round_to=1, measure_latency=False)
    widths = _widths(model, result)
    floors = [int(np.ceil(full * 0.7)) for _, full in widths]
    assert all(kept >= floor for (kept, _), floor in zip(widths, floors, strict=True)), widths
    assert any(kept == floor for (kept, _), floor in zip(widths, floors, strict=True)), widths
    assert 0.58 <= _mac_ratio(model, result.model) <= 0.6


def test_ignore_by_node_name_and_group_id() -> None:
    model = build_demo_model()
    base = prune(model, target_flops=0.5, measure_latency=False)
    full = written_widths(model, base.analysis)
    kept = written_widths(base.model, base.analysis)
    pruned_ids = [gid for gid in sorted(full) if kept[gid] < full[gid]]
    assert len(pruned_ids) >= 2
    by_id = prune(model, target_flops=0.5, ignore=[pruned_ids[0]], measure_latency=False)
    assert written_widths(by_id.model, by_id.analysis)[pruned_ids[0]] == full[pruned_ids[0]]
    node = base.analysis.groups[pruned_ids[1]].sources[0].node
    by_name = prune(model, target_flops=0.5, ignore=[node], measure_latency=False)
    widths = written_widths(by_name.model, by_name.analysis)
    assert widths[pruned_ids[1]] == full[pruned_ids[1]]
    assert any(widths[g] < full[g] for g in full)  # the others still pay for it
    for result in (by_id, by_name):
        assert 0.48 <= _mac_ratio(model, result.model) <= 0.5


def test_infeasible_target_says_what_blocked_it() -> None:
    with pytest.raises(TargetError, match=r"cannot reach macs target 0\.05.*floor"):
        prune(build_demo_model(), target_flops=0.05, max_prune=0.5, measure_latency=False)


def _two_branches() -> onnx.ModelProto:
    """Two parallel branches of 16 channels each, every channel costing the same MACs
    (x -> 1x1 conv -> Relu -> 1x1 conv, summed): branch a's filters 0-7 are 1000x smaller
    than all others, branch b's are alike."""
    rng = np.random.default_rng(0)
    wa = rng.standard_normal((16, 3, 1, 1)).astype(np.float32)
    wa[:8] *= 1e-3
    nodes: list[onnx.NodeProto] = []
    for b in "ab":
        nodes += [
            helper.make_node("Conv", ["x", f"w{b}"], [b], f"c{b}"),
            helper.make_node("Relu", [b], [f"r{b}"]),
            helper.make_node("Conv", [f"r{b}", f"w{b}2"], [f"o{b}"], f"c{b}2"),
        ]
    nodes.append(helper.make_node("Add", ["oa", "ob"], ["out"]))
    inits = {
        "wa": wa,
        "wb": rng.standard_normal((16, 3, 1, 1)).astype(np.float32),
        "wa2": rng.standard_normal((4, 16, 1, 1)).astype(np.float32),
        "wb2": rng.standard_normal((4, 16, 1, 1)).astype(np.float32),
    }
    return make_model(nodes, [("x", ["N", 3, 4, 4])], [("out", ["N", 4, 4, 4])], inits)


def test_global_prefers_low_scores_uniform_spreads_evenly() -> None:
    """At 0.75 (8 of the 32 equally costly channels go), the global ranking removes exactly
    branch a's 8 tiny filters and nothing of branch b; uniform removes 4 of each branch."""
    model = _two_branches()
    kw = dict(target_flops=0.75, criterion="l1", round_to=1, rewrite="drop", measure_latency=False)
    glob = prune(model, strategy="global", **kw)
    assert kept_channels(model, glob.model, "ca", "ca2") == list(range(8, 16))
    assert kept_channels(model, glob.model, "cb", "cb2") == list(range(16))
    uni = prune(model, strategy="uniform", **kw)
    assert [kept for kept, _ in _widths(model, uni)] == [12, 12]
    for result in (glob, uni):
        assert _mac_ratio(model, result.model) == 0.75
    demo = build_demo_model()
    uni = prune(demo, target_flops=0.5, strategy="uniform", round_to=1, measure_latency=False)
    fracs = [kept / full for kept, full in _widths(demo, uni)]
    assert max(fracs) - min(fracs) <= 0.15
    assert 0.48 <= _mac_ratio(demo, uni.model) <= 0.5


def test_rounding_that_blocks_the_target_is_relaxed_and_reported() -> None:
    model = build_demo_model()
    result = prune(model, target_flops=0.5, round_to=1000, measure_latency=False)
    assert result.report["settings"]["round_to_applied"] < 1000
    assert 0.48 <= _mac_ratio(model, result.model) <= 0.5


def test_model_with_newer_ir_version_is_verified_and_keeps_its_version() -> None:
    """An IR version newer than what onnxruntime may read: the written model keeps it, passes the
    full checker and strict shape inference, runs in onnxruntime, and is the very model the
    same pruning writes at the demo's own IR version (10), stamp aside."""
    import onnxruntime as ort

    from tests.helpers import feeds_for, run

    model = build_demo_model()
    reference = prune(model, target_flops=0.5, measure_latency=False).model
    model.ir_version = 14  # what onnx 1.23 stamps; onnxruntime 1.31 reads at most 13
    result = prune(model, target_flops=0.5, measure_latency=False)
    assert result.model.ir_version == 14
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, strict_mode=True)
    stamped = onnx.ModelProto()
    stamped.CopyFrom(result.model)
    stamped.ir_version = reference.ir_version
    assert stamped.SerializeToString() == reference.SerializeToString()
    sess = ort.InferenceSession(stamped.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = feeds_for(model)
    (got,) = sess.run(None, feeds)
    assert got.shape == run(model, feeds)[0].shape and np.isfinite(got).all()
    assert 0.48 <= _mac_ratio(model, result.model) <= 0.5


def test_a_window_too_fine_for_the_channels_is_an_error() -> None:
    """Each channel of this net costs 1/8 of its MACs: 0.7 has no widths in [0.68, 0.70]."""
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Conv", ["a", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": rng.standard_normal((8, 3, 1, 1)).astype(np.float32),
            "w2": rng.standard_normal((2, 8, 1, 1)).astype(np.float32),
        },
    )
    with pytest.raises(TargetError, match=r"within its 0.02 window.*0\.6250 or 0\.7500"):
        prune(model, target_flops=0.7, round_to=1, measure_latency=False)


def _grouped_conv_model() -> onnx.ModelProto:
    """x -> 1x1 conv (64) -> grouped 3x3 conv (8 groups of 8) -> 1x1 conv (64) -> 1x1 conv (2):
    the grouped conv couples its input and output into one group whose unit is 8 channels."""
    rng = np.random.default_rng(0)
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Relu", ["a"], ["ar"]),
            helper.make_node("Conv", ["ar", "w2"], ["b"], "c2", group=8, pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["b"], ["br"]),
            helper.make_node("Conv", ["br", "w3"], ["c"], "c3"),
            helper.make_node("Relu", ["c"], ["cr"]),
            helper.make_node("Conv", ["cr", "w4"], ["out"], "c4"),
        ],
        [("x", ["N", 3, 8, 8])],
        [("out", ["N", 2, 8, 8])],
        {
            "w1": rng.standard_normal((64, 3, 1, 1)).astype(np.float32),
            "w2": rng.standard_normal((64, 8, 3, 3)).astype(np.float32),
            "w3": rng.standard_normal((64, 64, 1, 1)).astype(np.float32),
            "w4": rng.standard_normal((2, 64, 1, 1)).astype(np.float32),
        },
    )


def test_round_to_counts_channels_of_block_groups() -> None:
    """--round-to counts tensor channels: the grouped conv's group (units of 8 channels) keeps
    an even number of units at round-to 16, not a multiple of 16 units (which would freeze it
    and halve the rounding of every group)."""
    from irprune.passes.allocation import unit_channels
    from tests.helpers import feeds_for, rel_diff, run
    from tests.reference_mask import masked_reference

    model = _grouped_conv_model()
    result = prune(model, target_flops=0.5, round_to=16, rewrite="drop", measure_latency=False)
    assert result.report["settings"]["round_to_applied"] == 16
    blocks = {g.id: unit_channels(result.analysis, g.id) for g in result.analysis.prunable}
    grouped = [gid for gid, b in blocks.items() if b == 8]
    assert len(grouped) == 1
    assert result.plan is not None
    # the grouped conv's channels, from the written model: its weight's output axis and its
    # group attribute (8 channels per conv group, so kept channels are a multiple of 16)
    (conv,) = [n for n in result.model.graph.node if n.name == "c2"]
    groups = next(helper.get_attribute_value(a) for a in conv.attribute if a.name == "group")
    channels = node_weight(result.model, "c2").shape[0]
    assert channels == 8 * groups and channels < 64 and channels % 16 == 0
    assert 0.48 <= _mac_ratio(model, result.model) <= 0.5
    feeds = feeds_for(model)
    expected = run(masked_reference(model, result.analysis, result.plan), feeds)
    assert rel_diff(expected[0], run(result.model, feeds)[0]) <= 1e-5


def _conv_chain(widths: list[int]) -> onnx.ModelProto:
    """x -> 1x1 conv + Relu per width -> 1x1 conv (2 channels)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], {}, "x", 3
    for i, c in enumerate([*widths, 2]):
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"y{i}"], f"c{i}"))
        inits[f"w{i}"] = rng.standard_normal((c, cin, 1, 1)).astype(np.float32)
        if i < len(widths):
            nodes.append(helper.make_node("Relu", [f"y{i}"], [f"r{i}"]))
            prev = f"r{i}"
        cin = c
    out = f"y{len(widths)}"
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [(out, ["N", 2, 8, 8])], inits)


@pytest.mark.parametrize("target", [0.4, 0.5, 0.6])
def test_window_missed_by_rounding_unrounds_one_group(target: float) -> None:
    """Steps of 16 cannot land in the window here: one group leaves the rounding (an unrounded
    width slows every kernel touching it), not several, and the target still holds."""
    from tests.helpers import feeds_for, rel_diff, run
    from tests.reference_mask import masked_reference

    widths = [16, 32, 64, 32, 16]
    model = _conv_chain(widths)
    result = prune(model, target_flops=target, round_to=16, rewrite="drop", measure_latency=False)
    assert result.plan is not None
    kept = [node_weight(result.model, f"c{i}").shape[0] for i in range(len(widths))]
    unrounded = [int(k) for k, size in zip(kept, widths, strict=True) if k % 16 and k < size]
    assert len(unrounded) == 1 and unrounded[0] % 2 == 0, kept
    assert target - 0.02 <= _mac_ratio(model, result.model) <= target
    feeds = feeds_for(model)
    expected = run(masked_reference(model, result.analysis, result.plan), feeds)
    assert rel_diff(expected[0], run(result.model, feeds)[0]) <= 1e-5
