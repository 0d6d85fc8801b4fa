"""Synthetic calibration data made from the model itself, for data-free pruning (torch extra).

``--calib synthetic[:N]`` makes N inputs (default 128) from the model alone and hands them to the
calibrated pipeline (``reconstruct``) as if the user had given them.

**BN-statistics inversion** (``bn``; ZeroQ's "distilled data", Cai et al. 2020; DeepInversion,
Yin et al. 2020): a trained network's explicit BatchNormalization nodes keep the per-channel
mean and variance of their input over the training data. Starting from Gaussian inputs of the
model's input shape, Adam moves the inputs (the model is fixed, BN in its inference form) so
that, for every BN node, the batch mean and standard deviation of its input per channel match
the running ones: the loss is the mean over BN nodes of ``|mean - running_mean|^2 / C + |std -
running_std|^2 / C`` (ZeroQ's), optionally plus a total-variation prior (``tv``). The inputs
are optimised in chunks of ``batch`` samples, each matched on its own.

**Folded BN** (``prior``): folding erased the statistics. The folded conv's output is the former
BN's output (mean beta, std |gamma|), so every Conv output is pushed to mean 0 and std 1 per
channel: BN's initial gamma and beta, where short training often leaves them. An assumption,
logged as a warning. ``auto`` (the default) picks ``bn`` when the model has explicit BN, else
``prior``. ``class`` and ``noise`` exist for the measurements (``benchmarks/datafree.py``).

``data_free_calibration`` is the default when the user gives neither data nor a rewrite: it
synthesises when that is estimated at most ``AUTO_MAX_CPU_SECONDS`` (small and mid-size nets)
and otherwise says why it falls back to ``compensate``. Torch is imported only when data is
synthesised.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from irprune import progress
from irprune.backends import missing_torch
from irprune.errors import UsageError
from irprune.ir import Graph

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
DEFAULT_SAMPLES = 128
# auto: bn if the model has explicit BN, else prior; bn: BN-statistics inversion; prior: Conv
# outputs to mean 0 / std 1 (folded BN); class: only the class loss; noise: Gaussian inputs
METHODS = ("auto", "bn", "prior", "class", "noise")
# total-variation weight per method. Measured on the digits nets (docs/datafree.md): TV 0.1
# moved bn and prior results by -1.8..+1.8 points, no more than changing the seed does, so the
# statistics methods run without it; the class method needs it for image-like inputs
DEFAULT_TV = {"bn": 0.0, "prior": 0.0, "class": 0.05, "noise": 0.0}
_FLOAT_INPUTS = frozenset({1})  # synthetic inputs are float32 tensors


@dataclass(frozen=True)
class SyntheticOptions:
    """How to synthesise: ``samples`` inputs, ``iterations`` Adam steps per chunk of ``batch``
    samples at learning rate ``lr`` (cosine-decayed), a total-variation weight ``tv``."""

    samples: int = DEFAULT_SAMPLES
    iterations: int = 200
    batch: int = 64
    lr: float = 0.25
    tv: float | None = None  # None: the method's measured default (DEFAULT_TV)
    method: str = "auto"  # see METHODS
    class_loss: float = 0.0  # weight of cross-entropy to evenly assigned classes (DeepInversion)

    def run(self, model: onnx.ModelProto, seed: int = 0) -> Synthesis:
        """Synthesise inputs for ``model`` (imported afresh: the caller's graph is untouched)."""
        return synthesize(import_for_synthesis(model), self, seed=seed)


@dataclass(frozen=True)
class StatTarget:
    """The per-channel (axis 1) mean and standard deviation wanted for one value."""

    value: str
    mean: np.ndarray
    std: np.ndarray


@dataclass
class Synthesis:
    """The synthesised inputs (keyed by graph input name) and what the report says of them."""

    feeds: dict[str, np.ndarray]
    report: dict[str, Any] = field(default_factory=dict)


def parse_spec(calib: object) -> SyntheticOptions | None:
    """``"synthetic"`` or ``"synthetic:N"`` -> options; anything else (a path, arrays) -> None."""
    if not isinstance(calib, str) or not calib.startswith(SYNTHETIC):
        return None
    rest = calib[len(SYNTHETIC) :]
    if rest == "":
        return SyntheticOptions()
    if not rest.startswith(":"):
        return None  # a file named like "synthetic_data.npz"
    if not rest[1:].isdigit() or int(rest[1:]) < 1:
        raise UsageError(f"--calib {calib!r}: expected synthetic or synthetic:N with N >= 1")
    return SyntheticOptions(samples=int(rest[1:]))


def bn_targets(graph: Graph) -> list[StatTarget]:
    """One target per explicit BatchNormalization (inference form, constant statistics): its
    input's running mean and standard deviation."""
    targets = []
    for node in graph.nodes:
        if node.key != ("", "BatchNormalization") or len(node.inputs) < 5:
            continue
        x, mean, var = node.inputs[0], node.inputs[3], node.inputs[4]
        if x is None or mean is None or var is None or mean.const is None or var.const is None:
            continue
        if x.is_const or node.attr("training_mode", 0):
            continue
        std = np.sqrt(np.maximum(var.const.astype(np.float64), 0.0))
        targets.append(StatTarget(x.name, mean.const.astype(np.float64), std))
    return targets


def prior_targets(graph: Graph, std: float = 1.0) -> list[StatTarget]:
    """For models whose BN was folded into the convs: every Conv output that is not a graph
    output gets the statistics a BN output has when its scale and shift are near their initial
    values (gamma 1, beta 0): mean 0 and standard deviation ``std`` per channel. A prior, not
    a measurement: it holds only where training left gamma near 1 and beta near 0."""
    outputs = {v.name for v in graph.outputs}
    targets = []
    for node in graph.nodes:
        if node.key != ("", "Conv") or node.outputs[0].name in outputs:
            continue
        w = node.input(1)
        if w is None or w.const is None:
            continue
        channels = int(w.const.shape[0])
        targets.append(StatTarget(node.outputs[0].name, np.zeros(channels), np.full(channels, std)))
    return targets


def input_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Each graph input's per-sample shape at the deployment shape (``irprune.shapes``);
    synthesis needs float32 inputs with known dims after the batch axis."""
    shapes = {}
    for v in graph.inputs:
        if v.is_const:
            continue
        shape = v.sample_shape
        if v.dtype not in _FLOAT_INPUTS or shape is None or len(shape) < 1:
            raise UsageError(f"--calib synthetic needs float32 inputs; {v.name!r} is not")
        rest = shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            raise UsageError(
                f"--calib synthetic needs static input dims after the batch axis; "
                f"{v.name!r} has shape {list(shape)}"
            )
        shapes[v.name] = tuple(int(d) for d in rest)  # type: ignore[arg-type]
    return shapes


def synthesize(
    graph: Graph, options: SyntheticOptions = SyntheticOptions(), *, seed: int = 0
) -> Synthesis:
    """Inputs for ``graph`` (see the module docstring). ``graph`` must be a copy the caller no
    longer needs as is: the values whose statistics are matched are added to its outputs.
    Raises ``UsageError`` when there is nothing to match, ``MissingDependencyError`` without
    torch."""
    shapes = input_shapes(graph)
    method, targets = choose_targets(graph, options.method)
    try:
        import torch  # noqa: F401 - only to fail early with the one-line message
    except ImportError as exc:
        raise missing_torch("--calib synthetic", exc) from exc
    tv = DEFAULT_TV[method] if options.tv is None else options.tv
    return _invert(graph, shapes, targets, replace(options, method=method, tv=tv), seed)


def choose_targets(graph: Graph, method: str) -> tuple[str, list[StatTarget]]:
    """The method actually used and its statistics targets. ``auto``: the BN statistics when
    the model has explicit BN, else the folded-BN prior on the Conv outputs (with a warning)."""
    if method not in METHODS:
        raise UsageError(f"unknown synthesis method {method!r}; choose from {', '.join(METHODS)}")
    if method in ("auto", "bn"):
        targets = bn_targets(graph)
        if targets:
            return "bn", targets
        if method == "bn":
            raise UsageError(
                "--calib synthetic needs explicit BatchNormalization statistics (this model has "
                "none, e.g. BN folded into the convs); give real data with --calib FILE.npz"
            )
        method = "prior"
        log.warning(
            "no BatchNormalization statistics (folded?): synthetic inputs follow a prior "
            "(every Conv output mean 0, std 1 per channel), not measured statistics"
        )
    if method == "prior":
        targets = prior_targets(graph)
        if not targets:
            raise UsageError(
                "--calib synthetic needs explicit BatchNormalization or Conv layers; "
                "give real data with --calib FILE.npz"
            )
        return method, targets
    return method, []


def _invert(
    graph: Graph,
    shapes: Mapping[str, tuple[int, ...]],
    targets: list[StatTarget],
    options: SyntheticOptions,
    seed: int,
) -> Synthesis:
    import torch

    from irprune.backends.torch import GraphModule

    start, cpu = time.perf_counter(), time.process_time()
    present = {v.name for v in graph.outputs}
    graph.outputs = list(graph.outputs) + [
        graph.values[t.value] for t in targets if t.value not in present
    ]
    module = GraphModule(graph).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    index = {name: i for i, name in enumerate(module.output_names)}
    gen = torch.Generator().manual_seed(seed)
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in shapes}
    first, last = [], []
    sizes = _chunk_sizes(options.samples, options.batch)
    with progress.task("synthesis", len(sizes) * (options.iterations + 1)) as steps:
        for n in sizes:
            x = {name: torch.randn((n, *shape), generator=gen) for name, shape in shapes.items()}
            x, losses = (
                _fit(module, x, targets, index, options, steps)
                if options.method != "noise"
                else (x, [0.0])
            )
            first.append(losses[0] * n)
            last.append(losses[-1] * n)
            for name, t in x.items():
                chunks[name].append(t.detach().numpy().astype(np.float32))
    feeds = {name: np.concatenate(parts) for name, parts in chunks.items()}
    seconds = time.perf_counter() - start
    report = {
        "method": options.method,
        "samples": options.samples,
        "batch": options.batch,
        "iterations": options.iterations,
        "lr": options.lr,
        "tv": options.tv,
        "matched_layers": len(targets),
        "stats_loss_initial": sum(first) / options.samples,
        "stats_loss_final": sum(last) / options.samples,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
    }
    log.info(
        "synthesised %d inputs (%d matched layers, %d iterations): loss %.4g -> %.4g, %.1fs",
        options.samples, len(targets), options.iterations, report["stats_loss_initial"],
        report["stats_loss_final"], seconds,
    )  # fmt: skip
    return Synthesis(feeds, report)


def _chunk_sizes(total: int, batch: int) -> list[int]:
    """``total`` split into chunks of at most ``batch``, as even as possible (statistics of a
    tiny last chunk would be noisy)."""
    count = max(1, math.ceil(total / batch))
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def _fit(
    module: Any,
    x: dict[str, torch.Tensor],
    targets: list[StatTarget],
    index: Mapping[str, int],
    options: SyntheticOptions,
    steps: progress.Task,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    import torch

    wanted = [
        (
            index[t.value],
            torch.as_tensor(t.mean, dtype=torch.float32),
            torch.as_tensor(t.std, dtype=torch.float32),
        )
        for t in targets
    ]
    for t in x.values():
        t.requires_grad_(True)
    opt = torch.optim.Adam(list(x.values()), lr=options.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, options.iterations))
    losses = []
    for _ in range(options.iterations + 1):
        opt.zero_grad()
        outs = module.run(x)
        stats = sum((_stats_loss(outs[i], mean, std) for i, mean, std in wanted), torch.zeros(()))
        stats = stats / max(1, len(wanted))
        losses.append(float(stats.detach()))
        steps.advance()
        if len(losses) > options.iterations:
            break  # the last pass only measures the final loss
        loss = stats + (options.tv or 0.0) * sum(_tv(t) for t in x.values())
        if options.class_loss and outs[0].dim() == 2 and outs[0].shape[1] > 1:
            logits = outs[0]
            labels = torch.arange(len(logits)) % logits.shape[1]
            loss = loss + options.class_loss * torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        opt.step()
        sched.step()
    return {k: v.detach() for k, v in x.items()}, losses


def _stats_loss(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """ZeroQ's per-layer distance: squared L2 of the per-channel mean and std errors over C."""
    from irprune.backends.torch_moments import channel_moments

    m, v = channel_moments(x)
    s = (v + 1e-8).sqrt()
    channels = max(1, mean.numel())
    return ((m - mean) ** 2).sum() / channels + ((s - std) ** 2).sum() / channels


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbours along the last two axes (images); 0 otherwise."""
    if x.dim() < 4:
        return x.new_zeros(())
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


def import_for_synthesis(model: onnx.ModelProto) -> Graph:
    """A fresh IR copy of ``model`` that ``synthesize`` may extend."""
    from irprune.frontends.onnx import import_model
    from irprune.passes.fold import fold_constants

    graph = import_model(model)
    fold_constants(graph)
    return graph


# --- the default data-free setting ------------------------------------------------------------
# Without calibration data and without a chosen rewrite, synthesise when it is cheap enough:
# measured on the digits nets at 0.5 FLOPs it loses 0.7-2.9 points where `compensate` falls to
# chance (docs/datafree.md). Tests of other features turn it off (tests/conftest.py).
AUTO_SYNTHESIS = True
# CPU seconds per input per Adam step on the torch backend (1 thread), fitted on six models (the
# three digits nets, the demo, the reference MobileNetV2 and DenseNet): per MAC and per float
# activation element of one input. Within -25%..+20% on five of them; 0.45x on the DenseNet
# (many small ops). Elements matter: MobileNetV2 costs 6x more per MAC than ResNet-20.
SECONDS_PER_MAC = 2.1e-11
SECONDS_PER_ELEMENT = 3.3e-9
# Budget of the default, in estimated CPU seconds: the demo model needs about 40, the digits
# nets 50-210, a 224-px ResNet-50 hours (there `compensate` stays, with a warning).
AUTO_MAX_CPU_SECONDS = 300.0


@dataclass(frozen=True)
class Workload:
    """One input's forward pass: MACs and float activation elements (all node outputs)."""

    macs: float
    elements: float

    def seconds(self, options: SyntheticOptions) -> float:
        """Estimated CPU seconds of synthesising with ``options`` (backward ~ 2x forward is in
        the fitted coefficients)."""
        per_step = self.macs * SECONDS_PER_MAC + self.elements * SECONDS_PER_ELEMENT
        return options.samples * (options.iterations + 1) * per_step


def activation_elements(graph: Graph) -> float:
    """Float elements of one input's intermediate values at the deployment shape (dims after
    the batch axis); values with dims shape inference could not fix count 0."""
    total = 0
    for node in graph.nodes:
        for v in node.outputs:
            dims = (v.sample_shape or ())[1:]
            if v.dtype == onnx.TensorProto.FLOAT and dims and all(isinstance(d, int) for d in dims):
                total += math.prod(dims)  # type: ignore[arg-type]
    return float(total)


def data_free_calibration(
    copy: Callable[[], Graph], work: Workload, seed: int = 0
) -> Synthesis | None:
    """The default when the user gives no calibration data and no rewrite: synthetic data
    (``auto``: BN inversion, or the folded-BN prior), then ``reconstruct``, when
    ``AUTO_SYNTHESIS`` is on, torch is installed, the model has BN statistics or Conv layers
    and the synthesis is estimated at most ``AUTO_MAX_CPU_SECONDS``; otherwise None (the
    pipeline falls back to ``compensate``, and a warning says why). ``copy`` gives a copy of
    the model's graph that the synthesis may extend; it is called only when the estimate is
    within the budget."""
    if not AUTO_SYNTHESIS:
        return None
    options = SyntheticOptions()
    seconds = work.seconds(options)
    over = seconds > AUTO_MAX_CPU_SECONDS
    graph = None if over or _torch_missing() else copy()
    why = _no_synthesis_reason(graph, seconds)
    if graph is not None and why is None:  # the formula's guess, checked on one real step
        seconds = measured_seconds(graph, options)
        if seconds > AUTO_MAX_CPU_SECONDS:
            over, why = True, _over_budget(seconds, "measured on one step")
    if graph is None or why is not None:
        anyway = " (or --calib synthetic to synthesise anyway)" if over else ""
        log.warning(
            "no calibration data: %s, so the repair is `compensate` and accuracy may drop "
            "sharply; give --calib FILE.npz%s", why, anyway,
        )  # fmt: skip
        return None
    # INFO, not a warning: nothing is wrong, the report and the CLI's summary say it was done
    log.info(
        "no calibration data: synthesising %d inputs from the model (about %.0f CPU s); "
        "--calib FILE.npz is better and faster, --rewrite compensate skips it",
        options.samples, seconds,
    )  # fmt: skip
    made = synthesize(graph, options, seed=seed)
    made.report["auto"] = True
    made.report["estimated_cpu_seconds"] = seconds
    return made


def _over_budget(seconds: float, how: str) -> str:
    return (
        f"synthesising inputs would take about {seconds / 60:.0f} CPU minutes ({how}; the "
        f"default does it up to {AUTO_MAX_CPU_SECONDS / 60:.0f})"
    )


def measured_seconds(graph: Graph, options: SyntheticOptions) -> float:
    """CPU seconds of synthesising with ``options``, from one timed step: the forward and
    backward pass of one batch of random inputs through the torch backend (after one untimed
    step), per input, times ``samples x (iterations + 1)``. The formula of ``Workload`` is
    fitted on small images: MTCNN's P-Net at 192x144 (narrow convs, large maps) it puts at
    141 s; synthesising took 560 s, and one step here says about 630 s."""
    import torch

    from irprune.backends.torch import GraphModule

    shapes = input_shapes(graph)
    module = GraphModule(graph).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    n = max(1, min(options.batch, options.samples))

    def step() -> None:
        x = {k: torch.randn((n, *shape), requires_grad=True) for k, shape in shapes.items()}
        outs = [o for o in module.run(x) if o.is_floating_point()]
        sum((o.float().square().mean() for o in outs), torch.zeros(())).backward()

    step()
    start = time.process_time()
    step()
    per_input = (time.process_time() - start) / n
    return options.samples * (options.iterations + 1) * per_input


def _torch_missing() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return True
    return False


def _no_synthesis_reason(graph: Graph | None, seconds: float) -> str | None:
    """Why the default cannot synthesise (``graph`` None: not imported), or None when it can."""
    if seconds > AUTO_MAX_CPU_SECONDS:
        return _over_budget(seconds, "estimated")
    if graph is None:
        return "synthesising inputs needs the torch extra (pip install 'irprune[torch]')"
    try:
        input_shapes(graph)
    except UsageError as exc:
        return f"inputs cannot be synthesised ({exc})"
    if not bn_targets(graph) and not prior_targets(graph):
        return "the model has no BatchNormalization statistics or Conv layers to match"
    return None
