"""The Python API: ``irprune.prune(model, target_flops=0.5, ...) -> Result``.

The pipeline: import -> analysis (channel groups, cost model) -> importance -> allocation ->
rewrite -> emit -> verify (checker, strict shape inference, onnxruntime run) -> report.
``prune`` runs it; each stage's helpers live in :mod:`irprune.pipeline`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from irprune import inputs, plans
from irprune import report as rep
from irprune.backends import missing_torch
from irprune.emit import atomic_write
from irprune.emit.stream import STREAM_THRESHOLD, Staged, weight_bytes
from irprune.emit.verify import captured_warnings
from irprune.errors import UsageError
from irprune.frontends.onnx import ModelSource, external_files
from irprune.ir import Graph
from irprune.passes.allocation import STRATEGIES, Plan, Target
from irprune.passes.analysis.channels import ChannelAnalysis, analyze
from irprune.passes.analysis.cost import CostModel, build_cost_model
from irprune.passes.importance import CRITERIA
from irprune.passes.synthesize import parse_spec
from irprune.pipeline.build import Build as _Build
from irprune.pipeline.build import Pruned
from irprune.pipeline.build import Stream as _Stream
from irprune.pipeline.build import meet_latency as _meet_latency
from irprune.pipeline.build import runnable as _runnable
from irprune.pipeline.build import stage_dir as _stage_dir
from irprune.pipeline.calibration import synthetic_calibration as _synthesis
from irprune.pipeline.load import import_graph as _import
from irprune.pipeline.load import load_model as _load
from irprune.pipeline.plan import Planned
from irprune.pipeline.plan import make_plan as _plan
from irprune.pipeline.reference import original_session as _original_session
from irprune.pipeline.reference import original_warnings as _original_warnings
from irprune.pipeline.reference import run_original as _run_original
from irprune.pipeline.reference import second_shape as _second_shape
from irprune.pipeline.report import build_report as _report
from irprune.pipeline.report import poor_fidelity
from irprune.pipeline.report import prunable_share as prunable_share  # inspect, benchmarks
from irprune.pipeline.rewrite import CALIBRATED_REWRITES, REWRITES, CsgdOptions
from irprune.pipeline.rewrite import apply_rewrite as _rewrite  # noqa: F401 (benchmarks/scaling.py)
from irprune.pipeline.timer import Timer as _Timer

log = logging.getLogger(__name__)

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

    def plan_document(self) -> dict[str, Any]:
        """The plan this result applied as a plan document (:mod:`irprune.plans`): review it,
        edit it, and apply it again with ``prune(..., from_plan=...)`` or ``irprune --plan``."""
        if self.plan is None:
            raise UsageError("this result holds no plan")
        settings = {**self.report.get("settings", {}), "target": self.report.get("target")}
        return plans.to_dict(
            self.plan,
            self.analysis,
            fingerprint=self.report["fingerprint"],
            settings=settings,
            model_name=self.source.name if self.source is not None else "model",
        )

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


def _plan_target(document: Mapping[str, Any]) -> tuple[float | None, ...]:
    """(target_flops, target_params, target_latency) as the plan document records them."""
    target = document.get("settings", {}).get("target") or {}
    metric, fraction = target.get("metric"), target.get("fraction")
    if metric not in ("macs", "params", "latency") or not isinstance(fraction, int | float):
        raise plans.PlanError("the plan records no target; give one (--target-flops ...)")
    return tuple(float(fraction) if metric == m else None for m in ("macs", "params", "latency"))


def _given_plan(
    planned: Planned,
    document: Mapping[str, Any],
    analysis: ChannelAnalysis,
    cost: CostModel,
    target: Target,
    graph_print: str,
) -> Planned:
    """The planning stage's result with the given plan document in place of its plan; the
    achieved ratio re-measured by the cost model (hand edits change it)."""
    plan = plans.from_dict(document, analysis, fingerprint=graph_print)
    if target.metric in ("macs", "params"):
        measure = cost.macs_at if target.metric == "macs" else cost.params_at
        ratio = measure(plan.widths) / max(measure(cost.base_widths), 1e-12)
        plan = replace(plan, ratio=ratio)
    log.info("applying the given plan (ratio %.4f of %s)", plan.ratio, target.metric)
    return replace(planned, plan=plan)


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
    from_plan: str | Path | Mapping[str, Any] | None = None,
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

    ``from_plan`` (a plan document, or the path of one: :mod:`irprune.plans`, as
    ``Result.plan_document()`` gives it) is applied instead of the plan the allocation would
    choose, after checking it was made for this model (its graph fingerprint) and is valid for
    every group; without a target the plan's own is taken. With the settings it was made with,
    the result is the same model.

    Large models: a file's external weights are memory-mapped, not read. When the input kept
    its weights in external data or they exceed ``stream_threshold`` bytes (default
    ``emit.stream.STREAM_THRESHOLD``, 1 GiB) the result is written tensor by tensor to a staging
    folder inside ``stage_dir`` (default: the input's folder, else the temp folder), verified
    from there and moved into place by ``Result.save``; above the threshold the latency of the
    original and the pruned model is measured one after the other, not interleaved, so the two
    are never in memory together.
    """
    document = plans.load(from_plan) if isinstance(from_plan, str | Path) else from_plan
    if document is not None and (target_flops, target_params, target_latency) == (None,) * 3:
        target_flops, target_params, target_latency = _plan_target(document)
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
    graph_print = plans.fingerprint(graph)
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
        second = None if dry_run else _second_shape(reference_session, shapes, seed, feeds)
    del reference_session
    tolerated = _original_warnings(warned)
    t = timer.lap("reference", t)
    planned = _plan(
        graph, analysis, cost, original, original_bytes, feeds, calib_feeds, labels, target, timer,
        criterion=criterion, strategy=strategy, round_to=round_to, max_prune=max_prune,
        ignore=ignore, seed=seed, latency_threads=latency_threads, finer=not strict_rounding,
        shapes=shapes, synthetic=synthesis is not None,
    )  # fmt: skip
    if document is not None:
        planned = _given_plan(planned, document, analysis, cost, target, graph_print)
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
        report["fingerprint"] = graph_print
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
    report["fingerprint"] = graph_print
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


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


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
