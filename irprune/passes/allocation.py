"""Allocation: how many channels each group keeps, to meet a cost target.

The contract: the pruned model's cost is at most F x the original and at least (F - 0.02) x.

- ``global``: rank every channel of every prunable group by score (scores are normalised per
  group, so the ranking is fair) and remove from the bottom; the cut is found by bisection on the
  ranking, each probe costing one vectorised cost-model evaluation.
- ``uniform``: every group removes the same fraction; bisection on that fraction.
- ``sensitivity``: with each group's measured output-error curve (``passes.sensitivity``),
  greedily take the step (N channels of one group) with the least predicted error per MAC
  saved, until the target is met; errors of different groups are assumed to add.
- ``latency``: with the latency model (``passes.latency``), greedily take the step with the
  most predicted latency saved per MAC removed, until the target is met: the fastest plan at a
  MAC target, or the most MACs kept at a latency target. No group goes below half its width
  while the target can be met that way (a group cut deeper costs accuracy, see ``OVERCUT_KEEP``),
  else below 3/8, then 1/4, then its floor. Which channels each group keeps follows the scores.

Widths honour a floor per group (``max_prune``: at most that fraction removed, at least one
channel kept) and ``round_to`` (kept widths are multiples of N tensor channels, or the full
width, where the group allows; a group whose unit is a block of channels rounds its units so the
channels are a multiple of N; while rounding alone makes the target unreachable, N is halved,
and the report says which N was applied; when the plan at N removes more than half of some
group, it is redone with narrow groups rounded finer, ``rounding``). Because widths move in
steps, the bisection stops just under the target; a greedy fill then adds back the best
removed channels while the cost stays under it. If steps of N cannot land inside the window,
one group is widened by single channels into it (the most aligned such width), else a second
fill adds single channels to any group: the window is the contract, rounding only a preference.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np

from irprune.errors import TargetError
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.cost import CostModel
from irprune.passes.importance import Scores
from irprune.passes.latency import LatencyModel
from irprune.passes.rounding import group_steps
from irprune.passes.sensitivity import Curves, predicted

log = logging.getLogger(__name__)

TOLERANCE = 0.02
STRATEGIES = ("global", "uniform", "sensitivity", "latency")


@dataclass(frozen=True)
class Target:
    metric: str  # "macs", "params" or "latency" (predicted by passes.latency)
    fraction: float


@dataclass(frozen=True)
class Plan:
    widths: np.ndarray  # kept width of every group (unpruned groups: full size)
    kept: Mapping[int, np.ndarray]  # sorted kept channel indices of every group that shrinks
    ratio: float  # achieved cost / original cost, by the cost model, for the target metric
    round_to: int = 1  # the rounding applied (halved from the request while it blocked the target)
    narrow: bool = False  # narrow groups rounded finer (``rounding``) to avoid an over-cut


class Widths:
    """Allowed widths of the prunable groups: floor, rounding, full size.

    ``round_to`` counts tensor channels. A group whose unit is a block of ``b`` channels (the
    conv groups of a grouped conv, attention heads, GroupNorm groups) rounds its unit count to
    a multiple of ``round_to / gcd(round_to, b)``, so the kept channels are a multiple of
    ``round_to`` (4 groups of 8 channels at round-to 16: 2, 4, 6 ... groups). With ``narrow``,
    narrow groups round to a finer multiple of channels (``rounding``)."""

    def __init__(
        self,
        sizes: np.ndarray,
        round_to: int,
        max_prune: float,
        units: np.ndarray | None = None,
        narrow: bool = False,
    ) -> None:
        self.sizes = sizes
        self.n = max(int(round_to), 1)
        self.units = np.ones(len(sizes), dtype=np.int64) if units is None else units
        self.narrow = narrow
        channels = (
            group_steps(sizes * self.units, self.n).astype(np.int64)
            if narrow
            else np.full(len(sizes), self.n, dtype=np.int64)
        )
        self.steps = (channels // np.gcd(channels, self.units)).astype(np.float64)
        floors = np.maximum(np.ceil(sizes * (1.0 - max_prune)), 1)
        self.floors = np.minimum(self.round_up(floors, raw=True), sizes)

    def halved(self, max_prune: float) -> Widths:
        return Widths(self.sizes, self.n // 2, max_prune, self.units, self.narrow)

    def round_up(self, k: np.ndarray, raw: bool = False) -> np.ndarray:
        up = np.ceil(np.asarray(k, dtype=np.float64) / self.steps) * self.steps
        up = np.where(up >= self.sizes, self.sizes, up)
        return up if raw else np.maximum(up, self.floors)

    def step(self, i: int, coarse: bool) -> int:
        """The width step of group ``i``: its rounding step, or one unit."""
        return int(self.steps[i]) if coarse else 1

    def step_up(self, i: int, width: float, step: int) -> float:
        return float(min(self.sizes[i], (math.floor(width / step) + 1) * step))


def unit_channels(analysis: ChannelAnalysis, group_id: int) -> int:
    """Tensor channels per unit of a group: the block each of its channels is in the weights
    that create it (1 for plain channels; a conv group's width; a head's size)."""
    group = analysis.groups[group_id]
    blocks = [
        s.inner * s.outer
        for src in group.sources
        for s in analysis.layout(src.weight, src.axis) or ()
        if s.root == group_id
    ]
    return max(min(blocks), 1) if blocks else 1


def allocate(
    analysis: ChannelAnalysis,
    cost: CostModel,
    scores: Scores,
    target: Target,
    *,
    strategy: str = "global",
    round_to: int = 1,
    max_prune: float = 0.9,
    ignore: Iterable[int] = (),
    curves: Curves | None = None,
    latency: LatencyModel | None = None,
    finer: bool = True,
) -> Plan:
    """Widths per group for the target; see the module doc. When the plan at the requested
    rounding removes more than ``1 - OVERCUT_KEEP`` of some group while narrow groups were held
    at coarse steps, it is redone with narrow groups rounded finer (``rounding``), unless
    ``finer`` is off (finer widths run slower where kernels work in blocks of channels)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    units = {g.id: unit_channels(analysis, g.id) for g in analysis.prunable}
    args = (analysis, cost, scores, target, strategy, round_to, max_prune, set(ignore), units)
    plan = _allocate(*args, curves=curves, latency=latency)
    channels = np.array([g.size * units[g.id] for g in analysis.prunable])
    narrower = bool((group_steps(channels, plan.round_to) < plan.round_to).any())
    if finer and narrower and _overcut(analysis, plan):
        log.info("round_to=%d cuts a group by more than half; narrow groups round finer", round_to)
        try:
            plan = _allocate(*args, curves=curves, latency=latency, narrow=True)
        except TargetError as exc:  # finer steps only add choices; keep the valid plan if not
            log.info("finer rounding did not land the target (%s); keeping round_to", exc)
    return plan


OVERCUT_KEEP = 0.5  # a plan keeping less than this of some group tries finer narrow rounding


def _overcut(analysis: ChannelAnalysis, plan: Plan) -> bool:
    return any(plan.widths[g.id] < OVERCUT_KEEP * g.size for g in analysis.prunable)


def _allocate(
    analysis: ChannelAnalysis,
    cost: CostModel,
    scores: Scores,
    target: Target,
    strategy: str,
    round_to: int,
    max_prune: float,
    ignored: set[int],
    units: Mapping[int, int],
    *,
    curves: Curves | None,
    latency: LatencyModel | None,
    narrow: bool = False,
) -> Plan:
    ids = _sized_ids(analysis, scores, ignored)
    base = cost.base_widths.copy()
    measure = _measure(cost, target, latency)
    total = measure(base)
    budget = target.fraction * total
    sizes = base[ids]
    blocks = np.array([units[i] for i in ids], dtype=np.int64)
    allowed = Widths(sizes, round_to, max_prune, blocks, narrow)

    def full(sub: np.ndarray) -> np.ndarray:
        """The widths of every group, with the sized groups at ``sub``."""
        w = base.copy()
        w[ids] = sub
        return w

    def at(sub: np.ndarray) -> float:
        return measure(full(sub))

    while allowed.n > 1 and at(allowed.floors) > budget:
        log.info("round_to=%d cannot reach the target; trying %d", allowed.n, allowed.n // 2)
        allowed = allowed.halved(max_prune)
    floors = f"floors set by max_prune={max_prune:g}"
    if not total and target.fraction < 1:
        raise TargetError(nothing_counted(cost, target))
    _check_feasible(analysis, at(allowed.floors), total, target, ids, floors)
    group_scores = [np.asarray(scores.by_group[i]) for i in ids]
    if strategy == "global":
        sub = _bisect_global(group_scores, allowed, at, budget)
    elif strategy == "uniform":
        sub = _bisect_uniform(allowed, at, budget)
    elif strategy == "latency":
        if latency is None:
            raise ValueError("the latency strategy needs a latency model")
        model = latency
        steps = LatencySteps(allowed, at, lambda s: cost.macs_at(full(s)),
                             lambda s: model.at(full(s)))  # fmt: skip
        sub = steps.run(budget)
    else:
        if curves is None:
            raise ValueError("the sensitivity strategy needs measured curves")
        sub = _greedy_sensitivity(ids, allowed, at, budget, curves)

    def probe(sub: np.ndarray) -> _Step:
        w = full(sub)
        if target.metric == "latency":  # no incremental form: evaluate the model in full
            return _Step(_FullProbe(measure, w), ids, at, budget)
        return _Step(cost.probe(target.metric, w), ids, at, budget)

    sub = _fill(sub, group_scores, allowed, probe(sub), coarse=True)
    low = (target.fraction - TOLERANCE) * total
    if at(sub) < low and allowed.n > 1:
        # Rounded steps cannot land in the window: the target contract wins over rounding,
        # at the price of as few unrounded widths as possible (each one slows its layers).
        one = _land_one_group(sub, group_scores, allowed, at, low, budget)
        sub = one if one is not None else _fill(sub, group_scores, allowed, probe(sub), False)
    widths = full(sub)
    ratio = measure(widths) / total if total else 1.0
    # A latency target is a prediction the caller corrects by measuring: only its bound holds.
    if target.metric != "latency" and ratio < target.fraction - TOLERANCE - 1e-12:
        above = _next_step_up(sub, allowed, at, total)
        raise TargetError(
            f"cannot land the {target.metric} target {target.fraction:g} within its "
            f"{TOLERANCE:g} window: the closest widths give {ratio:.4f}"
            + (f" or {above:.4f}" if above is not None else "")
            + " (channels are too coarse here; choose a target near one of these"
            + (", or a smaller --round-to)" if allowed.n > 1 else ")")
        )
    return with_widths(scores, widths, ids, ratio, round_to=allowed.n, narrow=narrow)


def _sized_ids(analysis: ChannelAnalysis, scores: Scores, ignored: set[int]) -> list[int]:
    """The groups the allocation sizes: prunable, scored, not ignored."""
    return [g.id for g in analysis.prunable if g.id not in ignored and g.id in scores.by_group]


def search_space(
    analysis: ChannelAnalysis, scores: Scores, plan: Plan, *, max_prune: float,
    ignore: Iterable[int] = (),
) -> tuple[list[int], Widths]:  # fmt: skip
    """The groups the allocation sized for ``plan`` and the widths it could choose for them
    (``plan``'s rounding), for a search around it (``passes.search``)."""
    ids = _sized_ids(analysis, scores, set(ignore))
    sizes = np.array([analysis.groups[i].size for i in ids], dtype=np.float64)
    units = np.array([unit_channels(analysis, i) for i in ids], dtype=np.int64)
    return ids, Widths(sizes, plan.round_to, max_prune, units, plan.narrow)


def with_widths(
    scores: Scores, widths: np.ndarray, ids: Iterable[int], ratio: float, *, round_to: int,
    narrow: bool,
) -> Plan:  # fmt: skip
    """The plan keeping ``widths``: in each of the groups ``ids`` that shrinks, its best-scored
    channels."""
    kept = {}
    for gid in ids:
        s = np.asarray(scores.by_group[gid])
        if widths[gid] < len(s):
            kept[gid] = np.sort(np.argsort(-s, kind="stable")[: int(widths[gid])])
    return Plan(widths=widths, kept=MappingProxyType(kept), ratio=ratio, round_to=round_to,
                narrow=narrow)  # fmt: skip


def _land_one_group(
    sub: np.ndarray,
    group_scores: list[np.ndarray],
    allowed: Widths,
    at: Callable[[np.ndarray], float],
    low: float,
    budget: float,
) -> np.ndarray | None:
    """Widen ONE group by single channels into the window [low, budget], or None.

    For every group, the widths that land in the window form a range (the cost grows with the
    width: two bisections). The chosen width is divisible by the largest power of two in
    tensor channels up to N/2 (the next best thing to the requested rounding for blocked
    kernels), then costs the most within the budget (removes the least), then adds back the
    best scores."""
    best: tuple[int, float, float, int, int] | None = None
    for i, width in enumerate(sub):
        first = _first_width(sub, i, int(width) + 1, int(allowed.sizes[i]), at, low)
        if first is None or at(_with(sub, i, first)) > budget:
            continue
        last = _first_width(sub, i, first, int(allowed.sizes[i]), at, budget, above=True)
        last = (last - 1) if last is not None else int(allowed.sizes[i])
        w = _most_aligned(first, last, int(allowed.units[i]), max(allowed.n // 2, 1))
        channels = w * int(allowed.units[i])
        ranked = np.sort(group_scores[i])[::-1]
        key = (
            min(channels & -channels, max(allowed.n // 2, 1)),
            at(_with(sub, i, w)),
            float(ranked[int(width) : w].sum()),
        )
        if best is None or key > best[:3]:
            best = (*key, i, w)
    return None if best is None else _with(sub, best[3], best[4])


def _most_aligned(first: int, last: int, unit: int, cap: int) -> int:
    """The largest width in [first, last] whose channel count (width x unit) is divisible by
    the largest power of two up to ``cap`` any width there allows."""
    p = 1 << (max(cap, 1).bit_length() - 1)
    while p > 1:
        step = p // math.gcd(p, unit)
        if (last // step) * step >= first:
            return (last // step) * step
        p //= 2
    return last


def _first_width(
    sub: np.ndarray,
    i: int,
    lo: int,
    hi: int,
    at: Callable[[np.ndarray], float],
    bound: float,
    above: bool = False,
) -> int | None:
    """The smallest width in [lo, hi] of group ``i`` whose cost is >= ``bound`` (> with
    ``above``), or None."""

    def reaches(w: int) -> bool:
        cost = at(_with(sub, i, w))
        return cost > bound if above else cost >= bound

    if lo > hi or not reaches(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _with(sub: np.ndarray, i: int, width: float) -> np.ndarray:
    out = sub.copy()
    out[i] = width
    return out


def _measure(
    cost: CostModel, target: Target, latency: LatencyModel | None
) -> Callable[[np.ndarray], float]:
    if target.metric == "macs":
        return cost.macs_at
    if target.metric == "params":
        return cost.params_at
    if target.metric == "latency" and latency is not None:
        return latency.at
    raise ValueError(f"no cost model for the {target.metric} target")


_NAMES = {"macs": "MACs", "params": "parameters"}


def nothing_counted(cost: CostModel, target: Target) -> str:
    """Why a target cannot be met when the analysed graph has none of its metric: nothing in
    it can be pruned; where the model's compute is instead (subgraphs, not analysed)."""
    metric = _NAMES.get(target.metric, target.metric)
    goal = f"for the {target.metric} target {target.fraction:g}"
    if not cost.subgraph_macs:
        return f"nothing to prune: the model has no {metric} {goal}"
    where = "; ".join(
        f"{node} ({', '.join(f'{n} {op}' for op, n in ops.items())})"
        for node, ops in list(cost.subgraph_macs.items())[:3]
    )
    more = len(cost.subgraph_macs) - 3
    return (
        f"nothing to prune: the model's compute is inside the subgraphs of {where}"
        + (f" and {more} more nodes" if more > 0 else "")
        + f", which channel analysis does not enter (If branches, Loop/Scan bodies); its main "
        f"graph has no {metric} {goal}"
    )


def _check_feasible(
    analysis: ChannelAnalysis,
    floor_cost: float,
    total: float,
    target: Target,
    ids: list[int],
    floors: str,
) -> None:
    if floor_cost <= target.fraction * total:
        return
    best = floor_cost / total if total else 1.0
    frozen = [g for g in analysis.groups if not g.prunable]
    reasons: dict[str, int] = {}
    for g in frozen:
        for r in g.frozen[:1]:
            reasons[r] = reasons.get(r, 0) + 1
    top = "; ".join(
        f"{r} ({n} groups)" for r, n in sorted(reasons.items(), key=lambda x: -x[1])[:3]
    )
    raise TargetError(
        f"cannot reach {target.metric} target {target.fraction:g}: with all {len(ids)} prunable "
        f"groups at their floor ({floors}) the model keeps {best:.3f}"
        + (f"; frozen: {top}" if top else "")
    )


def _bisect_global(
    group_scores: list[np.ndarray],
    allowed: Widths,
    at: Callable[[np.ndarray], float],
    budget: float,
) -> np.ndarray:
    flat = np.concatenate(group_scores) if group_scores else np.zeros(0)
    owners = [np.full(len(s), i, dtype=np.int64) for i, s in enumerate(group_scores)]
    owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    order = np.argsort(flat, kind="stable")
    owner_sorted = owner[order].astype(np.int64)

    def widths(p: int) -> np.ndarray:
        removed = np.bincount(owner_sorted[:p], minlength=len(group_scores))
        return allowed.round_up(allowed.sizes - removed)

    lo, hi = 0, len(flat)
    while lo < hi:
        mid = (lo + hi) // 2
        if at(widths(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return widths(lo)


def _bisect_uniform(
    allowed: Widths, at: Callable[[np.ndarray], float], budget: float
) -> np.ndarray:
    def widths(frac: float) -> np.ndarray:
        return allowed.round_up(np.round(allowed.sizes * (1.0 - frac)))

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if at(widths(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return widths(hi)


def _greedy_sensitivity(
    ids: list[int],
    allowed: Widths,
    at: Callable[[np.ndarray], float],
    budget: float,
    curves: Curves,
) -> np.ndarray:
    sub = allowed.sizes.copy()
    cost = at(sub)
    while cost > budget:
        best, best_rate, best_width = -1, np.inf, 0.0
        for i, gid in enumerate(ids):
            width = step_down(sub[i], allowed, i)
            if width is None:
                continue
            trial = sub.copy()
            trial[i] = width
            saved = cost - at(trial)
            size = allowed.sizes[i]
            more = predicted(curves, gid, 1 - width / size) - predicted(
                curves, gid, 1 - sub[i] / size
            )
            rate = max(more, 0.0) / max(saved, 1e-12)
            if rate < best_rate:
                best, best_rate, best_width = i, rate, width
        if best < 0:
            break
        sub[best] = best_width
        cost = at(sub)
    return sub


LATENCY_KEEP = (OVERCUT_KEEP, 0.375, 0.25)  # shares tried in turn by the latency strategy


@dataclass(frozen=True)
class LatencySteps:
    """The ``latency`` strategy: steps with the most predicted latency saved per MAC first
    (``run``; ``greedy`` and ``add_back`` are its two halves, for a caller with its own floors)."""

    allowed: Widths
    at: Callable[[np.ndarray], float]  # the target's cost
    macs: Callable[[np.ndarray], float]
    latency: Callable[[np.ndarray], float]

    def run(self, budget: float) -> np.ndarray:
        """The highest of ``LATENCY_KEEP`` (a share every group keeps) that meets ``budget``,
        else down to the floors."""
        for keep in LATENCY_KEEP:
            sub = self.greedy(budget, self.allowed.round_up(np.ceil(self.allowed.sizes * keep)))
            if self.at(sub) <= budget:
                return self.add_back(sub, budget)
            log.info("latency strategy: keeping %g of every group cannot meet the target", keep)
        return self.add_back(self.greedy(budget, self.allowed.floors), budget)

    def greedy(self, budget: float, floors: np.ndarray) -> np.ndarray:
        """From full widths, the best step at a time (none below ``floors``) while the cost
        exceeds ``budget``; stops early when no step is left."""
        sub = self.allowed.sizes.copy()
        while self.at(sub) > budget:
            macs, ms = self.macs(sub), self.latency(sub)
            best: tuple[float, int, float] | None = None
            for i in range(len(sub)):
                width = step_down(sub[i], self.allowed, i, floors[i])
                if width is None:
                    continue
                trial = _with(sub, i, width)
                saved = macs - self.macs(trial)
                gain = (ms - self.latency(trial)) / saved if saved > 0 else -np.inf
                if best is None or gain > best[0]:
                    best = (gain, i, width)
            if best is None:
                break
            sub = _with(sub, best[1], best[2])
        return sub

    def add_back(self, sub: np.ndarray, budget: float) -> np.ndarray:
        """Widen by the steps that still fit, least predicted latency per MAC first."""
        while True:
            macs, ms = self.macs(sub), self.latency(sub)
            best: tuple[float, int, float] | None = None
            for i in range(len(sub)):
                if sub[i] >= self.allowed.sizes[i]:
                    continue
                width = self.allowed.step_up(i, sub[i], self.allowed.step(i, coarse=True))
                trial = _with(sub, i, width)
                if self.at(trial) > budget:
                    continue
                cost = (self.latency(trial) - ms) / max(self.macs(trial) - macs, 1e-12)
                if best is None or cost < best[0]:
                    best = (cost, i, width)
            if best is None:
                return sub
            sub = _with(sub, best[1], best[2])


def step_down(width: float, allowed: Widths, i: int, floor: float | None = None) -> float | None:
    """Group ``i`` one rounding step narrower than ``width``, or None below ``floor`` (default:
    the group's floor)."""
    n = allowed.step(i, coarse=True)
    lower = (math.ceil(width / n) - 1) * n
    bound = allowed.floors[i] if floor is None else floor
    return float(lower) if lower >= bound and lower > 0 else None


def _next_step_up(
    sub: np.ndarray, allowed: Widths, at: Callable[[np.ndarray], float], total: float
) -> float | None:
    """The smallest cost ratio above the current one reachable by widening one group a step."""
    best: float | None = None
    for i, w in enumerate(sub):
        if w < allowed.sizes[i]:
            trial = sub.copy()
            trial[i] = allowed.step_up(i, w, 1)
            ratio = at(trial) / total
            best = ratio if best is None else min(best, ratio)
    return best


class _Probe(Protocol):
    def with_width(self, group: int, width: float) -> float: ...

    def set_width(self, group: int, width: float) -> None: ...


@dataclass
class _FullProbe:
    """The ``Probe`` interface by full evaluations of ``measure`` (for the latency model)."""

    measure: Callable[[np.ndarray], float]
    widths: np.ndarray

    def with_width(self, group: int, width: float) -> float:
        trial = self.widths.copy()
        trial[group] = width
        return self.measure(trial)

    def set_width(self, group: int, width: float) -> None:
        self.widths[group] = width


@dataclass
class _Step:
    """Whether widening one group keeps the cost within the budget, in time proportional to
    what that group touches (``Probe``); within rounding distance of the budget the full
    evaluation decides, so the answer is the one ``at`` gives."""

    probe: _Probe
    ids: list[int]
    at: Callable[[np.ndarray], float]
    budget: float

    def fits(self, sub: np.ndarray, i: int, width: float) -> bool:
        estimate = self.probe.with_width(self.ids[i], width)
        if abs(estimate - self.budget) > 1e-9 * max(abs(self.budget), abs(estimate)):
            return estimate <= self.budget
        trial = sub.copy()
        trial[i] = width
        return self.at(trial) <= self.budget

    def commit(self, i: int, width: float) -> None:
        self.probe.set_width(self.ids[i], width)


def _fill(
    sub: np.ndarray,
    group_scores: list[np.ndarray],
    allowed: Widths,
    step_check: _Step,
    coarse: bool,
) -> np.ndarray:
    """Add back removed channels, best first, while the cost stays within the budget.

    The best group is the one whose next channel scores highest (ties: the lowest index); a
    group whose next step does not fit is not tried again. A heap holds each open group's next
    score, so a step costs O(log groups) plus the cost probe.
    """
    sub = sub.copy()
    ranked = [np.sort(s)[::-1] for s in group_scores]
    heap: list[tuple[float, int]] = []

    def offer(i: int) -> None:
        if sub[i] < allowed.sizes[i]:
            score = float(ranked[i][int(sub[i])])
            if score > -np.inf:  # -inf and NaN never win a strict comparison
                heapq.heappush(heap, (-score, i))

    for i in range(len(sub)):
        offer(i)
    for _ in range(4 * len(sub) + 64):
        if not heap:
            break
        _, best = heapq.heappop(heap)
        width = allowed.step_up(best, sub[best], allowed.step(best, coarse))
        if step_check.fits(sub, best, width):
            step_check.commit(best, width)
            sub[best] = width
            offer(best)
    return sub
