"""Small CNNs trained on scikit-learn's bundled digits data set, for fidelity benchmarks.

Data: ``sklearn.datasets.load_digits`` (1797 8x8 grey images, bundled, no download), scaled
to [0, 1], upsampled to 32x32 (bilinear), repeated to **3 channels** (so the nets keep
CIFAR's ``[N, 3, 32, 32]`` input) and normalised with the training split's mean/std. The
split is stratified and seeded: 1347 train / 450 test images.

Nets (plain torch, CIFAR-style): ``resnet20`` (option-B 1x1 projection shortcuts),
``vgg_small`` and ``mobilenetv2_small`` (width 0.5, 9 inverted residual blocks).

Everything is cached: the trained state_dict (keyed by this file's hash and the seed), the
ONNX exports (keyed also by ``models/export.py``'s hash), all written atomically.
Calibration data (``calib.npz``) comes from the training split only; accuracy is measured
on the held-out split (``test.npz``).

CLI: ``python -m models.digits --out DIR [--seed N] [names...]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.export import STYLES, Style, export_kwargs, quiet_exporter, validate_export

__all__ = [
    "ARCHITECTURES",
    "DigitsSplit",
    "TrainInfo",
    "accuracy",
    "build",
    "cached_digits_model",
    "cached_digits_onnx",
    "calib_subset",
    "count_macs",
    "digits_npz",
    "export_digits",
    "load_digits_split",
    "mobilenetv2_small",
    "resnet20",
    "torch_accuracy",
    "train",
    "vgg_small",
]

SIZE = 32
CHANNELS = 3
NUM_CLASSES = 10
TEST_SIZE = 450
CALIB_SIZE = 256
MAX_REL_DIFF = 1e-4

# --------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class DigitsSplit:
    """Normalised float32 NCHW images ``[N, 3, 32, 32]`` and int64 labels.

    ``train_index`` / ``test_index`` are the rows of ``load_digits()`` each image came from;
    ``mean`` / ``std`` are the training-split statistics used to normalise both splits.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    mean: float
    std: float


def _upsample(images: np.ndarray) -> np.ndarray:
    """``[N, 8, 8]`` in [0, 1] -> ``[N, 3, 32, 32]`` float32 (bilinear, channel repeat)."""
    x = torch.from_numpy(images.astype(np.float32))[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.repeat(1, CHANNELS, 1, 1).numpy()


def load_digits_split(seed: int = 0) -> DigitsSplit:
    """The digits data set, stratified and seeded into 1347 train / 450 test images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train_index, test_index = train_test_split(
        index, test_size=TEST_SIZE, stratify=digits.target, random_state=seed
    )
    images = _upsample(digits.images / 16.0)
    mean, std = float(images[train_index].mean()), float(images[train_index].std())
    images = (images - mean) / std
    labels = digits.target.astype(np.int64)
    return DigitsSplit(
        x_train=np.ascontiguousarray(images[train_index]),
        y_train=labels[train_index],
        x_test=np.ascontiguousarray(images[test_index]),
        y_test=labels[test_index],
        train_index=train_index,
        test_index=test_index,
        mean=mean,
        std=std,
    )


def calib_subset(split: DigitsSplit, n: int = CALIB_SIZE, seed: int = 0) -> np.ndarray:
    """Row indices into ``split.x_train`` of a seeded calibration subset (training data only)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(split.x_train), size=n, replace=False))


def _atomic_write(target: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as f:
        np.savez(f, **arrays)


def digits_npz(
    split: DigitsSplit, cache_dir: str | os.PathLike[str], *, n: int = CALIB_SIZE, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``calib.npz`` (``"input"``: ``n`` seeded training images) and ``test.npz``
    (``"input"``, ``"labels"``: the full test split) under ``cache_dir``; return both paths.

    The files are rewritten (atomically) on every call, so they always match ``split``.
    """
    cache_dir = Path(cache_dir)
    calib = split.x_train[calib_subset(split, n, seed)]
    calib_path = _atomic_write(cache_dir / "calib.npz", lambda p: _save_npz(p, input=calib))
    test_path = _atomic_write(
        cache_dir / "test.npz", lambda p: _save_npz(p, input=split.x_test, labels=split.y_test)
    )
    return calib_path, test_path


# --------------------------------------------------------------------------- architectures


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Bias-free conv with "same" padding, then BatchNorm."""
    conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit/zero BN, PyTorch-default Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, residual Add (1x1 conv-BN projection if needed), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout, 3)
        )
        project = stride != 1 or cin != cout
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if project else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + identity)


class ResNet20(nn.Module):
    """CIFAR ResNet-20: 3x3 stem, 3 stages x 3 BasicBlocks (16/32/64), avgpool, Linear."""

    def __init__(self, num_classes: int = NUM_CLASSES, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(CHANNELS, widths[0], 3), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for j in range(3):
                blocks.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


_VGG_CFG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128, "M")


class VGGSmall(nn.Module):
    """conv-BN-ReLU stacks 32-32-M-64-64-M-128-128-M, flatten (128 x 4 x 4), Linear 128, Linear.

    The spatial Flatten keeps a Conv -> Flatten -> Gemm block map (16 columns per channel).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = CHANNELS
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*_conv_bn(cin, int(v), 3), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 4 * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU6 (if t > 1), 3x3 depthwise-BN-ReLU6, 1x1 linear project-BN, [+ x]."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# (expansion t, output channels c, repeats n, first stride s): CIFAR MobileNetV2 at width 0.5,
# cut to 9 blocks; 4 of them carry a residual Add.
_MBV2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 8, 1, 1),
    (6, 16, 2, 1),
    (6, 24, 3, 2),
    (6, 32, 2, 2),
    (6, 48, 1, 1),
)


class MobileNetV2Small(nn.Module):
    """3x3 stem (16), 9 inverted residual blocks, 1x1 conv to 320, avgpool, Linear."""

    def __init__(self, num_classes: int = NUM_CLASSES, last: int = 320) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(CHANNELS, 16, 3), nn.ReLU6(inplace=True)]
        cin = 16
        for t, c, n, s in _MBV2_CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def resnet20(num_classes: int = NUM_CLASSES) -> ResNet20:
    """CIFAR ResNet-20 with projection shortcuts (about 0.27M parameters)."""
    return ResNet20(num_classes)


def vgg_small(num_classes: int = NUM_CLASSES) -> VGGSmall:
    """VGG-style 6-conv net with a 2-layer classifier."""
    return VGGSmall(num_classes)


def mobilenetv2_small(num_classes: int = NUM_CLASSES) -> MobileNetV2Small:
    """CIFAR MobileNetV2 at width 0.5 with 9 inverted residual blocks."""
    return MobileNetV2Small(num_classes)


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "resnet20": resnet20,
    "vgg_small": vgg_small,
    "mobilenetv2_small": mobilenetv2_small,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Untrained, seeded instance of architecture ``name`` (10 classes)."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown digits model {name!r}; choose from {list(ARCHITECTURES)}")
    torch.manual_seed(seed)
    return ARCHITECTURES[name]()


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one ``[1, 3, 32, 32]`` image."""
    total = 0

    def hook(m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.weight[0, 0].numel()
        else:
            total += out.numel() * m.in_features

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, CHANNELS, SIZE, SIZE))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


# --------------------------------------------------------------------------- training

# Per-net defaults, measured single-threaded (see the module's CLI): (epochs, lr).
TRAIN_DEFAULTS: dict[str, tuple[int, float]] = {
    "resnet20": (15, 0.1),
    "vgg_small": (10, 0.02),  # 0.05 diverges (66% test accuracy)
    "mobilenetv2_small": (15, 0.1),
}


@dataclass(frozen=True)
class TrainInfo:
    """How a cached model was trained: epochs, wall seconds and torch test accuracy."""

    epochs: int
    seconds: float
    test_accuracy: float


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Temporarily limit torch's intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Shift each image by up to ``max_shift`` px in x and y (replicate-padded random crop)."""
    if max_shift == 0:
        return x
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=gen).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(offsets)])


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    data: tuple[Tensor, Tensor],
    batch: int,
    gen: torch.Generator,
) -> None:
    """One pass over ``data`` in a seeded random order, with seeded shift augmentation."""
    x, y = data
    model.train()
    for idx in torch.randperm(len(x), generator=gen).split(batch):
        loss = F.cross_entropy(model(_shift(x[idx], 2, gen)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def train(
    name: str,
    split: DigitsSplit,
    seed: int = 0,
    epochs: int | None = None,
    *,
    lr: float | None = None,
    batch: int = 64,
    weight_decay: float = 5e-4,
    threads: int = 1,
) -> nn.Module:
    """Train ``name`` on ``split``'s training images; return it in eval mode.

    SGD (momentum 0.9, Nesterov) with a per-step cosine schedule from ``lr`` to 0, batch
    ``batch``, random shifts of up to 2 px. Seeded: same seed, same weights (single thread).
    ``epochs`` / ``lr`` default to :data:`TRAIN_DEFAULTS`.
    """
    default_epochs, default_lr = TRAIN_DEFAULTS[name]
    epochs = epochs or default_epochs
    with _threads(threads):
        model = build(name, seed)
        gen = torch.Generator().manual_seed(seed)
        data = (torch.from_numpy(split.x_train), torch.from_numpy(split.y_train))
        opt = torch.optim.SGD(
            model.parameters(),
            lr=lr or default_lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=weight_decay,
        )
        steps = epochs * -(-len(data[0]) // batch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(epochs):
            _train_epoch(model, opt, sched, data, batch, gen)
    return model.eval()


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of an eval-mode torch model."""
    model.eval()
    with torch.no_grad():
        preds = [
            model(torch.from_numpy(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)
        ]
    return float((torch.cat(preds).numpy() == y).mean())


# --------------------------------------------------------------------------- cache + export


def _hash(*files: str) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:8]


def _save_torch(path: Path, obj: Any) -> None:
    torch.save(obj, path)


def cached_digits_model(
    name: str, cache_dir: str | os.PathLike[str], seed: int = 0
) -> tuple[nn.Module, TrainInfo]:
    """The trained net (eval mode) and its :class:`TrainInfo`, training it once if not cached.

    The split is ``load_digits_split(seed)``; the cache file is keyed by this file's hash.
    """
    target = Path(cache_dir) / f"digits_{name}_seed{seed}_{_hash('digits.py')}.pt"
    if not target.is_file():
        split = load_digits_split(seed)
        start = time.perf_counter()
        model = train(name, split, seed)
        seconds = time.perf_counter() - start
        record = {
            "state_dict": model.state_dict(),
            "epochs": TRAIN_DEFAULTS[name][0],
            "seconds": seconds,
            "test_accuracy": torch_accuracy(model, split.x_test, split.y_test),
        }
        _atomic_write(target, lambda p: _save_torch(p, record))
    record = torch.load(target, weights_only=True)
    model = build(name, seed)
    model.load_state_dict(record["state_dict"])
    info = TrainInfo(record["epochs"], record["seconds"], record["test_accuracy"])
    return model.eval(), info


def _ort_session(model: onnx.ModelProto | str | os.PathLike[str], optimize: bool = True):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _check_against_torch(path: Path, model: nn.Module, sample: np.ndarray) -> float:
    """Max |ORT - torch| / max |torch| on ``sample`` (ORT optimizations off); raise if too big."""
    with torch.no_grad():
        expected = model(torch.from_numpy(sample)).numpy()
    (got,) = _ort_session(path, optimize=False).run(["logits"], {"input": sample})
    rel = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
    if rel > MAX_REL_DIFF:
        raise AssertionError(f"{path}: ORT vs torch max relative diff {rel:.2e} > {MAX_REL_DIFF}")
    return rel


def export_digits(
    model: nn.Module,
    path: str | os.PathLike[str],
    style: Style,
    sample: np.ndarray,
    opset: int = 17,
) -> Path:
    """Export an eval-mode digits net to ONNX in ``style``, check it, compare ORT with torch.

    Input ``"input"`` ``[batch, 3, 32, 32]``, output ``"logits"`` ``[batch, 10]``, batch
    symbolic. Runs the full ONNX checker (and the BN style check of :mod:`models.export`),
    then requires max relative ORT/torch difference on ``sample`` <= :data:`MAX_REL_DIFF`.
    """
    path = Path(path)
    model.eval()
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            model,
            (torch.from_numpy(sample[:2]),),
            path,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            **export_kwargs(style),
        )
    validate_export(path, style)
    _check_against_torch(path, model, sample)
    return path


def cached_digits_onnx(
    name: str, style: Style, cache_dir: str | os.PathLike[str], *, seed: int = 0, opset: int = 17
) -> Path:
    """The trained net ``name`` exported in ``style`` (trained and exported once, cached)."""
    cache_dir = Path(cache_dir)
    key = _hash("digits.py", "export.py")
    target = cache_dir / f"digits_{name}_{style}_seed{seed}_opset{opset}_{key}.onnx"
    if target.is_file():
        return target
    model, _ = cached_digits_model(name, cache_dir, seed)
    sample = load_digits_split(seed).x_test[:64]
    return _atomic_write(target, lambda p: export_digits(model, p, style, sample, opset))


def accuracy(
    model: onnx.ModelProto | str | os.PathLike[str], x: np.ndarray, y: np.ndarray, batch: int = 256
) -> float:
    """Top-1 accuracy of an ONNX classifier (first input, first output) in onnxruntime CPU."""
    sess = _ort_session(model)
    feed = sess.get_inputs()[0].name
    preds = [sess.run(None, {feed: x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
    return float((np.concatenate(preds) == y).mean())


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train digits CNNs, export them, report.")
    parser.add_argument("names", nargs="*", help=f"nets (default: all of {list(ARCHITECTURES)})")
    parser.add_argument("--out", type=Path, required=True, help="cache/output directory")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train (or load) every net, export both styles, print one table row per file."""
    args = _parse_args(argv)
    names = args.names or list(ARCHITECTURES)
    unknown = sorted(set(names) - set(ARCHITECTURES))
    if unknown:
        raise SystemExit(f"unknown net(s) {unknown}; choose from {list(ARCHITECTURES)}")
    split = load_digits_split(args.seed)
    calib, test = digits_npz(split, args.out, seed=args.seed)
    print(f"data: {len(split.x_train)} train / {len(split.x_test)} test; {calib}, {test}")
    header = f"{'net':<18} {'style':<9} {'params':>8} {'MACs':>11} {'epochs':>6} "
    print(header + f"{'train s':>8} {'acc torch':>9} {'acc ORT':>8}", flush=True)
    for name in names:
        model, info = cached_digits_model(name, args.out, args.seed)
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model)
        for style in STYLES:
            path = cached_digits_onnx(name, style, args.out, seed=args.seed)
            acc = accuracy(path, split.x_test, split.y_test)
            print(
                f"{name:<18} {style:<9} {params:>8,} {macs:>11,} {info.epochs:>6} "
                f"{info.seconds:>8.1f} {info.test_accuracy:>9.2%} {acc:>8.2%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
