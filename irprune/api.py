"""The Python API: ``irprune.prune(model, target_flops=0.5, ...) -> Result``.

``prune`` is the composition of the staged API (:mod:`irprune.stages`): ``analyze`` (import,
channel groups, cost model) -> calibration data and the reference run -> ``Analysis.score``
(importance) -> ``Analysis.plan`` (allocation), or the given plan -> ``Plan.apply`` (rewrite,
emit, verify: checker, strict shape inference, onnxruntime run; latency, fidelity, report).
It takes every stage's options flat, as the CLI does; each stage's helpers live in
:mod:`irprune.pipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irprune import plans
from irprune.errors import UsageError
from irprune.passes.allocation import STRATEGIES, Target
from irprune.passes.importance import CRITERIA
from irprune.pipeline.load import import_graph as _import  # noqa: F401 (tests)
from irprune.pipeline.reference import original_session as _original_session  # noqa: F401
from irprune.pipeline.report import poor_fidelity as poor_fidelity  # tests
from irprune.pipeline.report import prunable_share as prunable_share  # inspect, benchmarks
from irprune.pipeline.rewrite import CALIBRATED_REWRITES, REWRITES
from irprune.pipeline.rewrite import apply_rewrite as _rewrite  # noqa: F401 (benchmarks/scaling.py)
from irprune.stages import AnalyzeOptions, Csgd, Plan, run_analysis
from irprune.stages.options import DEFAULT_MAX_PRUNE, DEFAULT_ROUND_TO
from irprune.stages.result import Result

__all__ = ["DEFAULT_MAX_PRUNE", "DEFAULT_ROUND_TO", "REWRITES", "Result", "prune"]

log = logging.getLogger(__name__)


def _plan_target(document: Mapping[str, Any]) -> tuple[float | None, ...]:
    """(target_flops, target_params, target_latency) as the plan document records them."""
    target = document.get("settings", {}).get("target") or {}
    metric, fraction = target.get("metric"), target.get("fraction")
    if metric not in ("macs", "params", "latency") or not isinstance(fraction, int | float):
        raise plans.PlanError("the plan records no target; give one (--target-flops ...)")
    return tuple(float(fraction) if metric == m else None for m in ("macs", "params", "latency"))


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
    depth: str = "off",
    max_blocks: int | None = None,
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
    ``Result.plan_document()`` gives it) is applied instead of scoring and allocation, after
    checking it was made for this model (its graph fingerprint) and is valid for every group;
    without a target the plan's own is taken (a latency target is then measured, not
    corrected by re-planning). With the settings it was made with, the result is the same
    model.

    ``depth`` removes whole residual blocks (``y = x + f(x)``, identity shortcuts) too:
    ``"only"`` blocks alone, lowest-scored first, until the target is met; ``"auto"`` blocks
    and widths together, the combination measured closest to the original
    (:mod:`irprune.stages.depth` states the rule); at most ``max_blocks`` blocks. The report's
    ``blocks_removed`` lists them with their scores, and a plan file records them.

    ``prune`` is the composition of the staged API (``irprune.analyze`` -> ``Analysis.score``
    -> ``Analysis.plan`` -> ``Plan.apply``, :mod:`irprune.stages`), which gives the same bytes
    with the same settings.

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
    rewrite = check_options(
        criterion, strategy, rewrite, calib, round_to, max_prune, csgd_epochs, data
    )
    shapes = None if input_shapes is None else {k: tuple(v) for k, v in input_shapes.items()}
    analysis = run_analysis(model, AnalyzeOptions(shapes, example_inputs, tracer), calib)
    # calibration data (read, or synthesised) once for every stage; ``auto``: the user gave
    # neither data nor a rewrite, so data is synthesised where affordable (not in a dry run)
    auto = calib is None and rewrite is None and not dry_run
    calibration = analysis.loaded.calibration(calib, analysis.cost, seed=seed, auto=auto)
    # The reference run comes first and its session goes before any pass reads the weights:
    # a large model's weights are then never in memory twice (onnxruntime's and the passes').
    analysis.loaded.reference(calibration, seed, run=not dry_run)
    if document is not None:  # the given plan replaces scoring and allocation
        plan = Plan.from_document(analysis, document, target)
    else:
        scores = analysis.score(criterion, calib=calibration, labels=labels, seed=seed)
        plan = analysis.plan(
            target, scores, strategy=strategy, round_to=round_to,
            strict_rounding=strict_rounding, max_prune=max_prune, ignore=tuple(ignore),
            calib=calibration, seed=seed, latency_threads=latency_threads,
            depth=depth, max_blocks=max_blocks,
        )  # fmt: skip
    if dry_run:
        return plan.preview(rewrite=rewrite, calib=calibration, seed=seed)
    csgd = None
    if csgd_epochs:
        assert data is not None  # check_options
        csgd = Csgd(csgd_epochs, data, csgd_lr, csgd_epsilon, temporary_bn)
    return plan.apply(
        rewrite=rewrite, calib=calibration, seed=seed, measure_latency=measure_latency,
        latency_threads=latency_threads, csgd=csgd, stage_dir=stage_dir,
        stream_threshold=stream_threshold,
    )  # fmt: skip


def check_options(
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
