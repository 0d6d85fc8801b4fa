"""The subjects and the peers of ``benchmarks/compare.py``.

A :class:`Subject` is one model in three forms: the ONNX file every ONNX tool prunes (a cached
export from ``models/``), a builder of the torch module that file was exported from, and an
``export`` function that writes a (pruned) torch module to ONNX exactly the way the original
file was written (same exporter, options, names, dynamic axes, opset).

Peers:

* **Torch-Pruning** (``torch_pruning``): ``tp.pruner.MetaPruner`` with
  ``tp.importance.MagnitudeImportance(p=1)`` (its defaults otherwise: one step, no round-to),
  ``global_pruning`` False (local: the same ratio in every group) or True, and optionally its
  ``round_to=16`` (channel counts a multiple of 16, as irprune's default). The layers that
  produce the model's outputs are ignored, as in Torch-Pruning's own examples (the interface
  must not change). Its ``pruning_ratio`` is searched so the exported model's MACs hit the
  target. Magnitude importance uses no data, so it gets none.
* **onnxsim** (``onnxsim.apply_structured_pruning``, its ONNX-native structured pruning):
  ``importance_norm="l1"`` (the criterion the two others use), ``global_sparsity`` False or
  True; its ``sparsity`` (fraction of channels removed per matched producer -> consumer chain,
  or of all eligible chains together when global) is searched to the target. It expects BN
  already fused into the convs (the ``folded`` export style).

The search is a bisection on the knob (pruning ratio / sparsity), each probe counted by the
caller's MAC counter; it stops at the first probe inside ``[target - tol, target]``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from models.digits import cached_digits_model, cached_digits_onnx, export_digits, load_digits_split
from models.export import Style, export_kwargs, quiet_exporter, validate_export
from models.export import cached_export as cached_reference_export
from models.reference import REFERENCE_MODELS, build_preset
from models.zoo import ZOO, build_zoo, sample_inputs
from models.zoo_export import cached_zoo_export

MacRatio = Callable[[onnx.ModelProto], float]


# --------------------------------------------------------------------------- subjects


@dataclass
class Subject:
    """One model: its ONNX file, the torch module behind it, and how that module is exported."""

    name: str
    family: str  # "reference" | "zoo" | "digits"
    detail: str  # input size, export style
    path: Path
    build: Callable[[], nn.Module]
    example_inputs: Callable[[], tuple[Tensor, ...]]
    export: Callable[[nn.Module, Path], None]
    digits: bool = False
    notes: list[str] = field(default_factory=list)


def _torch_export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    style: Style,
    names: tuple[Sequence[str], Sequence[str]],
    opset: int,
) -> None:
    """``models/export.py``'s and ``models/zoo_export.py``'s exporter call and checks."""
    inputs, outputs = list(names[0]), list(names[1])
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module.eval(),
            args,
            path,
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in inputs + outputs},
            opset_version=opset,
            **export_kwargs(style),
        )
    validate_export(path, style)


def reference_subject(name: str, size: str, style: Style, cache_dir: Path) -> Subject:
    spec = REFERENCE_MODELS[name]
    path = cached_reference_export(name, style, cache_dir, size=size)  # type: ignore[arg-type]

    def export(module: nn.Module, out: Path) -> None:
        sample = torch.zeros(spec.input_shape(size, batch=2))  # type: ignore[arg-type]
        _torch_export(module, (sample,), out, style, (["input"], ["logits"]), 17)

    res = spec.resolution(size)  # type: ignore[arg-type]
    classes = spec.kwargs(size)["num_classes"]  # type: ignore[arg-type]
    return Subject(
        name=name,
        family="reference",
        detail=f"{res}px, {classes} classes, {style}",
        path=path,
        build=lambda: build_preset(name, size),  # type: ignore[arg-type]
        example_inputs=lambda: (torch.randn(spec.input_shape(size, batch=1)),),  # type: ignore[arg-type]
        export=export,
    )


def zoo_subject(name: str, style: Style, cache_dir: Path) -> Subject:
    spec = ZOO[name]
    if style not in spec.styles:
        style = "folded"
    path = cached_zoo_export(name, style, cache_dir)

    def export(module: nn.Module, out: Path) -> None:
        names = ([i.name for i in spec.inputs], list(spec.outputs))
        _torch_export(module, sample_inputs(name, batch=2), out, style, names, spec.opset)

    shape = "x".join(str(d) for d in spec.inputs[0].shape[1:])
    return Subject(
        name=name,
        family="zoo",
        detail=f"{shape}, {style}",
        path=path,
        build=lambda: build_zoo(name),
        example_inputs=lambda: sample_inputs(name, batch=1),
        export=export,
    )


def digits_subject(name: str, style: Style, cache_dir: Path) -> Subject:
    path = cached_digits_onnx(name, style, cache_dir)
    sample = load_digits_split(0).x_test[:64]

    def export(module: nn.Module, out: Path) -> None:
        export_digits(module, out, style, sample)

    return Subject(
        name=f"digits {name}",
        family="digits",
        detail=f"3x32x32 trained, {style}",
        path=path,
        build=lambda: cached_digits_model(name, cache_dir)[0],
        example_inputs=lambda: (torch.from_numpy(sample[:1]).clone(),),
        export=export,
        digits=True,
    )


# --------------------------------------------------------------------------- search


@dataclass
class Search:
    """Probes of a bisection: (knob, MAC ratio) in order; ``best`` the reported knob."""

    probes: list[tuple[float, float]] = field(default_factory=list)
    best: float | None = None
    hit: bool = False


Point = tuple[float, float]  # (knob, MAC ratio)


def _next_knob(lo: Point, below: Point | None, above: list[Point], cap: float, aim: float) -> float:
    """False position towards ``aim``: interpolate the bracket ``lo``..``below`` or, without a
    point below the target yet, extrapolate the last two points above it (up to ``cap``); kept
    10% inside the bracket so step-shaped curves still shrink it."""
    a, b = (lo, below) if below is not None else (above[-2], above[-1])
    right = below[0] if below is not None else cap
    width = right - lo[0]
    guess = lo[0] + width / 2
    if b[1] != a[1]:
        guess = a[0] + (aim - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
    return min(max(guess, lo[0] + 0.1 * width), right - 0.1 * width)


def bisect(
    evaluate: Callable[[float], float],
    target: float,
    *,
    first: float,
    hi: float,
    tol: float = 0.02,
    max_probes: int = 10,
) -> Search:
    """Find a knob in ``[0, hi]`` whose MAC ratio (non-increasing in the knob, 1 at 0) lies in
    ``[target - tol, target]``, aiming at the window's middle (:func:`_next_knob`); stop at
    the first hit. Which probe is reported (also without a hit) is :class:`Keeper`'s choice."""
    search = Search()
    above: list[Point] = [(0.0, 1.0)]
    below: Point | None = None
    x = first
    for _ in range(max_probes):
        ratio = evaluate(x)
        search.probes.append((x, ratio))
        if target - tol <= ratio <= target:
            search.hit = True
            return search
        if ratio > target:
            above.append((x, ratio))
        else:
            below = (x, ratio)
        x = _next_knob(above[-1], below, above, hi, target - tol / 2)
    return search


class Keeper:
    """Keeps the pruned model of the probes that may be reported (the best one at or below the
    target, and the lowest one), so the reported model is exactly the probed one, without a
    second prune + export."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.below: tuple[float, float, Any] | None = None
        self.lowest: tuple[float, float, Any] | None = None

    def add(self, knob: float, ratio: float, artifact: Any) -> None:
        if ratio <= self.target and (self.below is None or ratio > self.below[1]):
            self.below = (knob, ratio, artifact)
        if self.lowest is None or ratio < self.lowest[1]:
            self.lowest = (knob, ratio, artifact)

    def pick(self, search: Search) -> Any:
        """The model to report: the best at or below the target (a hit is that one), else the
        lowest; ``search.best`` is set to its knob."""
        kept = self.below or self.lowest
        assert kept is not None, "no probe ran"
        search.best = kept[0]
        return kept[2]


# --------------------------------------------------------------------------- Torch-Pruning


def _flat_tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


def output_layers(model: nn.Module, example: tuple[Tensor, ...]) -> list[str]:
    """Names of the Conv/Linear modules whose output is (a view of) a model output; the last
    one run when none is (Torch-Pruning's examples ignore the classifier)."""
    # the outputs are held (not just their addresses): a freed intermediate's memory can be
    # reused by a later tensor, and a stale address would match the wrong layer
    seen: list[tuple[str, Tensor]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            hook = m.register_forward_hook(lambda mod, a, out, n=name: seen.append((n, out)))
            hooks.append(hook)
    try:
        with torch.no_grad():
            outs = _flat_tensors(model(*example))
    finally:
        for h in hooks:
            h.remove()
    ptrs = {t.data_ptr() for t in outs}
    names = [n for n, t in seen if t.data_ptr() in ptrs]
    return names or [seen[-1][0]]


@dataclass(frozen=True)
class Seconds:
    """Wall and CPU (this process, all threads) seconds of one pruning call."""

    wall: float
    cpu: float


def tp_prune(
    base: nn.Module,
    example: tuple[Tensor, ...],
    ratio: float,
    global_pruning: bool,
    round_to: int | None = None,
) -> tuple[nn.Module, Seconds]:
    """A pruned copy of ``base`` and the seconds Torch-Pruning took (graph build + step)."""
    import torch_pruning as tp

    model = copy.deepcopy(base).eval()
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in output_layers(model, example)]
    start, cpu = time.perf_counter(), time.process_time()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=ignored,
        round_to=round_to,
    )
    pruner.step()
    return model.eval(), Seconds(time.perf_counter() - start, time.process_time() - cpu)


@dataclass
class PeerResult:
    """A peer's pruned model (serialized), the pruning seconds, and how the knob was found."""

    model: bytes
    prune_s: Seconds
    knob: float
    search: Search
    search_s: float
    notes: list[str] = field(default_factory=list)


def run_torch_pruning(
    subject: Subject,
    target: float,
    mac_ratio: MacRatio,
    global_pruning: bool,
    round_to: int | None = None,
) -> PeerResult:
    """Search Torch-Pruning's ratio to the target; return the exported pruned model."""
    base = subject.build().eval()
    example = subject.example_inputs()
    keeper = Keeper(target)
    start = time.perf_counter()

    def evaluate(ratio: float) -> float:
        model, seconds = tp_prune(base, example, ratio, global_pruning, round_to)
        data = _export_bytes(subject, model)
        macs = mac_ratio(onnx.ModelProto.FromString(data))
        keeper.add(ratio, macs, (data, seconds))
        return macs

    search = bisect(evaluate, target, first=1 - target**0.5, hi=0.9)
    data, seconds = keeper.pick(search)
    return PeerResult(data, seconds, search.best, search, time.perf_counter() - start)


def _export_bytes(subject: Subject, module: nn.Module) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pruned.onnx"
        subject.export(module, path)
        return path.read_bytes()


# --------------------------------------------------------------------------- onnxsim

ONNXSIM_MAX_SPARSITY = 0.99  # its API takes sparsity in [0, 1)


def onnxsim_prune(
    model: onnx.ModelProto, sparsity: float, global_sparsity: bool
) -> tuple[onnx.ModelProto, Seconds]:
    import onnxsim

    start, cpu = time.perf_counter(), time.process_time()
    out = onnxsim.apply_structured_pruning(
        model, sparsity=sparsity, importance_norm="l1", global_sparsity=global_sparsity
    )
    return out, Seconds(time.perf_counter() - start, time.process_time() - cpu)


class NotApplicable(Exception):
    """The peer found nothing it can prune in this model."""


def run_onnxsim(
    subject: Subject, target: float, mac_ratio: MacRatio, global_sparsity: bool
) -> PeerResult:
    """Search onnxsim's sparsity to the target on the subject's ONNX file."""
    original = onnx.load(subject.path)
    keeper = Keeper(target)
    start = time.perf_counter()

    def evaluate(sparsity: float) -> float:
        out, seconds = onnxsim_prune(original, sparsity, global_sparsity)
        macs = mac_ratio(out)
        keeper.add(sparsity, macs, (out.SerializeToString(), seconds))
        return macs

    at_max = evaluate(ONNXSIM_MAX_SPARSITY)
    if at_max > 0.999:
        raise NotApplicable(f"no chain matched: MAC ratio {at_max:.3f} at sparsity 0.99")
    if at_max > target:  # its floor: report the most it can remove
        search = Search([(ONNXSIM_MAX_SPARSITY, at_max)], ONNXSIM_MAX_SPARSITY)
    else:
        search = bisect(evaluate, target, first=1 - target**0.5, hi=ONNXSIM_MAX_SPARSITY)
        search.probes.insert(0, (ONNXSIM_MAX_SPARSITY, at_max))
    data, seconds = keeper.pick(search)
    result = PeerResult(data, seconds, search.best, search, time.perf_counter() - start)
    if at_max > target:
        result.notes.append(f"floor: MAC ratio {at_max:.3f} even at sparsity 0.99")
    return result


def cache_dir(kind: str) -> Path:
    return Path(os.environ.get("IRPRUNE_COMPARE_CACHE", tempfile.gettempdir())) / kind
