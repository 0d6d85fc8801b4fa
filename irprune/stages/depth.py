"""Depth planning (issue #16): which residual blocks a plan removes, and the widths of the rest.

The candidates are ``passes.analysis.blocks.find_blocks``'s (identity-shortcut blocks
``y = x + f(x)``; ``Analysis.blocks``, the rejected Adds with their reasons in
``Analysis.rejected_blocks``). Each is scored by ``passes.importance.blocks``:
``removal_error`` (the measured relative L2 error of the outputs with the block removed alone)
on the first ``EVAL_SAMPLES`` calibration samples when calibration data is given, else the
data-free ``weight_norm``; lower = removed first. A block the criterion cannot score is never
removed. Blocks are taken lowest score first, skipping one nested in (or holding) a block
already taken.

- ``depth="only"``: blocks are removed, lowest score first, until the cost ratio reaches the
  target (MACs or params by the cost model of the graph without them; a latency target by the
  measured onnxruntime latency of that graph), at most ``max_blocks``; a block that would take
  the ratio below the target's lower bound (``F - TOLERANCE``, the contract's overshoot) is
  skipped. ``TargetError`` when no such set reaches the target.
- ``depth="auto"``: for k = 0 .. K, remove the k lowest-scored blocks, then allocate the widths
  of the graph without them (its own channel analysis and cost model, the target scaled to that
  graph's cost, the channel scores of the analysis carried over group by group) to the rest of
  the budget. K is ``max_blocks`` (default: every candidate) or the last k whose blocks alone
  do not pass the target's lower bound. Each candidate plan is built as the apply stage builds
  it and run against the original: with calibration data, blocks removed, channels dropped
  and repaired by ``reconstruct`` fitted on the even ones of the first ``2 * EVAL_SAMPLES``
  calibration samples, measured on the odd ones (held out: a refit measured on its own fitting
  data would favour plans with more refit layers); without data, dropped with no repair and
  run on the reference run's seeded random inputs. The plan kept has the lowest measured
  relative L2 error of the outputs (for a latency target, the lowest measured latency). k = 0
  is the width-only plan itself, so on those inputs ``auto`` never measures worse than
  ``off``; the block removals themselves are repaired only where the width plan shrinks a
  consumer downstream (the refit only re-solves consumers whose inputs shrank).

The widths are kept in the original analysis's group ids (a plan file stays one document per
model): a group of the graph without the blocks is one of the original's with fewer members
(removal never joins or splits groups; checked), and a group that lived inside a removed block
keeps its full width (it is deleted with the block). The apply stage removes the blocks first,
on the working graph, in two steps (``rewrite.remove_blocks.bypass_blocks``, then, after the
width rewrite and the calibrated repair, ``finish_removal``), so the repair fits each shrunk
consumer to what the ORIGINAL model produced there, the removed blocks included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from irprune import report as rep
from irprune.emit import to_model
from irprune.emit.verify import run_batched, session
from irprune.errors import IRError, TargetError, UsageError
from irprune.ir import Graph
from irprune.ir.copy import copy_structure
from irprune.passes.allocation import Plan as Allocation
from irprune.passes.allocation import Target, allocate
from irprune.passes.analysis.blocks import Block, BlockAnalysis, find_blocks
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.channels import analyze as analyze_channels
from irprune.passes.analysis.cost import CostModel, build_cost_model
from irprune.passes.importance import Scores as ChannelScores
from irprune.passes.importance.blocks import removal_error, weight_norm
from irprune.passes.rewrite.drop import drop
from irprune.passes.rewrite.remove_blocks import bypass_blocks, finish_removal, remove_blocks
from irprune.pipeline.plan import resolve_ignore
from irprune.pipeline.rewrite import apply_rewrite

if TYPE_CHECKING:
    from irprune.stages.analysis import Analysis
    from irprune.stages.model import Calibration
    from irprune.stages.options import PlanOptions

log = logging.getLogger(__name__)

TOLERANCE = 0.02  # the target contract's overshoot: a ratio in [F - 0.02, F]
EVAL_SAMPLES = 32  # calibration samples block scores and candidate plans are measured on
DEPTH_STRATEGIES = ("global", "uniform")  # the strategies that plan without the original graph


@dataclass(frozen=True)
class BlockInfo:
    """A removable residual block ``output = input + f(input)``: its Add (``add``), what ``f``
    holds (``kind``, ``nodes``), its MACs (and share of the model's) and its own parameters."""

    add: str
    input: str
    output: str
    kind: str
    nodes: int
    macs: float
    macs_share: float
    params: int


@dataclass(frozen=True)
class RejectedAdd:
    """An Add of two varying inputs that is no removable block, and why."""

    add: str
    output: str
    reason: str


@dataclass(frozen=True)
class RemovedBlock:
    """A block a plan removes: its Add's output (``output``, what plan files record), its score
    by ``criterion`` and why it was chosen."""

    add: str
    output: str
    kind: str
    macs_share: float
    score: float | None
    criterion: str
    why: str


@dataclass(frozen=True, eq=False)
class Removal:
    """The blocks a plan removes and the graph without them: its channel groups and cost model
    (what the widths were allocated on) and each of its groups' id in the original analysis."""

    blocks: tuple[RemovedBlock, ...]
    found: tuple[Block, ...] = field(repr=False)
    channels: ChannelAnalysis = field(repr=False)
    cost: CostModel = field(repr=False)
    to_original: Mapping[int, int] = field(repr=False)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(b.output for b in self.blocks)


# --- analysis ----------------------------------------------------------------------------------
def block_candidates(
    graph: Graph, macs: float
) -> tuple[BlockAnalysis, tuple[BlockInfo, ...], tuple[RejectedAdd, ...]]:
    """``find_blocks`` on ``graph`` (read-only), as ``Analysis.blocks`` shows them."""
    found = find_blocks(graph)
    infos = tuple(
        BlockInfo(b.add, b.input, b.output, b.kind, len(b.nodes), float(b.macs),
                  float(b.macs) / macs if macs else 0.0, int(b.params))
        for b in found.blocks
    )  # fmt: skip
    rejected = tuple(RejectedAdd(r.add, r.output, r.reason) for r in found.rejected)
    return found, infos, rejected


def removal(
    analysis: Analysis, blocks: Sequence[Block], chosen: Sequence[RemovedBlock] = ()
) -> Removal:
    """The graph of ``analysis`` without ``blocks`` (a structural copy): its channel groups,
    cost model and group map."""
    graph = copy_structure(analysis.loaded.graph())
    remove_blocks(graph, blocks)
    channels = analyze_channels(graph)
    cost = build_cost_model(graph, channels)
    mapping = group_map(channels, analysis.channels)
    return Removal(tuple(chosen), tuple(blocks), channels, cost, MappingProxyType(mapping))


def group_map(channels: ChannelAnalysis, original: ChannelAnalysis) -> dict[int, int]:
    """Each group of ``channels`` -> the group of ``original`` sharing its members (value,
    axis); ``IRError`` when one maps to none or several, or sizes differ."""
    owner = {(m.value, m.axis): g.id for g in original.groups for m in g.members}
    out: dict[int, int] = {}
    for g in channels.groups:
        ids = {owner[(m.value, m.axis)] for m in g.members if (m.value, m.axis) in owner}
        if len(ids) != 1 or original.groups[next(iter(ids))].size != g.size:
            raise IRError(f"group {g.id} after block removal maps to original groups {ids}")
        out[g.id] = ids.pop()
    return out


def to_original(allocation: Allocation, depth: Removal, analysis: Analysis) -> Allocation:
    """An allocation on the graph without the blocks, in the original's group ids (groups
    inside removed blocks at full width); its ratio against the original's cost."""
    widths = np.array([float(g.size) for g in analysis.channels.groups])
    kept = {}
    for gid, orig in depth.to_original.items():
        widths[orig] = allocation.widths[gid]
        if gid in allocation.kept:
            kept[orig] = allocation.kept[gid]
    return replace(allocation, widths=widths, kept=MappingProxyType(kept))


def from_original(allocation: Allocation, mapping: Mapping[int, int], size: int) -> Allocation:
    """The inverse of ``to_original`` for a graph whose groups map by ``mapping``."""
    widths = np.array([float(allocation.widths[mapping[g]]) for g in range(size)])
    kept = {g: allocation.kept[o] for g, o in mapping.items() if o in allocation.kept}
    return replace(allocation, widths=widths, kept=MappingProxyType(kept))


def ratio_of(depth: Removal, analysis: Analysis, allocation: Allocation, metric: str) -> float:
    """The cost ratio of ``allocation`` (original ids) with ``depth``'s blocks removed."""
    local = from_original(allocation, depth.to_original, len(depth.channels.groups))
    measure = (depth.cost.macs_at if metric == "macs" else depth.cost.params_at)(local.widths)
    base = analysis.cost.macs_at if metric == "macs" else analysis.cost.params_at
    return float(measure / max(base(analysis.cost.base_widths), 1e-12))


def replayed(analysis: Analysis, outputs: Iterable[str], recorded: Sequence[Any]) -> Removal:
    """The removal a plan file records (block outputs), checked against this model's
    candidates: ``PlanError`` naming a block the model does not have."""
    from irprune.plans import PlanError

    by_output = {b.output: b for b in analysis.block_analysis.blocks}
    found = []
    for name in outputs:
        if name not in by_output:
            raise PlanError(f"block {name!r}: the plan removes it, the model has no such block")
        found.append(by_output[name])
    info = {b.output: b for b in analysis.blocks}
    chosen = [_removed(info[b.output], r) for b, r in zip(found, recorded, strict=True)]
    return removal(analysis, found, chosen)


def _removed(info: BlockInfo, recorded: Mapping[str, Any]) -> RemovedBlock:
    score = recorded.get("score")
    return RemovedBlock(
        info.add, info.output, info.kind, info.macs_share,
        float(score) if isinstance(score, int | float) else None,
        str(recorded.get("criterion", "")), str(recorded.get("why", "from the plan file")),
    )  # fmt: skip


# --- scores ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockScores:
    """One score per candidate (by output; None: not scorable) and the criterion."""

    criterion: str
    by_block: Mapping[str, float | None]

    def ranked(self, blocks: Sequence[Block]) -> list[Block]:
        """Scored blocks, lowest first (ties in graph order)."""
        scored = [b for b in blocks if self.by_block.get(b.output) is not None]
        return sorted(scored, key=lambda b: self.by_block[b.output])  # type: ignore[arg-type,return-value]


def score_blocks(analysis: Analysis, feeds: Mapping[str, np.ndarray] | None) -> BlockScores:
    """``removal_error`` on ``feeds`` (calibration data), else ``weight_norm``."""
    blocks = analysis.block_analysis.blocks
    graph = analysis.loaded.graph()
    if feeds is not None:
        scores = removal_error(graph, blocks, first(feeds))
    else:
        scores = weight_norm(graph, blocks)
    for s in scores:
        if s.score is None:
            log.info("block %s not scored (%s): never removed", s.block, s.note)
    criterion = scores[0].criterion if scores else "weight_norm"
    return BlockScores(criterion, MappingProxyType({s.block: s.score for s in scores}))


def first(feeds: Mapping[str, np.ndarray], n: int = EVAL_SAMPLES) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[:n] for k, v in feeds.items()}


def prefixes(ranked: Sequence[Block], limit: int) -> list[list[Block]]:
    """The k lowest-scored non-overlapping blocks for k = 0 .. ``limit``."""
    taken: list[Block] = []
    out: list[list[Block]] = [[]]
    for block in ranked:
        if len(taken) >= limit:
            break
        inner = {n for b in taken for n in b.nodes}
        if block.output in inner or any(b.output in block.nodes for b in taken):
            continue
        taken = [*taken, block]
        out.append(taken)
    return out


# --- planning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One depth plan considered: its blocks, the graph without them, the widths (original
    ids), its cost ratio and its measured error (or latency)."""

    blocks: tuple[Block, ...]
    depth: Removal | None
    allocation: Allocation
    ratio: float
    error: float = 0.0
    latency: float | None = None


def plan_depth(
    analysis: Analysis, target: Target, scores: Any, options: PlanOptions,
    calibration: Calibration, width_plan: Any,
) -> Any:  # fmt: skip
    """The plan of ``options.depth`` (see the module docstring); ``width_plan(analysis,
    target, scores)`` is the stage's own width planning (the k = 0 plan)."""
    from irprune.stages.plan import Plan

    if options.strategy not in DEPTH_STRATEGIES:
        raise UsageError(
            f"--depth {options.depth} plans widths with --strategy global or uniform, "
            f"not {options.strategy}"
        )
    feeds = calibration.arrays()
    block_scores = score_blocks(analysis, feeds)
    ranked = block_scores.ranked(analysis.block_analysis.blocks)
    limit = len(ranked) if options.max_blocks is None else options.max_blocks
    eval_feeds = _eval_feeds(analysis, calibration, options.seed)
    if options.depth == "only":
        chosen = _only(analysis, target, ranked, limit, eval_feeds, options)
    else:
        chosen = _auto(analysis, target, scores, ranked, limit, eval_feeds, options, width_plan)
    why = "lowest " + block_scores.criterion + (
        "; blocks alone meet the target" if options.depth == "only"
        else "; depth+width measured closest to the original"
    )  # fmt: skip
    settings = _settings(options, block_scores)
    if not chosen.blocks:
        base = width_plan(analysis, target, scores)
        return Plan.of(analysis, base.allocation, target, {**base.settings, **settings},
                       base.planned, base.timings)  # fmt: skip
    info = {b.output: b for b in analysis.blocks}
    removed = tuple(
        RemovedBlock(b.add, b.output, b.kind, info[b.output].macs_share,
                     block_scores.by_block[b.output], block_scores.criterion, why)
        for b in chosen.blocks
    )  # fmt: skip
    assert chosen.depth is not None
    depth = replace(chosen.depth, blocks=removed)
    allocation = replace(chosen.allocation, ratio=chosen.ratio)
    ignored = resolve_ignore(analysis.loaded.graph(), analysis.channels, options.ignore)
    plan_settings = {
        "round_to_applied": allocation.round_to, "round_narrow": allocation.narrow,
        "criterion": scores.criterion, "strategy": options.strategy,
        "round_to": options.round_to, "strict_rounding": options.strict_rounding,
        "max_prune": options.max_prune, "ignore": sorted(ignored), **settings,
    }  # fmt: skip
    return Plan.of(analysis, allocation, target, plan_settings, None, scores.timings, depth)


def _settings(options: PlanOptions, block_scores: BlockScores) -> dict[str, Any]:
    return {
        "depth": options.depth,
        "max_blocks": options.max_blocks,
        "block_criterion": block_scores.criterion,
    }


@dataclass(frozen=True)
class EvalFeeds:
    """What candidate plans are measured on: ``test`` (run against the original) and, with
    calibration data, ``fit`` (the samples the candidate's repair is fitted on, disjoint)."""

    test: dict[str, np.ndarray]
    fit: dict[str, np.ndarray] | None = None


def _eval_feeds(analysis: Analysis, calibration: Calibration, seed: int) -> EvalFeeds:
    """With calibration data: its first ``2 * EVAL_SAMPLES`` samples, the even ones to fit the
    repair, the odd ones to measure; else the reference run's random inputs."""
    feeds = calibration.arrays()
    if feeds is None:
        return EvalFeeds(first(analysis.loaded.reference(calibration, seed, run=False).feeds))
    head = first(feeds, 2 * EVAL_SAMPLES)
    if min(len(v) for v in head.values()) < 4:
        return EvalFeeds(head, head)
    return EvalFeeds({k: v[1::2] for k, v in head.items()}, {k: v[0::2] for k, v in head.items()})


def _lower(target: Target) -> float:
    return target.fraction - TOLERANCE


def _only(
    analysis: Analysis, target: Target, ranked: Sequence[Block], limit: int,
    feeds: EvalFeeds, options: PlanOptions,
) -> Candidate:  # fmt: skip
    """Blocks alone, lowest score first, until the target is met (see the module doc)."""
    full = _full(analysis)
    taken: list[Block] = []
    ratio = 1.0
    for block in ranked:
        if len(taken) >= limit or ratio <= target.fraction:
            break
        inner = {n for b in taken for n in b.nodes}
        if block.output in inner or any(b.output in block.nodes for b in taken):
            continue
        trial = [*taken, block]
        depth = removal(analysis, trial)
        r = _blocks_ratio(analysis, depth, target, feeds, options)
        if r < _lower(target):
            log.info("block %s skipped: the ratio would be %.3f", block.add, r)
            continue
        taken, ratio, kept = trial, r, depth
    if not taken and ratio <= target.fraction:  # a target of 1: nothing to remove
        return Candidate((), None, Allocation(full, MappingProxyType({}), 1.0), 1.0)
    if ratio > target.fraction:
        raise TargetError(
            f"--depth only: removing {len(taken)} of {len(ranked)} scorable blocks "
            f"(max {limit}) reaches {target.metric} ratio {ratio:.3f}, not the target "
            f"{target.fraction:g} (within {TOLERANCE:g}); blocks alone cannot meet it "
            "(try --depth auto, or more --max-blocks)"
        )
    local = np.array([float(g.size) for g in kept.channels.groups])
    allocation = to_original(Allocation(local, MappingProxyType({}), ratio), kept, analysis)
    return Candidate(tuple(taken), kept, allocation, ratio)


def _full(analysis: Analysis) -> np.ndarray:
    return np.array([float(g.size) for g in analysis.channels.groups])


def _blocks_ratio(
    analysis: Analysis, depth: Removal, target: Target, feeds: EvalFeeds,
    options: PlanOptions,
) -> float:  # fmt: skip
    """The cost ratio of the graph without ``depth``'s blocks, widths untouched."""
    if target.metric == "latency":
        probe = _probe(analysis, depth, None)
        return _latency_ratio(analysis, probe, feeds.test, options)
    full = Allocation(_full(analysis), MappingProxyType({}), 0.0)
    return ratio_of(depth, analysis, full, target.metric)


def _auto(
    analysis: Analysis, target: Target, scores: Any, ranked: Sequence[Block], limit: int,
    feeds: EvalFeeds, options: PlanOptions, width_plan: Any,
) -> Candidate:  # fmt: skip
    """Depth and width together (see the module doc): the candidate measured best."""
    reference = _run(analysis.loaded.original_bytes, feeds.test)
    base = width_plan(analysis, target, scores)
    candidates = [_measured(analysis, Candidate((), None, base.allocation, base.ratio),
                            reference, feeds, target, options)]  # fmt: skip
    for blocks in prefixes(ranked, limit)[1:]:
        depth = removal(analysis, blocks)
        alone = _blocks_ratio(analysis, depth, target, feeds, options)
        if alone < _lower(target):
            break
        try:
            allocation, ratio = _widths(analysis, depth, target, scores, options, alone)
        except TargetError as exc:
            log.info("depth auto: %d blocks: %s", len(blocks), exc)
            continue
        candidate = Candidate(tuple(blocks), depth, allocation, ratio)
        candidates.append(_measured(analysis, candidate, reference, feeds, target, options))
    for c in candidates:
        log.info("depth auto: %d blocks, ratio %.3f, error %.4f, latency %s",
                 len(c.blocks), c.ratio, c.error, c.latency)  # fmt: skip
    if target.metric == "latency":
        return min(candidates, key=lambda c: (c.latency or np.inf, c.error))
    return min(candidates, key=lambda c: (c.error, -c.ratio))


def _widths(
    analysis: Analysis, depth: Removal, target: Target, scores: Any, options: PlanOptions,
    alone: float,
) -> tuple[Allocation, float]:  # fmt: skip
    """Widths of the graph without ``depth``'s blocks for the rest of the budget."""
    metric = "macs" if target.metric == "latency" else target.metric
    fraction = target.fraction
    if target.metric == "latency":  # latency ~ MACs for the width part; measured after
        fraction = min(1.0, target.fraction / alone)
        local_target = Target("macs", fraction)
    else:
        local_target = Target(metric, min(1.0, fraction / alone))
    internal = _local_scores(scores, depth)
    frozen = {g for g, o in depth.to_original.items() if analysis.channels.groups[o].frozen}
    graph = _graph_without(analysis, depth)
    ignore = resolve_ignore(graph, depth.channels, options.ignore) | frozen
    if local_target.fraction >= 1.0:
        local = Allocation(
            np.array([float(g.size) for g in depth.channels.groups]), MappingProxyType({}), 1.0
        )
    else:
        local = allocate(
            depth.channels, depth.cost, internal, local_target, strategy=options.strategy,
            round_to=options.round_to, max_prune=options.max_prune, ignore=ignore,
            finer=not options.strict_rounding,
        )  # fmt: skip
    allocation = to_original(local, depth, analysis)
    return allocation, ratio_of(depth, analysis, allocation, metric)


def _graph_without(analysis: Analysis, depth: Removal) -> Graph:
    graph = copy_structure(analysis.loaded.graph())
    remove_blocks(graph, depth.found)
    return graph


def _local_scores(scores: Any, depth: Removal) -> ChannelScores:
    """The analysis's channel scores, carried to the groups of the graph without the blocks."""
    by_group = {
        gid: scores.by_group[orig]
        for gid, orig in depth.to_original.items()
        if orig in scores.by_group
    }
    return ChannelScores(scores.criterion, by_group)


def _measured(
    analysis: Analysis, candidate: Candidate, reference: list[np.ndarray], feeds: EvalFeeds,
    target: Target, options: PlanOptions,
) -> Candidate:  # fmt: skip
    """The candidate built (blocks removed, channels dropped and, with calibration data,
    repaired by ``reconstruct`` on ``feeds.fit``) and run on ``feeds.test``: its relative L2
    error against the original (and, for a latency target, its measured latency ratio)."""
    probe = _probe(analysis, candidate.depth, candidate.allocation, feeds.fit, options.seed)
    error = rel_l2(reference, _run(probe, feeds.test))
    latency = None
    if target.metric == "latency":
        latency = _latency_ratio(analysis, probe, feeds.test, options)
    return replace(candidate, error=error, latency=latency)


def _probe(
    analysis: Analysis, depth: Removal | None, allocation: Allocation | None,
    fit: dict[str, np.ndarray] | None = None, seed: int = 0,
) -> bytes:  # fmt: skip
    """The original without ``depth``'s blocks, cut to ``allocation`` and, with ``fit``,
    repaired as the apply stage repairs (the blocks bypassed first, ``reconstruct`` against the
    original, then deleted), on a structural copy; for measuring only."""
    graph = copy_structure(analysis.loaded.graph())
    bypassed = bypass_blocks(graph, depth.found) if depth is not None else ()
    channels = analyze_channels(graph) if depth is not None else analysis.channels
    if allocation is not None:
        local = allocation
        if depth is not None:
            mapping = group_map(channels, analysis.channels)
            local = from_original(allocation, mapping, len(channels.groups))
        if fit is not None:
            apply_rewrite(graph, analysis.loaded.source, channels, local, "reconstruct", fit, seed)
        elif local.kept:
            drop(graph, channels, local)
    if bypassed:
        finish_removal(graph, bypassed)
    return to_model(graph).SerializeToString()


def _run(model: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return run_batched(session(model, prepack=False), None, feeds)


def rel_l2(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    num = sum(float(np.sum((np.asarray(g, np.float64) - r) ** 2))
              for r, g in zip(reference, got, strict=True))  # fmt: skip
    den = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in reference)
    return float(np.sqrt(num / den)) if den else 0.0


def _latency_ratio(
    analysis: Analysis, probe: bytes, feeds: dict[str, np.ndarray], options: PlanOptions
) -> float:
    one = {k: v[:1] for k, v in feeds.items()}
    measured = rep.latency(
        analysis.loaded.original_bytes, probe, one, threads=options.latency_threads
    )
    return float(measured["after_ms"] / measured["before_ms"])


# --- report ------------------------------------------------------------------------------------
def document_blocks(blocks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The plan file's list of removed blocks: the report's, unknown fields left out."""
    return [{k: v for k, v in b.items() if v is not None} for b in blocks]


def report_blocks(depth: Removal) -> list[dict[str, Any]]:
    """The report's (and plan file's) list of removed blocks."""
    return [
        {"add": b.add, "output": b.output, "kind": b.kind, "macs_share": b.macs_share,
         "score": b.score, "criterion": b.criterion, "why": b.why}
        for b in depth.blocks
    ]  # fmt: skip


def patch_report(report: dict[str, Any], depth: Removal, allocation: Allocation) -> None:
    """The report of a depth plan: the cost after by the graph without the blocks, the groups
    removed with a block marked, the blocks removed with their scores and why."""
    local = from_original(allocation, depth.to_original, len(depth.channels.groups))
    after = depth.cost.evaluate(local.widths)
    cost = report["cost"]
    before = cost["before"]
    cost["after"] = vars(after)
    cost["ratio"] = {k: (v / before[k] if before[k] else 1.0) for k, v in vars(after).items()}
    alive = set(depth.to_original.values())
    for group in report["groups"]:
        if group["id"] not in alive:
            group["removed_with_block"] = True
    report["blocks_removed"] = report_blocks(depth)
