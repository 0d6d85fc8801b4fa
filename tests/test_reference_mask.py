"""The independent masked-equivalence reference (``tests/reference_mask.py``) catches position bugs.

A bug that maps kept channels to the wrong positions is planted in the pruner's layout code
(``irprune.passes.analysis.layout.positions``, which the drop rewrite slices with). The old
helper (``tests.helpers.masked_original``) places its masks with that same function, so it moves
with the bug and still equals the pruned model; the reference does not, and the comparison fails.
The plants keep every tensor's width, so the pruned model stays valid and runs: only the channel
choice is wrong, which nothing but an oracle that knows the right positions can see.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.emit import to_model
from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Plan
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import analyze
from irprune.passes.rewrite.drop import drop
from tests.helpers import feeds_for, make_model, masked_original, rel_diff, run
from tests.passes.analysis.test_rules import drop_half_and_check
from tests.reference_mask import masked_reference, removed_on_sources

RNG = np.random.default_rng(0)
Positions = Callable[[lay.Layout, Mapping[int, np.ndarray]], np.ndarray]


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _net() -> onnx.ModelProto:
    """Residual add (two producers, one group), concat, depthwise conv + BN, flatten -> Gemm."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1", pads=[1] * 4),
            helper.make_node("Conv", ["x", "w2"], ["b"], "c2"),
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Relu", ["s"], ["r"]),
            helper.make_node("Conv", ["r", "w3", "b3"], ["c"], "c3"),
            helper.make_node("Concat", ["r", "c"], ["cat"], axis=1),
            helper.make_node("Conv", ["cat", "wd"], ["d"], "dw", group=14, pads=[1] * 4),
            helper.make_node("BatchNormalization", ["d", "s1", "b1", "m1", "v1"], ["n"]),
            helper.make_node("Flatten", ["n"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "wf"], ["out"], "fc", transB=1),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 5])],
        {
            "w1": w(8, 3, 3, 3),
            "w2": w(8, 3, 1, 1),
            "w3": w(6, 8, 1, 1),
            "b3": w(6),
            "wd": w(14, 1, 3, 3),
            "s1": w(14),
            "b1": w(14),
            "m1": w(14),
            "v1": np.abs(w(14)) + 0.5,
            "wf": w(5, 14 * 16),
        },
    )


def _relabelled(relabel: Callable[[np.ndarray, int], np.ndarray]) -> Callable[..., Positions]:
    """A plant: every group keeps ``relabel(kept, size)`` instead of its kept channels, on
    every axis alike (so the pruned model is consistent with itself, just wrongly chosen);
    with ``blocks_only``, only on axes where a channel spans a block of positions (flatten ->
    Gemm, heads), so the pruned model contradicts itself."""

    def plant(original: Positions, blocks_only: bool = False) -> Positions:
        def positions(layout: lay.Layout, kept: Mapping[int, np.ndarray]) -> np.ndarray:
            if blocks_only and all(s.inner == 1 for s in layout):
                return original(layout, kept)
            sizes = {s.root: s.size for s in layout if s.root is not None}
            moved = {
                r: np.sort(relabel(np.asarray(k), sizes[r])) for r, k in kept.items() if r in sizes
            }
            return original(layout, {**kept, **moved})

        return positions

    return plant


_mirrored = _relabelled(lambda k, size: size - 1 - k)  # c -> size - 1 - c
_shifted = _relabelled(lambda k, size: (k + 1) % size)  # c -> c + 1, cyclically
PLANTS = {"mirrored": _mirrored, "shifted": _shifted}


def _errors(model: onnx.ModelProto) -> tuple[float, float]:
    """(pruned vs reference, pruned vs old helper) after dropping a fixed half of every group."""
    graph = import_model(model)
    analysis = analyze(graph)
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    kept = {}
    for g in analysis.prunable:
        kept[g.id] = np.sort(np.random.default_rng(g.id).choice(g.size, g.size // 2, False))
        widths[g.id] = g.size // 2
    plan = Plan(widths, kept, 0.0)
    drop(graph, analysis, plan)
    feeds = feeds_for(model, batch=2, seed=0)
    (got,) = run(to_model(graph), feeds)
    (ref,) = run(masked_reference(model, analysis, plan), feeds)
    (old,) = run(masked_original(model, analysis, plan), feeds)
    return rel_diff(ref, got), rel_diff(old, got)


def test_reference_equals_the_pruned_model_without_a_plant() -> None:
    new, old = _errors(_net())
    assert new <= 1e-5 and old <= 1e-5


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_position_bug_fails_the_reference_not_the_old_helper(
    plant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lay, "positions", PLANTS[plant](lay.positions))
    new, old = _errors(_net())
    assert old <= 1e-5, "the old helper moves with the bug (why this reference exists)"
    assert new > 1e-2, f"the reference missed a planted position bug ({new:.3g})"


def test_inconsistent_position_bug_fails_the_reference_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong positions only behind Flatten: the old helper notices this kind too (the pruned
    model contradicts itself), and so must the reference."""
    monkeypatch.setattr(lay, "positions", _shifted(lay.positions, blocks_only=True))
    new, old = _errors(_net())
    assert new > 1e-2 and old > 1e-2


def test_planted_bug_fails_the_rule_tests_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """``drop_half_and_check`` (every rule test's numerical check) now fails with the plant."""
    monkeypatch.setattr(lay, "positions", _mirrored(lay.positions))
    with pytest.raises(AssertionError):
        drop_half_and_check(_net())


def test_removed_positions_follow_the_source_layout() -> None:
    """Block groups (inner > 1) and pieces of a refined source: index k means block k."""

    class Seg:
        def __init__(self, root: int | None, size: int, inner: int = 1, outer: int = 1):
            self.root, self.size, self.inner, self.outer = root, size, inner, outer

    class Group:
        def __init__(self, gid: int, weight: str) -> None:
            self.id, self.sources = gid, (type("S", (), {"weight": weight, "axis": 0})(),)

    class Analysis:
        groups = (Group(0, "w"), Group(1, "w"))

        @staticmethod
        def layout(value: str, axis: int) -> tuple[Seg, ...]:
            return (Seg(0, 3, inner=2), Seg(None, 1), Seg(1, 2))

    plan = type("P", (), {"kept": {0: np.array([1]), 1: np.array([0])}})()
    removed = removed_on_sources(Analysis(), plan)
    assert removed[("w", 0)].astype(int).tolist() == [1, 1, 0, 0, 1, 1, 0, 0, 1]
