"""The Python API: ``irprune.prune(model, target_flops=0.5, ...) -> Result``.

The pipeline: import -> analysis (channel groups, cost model) -> importance -> allocation ->
rewrite -> emit -> verify (checker, strict shape inference, onnxruntime run) -> report.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx

from irprune import inputs
from irprune import report as rep
from irprune.backends import missing_torch
from irprune.emit import atomic_write, to_model, verify
from irprune.emit.stream import STREAM_THRESHOLD, Staged, should_stream, stage, weight_bytes
from irprune.emit.verify import (
    SecondShape,
    captured_warnings,
    random_inputs,
    run_batched,
    session,
    warned_values,
)
from irprune.errors import (
    InvalidModelError,
    MissingDependencyError,
    TargetError,
    UsageError,
)
from irprune.frontends import fx
from irprune.frontends.onnx import (
    ModelSource,
    external_files,
    import_model,
    read_source,
)
from irprune.ir import Graph
from irprune.ir.copy import copy_structure
from irprune.ir.mapped import release_constants
from irprune.passes import synthesize
from irprune.passes.allocation import STRATEGIES, Plan, Target, allocate
from irprune.passes.analysis.channels import ChannelAnalysis, analyze
from irprune.passes.analysis.cost import CostModel, build_cost_model
from irprune.passes.fold import fold_constants
from irprune.passes.importance import AUTO, CRITERIA, Scores, score
from irprune.passes.latency import LatencyModel, build_latency_model
from irprune.passes.rewrite.drop import drop
from irprune.passes.rewrite.merge import cluster_groups, merge
from irprune.passes.rewrite.recalibrate import (
    apply_bn_compensation,
    compensate_bias,
    plan_bn_compensation,
    reestimate_bn,
)
from irprune.passes.rewrite.refit import refit
from irprune.passes.search import Timing, measured_plan
from irprune.passes.sensitivity import measure
from irprune.passes.synthesize import (
    Synthesis,
    Workload,
    activation_elements,
    data_free_calibration,
    parse_spec,
)
from irprune.shapes import InputShapes

log = logging.getLogger(__name__)

REWRITES = ("drop", "merge", "compensate", "reconstruct")
REFERENCE_REWRITES = ("compensate", "reconstruct")  # compare against the original graph
CALIBRATED_REWRITES = ("reconstruct",)  # compensate without --calib uses BN statistics
DEFAULT_ROUND_TO = 16  # measured: benchmarks/spine.py, see docs/benchmarks.md
DEFAULT_MAX_PRUNE = 0.9


@dataclass
class Result:
    model: onnx.ModelProto
    report: dict[str, Any]
    analysis: ChannelAnalysis = field(repr=False)
    plan: Plan | None = field(default=None, repr=False)
    serialized: bytes | None = field(default=None, repr=False)
    external_data: bool = False  # the input kept its weights in external data
    source: Path | None = None  # the input file, when given as a path
    source_data: frozenset[Path] = frozenset()  # the input's external-data files, resolved
    # a streamed model (large, or its input kept external data): written and verified in a
    # staging folder; ``model`` then holds references to its data file instead of the weights
    staged: Staged | None = field(default=None, repr=False)

    def save(self, path: str | Path) -> Path:
        """Write atomically; weights go to ``<path>.data`` when the input kept them in external
        data or the model is too large for one protobuf file. The input's own data files are
        only replaced when ``path`` is the input itself (in place)."""
        path = Path(path)
        data = path.with_name(path.name + ".data").resolve()
        in_place = self.source is not None and self.source.resolve() == path.resolve()
        if data in self.source_data and not in_place:
            raise UsageError(f"{data} holds the input's weights; choose another output name")
        if self.staged is not None:
            return self.staged.publish(path)
        external = True if self.external_data else None
        return atomic_write(self.serialized or self.model, path, external_data=external)

    def to_torch(self) -> Any:
        """The model as a trainable ``irprune.backends.torch.GraphModule`` (torch extra);
        ``irprune.backends.torch.save`` writes a trained one back through emit + verify."""
        try:
            from irprune.backends.torch import from_onnx
        except ImportError as exc:
            raise missing_torch("Result.to_torch()", exc) from exc
        if self.staged is not None:  # streamed: the weights are in its data file
            return from_onnx(onnx.load(str(self.staged.model_path)), input_shapes=self._shapes())
        return from_onnx(self.model, input_shapes=self._shapes())

    def _shapes(self) -> dict[str, tuple[int, ...]] | None:
        """The deployment shape the model was pruned at (from the report)."""
        inputs = self.report.get("input_shapes", {}).get("inputs")
        return {k: tuple(v) for k, v in inputs.items()} if inputs else None


@dataclass
class _Timer:
    times: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - since
        return now


def _target(
    target_flops: float | None, target_params: float | None, target_latency: float | None = None
) -> Target:
    given = [
        (metric, value)
        for metric, value in (
            ("macs", target_flops),
            ("params", target_params),
            ("latency", target_latency),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise UsageError("give exactly one of target_flops / target_params / target_latency")
    metric, value = given[0]
    if not 0 < value <= 1:
        raise UsageError(f"target must be in (0, 1], got {value:g}")
    return Target(metric, float(value))


def _resolve_ignore(
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


def prune(
    model: Any,
    *,
    example_inputs: Any = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    criterion: str = "auto",
    strategy: str = "global",
    rewrite: str | None = None,
    calib: str | Path | Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | Mapping[str, np.ndarray] | None = None,
    round_to: int = DEFAULT_ROUND_TO,
    strict_rounding: bool = False,
    ignore: Iterable[str | int] = (),
    max_prune: float = DEFAULT_MAX_PRUNE,
    seed: int = 0,
    dry_run: bool = False,
    measure_latency: bool = True,
    latency_threads: int = 1,
    csgd_epochs: int = 0,
    data: str | Path | Mapping[str, np.ndarray] | None = None,
    csgd_epsilon: float = 0.05,
    csgd_lr: float = 0.01,
    stage_dir: str | Path | None = None,
    stream_threshold: int | None = None,
    tracer: str = "auto",
    temporary_bn: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Result:
    """Prune ``model`` to the target and return the verified result (nothing is written).

    ``model`` is a path, an ``onnx.ModelProto`` or a ``torch.nn.Module``; a module needs
    ``example_inputs`` (a tensor or tuple of tensors, batch on axis 0) and is lowered by the
    torch.fx frontend (the result's ``.model`` is ONNX); ``tracer`` picks how it is traced:
    ``"fx"`` (symbolic trace), ``"export"`` (torch.export) or ``"auto"`` (fx, else export).

    ``rewrite`` None picks the default measured best on real data (benchmarks/quality.py, see
    docs/quality.md): ``reconstruct`` with calibration data; without it, ``reconstruct`` on data
    synthesised from the model when that is affordable (``synthesize.data_free_calibration``:
    small and mid-size nets, torch extra), else ``compensate`` (from BN statistics).
    ``labels`` (rows aligned with ``calib``) give the gradient criteria (``taylor``,
    ``hessian``) a task loss; without them they use distillation against the original outputs.
    ``calib="synthetic"`` (or ``"synthetic:N"``, N inputs, default 128) makes calibration data
    from the model itself (BN-statistics inversion, or a BN-output prior on folded exports;
    torch extra; see :mod:`passes.synthesize`).
    ``csgd_epochs`` > 0 with ``rewrite="merge"`` trains the clusters together first (C-SGD,
    needs torch) on ``data``: an .npz path or arrays keyed by input name, plus optional integer
    ``labels`` (without them the loss is distillation from the original outputs). A graph
    whose Conv/Gemm outputs are not normalised (BN folded) trains with temporary BN nodes,
    folded back afterwards (``backends.tempnorm``), unless ``temporary_bn`` is False.
    Kept widths are multiples of ``round_to`` where the group allows; when that would cut some
    group by more than half, groups narrower than ``3 * round_to`` round finer (to 8 at the
    default 16) unless ``strict_rounding``: on CPUs whose kernels work in blocks of 16 channels,
    finer widths run slower (docs/benchmarks.md, the zoo), so strict rounding trades some
    accuracy for speed.
    ``target_latency`` is a fraction of the original's onnxruntime CPU latency at batch
    1 with ``latency_threads`` threads, measured on this machine (see :mod:`passes.latency`).

    ``input_shapes`` ({input name: dims}) is the shape the model is deployed at: costs and
    targets, the reference run, synthesis, fidelity and latency are taken there; without it the
    calibration data's shapes (batch aside), else the batch rule of :mod:`irprune.shapes`; a
    symbolic dim still unknown raises ``InputShapeError``. The result keeps every symbolic dim
    and is also verified at a second shape (``InputShapes.second``) where the original runs.

    Large models: a file's external weights are memory-mapped, not read. When the input kept
    its weights in external data or they exceed ``stream_threshold`` bytes (default
    ``emit.stream.STREAM_THRESHOLD``, 1 GiB) the result is written tensor by tensor to a staging
    folder inside ``stage_dir`` (default: the input's folder, else the temp folder), verified
    from there and moved into place by ``Result.save``; above the threshold the latency of the
    original and the pruned model is measured one after the other, not interleaved, so the two
    are never in memory together.
    """
    target = _target(target_flops, target_params, target_latency)
    rewrite = _check_options(
        criterion, strategy, rewrite, calib, round_to, max_prune, csgd_epochs, data
    )
    timer = _Timer()
    t = time.perf_counter()
    original = _load(model, example_inputs, tracer)
    given_calib = None if parse_spec(calib) is not None else inputs.read_calibration(calib)
    original = original.with_shapes(input_shapes, inputs.array_shapes(given_calib))
    shapes = original.shapes
    assert shapes is not None
    graph = _import(original)
    original_bytes = original.runnable()  # the input file, or serialised once
    large = weight_bytes(graph) > (
        STREAM_THRESHOLD if stream_threshold is None else stream_threshold
    )
    with captured_warnings() as warned:  # a model ORT cannot load fails here
        reference_session = _original_session(original_bytes)
    t = timer.lap("load", t)
    analysis, cost = _analyse(graph)  # reads shapes and small constants, not the weights
    t = timer.lap("analysis", t)
    synthesis = _synthesis(graph, cost, calib, rewrite, seed, dry_run)
    if synthesis is not None:
        calib, rewrite = synthesis.feeds, rewrite or "reconstruct"
        t = timer.lap("synthesize", t)
    rewrite = rewrite or "compensate"
    where = str(calib) if isinstance(calib, str | Path) and synthesis is None else None
    calib_feeds = inputs.calib_feeds(graph, synthesis.feeds if synthesis else given_calib, where)
    feeds = inputs.run_feeds(reference_session, calib_feeds, seed, shapes)
    # The reference run comes first and its session goes before any pass reads the weights:
    # a large model's weights are then never in memory twice (onnxruntime's and the passes').
    with captured_warnings() as warned:
        reference = None if dry_run else _run_original(reference_session, feeds)
        second = None if dry_run else _second_shape(reference_session, shapes, seed)
    del reference_session
    tolerated = _original_warnings(warned)
    t = timer.lap("reference", t)
    planned = _plan(
        graph, analysis, cost, original, original_bytes, feeds, calib_feeds, labels, target, timer,
        criterion=criterion, strategy=strategy, round_to=round_to, max_prune=max_prune,
        ignore=ignore, seed=seed, latency_threads=latency_threads, finer=not strict_rounding,
        shapes=shapes, synthetic=synthesis is not None,
    )  # fmt: skip
    plan = planned.plan
    settings = dict(
        round_to_applied=plan.round_to,
        round_narrow=plan.narrow,
        criterion=planned.scores.criterion,
        **({"criterion_asked": criterion} if criterion != planned.scores.criterion else {}),
        strategy=strategy,
        rewrite=rewrite,
        round_to=round_to,
        strict_rounding=strict_rounding,
        max_prune=max_prune,
        seed=seed,
        ignore=sorted(planned.allocation["ignore"]),
        **({"latency_search": planned.search} if planned.search else {}),
        **({"tracer": original.tracer} if original.tracer else {}),
    )
    if dry_run:
        report = _report(analysis, cost, plan, target, settings, timer, shapes, None)
        return Result(original.model, report, analysis, plan)
    assert reference is not None
    csgd = None
    if csgd_epochs:
        train, train_labels = inputs.training_data(graph, data)  # type: ignore[arg-type]
        csgd = CsgdOptions(
            csgd_epochs, train, train_labels, csgd_lr, csgd_epsilon, normalise=temporary_bn
        )
    # a parameter budget leaves no room for biases the repair would add
    new_params = target.metric != "params"
    stream = _Stream(original.external, stream_threshold, _stage_dir(stage_dir, model))
    build = _Build(
        original, original_bytes, graph, analysis, rewrite, calib_feeds, seed, timer, feeds,
        csgd, new_params, stream=stream, second=second, tolerated=tolerated,
    )  # fmt: skip
    del graph  # the build owns it now, and drops it (and its weights) once it is written
    pruned_bytes, outputs = build.run(plan)
    latency = None
    if target.metric == "latency":
        assert planned.latency_model is not None
        plan, pruned_bytes, outputs, latency = _meet_latency(
            build, (plan, pruned_bytes, outputs), target, planned.latency_model,
            planned.allocation, planned.scores, planned.latency_feeds,
        )  # fmt: skip
    elif measure_latency:
        t = time.perf_counter()
        latency = rep.latency(
            original_bytes, _runnable(pruned_bytes), planned.latency_feeds,
            threads=latency_threads, interleave=not large,
        )  # fmt: skip
        timer.lap("latency", t)
    report = _report(analysis, cost, plan, target, settings, timer, shapes, second)
    report["fidelity"] = rep.fidelity(reference, outputs)
    data_kind = "calibration data" if calib is not None else "random inputs"
    report["fidelity_inputs"] = "synthetic data" if synthesis is not None else data_kind
    if synthesis is not None:
        report["synthetic"] = synthesis.report
    warning = poor_fidelity(report["fidelity"], report["fidelity_inputs"])
    if warning is not None:
        log.warning("%s", warning)
        report["fidelity_warning"] = warning
    if latency is not None:
        report["latency"] = latency
    report.update(build.extra)
    return _result(model, original, pruned_bytes, report, analysis, plan)


def _result(
    model: Any, original: ModelSource, pruned: Pruned, report: dict[str, Any],
    analysis: ChannelAnalysis, plan: Plan,
) -> Result:  # fmt: skip
    """The verified build as a ``Result`` that knows where its weights live."""
    source = Path(model) if isinstance(model, str | Path) else None
    external = original.external
    staged = pruned if isinstance(pruned, Staged) else None
    serialized = pruned if isinstance(pruned, bytes) else None
    return Result(
        staged.proto() if staged else onnx.ModelProto.FromString(serialized or b""),
        report,
        analysis,
        plan,
        serialized=serialized,
        external_data=external,
        source=source,
        source_data=frozenset(external_files(source)) if external and source else frozenset(),
        staged=staged,
    )


def _check_options(
    criterion: str, strategy: str, rewrite: str | None, calib: Any, round_to: int,
    max_prune: float, csgd_epochs: int, data: Any,
) -> str | None:  # fmt: skip
    """Reject impossible option combinations before any work; the rewrite, with
    ``reconstruct`` filled in when calibration data is given."""
    if rewrite is None and calib is not None:
        rewrite = "reconstruct"
    _check_choice("criterion", criterion, CRITERIA)
    _check_choice("strategy", strategy, STRATEGIES)
    if rewrite is not None:
        _check_choice("rewrite", rewrite, REWRITES)
    if rewrite in CALIBRATED_REWRITES and calib is None:
        raise UsageError(
            f"--rewrite {rewrite} needs calibration data (--calib FILE.npz, or --calib synthetic)"
        )
    if strategy == "sensitivity" and calib is None:
        raise UsageError(
            "--strategy sensitivity needs calibration data (--calib FILE.npz, or --calib synthetic)"
        )
    if round_to < 1 or not 0 < max_prune <= 1:
        raise UsageError("round_to must be >= 1 and max_prune in (0, 1]")
    if csgd_epochs and (rewrite != "merge" or data is None):
        raise UsageError("C-SGD training (--csgd-epochs) needs --rewrite merge and --data")
    return rewrite


@dataclass(frozen=True)
class _Planned:
    """What the planning stage hands to the build: the scores and the plan."""

    scores: Any
    plan: Plan
    allocation: dict[str, Any]  # allocate's options, reused to re-plan for a latency target
    latency_model: Any
    latency_feeds: dict[str, np.ndarray]
    search: dict[str, object] | None = None  # the latency strategy's measured refinement


def _analyse(graph: Graph) -> tuple[ChannelAnalysis, CostModel]:
    """The channel groups and the cost model (read-only on ``graph``)."""
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    if cost.unknown:
        log.warning(
            "MACs of %d values have dims shape inference cannot see (counted as 1): %s",
            len(cost.unknown),
            ", ".join(cost.unknown[:5]),
        )
    return analysis, cost


def _plan(
    graph: Graph, analysis: ChannelAnalysis, cost: CostModel, original: ModelSource,
    original_bytes: bytes | Path,
    feeds: dict[str, np.ndarray], calib_feeds: dict[str, np.ndarray] | None, labels: Any,
    target: Target, timer: _Timer, *, criterion: str, strategy: str, round_to: int,
    max_prune: float, ignore: Iterable[str | int], seed: int, latency_threads: int,
    shapes: InputShapes, synthetic: bool = False, finer: bool = True,
) -> _Planned:  # fmt: skip
    """Importance, the latency model (for a latency target or strategy), sensitivity curves
    (for that strategy) and allocation; read-only on ``graph``."""
    t = time.perf_counter()
    # ``auto`` measures on the user's data only, not on data synthesised from the model
    data = None if criterion == AUTO and synthetic else calib_feeds
    scores = score(graph, analysis, criterion, seed=seed, calib=data, labels=labels)
    release_constants(graph)  # mapped weights the criterion read leave the resident set
    t = timer.lap("importance", t)
    latency_feeds = inputs.first_sample(feeds, shapes)
    latency_model = None
    if target.metric == "latency" or strategy == "latency":
        latency_model = build_latency_model(
            graph, analysis, cost, original_bytes, latency_feeds,
            round_to=round_to, max_prune=max_prune, threads=latency_threads,
            probe=lambda widths: _probe(graph, analysis, widths),
        )  # fmt: skip
        t = timer.lap("latency_model", t)
    curves = None
    if strategy == "sensitivity":
        assert calib_feeds is not None
        curves = measure(_import(original), analysis, scores, calib_feeds)
    allocation = dict(
        strategy=strategy,
        round_to=round_to,
        max_prune=max_prune,
        ignore=_resolve_ignore(graph, analysis, ignore),
        curves=curves,
        latency=latency_model,
        finer=finer,
    )
    plan = allocate(analysis, cost, scores, target, **allocation)  # type: ignore[arg-type]
    search = None
    if strategy == "latency" and target.metric != "latency":
        plan, search = measured_plan(
            analysis, cost, scores, target, plan, allocation,
            lambda w: _probe(graph, analysis, w), Timing(latency_feeds, latency_threads), seed,
        )  # fmt: skip
    t = timer.lap("allocation", t)
    return _Planned(scores, plan, allocation, latency_model, latency_feeds, search)


Pruned = bytes | Staged  # a built model: serialized, or streamed to a staging folder


def _runnable(pruned: Pruned) -> bytes | Path:
    """What onnxruntime sessions take for a built model."""
    return pruned.model_path if isinstance(pruned, Staged) else pruned


@dataclass(frozen=True)
class _Stream:
    """When and where a build streams its output (``emit.stream``)."""

    external: bool  # the input kept its weights in external data
    threshold: int | None
    folder: Path | None


def _stage_dir(given: str | Path | None, model: Any) -> Path | None:
    """Where streamed outputs are staged: as asked, else the input file's folder (the output
    usually goes there, so publishing is a rename), else the temp folder."""
    if given is not None:
        return Path(given)
    if isinstance(model, str | Path) and os.access(Path(model).resolve().parent, os.W_OK):
        return Path(model).resolve().parent
    return None


@dataclass
class _Build:
    """Rewrite, emit and verify one plan; the first build uses the analysed graph, later ones
    (latency corrections) a fresh import of the original."""

    original: ModelSource
    original_bytes: bytes | Path  # the input file, or serialised once by prune
    graph: Graph | None
    analysis: ChannelAnalysis
    rewrite: str
    calib: dict[str, np.ndarray] | None
    seed: int
    timer: _Timer
    feeds: dict[str, np.ndarray] | None = None
    csgd: CsgdOptions | None = None
    new_params: bool = True  # False under a parameter budget: repairs add no new biases
    extra: dict[str, Any] = field(default_factory=dict)  # what the last rewrite reported
    stream: _Stream = _Stream(False, None, None)
    second: SecondShape | None = None  # verify at a second input shape too
    tolerated: frozenset[str] = frozenset()  # values the original's own shapes misdeclare

    def run(self, plan: Plan) -> tuple[Pruned, list[np.ndarray]]:
        t = time.perf_counter()
        graph = self.graph if self.graph is not None else _import(self.original)
        self.graph = None
        self.extra = _rewrite(
            graph, self.original, self.analysis, plan, self.rewrite, self.calib, self.seed,
            self.csgd, self.new_params,
        )  # fmt: skip
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
        outputs = verify(pruned_bytes, self.feeds, second=self.second, tolerated=self.tolerated)
        self.timer.lap("verify", t)
        return pruned_bytes, outputs


def _probe(graph: Graph, analysis: ChannelAnalysis, widths: np.ndarray) -> bytes:
    """``graph`` with each group cut to ``widths`` (its first channels), for timing only; cut
    on a structural copy (``drop`` assigns new arrays, so the shared constants stay intact),
    not on a fresh import of the original per probe."""
    kept = {g.id: np.arange(int(widths[g.id])) for g in analysis.groups if widths[g.id] < g.size}
    copy = copy_structure(graph)
    drop(copy, analysis, Plan(widths=widths, kept=MappingProxyType(kept), ratio=0.0))
    return to_model(copy).SerializeToString()


LATENCY_WINDOW = (0.03, 0.01)  # a measured ratio in [F - 0.03, F + 0.01] is accepted
LATENCY_ROUNDS = 3


def _meet_latency(
    build: _Build,
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
        measured = rep.latency(original, _runnable(pruned_bytes), feeds, threads=model.threads)
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


def _load(model: Any, example_inputs: Any, tracer: str) -> ModelSource:
    """The ONNX model to prune: read from a file (external weights lazily), passed in, or
    lowered from a torch module (``tracer``: "auto", "fx" or "export")."""
    if fx.is_torch_module(model):
        if example_inputs is None:
            raise UsageError("a torch.nn.Module needs example_inputs= (a tensor or tensor tuple)")
        graph = fx.lower(model, example_inputs, tracer=tracer)
        return ModelSource(to_model(graph), tracer=fx.lowered_by(graph))
    if example_inputs is not None:
        raise UsageError("example_inputs= is only used with a torch.nn.Module model")
    return read_source(model)


@dataclass(frozen=True)
class CsgdOptions:
    """C-SGD training before the merge (``irprune.csgd``)."""

    epochs: int
    data: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    lr: float = 0.01
    epsilon: float = 0.05
    normalise: bool = True  # temporary BN after unnormalised producers (backends.tempnorm)


def _train_csgd(
    graph: Graph, analysis: ChannelAnalysis, plan: Plan, options: CsgdOptions, seed: int
) -> tuple[dict[int, list[np.ndarray]], dict[str, Any]]:
    try:
        from irprune import csgd
    except ImportError as exc:
        raise MissingDependencyError(
            "C-SGD training needs torch: pip install 'irprune[torch]'"
        ) from exc
    clusters = cluster_groups(graph, analysis, plan, seed=seed)
    result = csgd.train(
        graph, analysis, clusters, options.data, labels=options.labels, epochs=options.epochs,
        lr=options.lr, epsilon=options.epsilon, seed=seed, normalise=options.normalise,
    )  # fmt: skip
    info = {**vars(result), "labels": options.labels is not None}
    return clusters, info


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def _import(model: ModelSource) -> Graph:
    """The IR every pass works on: imported, with constant computations folded. Every copy of
    the original a pass needs is made by this one function, so node order and names agree."""
    graph = import_model(model)
    fold_constants(graph)
    return graph


def _rewrite(
    graph: Graph,
    original: ModelSource,
    analysis: ChannelAnalysis,
    plan: Plan,
    rewrite: str,
    calib: dict[str, np.ndarray] | None,
    seed: int,
    csgd: CsgdOptions | None = None,
    new_params: bool = True,
) -> dict[str, Any]:
    """The chosen rewrite; the calibrated ones repair the dropped model against the original.
    Returns what the report should add (C-SGD training)."""
    if rewrite == "merge":
        extra: dict[str, Any] = {}
        clusters = None
        if csgd is not None:
            clusters, extra["csgd"] = _train_csgd(graph, analysis, plan, csgd, seed)
        merge(graph, analysis, plan, seed=seed, clusters=clusters)
        return extra
    if rewrite == "compensate" and calib is None:
        shifts = plan_bn_compensation(graph, analysis, plan)
        drop(graph, analysis, plan)
        apply_bn_compensation(graph, shifts, new_params=new_params)
        return {}
    reference = _import(original) if rewrite in REFERENCE_REWRITES else None
    drop(graph, analysis, plan)
    if reference is None:
        return {}
    if rewrite == "compensate" and calib is not None:
        compensate_bias(graph, reference, analysis, plan, calib, new_params=new_params)
        reestimate_bn(graph, calib)
    elif calib is not None:
        # The refit reproduces each consumer's original (pre-BN) output, so the original BN
        # statistics stay right; re-estimating them would move the model away from the original.
        refit(graph, reference, calib, analysis, plan, new_params=new_params)
    return {}


def _synthesis(
    graph: Graph,
    cost: CostModel,
    calib: Any,
    rewrite: str | None,
    seed: int,
    dry_run: bool = False,
) -> Synthesis | None:
    """Synthetic calibration data: asked for with ``calib="synthetic[:N]"``, or chosen by
    ``data_free_calibration`` when the user gave neither data nor a rewrite (not for a dry
    run, which rewrites nothing)."""
    options = parse_spec(calib)
    auto = calib is None and rewrite is None and not dry_run and synthesize.AUTO_SYNTHESIS
    if options is None and not auto:
        return None
    # the synthesis extends a structural copy of the pipeline's graph (constants shared, not
    # read again: a lazily read file stays mapped)
    if options is not None:
        return synthesize.synthesize(copy_structure(graph), options, seed=seed)
    work = Workload(cost.evaluate().macs, activation_elements(graph))
    return data_free_calibration(lambda: copy_structure(graph), work, seed)


def _original_warnings(lines: list[str]) -> frozenset[str]:
    """The values whose declared shapes onnxruntime finds wrong in the original itself: the
    written model keeps the original's output declarations, so it may warn on them too."""
    names = warned_values(lines)
    for line in lines:
        log.info("onnxruntime (original model): %s", line)
    if names:
        log.warning(
            "the input model declares shapes its own runs contradict (%s): kept as they are",
            ", ".join(sorted(names)[:5]),
        )
    return names


def _original_session(original: bytes | Path) -> Any:
    try:
        # one run: packing would cost more than it saves; warnings (captured) name the values
        # whose declared shapes the original contradicts
        return session(original, prepack=False, warnings=True)
    except Exception as exc:  # onnxruntime raises untyped errors
        text = " ".join(str(exc).split())
        raise InvalidModelError(f"onnxruntime cannot load the input model: {text}") from exc


def _second_shape(sess: Any, shapes: InputShapes, seed: int) -> SecondShape | None:
    """Random inputs at the second shape and the original's output shapes on them; None when
    no input dim is symbolic, or the original does not run there (then the result is verified
    at the deployment shape only)."""
    at = shapes.second()
    if at is None:
        return None
    feeds = random_inputs(sess, shapes=at, seed=seed + 1)
    try:
        outputs = sess.run(None, feeds)
    except Exception as exc:  # onnxruntime raises untyped errors
        log.warning(
            "the original model does not run at a second input shape (%s): the result is "
            "verified at %s only",
            " ".join(str(exc).split())[:200],
            shapes.describe(),
        )
        return None
    return SecondShape(feeds, tuple(tuple(int(d) for d in np.shape(a)) for a in outputs))


def _run_original(sess: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return run_batched(sess, None, feeds)
    except Exception as exc:  # onnxruntime raises untyped errors
        text = " ".join(str(exc).split())
        raise InvalidModelError(f"onnxruntime cannot run the input model: {text}") from exc


def _report(
    analysis: ChannelAnalysis,
    cost: CostModel,
    plan: Plan,
    target: Target,
    settings: dict[str, Any],
    timer: _Timer,
    shapes: InputShapes,
    second: SecondShape | None,
) -> dict[str, Any]:
    before, after = cost.evaluate(), cost.evaluate(plan.widths)
    groups = [
        {
            "id": g.id,
            "size": g.size,
            "kept": int(plan.widths[g.id]),
            "sources": [s.node for s in g.sources],
            "members": len(g.members),
            "frozen": list(g.frozen),
        }
        for g in analysis.groups
    ]
    return {
        "target": {"metric": target.metric, "fraction": target.fraction},
        "input_shapes": {
            **shapes.as_json(),
            "second": None if second is None else second.describe(),
        },
        "settings": settings,
        "cost": {
            "before": vars(before),
            "after": vars(after),
            "ratio": vars(after.ratio(before)),
            "prunable_macs_share": prunable_share(analysis, cost),
            "unknown_dims": list(cost.unknown),
        },
        "groups": groups,
        "timings_s": dict(timer.times),
    }


POOR_COSINE = 0.95  # fidelity below this (or top-1 agreement below POOR_TOP1) gets a warning
POOR_TOP1 = 0.9


def poor_fidelity(fidelity: Mapping[str, float | None], inputs: str) -> str | None:
    """A warning when the pruned model's outputs are far from the original's on the inputs the
    report used, with the figure and what to pass instead; None when they are close."""
    cosine, top1 = fidelity["cosine"], fidelity.get("top1_agreement")
    if (cosine is None or cosine >= POOR_COSINE) and (top1 is None or top1 >= POOR_TOP1):
        return None
    figure = f"cosine {cosine:.3f}, relative L2 {fidelity['rel_l2']:.3f}" + (
        f", top-1 agreement {top1:.2f}" if top1 is not None else ""
    )
    if inputs == "calibration data":
        advice = (
            "a milder target, or `irprune finetune --teacher` with the original on more "
            "unlabeled inputs, recovers more"
        )
    else:
        advice = (
            "pass --calib FILE.npz with about 128 unlabeled inputs from the task (arrays keyed "
            "by input name, batch on axis 0): the repair is then fitted on real activations"
        )
    return (
        f"the pruned model's outputs are far from the original's on {inputs} ({figure}); {advice}"
    )


def prunable_share(analysis: ChannelAnalysis, cost: CostModel) -> float:
    """The fraction of MACs that depends on at least one prunable group."""
    total = cost.macs_at(cost.base_widths)
    w = cost.base_widths.copy()
    for g in analysis.prunable:
        w[g.id] = 0.0
    return 1.0 - cost.macs_at(w) / total if total else 0.0
