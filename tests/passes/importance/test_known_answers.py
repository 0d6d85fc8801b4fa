"""Known answers: each criterion removes the channels that must go, read off the written model.

Every case is a small graph ``x -> Conv c1 (C filters) [-> BN] -> Relu -> Conv c2 -> out`` where
the channels to remove are known by construction: a zero filter, the smallest filters by L1 or
by L2, the smallest BN scale, the filter at the geometric median, the smaller member of a
near-duplicate pair, a channel dead after ReLU (always-negative pre-activation) and a channel
with no effect on the output (its consumer weights are zero). Each case is pruned through
``irprune.prune`` by exactly ``k`` channels (``rewrite="drop"``, ``round_to=1``); which
channels survived is read from the pruned model itself, by matching each kept (c1 filter, c2
column) pair against the original's, and the MAC ratio from the independent counter
(``tests.oracles``), never from the report or the plan.

``test_planted_backwards_criterion_fails_every_known_answer`` plants a criterion that ranks
backwards (every group's scores mirrored where they are gathered, ``importance.Scores``): each
criterion's known-answer check must then fail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import helper

import irprune
from irprune.passes import importance
from irprune.passes.importance import CRITERIA
from tests.helpers import feeds_for, kept_channels, make_model, node_weight, rel_diff, run
from tests.oracles import count_macs

Calib = dict[str, np.ndarray] | None


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([20, seed])


def _chain(
    w1: np.ndarray,
    *,
    b1: np.ndarray | None = None,
    bn: Mapping[str, np.ndarray] | None = None,
    w2: np.ndarray | None = None,
) -> onnx.ModelProto:
    """x [N, 3, 4, 4] -> Conv c1 (w1, 3x3, same padding; b1) -> BN (gamma, beta, mean, var)
    -> Relu -> 1x1 Conv c2 (w2, 2 outputs) -> out. Both convs' MACs are linear in C, so
    removing k of the C channels leaves exactly (C - k) / C of the MACs."""
    c = w1.shape[0]
    if w2 is None:
        w2 = _rng(99).standard_normal((2, c, 1, 1)).astype(np.float32)
    inits: dict[str, np.ndarray] = {"w1": w1, "w2": w2}
    conv_in = ["x", "w1"]
    if b1 is not None:
        inits["b1"] = b1
        conv_in.append("b1")
    nodes = [helper.make_node("Conv", conv_in, ["a"], "c1", pads=[1] * 4)]
    act = "a"
    if bn is not None:
        inits |= {f"bn_{k}": v.astype(np.float32) for k, v in bn.items()}
        names = [f"bn_{k}" for k in ("gamma", "beta", "mean", "var")]
        nodes.append(helper.make_node("BatchNormalization", ["a", *names], ["n"], "bn1"))
        act = "n"
    nodes += [
        helper.make_node("Relu", [act], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w2"], ["out"], "c2"),
    ]
    return make_model(nodes, [("x", ["N", 3, 4, 4])], [("out", ["N", 2, 4, 4])], inits)


def _filters(c: int, seed: int) -> np.ndarray:
    return _rng(seed).standard_normal((c, 3, 3, 3)).astype(np.float32)


def _calib(seed: int = 7) -> dict[str, np.ndarray]:
    return {"x": _rng(seed).standard_normal((32, 3, 4, 4)).astype(np.float32)}


# --------------------------------------------------------------------------- the cases


def zero_filter() -> tuple[onnx.ModelProto, Calib]:
    """Filter 3 is all zeros (no bias): its channel is 0 everywhere, before and after ReLU."""
    w = _filters(8, 1)
    w[3] = 0.0
    return _chain(w), _calib()


def zero_and_tiny_filter() -> tuple[onnx.ModelProto, Calib]:
    """Filter 3 is zero and filter 6 is 100x smaller than the rest: the two smallest by any
    norm, and the two least active channels."""
    w = _filters(8, 2)
    w[3] = 0.0
    w[6] *= 0.01
    return _chain(w), _calib()


def spike_and_spread() -> tuple[onnx.ModelProto, Calib]:
    """Filter 2 spreads +-0.3 over all 27 taps (L1 8.1, L2 1.56); filter 5 is one tap of 6
    (L1 6, L2 6); the rest are standard normal (L1 about 21, L2 about 5). Smallest by L1:
    filter 5; by L2: filter 2."""
    w = _filters(8, 3)
    w[2] = 0.3 * np.where(_rng(4).random((3, 3, 3)) < 0.5, -1.0, 1.0)
    w[5] = 0.0
    w[5, 1, 1, 1] = 6.0
    return _chain(w), _calib()


def smallest_bn_scales() -> tuple[onnx.ModelProto, Calib]:
    """BN after c1 with gamma in [0.5, 1.5] except gamma[3] = 0.05 and gamma[6] = 0.1, whose
    running variances are tiny (1e-4), so their effective scales gamma / sqrt(var) are the
    largest (5 and 10): Network Slimming's |gamma| removes 3 and 6, magnitude would not."""
    c = 8
    gamma = np.linspace(0.5, 1.5, c)
    var = np.ones(c)
    gamma[3], gamma[6] = 0.05, 0.1
    var[3] = var[6] = 1e-4
    bn = {"gamma": gamma, "beta": np.full(c, 0.1), "mean": np.zeros(c), "var": var}
    return _chain(_filters(c, 5), bn=bn), _calib()


def geometric_median() -> tuple[onnx.ModelProto, Calib]:
    """Nine filters: four pairs c + d_i, c - d_i symmetric about c, and filter 4 = c itself,
    which is then the geometric median of the set (sum of distances is convex and symmetric
    about c): FPGM's most replaceable filter."""
    rng = _rng(6)
    center = 2.0 * rng.standard_normal((3, 3, 3))
    d = rng.standard_normal((4, 3, 3, 3))
    w = np.stack([center + d[0], center - d[0], center + d[1], center - d[1], center,
                  center + d[2], center - d[2], center + d[3], center - d[3]])  # fmt: skip
    return _chain(w.astype(np.float32)), _calib()


def near_duplicates() -> tuple[onnx.ModelProto, Calib]:
    """Filter 6 = 0.98 x filter 2 and filter 7 = 0.97 x filter 4 (their c2 columns differ):
    each pair is redundant, and its smaller member goes; never both members of a pair."""
    w = _filters(8, 7)
    w[6] = 0.98 * w[2]
    w[7] = 0.97 * w[4]
    return _chain(w), _calib()


def dead_after_relu() -> tuple[onnx.ModelProto, Calib]:
    """Channel 5's bias is -100 (its pre-activation, a 27-tap sum of unit normals, stays far
    below 0): always zero after ReLU. Filter 1 is 20x smaller than the rest (what magnitude
    would remove), but alive: the second least active channel."""
    w = _filters(8, 8)
    w[1] *= 0.05
    b = np.zeros(8, np.float32)
    b[5] = -100.0
    return _chain(w, b1=b), _calib()


def no_effect() -> tuple[onnx.ModelProto, Calib]:
    """Channel 4 is large (filter x3) and active, but c2 reads it with zero weights: removing
    it changes no output. Filter 1 is 20x smaller than the rest (what magnitude removes)."""
    w = _filters(8, 9)
    w[4] *= 3.0
    w[1] *= 0.05
    w2 = _rng(10).standard_normal((2, 8, 1, 1)).astype(np.float32)
    w2[:, 4] = 0.0
    return _chain(w, w2=w2), _calib()


@dataclass(frozen=True)
class Case:
    build: Callable[[], tuple[onnx.ModelProto, Calib]]
    k: int  # channels to remove
    expected: frozenset[int]  # the ones that must go
    unchanged: bool = False  # the removed channels contribute nothing: outputs stay the same
    data_free: bool = False  # pruned without calibration data (``auto`` is then ``l1``)


CASES: dict[str, Case] = {
    "zero": Case(zero_filter, 1, frozenset({3}), unchanged=True),
    "zero-no-data": Case(zero_filter, 1, frozenset({3}), unchanged=True, data_free=True),
    "zero-and-tiny": Case(zero_and_tiny_filter, 2, frozenset({3, 6})),
    "spike": Case(spike_and_spread, 1, frozenset({5}), data_free=True),
    "spread": Case(spike_and_spread, 1, frozenset({2}), data_free=True),
    "bn-scale": Case(smallest_bn_scales, 2, frozenset({3, 6}), data_free=True),
    "median": Case(geometric_median, 1, frozenset({4}), data_free=True),
    "duplicates": Case(near_duplicates, 2, frozenset({6, 7}), data_free=True),
    "dead": Case(dead_after_relu, 1, frozenset({5}), unchanged=True),
    "dead-then-tiny": Case(dead_after_relu, 2, frozenset({5, 1})),
    "no-effect": Case(no_effect, 1, frozenset({4}), unchanged=True),
}

# criterion -> the cases whose answer it must find (``random`` has its own tests below)
KNOWN: dict[str, tuple[str, ...]] = {
    "l1": ("zero-no-data", "zero-and-tiny", "spike"),
    "l2": ("zero-no-data", "zero-and-tiny", "spread"),
    "bn": ("bn-scale", "zero-no-data"),  # no BN: falls back to the L1 filter norm
    "fpgm": ("median",),
    "similarity": ("duplicates",),
    "apoz": ("dead", "zero"),
    "activation": ("dead", "dead-then-tiny", "zero", "zero-and-tiny"),
    "taylor": ("no-effect", "dead", "zero"),
    "hessian": ("no-effect", "dead", "zero"),
    "auto": ("no-effect", "zero-no-data"),  # taylor with data, l1 without
}
# (case, criterion) pairs where another criterion gets it wrong: the cases discriminate
WRONG: tuple[tuple[str, str], ...] = (
    ("spike", "l2"),
    ("spread", "l1"),
    ("bn-scale", "l1"),
    ("median", "l1"),
    ("dead", "l1"),
    ("no-effect", "l1"),
    ("no-effect", "apoz"),
    ("no-effect", "activation"),
)


# --------------------------------------------------------------------------- the check


def removed_channels(original: onnx.ModelProto, pruned: onnx.ModelProto) -> set[int]:
    """Channels of c1 missing from ``pruned``, each kept one identified by its c1 filter and its
    c2 column together (so duplicate filters stay distinct)."""
    kept = kept_channels(original, pruned, "c1", "c2")
    return set(range(node_weight(original, "c1").shape[0])) - set(kept)


def prune_k(
    model: onnx.ModelProto, criterion: str, k: int, calib: Calib, seed: int = 0
) -> onnx.ModelProto:
    """Prune exactly ``k`` of c1's C channels: the MAC window [F - 0.02, F] at
    F = (C - k) / C + 0.005 holds one width only (each channel costs 1 / C >= 1/9)."""
    c = node_weight(model, "c1").shape[0]
    result = irprune.prune(
        model, target_flops=(c - k) / c + 0.005, criterion=criterion, calib=calib,
        round_to=1, rewrite="drop", seed=seed, measure_latency=False,
    )  # fmt: skip
    assert count_macs(result.model) * c == count_macs(model) * (c - k)
    return result.model


def check(case_name: str, criterion: str) -> None:
    """Raise AssertionError unless ``criterion`` removes exactly the case's known channels."""
    case = CASES[case_name]
    model, calib = case.build()
    pruned = prune_k(model, criterion, case.k, None if case.data_free else calib)
    removed = removed_channels(model, pruned)
    assert removed == case.expected, (
        f"{criterion} on {case_name!r} removed {sorted(removed)}, not {sorted(case.expected)}"
    )
    if case.unchanged:
        feeds = feeds_for(model, batch=4, seed=11)
        assert rel_diff(run(model, feeds)[0], run(pruned, feeds)[0]) <= 1e-6


# --------------------------------------------------------------------------- the tests


def test_every_criterion_has_a_known_answer() -> None:
    assert set(KNOWN) | {"random"} == set(CRITERIA)
    assert all(KNOWN.values())
    assert {c for cases in KNOWN.values() for c in cases} == set(CASES)


@pytest.mark.parametrize(
    ("criterion", "case"), [(crit, case) for crit, cases in KNOWN.items() for case in cases]
)
def test_known_answer(criterion: str, case: str) -> None:
    check(case, criterion)


@pytest.mark.parametrize(("case", "criterion"), WRONG)
def test_the_case_needs_the_right_criterion(case: str, criterion: str) -> None:
    """Another criterion misses the answer: the case tests what it says, not a common bias."""
    with pytest.raises(AssertionError, match="removed"):
        check(case, criterion)


def test_random_ignores_the_weights_and_follows_its_seed() -> None:
    """``random`` is a seeded baseline: for each seed it removes the same channel whatever the
    weights (a zero filter included), the same again on a rerun, and different seeds spread
    over the channels."""
    zero, _ = zero_filter()
    other = _chain(_filters(8, 12))
    picks = []
    for seed in range(8):
        (a,) = removed_channels(zero, prune_k(zero, "random", 1, None, seed=seed))
        (b,) = removed_channels(other, prune_k(other, "random", 1, None, seed=seed))
        assert a == b, f"seed {seed}: random removed {a} here and {b} on other weights"
        picks.append(a)
    (again,) = removed_channels(zero, prune_k(zero, "random", 1, None, seed=0))
    assert again == picks[0]
    assert len(set(picks)) >= 4, picks


def test_global_ranking_takes_the_zero_filter_from_either_layer() -> None:
    """Two prunable layers (8 and 6 channels): scores normalised per group still rank one zero
    filter of the second layer below every channel of the first."""
    rng = _rng(13)
    w = [rng.standard_normal(s).astype(np.float32) for s in ((8, 3, 1, 1), (6, 8, 1, 1))]
    w[1][2] = 0.0
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], "c0"),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "w1"], ["b"], "c1"),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Conv", ["rb", "w2"], ["out"], "c2"),
    ]
    inits = {"w0": w[0], "w1": w[1], "w2": rng.standard_normal((2, 6, 1, 1)).astype(np.float32)}
    model = make_model(nodes, [("x", ["N", 3, 4, 4])], [("out", ["N", 2, 4, 4])], inits)
    # MACs per pixel: c0 8*3, c1 6*8, c2 2*6 = 84; one channel of c1 costs 8 + 2 = 10 (11.9%),
    # one of c0 3 + 6 = 9 (10.7%): only the c1 channel lands in [0.862, 0.882]
    for criterion in ("l1", "l2", "auto"):
        result = irprune.prune(
            model, target_flops=74 / 84 + 0.001, criterion=criterion, round_to=1,
            rewrite="drop", measure_latency=False,
        )  # fmt: skip
        assert count_macs(result.model) * 84 == count_macs(model) * 74
        assert removed_channels(model, result.model) == {2}
        assert node_weight(result.model, "c0").shape[0] == 8
        feeds = feeds_for(model, batch=2, seed=3)
        assert rel_diff(run(model, feeds)[0], run(result.model, feeds)[0]) <= 1e-6


# --------------------------------------------------------------------------- the plant


def plant_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every criterion rank backwards: each group's scores are mirrored (max + min - s)
    where they are gathered into ``importance.Scores``, the one place all criteria pass."""
    real = importance.Scores

    def backwards(criterion: str, by_group: Mapping[int, np.ndarray]) -> importance.Scores:
        return real(criterion, {g: s.max() + s.min() - s for g, s in by_group.items()})

    monkeypatch.setattr(importance, "Scores", backwards)


def test_planted_backwards_criterion_fails_every_known_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plant_backwards(monkeypatch)
    missed = []
    for criterion, cases in KNOWN.items():
        try:
            check(cases[0], criterion)
        except AssertionError:
            continue
        missed.append(criterion)
    assert not missed, f"a backwards {missed} still passed its known-answer check"
