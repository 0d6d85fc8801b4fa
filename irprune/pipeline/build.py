"""The build stage: rewrite, emit and verify one plan (in memory, or streamed to a staging
folder), and the latency target's loop that measures the build and re-plans until it fits."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from irprune import report as rep
from irprune.emit import to_model, verify
from irprune.emit.stream import Staged, should_stream, stage
from irprune.emit.verify import SecondShape
from irprune.errors import TargetError
from irprune.frontends.onnx import ModelSource
from irprune.ir import Graph
from irprune.passes.allocation import Plan, Target, allocate
from irprune.passes.analysis.blocks import Block
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.importance import Scores
from irprune.passes.latency import LatencyModel
from irprune.passes.rewrite.remove_blocks import bypass_blocks, finish_removal
from irprune.pipeline.load import import_graph
from irprune.pipeline.rewrite import CsgdOptions, apply_rewrite
from irprune.pipeline.timer import Timer

log = logging.getLogger(__name__)

Pruned = bytes | Staged  # a built model: serialized, or streamed to a staging folder


def runnable(pruned: Pruned) -> bytes | Path:
    """What onnxruntime sessions take for a built model."""
    return pruned.model_path if isinstance(pruned, Staged) else pruned


@dataclass(frozen=True)
class Stream:
    """When and where a build streams its output (``emit.stream``)."""

    external: bool  # the input kept its weights in external data
    threshold: int | None
    folder: Path | None


def stage_dir(given: str | Path | None, model: Any) -> Path | None:
    """Where streamed outputs are staged: as asked, else the input file's folder (the output
    usually goes there, so publishing is a rename), else the temp folder."""
    if given is not None:
        return Path(given)
    if isinstance(model, str | Path) and os.access(Path(model).resolve().parent, os.W_OK):
        return Path(model).resolve().parent
    return None


@dataclass
class Build:
    """Rewrite, emit and verify one plan; the first build uses the analysed graph, later ones
    (latency corrections) a fresh import of the original."""

    original: ModelSource
    original_bytes: bytes | Path  # the input file, or serialised once by prune
    graph: Graph | None
    analysis: ChannelAnalysis
    rewrite: str
    calib: dict[str, np.ndarray] | None
    seed: int
    timer: Timer
    feeds: dict[str, np.ndarray] | None = None
    csgd: CsgdOptions | None = None
    new_params: bool = True  # False under a parameter budget: repairs add no new biases
    extra: dict[str, Any] = field(default_factory=dict)  # what the last rewrite reported
    stream: Stream = Stream(False, None, None)
    second: SecondShape | None = None  # verify at a second input shape too
    tolerated: frozenset[str] = frozenset()  # values the original's own shapes misdeclare
    # depth: residual blocks removed first (``remove_blocks.bypass_blocks``: ``graph`` comes
    # bypassed, ``bypassed`` its blocks; a fresh import is bypassed here), deleted after the
    # width rewrite and its repair, which so fit to the original, blocks included
    blocks: tuple[Block, ...] = ()
    bypassed: tuple[Any, ...] = ()
    # the report's latency measurement at these threads follows: the first in-memory build's
    # optimized session is made on a background thread while it is verified (``prepared``)
    latency_threads: int | None = None
    prepared: Future[Any] | None = None

    def run(self, plan: Plan) -> tuple[Pruned, list[np.ndarray]]:
        t = time.perf_counter()
        graph, bypassed = self.graph, self.bypassed
        if graph is None:
            graph = import_graph(self.original)
            bypassed = bypass_blocks(graph, self.blocks) if self.blocks else ()
        self.graph, self.bypassed = None, ()
        self.extra = apply_rewrite(
            graph, self.original, self.analysis, plan, self.rewrite, self.calib, self.seed,
            self.csgd, self.new_params,
        )  # fmt: skip
        if bypassed:
            finish_removal(graph, bypassed)
        graph.verify()
        t = self.timer.lap("rewrite", t)
        if should_stream(graph, self.stream.external, self.stream.threshold):
            staged = stage(graph, self.stream.folder)
            del graph  # the weights are in the staged file: free them before onnxruntime runs it
            t = self.timer.lap("emit", t)
            try:
                outputs = verify(
                    staged.model_path, self.feeds, second=self.second, tolerated=self.tolerated
                )
            except BaseException:
                staged.discard()
                raise
            self.timer.lap("verify", t)
            return staged, outputs
        pruned_bytes = to_model(graph).SerializeToString()
        t = self.timer.lap("emit", t)
        if self.latency_threads is not None:
            self.prepared = rep.prepare_session(pruned_bytes, self.latency_threads)
            self.latency_threads = None  # the first build only
        outputs = verify(pruned_bytes, self.feeds, second=self.second, tolerated=self.tolerated)
        self.timer.lap("verify", t)
        return pruned_bytes, outputs


LATENCY_WINDOW = (0.03, 0.01)  # a measured ratio in [F - 0.03, F + 0.01] is accepted
LATENCY_ROUNDS = 3


def meet_latency(
    build: Build,
    first: tuple[Plan, Pruned, list[np.ndarray]],
    target: Target,
    model: LatencyModel,
    allocation: dict[str, Any],
    scores: Scores,
    feeds: dict[str, np.ndarray],
) -> tuple[Plan, Pruned, list[np.ndarray], dict[str, Any]]:
    """Measure the pruned model; while its latency ratio is outside the window, scale the
    predicted budget by the measured error and rebuild. Keeps the least-pruned model that meets
    the bound (else the fastest) and records every round in the report."""
    original = build.original_bytes
    below, above = LATENCY_WINDOW
    fraction, rounds = target.fraction, []
    candidates: list[tuple[float, tuple[Plan, Pruned, list[np.ndarray], dict[str, Any]]]] = []
    plan, pruned_bytes, outputs = first
    for i in range(LATENCY_ROUNDS):
        t = time.perf_counter()
        measured = rep.latency(original, runnable(pruned_bytes), feeds, threads=model.threads)
        build.timer.lap("latency", t)
        ratio = measured["after_ms"] / measured["before_ms"]
        rounds.append({"predicted": plan.ratio, "measured": ratio, "budget": fraction})
        candidates.append((ratio, (plan, pruned_bytes, outputs, measured)))
        inside = target.fraction - below <= ratio <= target.fraction + above
        if inside or i == LATENCY_ROUNDS - 1:
            break
        fraction = min(fraction * target.fraction / ratio, 1.0)
        log.info(
            "latency ratio %.3f, target %.3f: budget -> %.3f", ratio, target.fraction, fraction
        )
        t = time.perf_counter()
        try:
            plan = allocate(
                build.analysis, model.cost, scores, Target("latency", fraction), **allocation
            )
        except TargetError as exc:  # the corrected budget is below what the groups can reach
            log.info("latency correction stops: %s", exc)
            break
        build.timer.lap("allocation", t)
        pruned_bytes, outputs = build.run(plan)
    meeting = [c for c in candidates if c[0] <= target.fraction + above]
    ratio, best = (
        max(meeting, key=lambda c: c[0]) if meeting else min(candidates, key=lambda c: c[0])
    )
    best[3].update(rounds=rounds, predicted_ratio=best[0].ratio, met=bool(meeting))
    if not meeting:
        log.warning(
            "latency target %.3f not reached in %d rounds: best measured %.3f",
            target.fraction, len(rounds), ratio,
        )  # fmt: skip
    return best
