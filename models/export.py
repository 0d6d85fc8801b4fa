"""Export the reference models to ONNX in two styles and cache the results.

Styles:
  * ``"folded"``: eval-mode export; the exporter fuses every BatchNormalization into the
    preceding Conv. Only BNs not fed by a Conv survive (DenseNet's pre-activation BNs after
    Concat/pooling: 15 in ``densenet_small``); all other models have no BN left.
  * ``"explicit"``: identical graph, but every BatchNorm stays an inference-form
    ``BatchNormalization`` node (one output, ``training_mode=0``).

What keeps BN explicit (TorchScript exporter, torch 2.13): the Conv+BN fusion is done by
``_jit_pass_onnx_eval_peephole``, which only runs when ``do_constant_folding=True`` *and*
``training == TrainingMode.EVAL``. We export the eval-mode model with
``training=TrainingMode.PRESERVE`` (the module stays in eval mode, so BN is exported in
inference form) and keep constant folding on, so nothing but the fusion differs.

CLI: ``python -m models.export --out DIR [--size test|full] [--style folded|explicit|both]
[--seed N] [--opset N] [names...]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import onnx
import torch

from models.reference import REFERENCE_MODELS, Size, build

Style = Literal["folded", "explicit"]
STYLES: tuple[Style, ...] = ("folded", "explicit")
MAX_IR_VERSION = 13  # newest IR onnxruntime 1.31 can load
_FALLBACK_IR_VERSION = 10
_NOISY_WARNINGS = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "It is recommended that constant folding be turned off",
)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's expected deprecation/advice warnings (and only those)."""
    with warnings.catch_warnings():
        for msg in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=msg)
        yield


def export_kwargs(style: Style) -> dict[str, Any]:
    if style == "folded":
        return {"training": torch.onnx.TrainingMode.EVAL, "do_constant_folding": True}
    if style == "explicit":
        return {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": True}
    raise ValueError(f"unknown style {style!r}; choose from {STYLES}")


def validate_export(path: Path, style: Style) -> None:
    """Run the full ONNX checker, cap the IR version, and check the BatchNorm style.

    "folded" must have no BatchNormalization fed by a Conv. BNs that follow a Concat or a
    pool (DenseNet's pre-activation BN-ReLU-Conv) cannot be fused and legitimately remain.
    """
    model = onnx.load(path)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = min(model.ir_version, _FALLBACK_IR_VERSION)
        onnx.save(model, path)
    onnx.checker.check_model(model, full_check=True)
    conv_outputs = {o for n in model.graph.node if n.op_type == "Conv" for o in n.output}
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    if style == "folded" and any(n.input[0] in conv_outputs for n in bns):
        raise AssertionError(f"{path}: folded export still has a Conv -> BatchNormalization")
    if style == "explicit" and not bns:
        raise AssertionError(f"{path}: explicit export has no BatchNormalization node")
    for node in bns:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if len(node.output) != 1 or attrs.get("training_mode", 0) != 0:
            raise AssertionError(f"{path}: {node.name} is not in inference form")


def export(
    name: str,
    path: str | os.PathLike[str],
    style: Style,
    *,
    size: Size = "test",
    seed: int = 0,
    opset: int = 17,
) -> Path:
    """Export reference model ``name`` (built by ``build(name, seed)``) to ``path``.

    ``size="test"`` uses the model's small test resolution and 10 classes (VGG also gets a
    narrow classifier); ``size="full"`` uses 224x224 and 1000 classes. The graph has one
    input ``"input"`` of shape ``[batch, 3, H, W]`` and one output ``"logits"`` of shape
    ``[batch, classes]``, with ``batch`` symbolic. Returns ``path`` as a :class:`Path`.
    """
    spec = REFERENCE_MODELS[name]
    kwargs = export_kwargs(style)
    model = build(name, seed, **spec.kwargs(size))
    sample = torch.zeros(spec.input_shape(size, batch=2))
    path = Path(path)
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            model,
            (sample,),
            path,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            **kwargs,
        )
    validate_export(path, style)
    return path


def _code_version() -> str:
    """Short hash of the model/export sources, so cached files go stale when they change."""
    digest = hashlib.sha256()
    for module in ("architectures.py", "reference.py", "export.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()[:8]


def cache_filename(
    name: str, style: Style, *, size: Size = "test", seed: int = 0, opset: int = 17
) -> str:
    """File name encoding every export parameter plus the source version."""
    return f"{name}_{style}_{size}_seed{seed}_opset{opset}_{_code_version()}.onnx"


def cached_export(name: str, style: Style, cache_dir: str | os.PathLike[str], **kw: Any) -> Path:
    """Return the cached export for these parameters, exporting it first if missing.

    ``kw`` are the keyword arguments of :func:`export` (``size``, ``seed``, ``opset``).
    The file is written under a temporary name and renamed atomically, so concurrent
    callers never observe a partial model.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / cache_filename(name, style, **kw)
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        export(name, tmp, style, **kw)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export reference models to ONNX.")
    parser.add_argument(
        "names", nargs="*", help=f"models (default: all of {list(REFERENCE_MODELS)})"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--size", choices=["test", "full"], default="test")
    parser.add_argument("--style", choices=[*STYLES, "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opset", type=int, default=17)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: export the requested models, one line per file."""
    args = _parse_args(argv)
    names = args.names or list(REFERENCE_MODELS)
    unknown = sorted(set(names) - set(REFERENCE_MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(REFERENCE_MODELS)}")
    styles = STYLES if args.style == "both" else (args.style,)
    args.out.mkdir(parents=True, exist_ok=True)
    params = {"size": args.size, "seed": args.seed, "opset": args.opset}
    for name in names:
        for style in styles:
            path = args.out / cache_filename(name, style, **params)
            start = time.perf_counter()
            export(name, path, style, **params)
            seconds = time.perf_counter() - start
            mb = path.stat().st_size / 1e6
            print(f"{path}  {mb:9.2f} MB  {seconds:7.2f} s", flush=True)


if __name__ == "__main__":
    main()
