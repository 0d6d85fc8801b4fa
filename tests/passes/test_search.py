"""The latency strategy's measured refinement (passes/search.py), with a stand-in clock.

The time of a plan is a known function of its widths here, so every assertion is about the
search's logic (choice, moves, floors, window), never about how fast anything runs."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from irprune.passes.allocation import Plan, Widths
from irprune.passes.search import Space, refine, space_for

SIZES = np.array([64.0, 64.0, 32.0, 128.0])
WEIGHT = np.array([4.0, 1.0, 1.0, 0.5])  # stand-in time per channel of each group


def _macs(widths: np.ndarray) -> float:
    return float(np.sum(widths))


def _time(widths: np.ndarray) -> float:
    return float(np.sum(WEIGHT * widths))


class _Clock:
    """``Timing``'s interface: candidate time / current time, from the widths in the bytes."""

    def __init__(self) -> None:
        self.calls = 0

    def ratio(self, current: bytes, candidate: bytes) -> float:
        self.calls += 1
        return _time(np.frombuffer(candidate)) / _time(np.frombuffer(current))


def _plan(widths: list[float]) -> Plan:
    w = np.array(widths)
    return Plan(widths=w, kept=MappingProxyType({}), ratio=_macs(w) / _macs(SIZES), round_to=16)


def _space(start: Plan) -> Space:
    allowed = Widths(SIZES, 16, 0.9, np.ones(len(SIZES), dtype=np.int64))
    return space_for(start, [0, 1, 2, 3], allowed, SIZES.copy(), _macs, 0.5)


def _build(widths: np.ndarray) -> bytes:
    return np.asarray(widths, dtype=np.float64).tobytes()


def test_moves_stay_in_the_window_above_the_floors_and_on_the_steps() -> None:
    start = _plan([32, 48, 32, 32])  # 144 of 288 MACs: 0.5
    space = _space(start)
    rng = np.random.default_rng(0)
    sub = start.widths.copy()
    seen = 0
    for _ in range(200):
        trial = space.move(sub, rng)
        if trial is None:
            continue
        seen += 1
        assert space.fits(trial)
        assert np.all(trial >= space.floors)
        assert np.all(trial % 16 == 0)
        assert (trial != sub).sum() == 2
        sub = trial
    assert seen > 20
    assert np.all(space.floors >= np.minimum(SIZES / 2, start.widths))


def test_the_faster_plan_starts_the_search_and_only_faster_moves_are_kept() -> None:
    slow, fast = _plan([64, 16, 32, 32]), _plan([32, 48, 32, 32])  # same MACs, fast cuts group 0
    assert _time(fast.widths) < _time(slow.widths)
    clock = _Clock()
    result = refine(fast, slow, _space, _build, clock, moves=40)  # type: ignore[arg-type]
    assert result.chosen == "latency"
    assert _time(result.widths) <= _time(fast.widths)
    assert result.ratio <= _time(fast.widths) / _time(slow.widths) + 1e-12
    assert clock.calls == 1 + result.measured
    assert _space(fast).fits(result.widths)
    swapped = refine(slow, fast, _space, _build, _Clock(), moves=0)  # type: ignore[arg-type]
    assert swapped.chosen == "global"  # the latency plan is slower: global's plan is kept
    assert np.array_equal(swapped.widths, fast.widths)


def test_the_search_does_not_buy_speed_with_fewer_macs() -> None:
    start = _plan([32, 48, 32, 32])
    result = refine(start, start, _space, _build, _Clock(), moves=60)  # type: ignore[arg-type]
    assert _macs(result.widths) >= _macs(start.widths) - 0.005 * _macs(SIZES) - 1e-9
