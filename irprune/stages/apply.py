"""The apply stage: ``Plan.apply(rewrite=..., calib=...) -> Result``. The one stage that
mutates, as one transaction on the analysed copy of the model (never the caller's): rewrite,
emit, verify (in memory, or streamed to a staging folder), then measure latency and fidelity
against the original and write the report. ``Plan.preview`` is the dry run."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from irprune import inputs
from irprune import report as rep
from irprune.emit.stream import STREAM_THRESHOLD, Staged
from irprune.frontends.onnx import external_files
from irprune.ir import Graph
from irprune.passes.allocation import Plan as Allocation
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.channels import analyze as analyze_channels
from irprune.passes.rewrite.remove_blocks import bypass_blocks
from irprune.pipeline.build import Build, Pruned, Stream, meet_latency, runnable, stage_dir
from irprune.pipeline.report import build_report, poor_fidelity
from irprune.pipeline.rewrite import CsgdOptions
from irprune.pipeline.timer import Timer
from irprune.stages.depth import from_original, group_map, patch_report
from irprune.stages.model import Calibration, LoadedModel, Reference
from irprune.stages.options import ApplyOptions, Csgd
from irprune.stages.result import Result

if TYPE_CHECKING:
    from irprune.stages.plan import Plan

log = logging.getLogger(__name__)

# the report's settings in the order ``prune`` has always written them
SETTINGS_ORDER = (
    "round_to_applied", "round_narrow", "criterion", "criterion_asked", "strategy", "rewrite",
    "round_to", "strict_rounding", "max_prune", "seed", "ignore", "latency_search", "tracer",
)  # fmt: skip
Built = tuple[Allocation, Pruned, list[np.ndarray]]


def apply_plan(plan: Plan, options: ApplyOptions, calib: Any) -> Result:
    """Rewrite, verify and measure ``plan`` (see ``Plan.apply``)."""
    analysis, model = plan.analysis, plan.analysis.loaded
    auto = calib is None and options.rewrite is None
    calibration = model.calibration(calib, analysis.cost, seed=options.seed, auto=auto)
    rewrite = options.resolved_rewrite(calibration.feeds is not None)
    reference = model.reference(calibration, options.seed)
    assert reference.outputs is not None
    timer = Timer(timings(plan, calibration, reference))
    csgd = _csgd(model, options.csgd)
    target = plan.target
    stream = Stream(
        model.source.external, options.stream_threshold, stage_dir(options.stage_dir, model.given)
    )
    graph, channels, first, bypassed = _working_graph(plan)
    build = Build(
        model.source, model.original_bytes, graph, channels, rewrite,
        calibration.arrays(), options.seed, timer, reference.feeds, csgd,
        # a parameter budget leaves no room for biases the repair would add
        new_params=target is None or target.metric != "params",
        stream=stream, second=reference.second, tolerated=reference.tolerated,
        blocks=plan.removal.found if plan.removal is not None else (), bypassed=bypassed,
    )  # fmt: skip
    prepared = _prepare_latency(plan, options)  # made while the rewrite runs
    if prepared is not None:
        build.latency_threads = options.latency_threads  # the pruned's, while it is verified
    pruned, outputs = build.run(first)
    (allocation, pruned, outputs), latency = _latency(
        plan, build, (first, pruned, outputs), options, reference, prepared
    )
    if plan.removal is not None:
        allocation = plan.allocation  # the report and plan file count the original's groups
    settings = report_settings(plan, rewrite, options.seed)
    report = build_report(
        analysis.channels, analysis.cost, allocation, target, settings, timer, model.shapes,
        reference.second,
    )  # fmt: skip
    if plan.removal is not None:
        patch_report(report, plan.removal, allocation)
    report["fingerprint"] = analysis.fingerprint
    report["fidelity"] = rep.fidelity(reference.outputs, outputs)
    report["fidelity_inputs"] = calibration.kind
    if calibration.synthetic:
        report["synthetic"] = calibration.synthesis
    warning = poor_fidelity(report["fidelity"], report["fidelity_inputs"])
    if warning is not None:
        log.warning("%s", warning)
        report["fidelity_warning"] = warning
    if latency is not None:
        report["latency"] = latency
    report.update(build.extra)
    return result_of(model, pruned, report, plan, allocation)


def preview(plan: Plan, options: ApplyOptions, calib: Any) -> Result:
    """The dry run's result: the report of ``plan``, the original model, nothing rewritten."""
    analysis, model = plan.analysis, plan.analysis.loaded
    calibration = model.calibration(calib, analysis.cost, seed=options.seed, auto=False)
    rewrite = options.resolved_rewrite(calibration.feeds is not None)
    reference = model.reference(calibration, options.seed, run=False)
    timer = Timer(timings(plan, calibration, reference))
    settings = report_settings(plan, rewrite, options.seed)
    report = build_report(
        analysis.channels, analysis.cost, plan.allocation, plan.target, settings, timer,
        model.shapes, None,
    )  # fmt: skip
    if plan.removal is not None:
        patch_report(report, plan.removal, plan.allocation)
    report["fingerprint"] = analysis.fingerprint
    return Result(model.source.model, report, analysis.channels, plan.allocation)


def _working_graph(plan: Plan) -> tuple[Graph, ChannelAnalysis, Allocation, tuple[Any, ...]]:
    """The graph the rewrite mutates, its channel groups and the plan in their ids: the
    analysed graph, or for a plan that removes blocks that graph with the blocks bypassed
    first (``remove_blocks.bypass_blocks``; deleted after the repair, ``Build.run``)."""
    analysis = plan.analysis
    graph = analysis.loaded.take_graph()
    if plan.removal is None:
        return graph, analysis.channels, plan.allocation, ()
    bypassed = bypass_blocks(graph, plan.removal.found)
    channels = analyze_channels(graph)
    mapping = group_map(channels, analysis.channels)
    return graph, channels, from_original(plan.allocation, mapping, len(channels.groups)), bypassed


def timings(plan: Plan, calibration: Calibration, reference: Reference | None) -> dict[str, float]:
    """The stage times so far, in the order the stages ran in ``prune``."""
    times = dict(plan.analysis.timings)
    if calibration.synthetic:
        times["synthesize"] = calibration.seconds
    if reference is not None:
        times["reference"] = reference.seconds
    for name, seconds in plan.timings.items():
        times[name] = times.get(name, 0.0) + seconds
    return times


def report_settings(plan: Plan, rewrite: str, seed: int) -> dict[str, Any]:
    """The report's settings: how the plan was made, and how it is applied."""
    given = {
        **plan.settings,
        "round_to_applied": plan.allocation.round_to,
        "round_narrow": plan.allocation.narrow,
        "rewrite": rewrite,
        "seed": seed,
    }
    tracer = plan.analysis.loaded.source.tracer
    if tracer:
        given["tracer"] = tracer
    ordered = {k: given[k] for k in SETTINGS_ORDER if k in given}
    return {**ordered, **{k: v for k, v in given.items() if k not in ordered}}


def _csgd(model: LoadedModel, csgd: Csgd | None) -> CsgdOptions | None:
    if csgd is None or not csgd.epochs:
        return None
    train, labels = inputs.training_data(model.graph(), csgd.data)
    return CsgdOptions(
        csgd.epochs, train, labels, csgd.lr, csgd.epsilon, normalise=csgd.temporary_bn
    )


def _one_measurement(plan: Plan, options: ApplyOptions) -> bool:
    """The report's one latency measurement is made (no latency target's loop)."""
    target = plan.target
    if target is not None and target.metric == "latency":
        return plan.planned is None
    return options.measure_latency


def _large(plan: Plan, options: ApplyOptions) -> bool:
    """Too large to hold two sessions: the latency measurement times one model at a time."""
    threshold = options.stream_threshold
    return plan.analysis.weight_bytes > (STREAM_THRESHOLD if threshold is None else threshold)


def _prepare_latency(plan: Plan, options: ApplyOptions) -> Future[Any] | None:
    """The original's session for the one measurement, made on a background thread."""
    if not _one_measurement(plan, options) or _large(plan, options):
        return None
    return rep.prepare_session(plan.analysis.loaded.original_bytes, options.latency_threads)


def _latency(
    plan: Plan, build: Build, first: Built, options: ApplyOptions, reference: Reference,
    prepared: Future[Any] | None,
) -> tuple[Built, dict[str, Any] | None]:  # fmt: skip
    """A latency target's loop (measure, re-plan, rebuild), else one measurement (unless
    ``measure_latency`` is off); returns the build kept and the latency report."""
    target, planned = plan.target, plan.planned
    if target is not None and target.metric == "latency" and planned is not None:
        assert planned.latency_model is not None
        allocation, pruned, outputs, latency = meet_latency(
            build, first, target, planned.latency_model, planned.allocation, planned.scores,
            planned.latency_feeds,
        )  # fmt: skip
        return (allocation, pruned, outputs), latency
    if not _one_measurement(plan, options):
        return first, None
    t = time.perf_counter()
    model = plan.analysis.loaded
    feeds = inputs.first_sample(reference.feeds, model.shapes)
    latency = rep.latency(
        model.original_bytes, runnable(first[1]), feeds, threads=options.latency_threads,
        interleave=not _large(plan, options), budget_s=rep.REPORT_BUDGET_S,
        warmup=rep.REPORT_WARMUP, prepared=(prepared, build.prepared),
    )  # fmt: skip
    build.timer.lap("latency", t)
    return first, latency


def result_of(
    model: LoadedModel, pruned: Pruned, report: dict[str, Any], plan: Plan, allocation: Allocation
) -> Result:
    """The verified build as a ``Result`` that knows where its weights live."""
    given = model.given
    source = Path(given) if isinstance(given, str | Path) else None
    external = model.source.external
    staged = pruned if isinstance(pruned, Staged) else None
    serialized = pruned if isinstance(pruned, bytes) else None
    return Result(
        staged.proto() if staged else onnx.ModelProto.FromString(serialized or b""),
        report,
        plan.analysis.channels,
        allocation,
        serialized=serialized,
        external_data=external,
        source=source,
        source_data=frozenset(external_files(source)) if external and source else frozenset(),
        staged=staged,
    )
