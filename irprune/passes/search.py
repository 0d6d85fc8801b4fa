"""Measured refinement of the ``latency`` strategy's plan at a MAC or parameter target.

The latency model (``passes.latency``) adds up ops timed alone and fits a line to two whole-model
measurements; it ranks plans well where a few large convolutions dominate, and badly where time
goes to depthwise convolutions, layout reorders and small ops (on the 224 px zoo its plan was
slower than ``global``'s on MobileNetV2 and Inception). So the strategy checks its plan against
onnxruntime itself, on this machine:

1. **Choice.** Its plan and the ``global`` plan at the same target are built and timed against
   each other; the latency plan is kept only when it is faster by more than ``ACCEPT`` (else
   ``global``, which ranks by importance alone).
2. **Local search.** ``MOVES`` times: widen one random group by a rounding step and narrow
   another (the first, in random order, that brings the cost back into the window); keep the
   move when it is faster than the current plan by more than ``ACCEPT``. No group goes below
   half its width (or below its width in the starting plan, where that is less): cutting deeper
   costs accuracy (``allocation.OVERCUT_KEEP``); and the cost stays within ``DRIFT`` of the
   starting plan's, so speed is not bought with fewer MACs.

Each comparison builds both plans (each group's first channels: the time does not depend on
which) and runs them alternately, ``WARMUP`` + ``RUNS`` times each, median; with one thread the
time is the calling thread's CPU time (onnxruntime runs every kernel in it, so other processes
do not inflate it), else the wall clock. The result depends on this machine's timings, and the
search draws its moves from a generator seeded by ``seed``.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from irprune.emit.verify import session
from irprune.passes.allocation import (
    OVERCUT_KEEP,
    TOLERANCE,
    Plan,
    Target,
    Widths,
    allocate,
    search_space,
    step_down,
    with_widths,
)
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.cost import CostModel
from irprune.passes.importance import Scores

log = logging.getLogger(__name__)

ACCEPT = 0.01  # a candidate must be this much faster (relative) to replace the current plan
MOVES = 24
DRIFT = 0.005  # how far below the starting plan's cost ratio the search may go
RUNS = 15
WARMUP = 2


@dataclass(frozen=True)
class Space:
    """The widths a move may choose: the prunable groups ``ids``, their steps and floors, and
    the cost window of the target."""

    ids: list[int]
    allowed: Widths
    floors: np.ndarray
    base: np.ndarray
    cost: Callable[[np.ndarray], float]  # the target's metric at full widths
    low: float
    high: float

    def full(self, sub: np.ndarray) -> np.ndarray:
        widths = self.base.copy()
        widths[self.ids] = sub
        return widths

    def fits(self, sub: np.ndarray) -> bool:
        return self.low <= self.cost(self.full(sub)) <= self.high

    def move(self, sub: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Widen a random group a step, then narrow the first of the other groups (in random
        order) that brings the cost back into the window without crossing its floor; None when
        none does."""
        wider = np.flatnonzero(sub < self.allowed.sizes)
        if len(wider) == 0:
            return None
        i = int(rng.choice(wider))
        widened = sub.copy()
        widened[i] = self.allowed.step_up(i, sub[i], self.allowed.step(i, coarse=True))
        for j in rng.permutation(np.flatnonzero(sub > self.floors)):
            if j != i and (trial := self._narrow(widened, int(j))) is not None:
                return trial
        return None

    def _narrow(self, sub: np.ndarray, j: int) -> np.ndarray | None:
        trial = sub.copy()
        while self.cost(self.full(trial)) > self.high:
            width = step_down(trial[j], self.allowed, j, self.floors[j])
            if width is None:
                return None
            trial[j] = width
        return trial if self.fits(trial) else None


def space_for(
    start: Plan, ids: list[int], allowed: Widths, base: np.ndarray,
    cost: Callable[[np.ndarray], float], fraction: float,
) -> Space:  # fmt: skip
    """The search space around ``start``: floors at half of each group, or its start width;
    the cost stays in the target's window and within ``DRIFT`` of the start's (a search for
    speed would otherwise drift to the window's low end: fewer MACs, not a better plan)."""
    sub = start.widths[ids]
    half = allowed.round_up(np.ceil(allowed.sizes * OVERCUT_KEEP))
    floors = np.minimum(np.maximum(half, allowed.floors), sub)
    total = cost(base)
    low = max(fraction - TOLERANCE, cost(start.widths) / total - DRIFT) * total
    return Space(ids, allowed, floors, base, cost, low, fraction * total)


@dataclass(frozen=True)
class Timing:
    """Times two models against each other (see the module doc)."""

    feeds: Mapping[str, np.ndarray]
    threads: int

    def ratio(self, current: bytes, candidate: bytes) -> float:
        """Candidate time / current time."""
        sessions = [session(m, threads=self.threads, optimize=True) for m in (current, candidate)]
        clock = time.thread_time if self.threads == 1 else time.perf_counter
        times: list[list[float]] = [[], []]
        for i in range(WARMUP + RUNS):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                t0 = clock()
                sessions[k].run(None, dict(self.feeds))
                if i >= WARMUP:
                    times[k].append(clock() - t0)
        before, after = (statistics.median(t) for t in times)
        return after / before if before > 0 else 1.0


@dataclass(frozen=True)
class Refined:
    widths: np.ndarray
    chosen: str  # "latency" or "global": the start of the search
    moves: int
    measured: int
    kept: int
    ratio: float  # measured time of the result / time of the global plan

    def summary(self) -> dict[str, object]:
        return {
            "start": self.chosen,
            "moves": self.moves,
            "measured": self.measured,
            "kept": self.kept,
            "time_vs_global": self.ratio,
        }


def refine(
    latency_plan: Plan, global_plan: Plan, space_of: Callable[[Plan], Space],
    build: Callable[[np.ndarray], bytes], timing: Timing, *, moves: int = MOVES, seed: int = 0,
) -> Refined:  # fmt: skip
    """Choose between the two plans by measurement, then search around the faster."""
    global_bytes = build(global_plan.widths)
    first = timing.ratio(global_bytes, build(latency_plan.widths))
    chosen, start = ("latency", latency_plan) if first < 1 - ACCEPT else ("global", global_plan)
    log.info("latency strategy: its plan runs %.3f x the global plan's; starting from %s",
             first, chosen)  # fmt: skip
    space = space_of(start)
    rng = np.random.default_rng(seed)
    current = start.widths[space.ids]
    current_bytes = build(space.full(current))
    overall = first if chosen == "latency" else 1.0
    measured = kept = 0
    for _ in range(moves):
        trial = space.move(current, rng)
        if trial is None:
            continue
        trial_bytes = build(space.full(trial))
        measured += 1
        r = timing.ratio(current_bytes, trial_bytes)
        if r < 1 - ACCEPT:
            current, current_bytes, kept, overall = trial, trial_bytes, kept + 1, overall * r
    log.info("latency search: %d moves measured, %d kept (%.3f x the global plan)",
             measured, kept, overall)  # fmt: skip
    return Refined(space.full(current), chosen, moves, measured, kept, overall)


def measured_plan(
    analysis: ChannelAnalysis, cost: CostModel, scores: Scores, target: Target, plan: Plan,
    allocation: Mapping[str, object], build: Callable[[np.ndarray], bytes], timing: Timing,
    seed: int,
) -> tuple[Plan, dict[str, object]]:  # fmt: skip
    """The ``latency`` strategy's ``plan`` checked against ``global`` and refined by measurement
    (``allocation``: the options ``allocate`` was given; ``build``: widths to a runnable model)."""
    options = {**allocation, "strategy": "global"}
    ranked = allocate(analysis, cost, scores, target, **options)  # type: ignore[arg-type]
    measure = cost.macs_at if target.metric == "macs" else cost.params_at
    max_prune = float(options["max_prune"])  # type: ignore[arg-type]
    ignore = options["ignore"]
    ids, allowed = search_space(
        analysis,
        scores,
        plan,
        max_prune=max_prune,
        ignore=ignore,  # type: ignore[arg-type]
    )

    def space_of(start: Plan) -> Space:
        return space_for(start, ids, allowed, cost.base_widths, measure, target.fraction)

    refined = refine(plan, ranked, space_of, build, timing, seed=seed)
    start = plan if refined.chosen == "latency" else ranked
    ratio = measure(refined.widths) / measure(cost.base_widths)
    final = with_widths(scores, refined.widths, ids, ratio, round_to=start.round_to,
                        narrow=start.narrow)  # fmt: skip
    return final, refined.summary()
