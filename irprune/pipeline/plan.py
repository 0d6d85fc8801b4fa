"""The planning stage: the latency model, sensitivity curves and allocation on given scores, up
to the plan the build rewrites; read-only on the pipeline's graph."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from irprune import inputs
from irprune.emit import to_model
from irprune.errors import UsageError
from irprune.frontends.onnx import ModelSource
from irprune.ir import Graph
from irprune.ir.copy import copy_structure
from irprune.passes.allocation import Plan, Target, allocate
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.cost import CostModel
from irprune.passes.importance import Scores
from irprune.passes.latency import build_latency_model
from irprune.passes.rewrite.drop import drop
from irprune.passes.search import Timing, measured_plan
from irprune.passes.sensitivity import measure
from irprune.pipeline.load import import_graph
from irprune.pipeline.timer import Timer
from irprune.shapes import InputShapes


@dataclass(frozen=True)
class Planned:
    """What the planning stage hands to the build: the scores and the plan."""

    scores: Scores
    plan: Plan
    allocation: dict[str, Any]  # allocate's options, reused to re-plan for a latency target
    latency_model: Any
    latency_feeds: dict[str, np.ndarray]
    search: dict[str, object] | None = None  # the latency strategy's measured refinement


def resolve_ignore(
    graph: Graph, analysis: ChannelAnalysis, ignore: Iterable[str | int]
) -> set[int]:
    """Group ids to leave alone: given as a group id or the name of a node in the group."""
    out: set[int] = set()
    for item in ignore:
        text = str(item)
        if text.isdigit() and int(text) < len(analysis.groups):
            out.add(int(text))
            continue
        hits = {g.id for g in analysis.groups for s in g.sources if s.node == text}
        node = next((n for n in graph.nodes if n.name == text), None)
        if node is not None:
            names = {v.name for v in (*node.inputs, *node.outputs) if v is not None}
            hits |= {g.id for g in analysis.groups for m in g.members if m.value in names}
        if not hits:
            raise UsageError(f"--ignore {text!r}: no such node or group")
        out |= hits
    return out


def make_plan(
    graph: Graph, analysis: ChannelAnalysis, cost: CostModel, original: ModelSource,
    original_bytes: bytes | Path, scores: Scores, target: Target, timer: Timer, *,
    feeds: dict[str, np.ndarray] | None, calib_feeds: dict[str, np.ndarray] | None, strategy: str,
    round_to: int, max_prune: float, ignore: Iterable[str | int], seed: int,
    latency_threads: int, shapes: InputShapes, finer: bool = True,
) -> Planned:  # fmt: skip
    """The latency model (for a latency target or strategy), sensitivity curves (for that
    strategy) and allocation, on the given scores; read-only on ``graph``. ``feeds`` (the
    reference run's) are only read to time latency (a latency target or strategy)."""
    t = time.perf_counter()
    latency_feeds = {} if feeds is None else inputs.first_sample(feeds, shapes)
    latency_model = None
    if target.metric == "latency" or strategy == "latency":
        latency_model = build_latency_model(
            graph, analysis, cost, original_bytes, latency_feeds,
            round_to=round_to, max_prune=max_prune, threads=latency_threads,
            probe=lambda widths: probe(graph, analysis, widths),
        )  # fmt: skip
        t = timer.lap("latency_model", t)
    curves = None
    if strategy == "sensitivity":
        if calib_feeds is None:
            raise UsageError(
                "--strategy sensitivity needs calibration data (--calib FILE.npz, or --calib "
                "synthetic)"
            )
        curves = measure(import_graph(original), analysis, scores, calib_feeds)
    allocation = dict(
        strategy=strategy,
        round_to=round_to,
        max_prune=max_prune,
        ignore=resolve_ignore(graph, analysis, ignore),
        curves=curves,
        latency=latency_model,
        finer=finer,
    )
    plan = allocate(analysis, cost, scores, target, **allocation)  # type: ignore[arg-type]
    search = None
    if strategy == "latency" and target.metric != "latency":
        plan, search = measured_plan(
            analysis, cost, scores, target, plan, allocation,
            lambda w: probe(graph, analysis, w), Timing(latency_feeds, latency_threads), seed,
        )  # fmt: skip
    t = timer.lap("allocation", t)
    return Planned(scores, plan, allocation, latency_model, latency_feeds, search)


def probe(graph: Graph, analysis: ChannelAnalysis, widths: np.ndarray) -> bytes:
    """``graph`` with each group cut to ``widths`` (its first channels), for timing only; cut
    on a structural copy (``drop`` assigns new arrays, so the shared constants stay intact),
    not on a fresh import of the original per probe."""
    kept = {g.id: np.arange(int(widths[g.id])) for g in analysis.groups if widths[g.id] < g.size}
    copy = copy_structure(graph)
    drop(copy, analysis, Plan(widths=widths, kept=MappingProxyType(kept), ratio=0.0))
    return to_model(copy).SerializeToString()
