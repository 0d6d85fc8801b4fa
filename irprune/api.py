"""The Python API: ``irprune.prune(model, target_flops=0.5, ...) -> Result``.

The pipeline: import -> analysis (channel groups, cost model) -> importance -> allocation ->
rewrite -> emit -> verify (checker, strict shape inference, onnxruntime run) -> report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from irprune import report as rep
from irprune.emit import atomic_write, to_model, verify
from irprune.emit.verify import random_inputs, session
from irprune.errors import CalibrationError, InvalidModelError, UsageError
from irprune.frontends.onnx import external_files, import_model, read_model
from irprune.ir import Graph
from irprune.passes.allocation import STRATEGIES, Plan, Target, allocate
from irprune.passes.analysis.channels import ChannelAnalysis, analyze
from irprune.passes.analysis.cost import CostModel, build_cost_model
from irprune.passes.fold import fold_constants
from irprune.passes.importance import CRITERIA, score
from irprune.passes.rewrite.drop import drop
from irprune.passes.rewrite.merge import merge
from irprune.passes.rewrite.recalibrate import (
    apply_bn_compensation,
    compensate_bias,
    plan_bn_compensation,
    reestimate_bn,
)
from irprune.passes.rewrite.refit import refit
from irprune.passes.sensitivity import measure

log = logging.getLogger(__name__)

REWRITES = ("drop", "merge", "compensate", "reconstruct")
REFERENCE_REWRITES = ("compensate", "reconstruct")  # compare against the original graph
CALIBRATED_REWRITES = ("reconstruct",)  # compensate without --calib uses BN statistics
DEFAULT_ROUND_TO = 16  # measured: benchmarks/spine.py, see README
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

    def save(self, path: str | Path) -> Path:
        """Write atomically; weights go to ``<path>.data`` when the input kept them in external
        data or the model is too large for one protobuf file. The input's own data files are
        only replaced when ``path`` is the input itself (in place)."""
        path = Path(path)
        data = path.with_name(path.name + ".data").resolve()
        in_place = self.source is not None and self.source.resolve() == path.resolve()
        if data in self.source_data and not in_place:
            raise UsageError(f"{data} holds the input's weights; choose another output name")
        external = True if self.external_data else None
        return atomic_write(self.serialized or self.model, path, external_data=external)

    def to_torch(self) -> Any:
        raise NotImplementedError("the torch backend is not available in this version")


@dataclass
class _Timer:
    times: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - since
        return now


def load_calibration(path: str | Path, graph: Graph) -> dict[str, np.ndarray]:
    """Arrays keyed by graph input name, batch on axis 0, checked against the model's inputs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a readable .npz file ({exc})") from exc
    inputs = {v.name: v for v in graph.inputs if not v.is_const}
    if set(arrays) != set(inputs):
        raise CalibrationError(
            f"{path}: arrays {sorted(arrays)} do not match the model inputs {sorted(inputs)}"
        )
    batches = {arr.shape[0] if arr.ndim else -1 for arr in arrays.values()}
    if len(batches) != 1 or min(batches) < 1:
        raise CalibrationError(f"{path}: arrays need one common, non-empty batch on axis 0")
    for name, arr in arrays.items():
        expected = onnx.helper.tensor_dtype_to_np_dtype(inputs[name].dtype)
        if arr.dtype != expected:
            raise CalibrationError(f"{path}: {name!r} is {arr.dtype}, the model expects {expected}")
        shape = inputs[name].shape or ()
        if arr.ndim != len(shape) or any(
            isinstance(d, int) and d != s for d, s in zip(shape[1:], arr.shape[1:], strict=True)
        ):
            raise CalibrationError(f"{path}: {name!r} has shape {arr.shape}, model expects {shape}")
    return arrays


def _target(target_flops: float | None, target_params: float | None) -> Target:
    if (target_flops is None) == (target_params is None):
        raise UsageError("give exactly one of target_flops / target_params")
    metric, value = (
        ("macs", target_flops) if target_flops is not None else ("params", target_params)
    )
    assert value is not None
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
    model: str | Path | onnx.ModelProto,
    *,
    target_flops: float | None = None,
    target_params: float | None = None,
    criterion: str = "l1",
    strategy: str = "global",
    rewrite: str | None = None,
    calib: str | Path | Mapping[str, np.ndarray] | None = None,
    round_to: int = DEFAULT_ROUND_TO,
    ignore: Iterable[str | int] = (),
    max_prune: float = DEFAULT_MAX_PRUNE,
    seed: int = 0,
    dry_run: bool = False,
    measure_latency: bool = True,
    latency_threads: int = 1,
) -> Result:
    """Prune ``model`` to the target and return the verified result (nothing is written).

    ``rewrite`` None picks the default measured best on real data (benchmarks/quality.py, see
    the README): ``reconstruct`` with calibration data, ``compensate`` (from BN statistics)
    without.
    """
    target = _target(target_flops, target_params)
    if rewrite is None:
        rewrite = "reconstruct" if calib is not None else "compensate"
    _check_choice("criterion", criterion, CRITERIA)
    _check_choice("strategy", strategy, STRATEGIES)
    _check_choice("rewrite", rewrite, REWRITES)
    if rewrite in CALIBRATED_REWRITES and calib is None:
        raise UsageError(f"--rewrite {rewrite} needs calibration data (--calib)")
    if strategy == "sensitivity" and calib is None:
        raise UsageError("--strategy sensitivity needs calibration data (--calib)")
    if round_to < 1 or not 0 < max_prune <= 1:
        raise UsageError("round_to must be >= 1 and max_prune in (0, 1]")
    timer = _Timer()
    t = time.perf_counter()
    original, external = read_model(model)
    graph = _import(original)
    t = timer.lap("load", t)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    if cost.unknown:
        log.warning(
            "MACs of %d values have dims shape inference cannot see (counted as 1): %s",
            len(cost.unknown),
            ", ".join(cost.unknown[:5]),
        )
    t = timer.lap("analysis", t)
    calib_feeds = _calib_feeds(graph, calib)
    scores = score(graph, analysis, criterion, seed=seed, calib=calib_feeds)
    t = timer.lap("importance", t)
    skip = _resolve_ignore(graph, analysis, ignore)
    curves = None
    if strategy == "sensitivity":
        assert calib_feeds is not None
        curves = measure(_import(original), analysis, scores, calib_feeds)
    plan = allocate(
        analysis,
        cost,
        scores,
        target,
        strategy=strategy,
        round_to=round_to,
        max_prune=max_prune,
        ignore=skip,
        curves=curves,
    )
    t = timer.lap("allocation", t)
    settings = dict(
        round_to_applied=plan.round_to,
        criterion=criterion,
        strategy=strategy,
        rewrite=rewrite,
        round_to=round_to,
        max_prune=max_prune,
        seed=seed,
        ignore=sorted(skip),
    )
    if dry_run:
        report = _report(analysis, cost, plan, target, settings, timer)
        return Result(original, report, analysis, plan)
    original_bytes = original.SerializeToString()
    reference_session = _original_session(original_bytes)
    feeds = _feeds(reference_session, calib_feeds, seed)
    reference = _run_original(reference_session, feeds)
    del reference_session
    t = timer.lap("reference", t)
    # a parameter budget leaves no room for biases the repair would add
    new_params = target.metric != "params"
    _rewrite(graph, original, analysis, plan, rewrite, calib_feeds, seed, new_params)
    graph.verify()
    t = timer.lap("rewrite", t)
    pruned = to_model(graph)
    pruned_bytes = pruned.SerializeToString()
    t = timer.lap("emit", t)
    outputs = verify(pruned_bytes, feeds)
    t = timer.lap("verify", t)
    latency = None
    if measure_latency:
        latency = rep.latency(original_bytes, pruned_bytes, feeds, threads=latency_threads)
        timer.lap("latency", t)
    report = _report(analysis, cost, plan, target, settings, timer)
    report["fidelity"] = rep.fidelity(reference, outputs)
    report["fidelity_inputs"] = "calibration data" if calib is not None else "random inputs"
    if latency is not None:
        report["latency"] = latency
    source = Path(model) if isinstance(model, str | Path) else None
    return Result(
        pruned,
        report,
        analysis,
        plan,
        serialized=pruned_bytes,
        external_data=external,
        source=source,
        source_data=frozenset(external_files(source)) if external and source else frozenset(),
    )


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def _import(model: onnx.ModelProto) -> Graph:
    """The IR every pass works on: imported, with constant computations folded. Every copy of
    the original a pass needs is made by this one function, so node order and names agree."""
    graph = import_model(model)
    fold_constants(graph)
    return graph


def _rewrite(
    graph: Graph,
    original: onnx.ModelProto,
    analysis: ChannelAnalysis,
    plan: Plan,
    rewrite: str,
    calib: dict[str, np.ndarray] | None,
    seed: int,
    new_params: bool = True,
) -> None:
    """The chosen rewrite; the calibrated ones repair the dropped model against the original."""
    if rewrite == "merge":
        merge(graph, analysis, plan, seed=seed)
        return
    if rewrite == "compensate" and calib is None:
        shifts = plan_bn_compensation(graph, analysis, plan)
        drop(graph, analysis, plan)
        apply_bn_compensation(graph, shifts, new_params=new_params)
        return
    reference = _import(original) if rewrite in REFERENCE_REWRITES else None
    drop(graph, analysis, plan)
    if reference is None:
        return
    if rewrite == "compensate" and calib is not None:
        compensate_bias(graph, reference, analysis, plan, calib, new_params=new_params)
        reestimate_bn(graph, calib)
    elif calib is not None:
        # The refit reproduces each consumer's original (pre-BN) output, so the original BN
        # statistics stay right; re-estimating them would move the model away from the original.
        refit(graph, reference, calib, analysis, plan, new_params=new_params)


def _original_session(original: bytes) -> Any:
    try:
        return session(original)
    except Exception as exc:  # onnxruntime raises untyped errors
        text = " ".join(str(exc).split())
        raise InvalidModelError(f"onnxruntime cannot load the input model: {text}") from exc


def _run_original(sess: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return list(sess.run(None, feeds))
    except Exception as exc:  # onnxruntime raises untyped errors
        text = " ".join(str(exc).split())
        raise InvalidModelError(f"onnxruntime cannot run the input model: {text}") from exc


def _calib_feeds(graph: Graph, calib: Any) -> dict[str, np.ndarray] | None:
    if calib is None:
        return None
    if isinstance(calib, Mapping):
        return {k: np.asarray(v) for k, v in calib.items()}
    return load_calibration(calib, graph)


def _feeds(
    sess: Any, calib_feeds: dict[str, np.ndarray] | None, seed: int
) -> dict[str, np.ndarray]:
    if calib_feeds is None:
        return random_inputs(sess, batch=4, seed=seed)
    return calib_feeds


def _report(
    analysis: ChannelAnalysis,
    cost: CostModel,
    plan: Plan,
    target: Target,
    settings: dict[str, Any],
    timer: _Timer,
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


def prunable_share(analysis: ChannelAnalysis, cost: CostModel) -> float:
    """The fraction of MACs that depends on at least one prunable group."""
    total = cost.macs_at(cost.base_widths)
    w = cost.base_widths.copy()
    for g in analysis.prunable:
        w[g.id] = 0.0
    return 1.0 - cost.macs_at(w) / total if total else 0.0
