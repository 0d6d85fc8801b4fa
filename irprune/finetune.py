"""Fine-tuning an ONNX model (typically a pruned one) through the torch backend.

``finetune(model, data, teacher=..., labels=..., epochs=N)`` trains every weight of the model
(``irprune.backends.torch``: conv/linear weights and biases, norm scales and biases; BN runs on
batch statistics and updates its running ones, unless ``freeze_bn``) on ``data`` (arrays keyed
by graph input name, batch on axis 0), and returns the trained model after the verification
every written model passes (``onnx.checker`` full check, shape inference, an onnxruntime run);
``FinetuneResult.save`` writes it atomically.

The loss: with ``labels``, cross-entropy for classifier-shaped outputs ([N, K], K > 1, integer
labels) and mean squared error otherwise; with a ``teacher`` (the original model, run in
onnxruntime), knowledge distillation: KL divergence between the softened softmaxes
(``temperature``, scaled by T^2, Hinton et al. 2015) for classifier outputs ([N, K] logits, and
outputs a Softmax produces, per position over its axis: a recognizer's [N, T, K] per-step
probabilities), MSE divided by the teacher output's variance otherwise; with both, their sum.
SGD with Nesterov momentum (default, lr 0.05: the setting that recovers every digits net within
a point in 5 epochs: docs/training.md) or Adam, a cosine learning-rate schedule over all
steps, seeded shuffling. torch is imported only when ``finetune`` runs.

Training never makes the model worse on data it did not train on: a seeded tenth of the rows
(at most ``MAX_HELD_OUT``; none below 20 rows) is held out, its loss measured in eval mode
before training and after every epoch, and the weights of the best of these (the model as given
included) are the ones returned (``FinetuneResult.held_out``, ``best_epoch``); when none beats
the model as given, it is returned unchanged, byte for byte, with a warning.

With the default settings (no ``lr``, ``clip`` or ``freeze_bn`` given) two recipes are tried for
one epoch each and the one with the lower held-out loss goes on: the digits setting above, and
the gentle recipe for a pretrained model near its teacher (Adam at ``GENTLE_LR``, BN statistics
frozen, the gradient norm clipped at ``GENTLE_CLIP``). ``clip`` clips every step's gradient norm.

A model whose Conv/Gemm outputs are not normalised (an export with BN folded into the convs)
trains with a temporary BatchNormalization after each of them (``backends.tempnorm``: set to
the identity from the statistics on ``data``, trained on batch statistics, re-estimated and
folded back into the producer's weights afterwards), so the written model has the same nodes;
``temporary_bn=False`` turns this off, and ``freeze_bn`` implies it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from irprune import distributed
from irprune.emit import atomic_write, to_model, verify
from irprune.emit.verify import captured_warnings, run_batched, session, warned_values
from irprune.errors import CalibrationError, UsageError
from irprune.frontends.onnx import load_model
from irprune.passes.calibration import limit_batch
from irprune.progress import track

if TYPE_CHECKING:
    import torch

    from irprune.backends.torch import GraphModule

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 1e-3, "sgd": 5e-2}
# The gentle recipe, tried for one epoch beside the digits setting when no settings are given:
# a pretrained model near its teacher is past where the digits setting helps. PP-OCRv4 rec pruned
# to 0.5 and repaired (held-out KL 0.101): SGD 0.05 lost accuracy in one epoch; at lr 0 BN's
# batch statistics alone took it from 95% to 90% of lines; with BN frozen and clipped, SGD at
# 1e-3 and 3e-4 raised the held-out loss (0.114, 0.103), Adam at 1e-4 lowered it (0.090).
# PP-OCR cls pruned to 0.5 (90.5%): 29 epochs of the gentle recipe, 99.0% (the original 98.0).
GENTLE_OPTIMIZER = "adam"
GENTLE_LR = 1e-4
GENTLE_CLIP = 1.0
MAX_HELD_OUT = 256  # rows held out to choose the epoch returned (a tenth of the data at most)
Progress = Callable[[int, int, int, float], None]  # (epoch, step, steps per epoch, loss)
Source = str | Path | onnx.ModelProto


@dataclass
class FinetuneResult:
    model: onnx.ModelProto
    losses: list[float]  # mean training loss of each epoch
    seconds: float
    serialized: bytes = field(default=b"", repr=False)
    temporary_norms: int = 0  # BatchNormalization nodes added for training and folded back
    held_out: list[float] = field(default_factory=list)  # before training, then per epoch
    best_epoch: int = 0  # the epoch whose weights were returned (0: the model as given)
    # the settings of the run returned (the default's retry: the gentle recipe), to go on with
    lr: float = 0.0
    optimizer: str = "sgd"
    freeze_bn: bool = False
    clip: float | None = None
    recipes: int = 1  # recipes whose first epoch ran (the default tries two and keeps one)

    def save(self, path: str | Path) -> Path:
        return atomic_write(self.serialized or self.model, path)


@dataclass(frozen=True)
class _Setup:
    epochs: int
    batch: int
    lr: float
    optimizer: str
    temperature: float
    seed: int
    clip: float | None = None  # the largest gradient norm of a step (None: not clipped)
    freeze_bn: bool = False
    # outputs that are probabilities (a Softmax's output): output name -> the class axis
    softmax_axes: Mapping[str, int] = field(default_factory=dict)


def finetune(
    model: Source,
    data: str | Path | Mapping[str, np.ndarray],
    *,
    teacher: Source | None = None,
    labels: str | np.ndarray | Mapping[str, np.ndarray] | None = None,
    epochs: int = 1,
    batch: int = 32,
    lr: float | None = None,
    optimizer: str = "sgd",
    temperature: float = 1.0,
    freeze_bn: bool = False,
    temporary_bn: bool = True,
    clip: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Train ``model`` on ``data`` and return it verified (nothing is written).

    ``labels``: one array (for the first output) or arrays keyed by output name, rows aligned
    with ``data``; or, when ``data`` is a .npz path, the key of the labels array in it.
    BatchNormalization trains on batch statistics and updates its running statistics unless
    ``freeze_bn``. ``temporary_bn``: see the module docstring. ``progress`` is called after
    every step.
    """
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if epochs < 1 or batch < 1 or temperature <= 0:
        raise UsageError("epochs and batch must be >= 1 and temperature > 0")
    if teacher is None and labels is None:
        raise UsageError("fine-tuning needs labels or a teacher model to distil from")
    rate = DEFAULT_LR[optimizer] if lr is None else lr
    setup = _Setup(epochs, batch, rate, optimizer, temperature, seed, clip)
    torch, backend = _torch()
    from irprune.backends import torch_norm

    arrays = _read(data)
    student = backend.import_graph(model, data_shapes=_data_shapes(arrays))
    where = str(data) if isinstance(data, str | Path) else "data"
    feeds, targets = _data(arrays, labels, student, where)
    setup = replace(setup, softmax_axes=softmax_outputs(student))
    fixed = limit_batch(student, batch)
    if fixed < batch:
        log.info("the model fixes its batch at %d: it trains in batches of that size", fixed)
        setup = replace(setup, batch=fixed)
    start = time.perf_counter()
    teacher_session = session(load_model(teacher), threads=2) if teacher is not None else None
    recipes = [replace(setup, freeze_bn=freeze_bn)]
    if lr is None and clip is None and not freeze_bn:
        gentle = replace(setup, optimizer=GENTLE_OPTIMIZER, lr=GENTLE_LR, clip=GENTLE_CLIP)
        recipes.append(replace(gentle, freeze_bn=True))
    data_ = (feeds, targets)
    run = _choose(torch, student, data_, teacher_session, recipes, temporary_bn, progress)
    for _ in range(1, epochs):
        run.epoch()
    held, setup, losses = run.finish(), run.setup, run.losses
    module, normalised = run.module, run.normalised
    best = int(np.argmin(held)) if held else epochs
    given = load_model(model).SerializeToString()
    if best == 0:  # no epoch beat the model as given: return it as it came, byte for byte
        trained = given
    else:
        torch_norm.finish(student, module, normalised, feeds)
        trained = to_model(student).SerializeToString()
    seconds = time.perf_counter() - start
    first = {k: v[: min(batch, 8)] for k, v in feeds.items()}
    verify(trained, first, tolerated=misdeclared(given, first))
    log.info("fine-tuned %d epochs in %.1f s; losses %s", epochs, seconds, losses)
    count = 0 if normalised is None else len(normalised.norms)
    model_out = onnx.ModelProto.FromString(trained)
    return FinetuneResult(
        model_out, losses, seconds, trained, count, held, best, setup.lr, setup.optimizer,
        setup.freeze_bn, setup.clip, len(recipes),
    )  # fmt: skip


def _choose(
    torch: Any,
    student: Any,
    data: tuple[Mapping[str, np.ndarray], Mapping[int | str, np.ndarray]],
    teacher: Any,
    recipes: list[_Setup],
    temporary_bn: bool,
    progress: Progress | None,
) -> _Run:
    """The run to go on with: with one recipe, its run; with the default's two (the digits
    setting and the gentle one), the first epoch of each, and the one whose held-out loss is
    lower after it (the first on a tie, or with nothing held out)."""
    runs = []
    for setup in recipes:
        run = _Run(torch, student, data, teacher, setup, temporary_bn, progress)
        run.epoch()
        runs.append(run)
    chosen = min(runs, key=lambda r: r.trained_best)  # min keeps the first of equals
    if len(runs) > 1:
        log.info(
            "first epoch's held-out loss: %s; going on with %s at lr %g%s",
            ", ".join(f"{r.setup.optimizer} lr {r.setup.lr:g} {r.trained_best:.4g}" for r in runs),
            chosen.setup.optimizer, chosen.setup.lr,
            " (BN frozen, clipped)" if chosen.setup.freeze_bn else "",
        )  # fmt: skip
    return chosen


def misdeclared(model: bytes, feeds: Mapping[str, np.ndarray]) -> frozenset[str]:
    """The values whose declared shapes the model as given already contradicts on ``feeds``
    (an exporter's wrong output declaration): the trained model keeps them, so verification
    tolerates onnxruntime's warnings about those, as pruning does for the original's."""
    with captured_warnings() as warned:
        run_batched(session(model, prepack=False, warnings=True), None, feeds)
    return warned_values(warned)


def batch_bounds(rows: int, batch: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch of an epoch; a trailing remainder smaller than half a batch
    joins the last batch (a BN trained on a batch of 3 images sees noise for statistics)."""
    starts = list(range(0, rows, batch))
    if len(starts) > 1 and rows - starts[-1] < batch / 2:
        starts.pop()
    return [(a, b) for a, b in zip(starts, [*starts[1:], rows], strict=True)]


def _torch() -> tuple[Any, Any]:
    try:
        import torch

        from irprune.backends import torch as backend
    except ImportError as exc:
        from irprune.backends import missing_torch

        raise missing_torch("fine-tuning", exc) from exc
    return torch, backend


def _read(data: str | Path | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from irprune.arrays import read_folder
    from irprune.inputs import read_npz

    if isinstance(data, str | Path):
        if Path(data).is_dir():  # memory-mapped arrays and shards: read as arrays are
            return read_folder(Path(data))  # type: ignore[return-value]
        return read_npz(data)
    return dict(data)


def _data_shapes(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The training data's shapes (batch on axis 0), for models with symbolic input dims;
    arrays that are not model inputs (labels) are ignored by the shape resolution."""
    return {k: tuple(np.shape(v)) for k, v in arrays.items()}


def _data(
    given: Mapping[str, np.ndarray],
    labels: str | np.ndarray | Mapping[str, np.ndarray] | None,
    graph: Any,
    where: str,
) -> tuple[dict[str, np.ndarray], dict[int | str, np.ndarray]]:
    from irprune.inputs import check_inputs

    arrays = dict(given)
    targets: dict[int | str, np.ndarray] = {}
    if isinstance(labels, str):
        if labels not in arrays:
            raise CalibrationError(f"{where}: no labels array {labels!r} (has {sorted(arrays)})")
        targets[0] = arrays.pop(labels)
    elif isinstance(labels, Mapping):
        targets.update(labels)
    elif labels is not None:
        targets[0] = np.asarray(labels)
    check_inputs(arrays, graph, where)
    rows = len(next(iter(arrays.values())))
    for key, array in targets.items():
        if len(array) != rows:
            raise CalibrationError(f"labels {key!r} have {len(array)} rows, the data {rows}")
    return arrays, targets


def held_out_rows(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): a seeded tenth held out, at most ``MAX_HELD_OUT``."""
    held = min(MAX_HELD_OUT, rows // 10) if rows >= 20 else 0
    order = np.random.default_rng(seed + 1).permutation(rows)
    return np.sort(order[held:]), np.sort(order[:held])


class _Run:
    """One training run of ``setup``'s recipe, an epoch at a time: the module (with temporary
    BNs where needed), optimizer, cosine schedule over all its epochs, seeded shuffling, the
    held-out loss after every epoch."""

    def __init__(
        self,
        torch: Any,
        student: Any,
        data: tuple[Mapping[str, np.ndarray], Mapping[int | str, np.ndarray]],
        teacher: Any,
        setup: _Setup,
        temporary_bn: bool,
        progress: Progress | None,
    ) -> None:
        from irprune.backends import torch_norm

        self.torch, self.setup, self.progress, self.teacher = torch, setup, progress, teacher
        self.feeds, self.targets = data
        enabled = temporary_bn and not setup.freeze_bn
        self.module, self.normalised = torch_norm.prepare(student, self.feeds, enabled=enabled)
        self.module.train_batch_norm(not setup.freeze_bn)
        self.fit, held = held_out_rows(len(next(iter(self.feeds.values()))), setup.seed)
        self.bounds = batch_bounds(len(self.fit), setup.batch)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if setup.optimizer == "adam":
            self.opt = torch.optim.Adam(self.params, lr=setup.lr)
        else:
            self.opt = torch.optim.SGD(self.params, lr=setup.lr, momentum=0.9, nesterov=True)
        steps = setup.epochs * len(self.bounds)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, steps)
        self.gen = torch.Generator().manual_seed(setup.seed)
        self.check = _HeldOut(torch, self.module, self.feeds, self.targets, teacher, setup, held)
        self.where = distributed.world(torch)
        self.trainer = distributed.wrap(torch, self.module, self.where)
        self.losses: list[float] = []

    @property
    def trained_best(self) -> float:
        """The lowest held-out loss after an epoch (inf: nothing held out or trained)."""
        return min(self.check.losses[1:], default=float("inf"))

    def epoch(self) -> None:
        torch, module, setup, where = self.torch, self.module, self.setup, self.where
        if where.distributed:  # BN on the global batch's statistics, as one process has them
            module.batch_norm_override = distributed.synced_batch_norm(torch, module)
        module.train()
        total, done = 0.0, len(self.losses)
        order = self.fit[torch.randperm(len(self.fit), generator=self.gen).numpy()]
        label = f"fine-tuning epoch {done + 1}/{setup.epochs}"
        for step, (a, b) in enumerate(track(self.bounds, label) if where.main else self.bounds):
            idx = where.shard(order[a:b])  # this rank's share of the global batch
            chunk, wanted = _take(self.feeds, idx), _take(self.targets, idx)
            taught = _teach(self.teacher, chunk) if self.teacher is not None else None
            outs = _outputs(self.trainer(**chunk))
            loss = _loss(torch, module, outs, wanted, taught, setup)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP: gradients averaged over the ranks here
            if setup.clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, setup.clip)
            self.opt.step()
            self.sched.step()
            value = distributed.mean(torch, float(loss.detach()), where)
            total += value
            if self.progress is not None and where.main:
                self.progress(done, step, len(self.bounds), value)
        self.losses.append(total / len(self.bounds))
        module.batch_norm_override = None
        self.check.after_epoch()
        module.eval()

    def finish(self) -> list[float]:
        """The held-out losses, the module left at the best of its epochs (or as given)."""
        return self.check.restore_best(self.where.main)


def _outputs(out: Any) -> list[Any]:
    """A module call's outputs as a list (one output comes back bare)."""
    return list(out) if isinstance(out, tuple) else [out]


def _take(arrays: Mapping[Any, np.ndarray], rows: np.ndarray) -> dict[Any, np.ndarray]:
    return {k: v[rows] for k, v in arrays.items()}


class _HeldOut:
    """The held-out loss of the module in eval mode, and the weights of its best epoch."""

    def __init__(
        self,
        torch: Any,
        module: GraphModule,
        feeds: Mapping[str, np.ndarray],
        targets: Mapping[int | str, np.ndarray],
        teacher: Any,
        setup: _Setup,
        rows: np.ndarray,
    ) -> None:
        self.torch, self.module, self.setup = torch, module, setup
        bounds = batch_bounds(len(rows), setup.batch) if len(rows) else []
        self.chunks = [(_take(feeds, rows[a:b]), _take(targets, rows[a:b])) for a, b in bounds]
        self.taught = [_teach(teacher, c) if teacher is not None else None for c, _ in self.chunks]
        self.losses: list[float] = []
        self.best: dict[str, Any] | None = None
        if self.chunks:
            self.after_epoch()

    def loss(self) -> float:
        self.module.eval()
        total = 0.0
        with self.torch.no_grad():
            for (chunk, wanted), taught in zip(self.chunks, self.taught, strict=True):
                out = self.module.run(chunk)
                total += float(_loss(self.torch, self.module, out, wanted, taught, self.setup))
        self.module.train()
        return total / len(self.chunks)

    def after_epoch(self) -> None:
        if not self.chunks:
            return
        value = self.loss()
        if not self.losses or value < min(self.losses):
            self.best = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.losses.append(value)

    def restore_best(self, warn: bool = True) -> list[float]:
        if self.best is None:
            return self.losses
        best = int(np.argmin(self.losses))
        if best != len(self.losses) - 1:
            self.module.load_state_dict(self.best)
            log.info(
                "held-out loss best after epoch %d of %d: those weights are kept",
                best,
                len(self.losses) - 1,
            )
        if best == 0 and warn:
            log.warning(
                "fine-tuning did not lower the held-out loss (%.4g before, %.4g at best after an "
                "epoch, lr %g): the model is returned as given; try a smaller learning rate "
                "(--lr)",
                self.losses[0], min(self.losses[1:]), self.setup.lr,
            )  # fmt: skip
        return self.losses


def softmax_outputs(graph: Any) -> dict[str, int]:
    """The outputs a Softmax produces (a recognizer's per-step class probabilities): name ->
    the axis it normalises."""
    out = {}
    for value in graph.outputs:
        node = value.producer
        if node is None or node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        opset = graph.opset_imports.get("", 13)
        axis = int(node.attr("axis", -1 if opset >= 13 else 1))
        rank = value.rank
        if rank is not None and (opset >= 13 or axis % rank == rank - 1):
            out[value.name] = axis % rank
    return out


def _kl_probabilities(torch: Any, out: Any, t: Any, axis: int, setup: _Setup) -> Any:
    """KL(teacher || student) over the class axis of two probability tensors, per position
    (batch and time), softened by the temperature on the log-probabilities (what softening the
    logits would give), scaled by T^2 as for logits."""
    F, temperature = torch.nn.functional, setup.temperature
    soft = F.log_softmax(torch.log(t.clamp_min(1e-12)) / temperature, dim=axis)
    log_p = F.log_softmax(torch.log(out.clamp_min(1e-12)) / temperature, dim=axis)
    kl = (soft.exp() * (soft - log_p)).sum(dim=axis).mean()
    return kl * temperature**2


def _teach(teacher: Any, chunk: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in teacher.get_outputs()]
    return dict(zip(names, run_batched(teacher, names, chunk), strict=True))


def _loss(
    torch: Any,
    module: GraphModule,
    outs: list[torch.Tensor],
    labels: Mapping[int | str, np.ndarray],
    taught: Mapping[str, np.ndarray] | None,
    setup: _Setup,
) -> torch.Tensor:
    from irprune.passes.importance.gradient import is_classifier, task_loss

    F = torch.nn.functional
    temperature = setup.temperature
    total = torch.zeros(())
    for i, (name, out) in enumerate(zip(module.output_names, outs, strict=True)):
        if not out.is_floating_point():
            continue
        given = labels.get(name, labels.get(i))
        if given is not None:
            total = total + task_loss(out, given)
        if taught is not None and name in taught:
            t = torch.from_numpy(np.asarray(taught[name])).to(out.dtype)
            if name in setup.softmax_axes:
                total = total + _kl_probabilities(torch, out, t, setup.softmax_axes[name], setup)
            elif is_classifier(out):
                soft = F.log_softmax(t / temperature, dim=1)
                log_p = F.log_softmax(out / temperature, dim=1)
                kl = F.kl_div(log_p, soft, log_target=True, reduction="batchmean")
                total = total + kl * temperature**2
            else:
                total = total + F.mse_loss(out, t) / (t.var() + 1e-12)
    return total
