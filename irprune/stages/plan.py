"""The planning stage: ``Analysis.plan(target, scores, strategy=...) -> Plan``, the widths and
kept channels of every group; ``Plan.from_widths`` and ``Plan.from_document`` make one by hand
or from a plan file (:mod:`irprune.plans`); ``Plan.apply`` is the last stage."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from irprune import plans
from irprune.passes.allocation import Plan as Allocation
from irprune.passes.allocation import Target, with_widths
from irprune.passes.importance import Scores as ChannelScores
from irprune.pipeline.plan import Planned, make_plan
from irprune.pipeline.timer import Timer
from irprune.stages.depth import (
    Removal,
    RemovedBlock,
    document_blocks,
    plan_depth,
    ratio_of,
    replayed,
    report_blocks,
)
from irprune.stages.model import Calibration
from irprune.stages.options import ApplyOptions, Csgd, PlanOptions
from irprune.stages.result import Result
from irprune.stages.scores import Scores

if TYPE_CHECKING:
    from irprune.stages.analysis import Analysis

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Plan:
    """Which channels of which group are kept: ``widths`` (every group id -> its kept width,
    in the group's units) and ``kept`` (the sorted kept indices of every group that shrinks),
    the cost ``ratio`` the target is measured by, the ``target`` (None for hand-made widths) and
    ``settings``, how the plan was made (as its plan file records them). Frozen; ``to_document``
    / ``save`` write it as a plan file, ``from_document`` reads one back."""

    analysis: Analysis = field(repr=False)
    widths: Mapping[int, int]
    kept: Mapping[int, tuple[int, ...]] = field(repr=False)
    ratio: float
    target: Target | None
    settings: Mapping[str, Any] = field(repr=False)
    allocation: Allocation = field(repr=False)  # the plan as the rewrite passes read it
    planned: Planned | None = field(default=None, repr=False)  # for the latency target's loop
    timings: Mapping[str, float] = field(default_factory=dict, repr=False)
    removal: Removal | None = field(default=None, repr=False)  # the blocks removed (depth)

    @property
    def blocks(self) -> tuple[RemovedBlock, ...]:
        """The residual blocks this plan removes (``stages.depth``; empty: width only)."""
        return () if self.removal is None else self.removal.blocks

    @classmethod
    def of(
        cls, analysis: Analysis, allocation: Allocation, target: Target | None,
        settings: Mapping[str, Any], planned: Planned | None = None,
        timings: Mapping[str, float] | None = None, removal: Removal | None = None,
    ) -> Plan:  # fmt: skip
        """The public view of ``allocation`` (made on ``analysis``; with ``removal``, the
        widths of the groups that survive its blocks, in the analysis's group ids)."""
        widths = {g.id: int(allocation.widths[g.id]) for g in analysis.channels.groups}
        kept = {int(k): tuple(int(i) for i in v) for k, v in allocation.kept.items()}
        return cls(
            analysis, MappingProxyType(widths), MappingProxyType(kept), float(allocation.ratio),
            target, MappingProxyType(dict(settings)), allocation, planned,
            MappingProxyType(dict(timings or {})), removal,
        )  # fmt: skip

    # --- made by hand, or read from a plan file ------------------------------------------------
    @classmethod
    def from_widths(
        cls, analysis: Analysis, widths: Mapping[int, int], scores: Scores | None = None
    ) -> Plan:
        """Keep ``widths`` ({group id: width in the group's units}; groups not given stay
        whole), in each shrunk group its best-scored channels (``scores``, default l1).
        ``PlanError`` names the group of a width that is not valid for it."""
        checked = _checked_widths(analysis, widths)
        scores = scores if scores is not None else analysis.score("l1")
        _check_scores(analysis, scores)
        full = np.array([float(g.size) for g in analysis.channels.groups])
        for gid, width in checked.items():
            full[gid] = width
        shrunk = [gid for gid in checked if full[gid] < analysis.channels.groups[gid].size]
        by_group = dict(scores.by_group)
        for gid in shrunk:  # unscored groups keep their first channels
            by_group.setdefault(gid, -np.arange(analysis.channels.groups[gid].size, dtype=float))
        internal = ChannelScores(scores.criterion, by_group)
        allocation = with_widths(internal, full, shrunk, 0.0, round_to=1, narrow=False)
        ratio = _ratio(analysis, allocation, "macs")
        allocation = Allocation(allocation.widths, allocation.kept, ratio)
        settings = {"round_to_applied": 1, "round_narrow": False, "criterion": scores.criterion}
        return cls.of(analysis, allocation, None, {**settings, "strategy": "from_widths"})

    @classmethod
    def from_document(
        cls, analysis: Analysis, document: str | Path | Mapping[str, Any],
        target: Target | None = None,
    ) -> Plan:  # fmt: skip
        """The plan a plan file (or its parsed document) describes, after checking it was made
        for this model (its fingerprint) and is valid for every group (``PlanError`` naming the
        group otherwise); ``target`` defaults to the one the file records. The ratio is
        measured again (hand edits change it)."""
        data = plans.load(document) if isinstance(document, str | Path) else document
        allocation = plans.from_dict(data, analysis.channels, fingerprint=analysis.fingerprint)
        recorded = plans.blocks_of(data)
        removal = (
            replayed(analysis, [b["output"] for b in recorded], recorded) if recorded else None
        )
        target = target or document_target(data)
        metric = target.metric if target is not None else "macs"
        if metric in ("macs", "params"):
            ratio = (
                _ratio(analysis, allocation, metric)
                if removal is None
                else ratio_of(removal, analysis, allocation, metric)
            )
            allocation = replace(allocation, ratio=ratio)
        log.info("applying the given plan (ratio %.4f of %s)", allocation.ratio, metric)
        settings = {
            k: v for k, v in (data.get("settings") or {}).items() if k not in APPLY_SETTINGS
        }
        return cls.of(analysis, allocation, target, settings, removal=removal)

    def to_document(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The plan file's document (:mod:`irprune.plans`); ``settings`` are recorded beside
        the plan's own (``Result.plan_document`` adds the apply stage's)."""
        target = self.target
        recorded = {
            **self.settings,
            **(settings or {}),
            "target": None if target is None else {"metric": target.metric,
                                                   "fraction": target.fraction},
        }  # fmt: skip
        document = plans.to_dict(
            self.allocation, self.analysis.channels, fingerprint=self.analysis.fingerprint,
            settings=recorded, model_name=self.analysis.model_name,
        )  # fmt: skip
        if self.removal is not None:
            document["blocks"] = document_blocks(report_blocks(self.removal))
        return document

    def save(self, path: str | Path) -> Path:
        """Write the plan file (atomically)."""
        return plans.save(path, self.to_document())

    # --- the last stage ------------------------------------------------------------------------
    def apply(
        self, *, rewrite: str | None = None, calib: Any = None, seed: int = 0,
        measure_latency: bool = True, latency_threads: int = 1, csgd: Csgd | None = None,
        stage_dir: str | Path | None = None, stream_threshold: int | None = None,
    ) -> Result:  # fmt: skip
        """Rewrite a copy of the model to this plan (``rewrite`` None: reconstruct with
        calibration data, else compensate; ``calib`` as ``Analysis.score`` takes it, and None
        with ``rewrite`` None synthesises data where affordable, as ``prune`` does), verify it
        and return it with its report; nothing is written (``Result.save``). ``ApplyOptions``
        documents the options."""
        from irprune.stages.apply import apply_plan

        options = ApplyOptions(
            rewrite, seed, measure_latency, latency_threads, csgd, stage_dir, stream_threshold
        )
        return apply_plan(self, options, calib)

    def preview(self, *, rewrite: str | None = None, calib: Any = None, seed: int = 0) -> Result:
        """The dry run: the report of this plan (costs, widths; no rewrite, no verification)
        with the original model, as ``prune(..., dry_run=True)`` returns it."""
        from irprune.stages.apply import preview

        return preview(self, ApplyOptions(rewrite, seed), calib)


APPLY_SETTINGS = ("target", "rewrite", "seed", "tracer")  # recorded by the apply stage


def plan(
    analysis: Analysis, target: Target, scores: Scores, options: PlanOptions, calib: Any
) -> Plan:
    """Allocate the widths of ``analysis``'s groups (see ``Analysis.plan``); with
    ``options.depth`` on, the blocks to remove too (``stages.depth``)."""
    _check_scores(analysis, scores)
    calibration = analysis.loaded.calibration(calib, analysis.cost, seed=options.seed, auto=False)
    if options.depth != "off":

        def width_plan(analysis: Analysis, target: Target, scores: Scores) -> Plan:
            return _width_plan(analysis, target, scores, options, calibration)

        return plan_depth(analysis, target, scores, options, calibration, width_plan)
    return _width_plan(analysis, target, scores, options, calibration)


def _width_plan(
    analysis: Analysis, target: Target, scores: Scores, options: PlanOptions,
    calibration: Calibration,
) -> Plan:  # fmt: skip
    """The widths alone (``depth`` off)."""
    model = analysis.loaded
    feeds = _feeds(analysis, calibration, options, target)
    timer = Timer()
    planned = make_plan(
        model.graph(), analysis.channels, analysis.cost, model.source, model.original_bytes,
        scores.internal(), target, timer, feeds=feeds, calib_feeds=calibration.arrays(),
        strategy=options.strategy, round_to=options.round_to, max_prune=options.max_prune,
        ignore=options.ignore, seed=options.seed, latency_threads=options.latency_threads,
        shapes=model.shapes, finer=not options.strict_rounding,
    )  # fmt: skip
    allocation = planned.plan
    settings = dict(
        round_to_applied=allocation.round_to,
        round_narrow=allocation.narrow,
        criterion=scores.criterion,
        **({"criterion_asked": scores.options.criterion}
           if scores.options.criterion != scores.criterion else {}),
        strategy=options.strategy,
        round_to=options.round_to,
        strict_rounding=options.strict_rounding,
        max_prune=options.max_prune,
        ignore=sorted(planned.allocation["ignore"]),
        **({"latency_search": planned.search} if planned.search else {}),
    )  # fmt: skip
    timings = {**scores.timings, **timer.times}
    return Plan.of(analysis, allocation, target, settings, planned, timings)


def _feeds(
    analysis: Analysis, calibration: Calibration, options: PlanOptions, target: Target
) -> dict[str, np.ndarray] | None:
    """The inputs latency is timed on, where the plan times latency: the reference run's
    feeds."""
    if target.metric != "latency" and options.strategy != "latency":
        return None
    return analysis.loaded.reference(calibration, options.seed, run=False).feeds


def document_target(data: Mapping[str, Any]) -> Target | None:
    """The target a plan document records (None: none)."""
    target = (data.get("settings") or {}).get("target") or {}
    metric, fraction = target.get("metric"), target.get("fraction")
    if metric not in ("macs", "params", "latency") or not isinstance(fraction, int | float):
        return None
    return Target(metric, float(fraction))


def _ratio(analysis: Analysis, allocation: Allocation, metric: str) -> float:
    cost = analysis.cost
    measure = cost.macs_at if metric == "macs" else cost.params_at
    return float(measure(allocation.widths) / max(measure(cost.base_widths), 1e-12))


def _checked_widths(analysis: Analysis, widths: Mapping[int, int]) -> dict[int, int]:
    groups = analysis.channels.groups
    out: dict[int, int] = {}
    for gid, width in widths.items():
        if not plans.is_int(gid) or not 0 <= gid < len(groups):
            raise plans.PlanError(f"group {gid!r}: no such group in this model")
        group = groups[gid]
        if not plans.is_int(width) or not 1 <= width <= group.size:
            raise plans.PlanError(
                f"group {gid}: width {width!r} is not between 1 and its size {group.size}"
            )
        if group.frozen and width < group.size:
            raise plans.PlanError(
                f"group {gid}: frozen ({group.frozen[0]}) but the plan shrinks it to {width}"
            )
        out[gid] = int(width)
    return out


def _check_scores(analysis: Analysis, scores: Scores) -> None:
    if scores.fingerprint != analysis.fingerprint:
        raise plans.PlanError("the scores were made for a different model (fingerprint differs)")
