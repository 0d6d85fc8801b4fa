"""Export zoo models to ONNX (TorchScript exporter), verify against torch, and cache.

Styles are those of :mod:`models.export`: ``"folded"`` (eval export, Conv+BN fused) and
``"explicit"`` (``training=TrainingMode.PRESERVE`` on the eval model: BatchNormalization nodes
kept in inference form). Models without BN only have ``"folded"`` (see ``ZooSpec.styles``).

Every export: opset ``spec.opset`` (17), the batch dim of every input and output symbolic
("batch"), IR version <= 13, ``onnx.checker`` full check, and outputs within 1e-4 (max |diff| /
max |out|) of torch's on seeded inputs in onnxruntime with graph optimizations disabled.

CLI: ``python -m models.zoo_export --out DIR [--style folded|explicit|both] [names...]``
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
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.export import Style, export_kwargs, quiet_exporter, validate_export
from models.zoo import ZOO, build_zoo, sample_inputs

TOLERANCE = 1e-4
_SOURCES = (
    "zoo.py", "zoo_common.py", "zoo_resnets.py", "zoo_cnn.py", "zoo_dense.py",
    "zoo_transformers.py", "zoo_export.py", "architectures.py", "reference.py",
)  # fmt: skip


_NOISY_WARNINGS = (
    "Constant folding - Only steps=1",
    "ONNX export mode is set to TrainingMode.EVAL, but operator 'instance_norm'",
    "Exporting aten::index operator of advanced indexing",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """``models.export``'s filters plus the tracer's and the exporter's expected advice.

    Tracer warnings flag Python control flow on shapes (transformers' input checks): the
    shapes are fixed here, and every export is checked against torch on a different batch.
    """
    with quiet_exporter(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for msg in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=msg)
        yield


class ExportMismatch(AssertionError):
    """The exported graph does not compute what the torch model computes."""


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify_against_torch(
    name: str, path: Path, model: torch.nn.Module, batch: int = 3, seed: int = 7
) -> float:
    """Max over outputs of max |onnx - torch| / max |torch| on seeded inputs (batch != export's)."""
    spec = ZOO[name]
    args = sample_inputs(name, batch=batch, seed=seed)
    with torch.no_grad():
        expected = model(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    sess = _session(path)
    feeds = {i.name: a.numpy() for i, a in zip(spec.inputs, args, strict=True)}
    got = sess.run(list(spec.outputs), feeds)
    worst = 0.0
    for out, e, g in zip(spec.outputs, expected, got, strict=True):
        e = e.numpy()
        if e.shape != g.shape:
            raise ExportMismatch(f"{name}: output {out!r} has shape {g.shape}, torch {e.shape}")
        worst = max(worst, float(np.max(np.abs(e - g))) / max(float(np.max(np.abs(e))), 1e-12))
    if not worst <= TOLERANCE:
        raise ExportMismatch(f"{name}: onnxruntime differs from torch by {worst:.3g} (relative)")
    return worst


def _validate(name: str, path: Path, style: Style) -> None:
    """The reference models' checks (checker, IR cap, BN style), plus a symbolic batch dim."""
    validate_export(path, style)
    model = onnx.load(path)
    for value in (*model.graph.input, *model.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if dim0.dim_param != "batch":
            raise AssertionError(f"{path}: {value.name!r} has no symbolic batch dim")


def export_zoo(name: str, path: str | os.PathLike[str], style: Style, *, seed: int = 0) -> Path:
    """Export zoo model ``name`` (``build_zoo(name, seed)``) to ``path`` and verify it."""
    spec = ZOO[name]
    if style not in spec.styles:
        raise ValueError(f"{name} has no BatchNorm: only styles {spec.styles}")
    model = build_zoo(name, seed)
    args = sample_inputs(name, batch=2, seed=seed)
    names = [i.name for i in spec.inputs] + list(spec.outputs)
    path = Path(path)
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            input_names=[i.name for i in spec.inputs],
            output_names=list(spec.outputs),
            dynamic_axes={n: {0: "batch"} for n in names},
            opset_version=spec.opset,
            **export_kwargs(style),
        )
    _validate(name, path, style)
    verify_against_torch(name, path, model)
    return path


def code_version() -> str:
    """Hash of the zoo sources plus the torch / transformers versions."""
    digest = hashlib.sha256()
    for module in _SOURCES:
        digest.update((Path(__file__).parent / module).read_bytes())
    digest.update(torch.__version__.encode())
    try:
        import transformers

        digest.update(transformers.__version__.encode())
    except ImportError:
        pass
    return digest.hexdigest()[:8]


def zoo_cache_filename(name: str, style: Style, *, seed: int = 0) -> str:
    return f"zoo_{name}_{style}_seed{seed}_opset{ZOO[name].opset}_{code_version()}.onnx"


def cached_zoo_export(
    name: str, style: Style, cache_dir: str | os.PathLike[str], *, seed: int = 0
) -> Path:
    """The cached, verified export of ``name`` in ``style``; exported first if missing.

    Written under a temporary name and renamed atomically, so concurrent callers never see a
    partial file.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / zoo_cache_filename(name, style, seed=seed)
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        export_zoo(name, tmp, style, seed=seed)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export and verify zoo models.")
    parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="output (cache) directory")
    parser.add_argument("--style", choices=["folded", "explicit", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Export (or find cached) each model and style; one line per file with its torch diff."""
    args = _parse_args(argv)
    names = args.names or list(ZOO)
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        raise SystemExit(f"unknown zoo model(s) {unknown}; choose from {list(ZOO)}")
    for name in names:
        styles: Any = ZOO[name].styles if args.style == "both" else (args.style,)
        for style in (s for s in styles if s in ZOO[name].styles):
            start = time.perf_counter()
            path = cached_zoo_export(name, style, args.out, seed=args.seed)
            seconds = time.perf_counter() - start
            diff = verify_against_torch(name, path, build_zoo(name, args.seed))
            ops = sorted({n.op_type for n in onnx.load(path).graph.node})
            print(f"{name:20} {style:9} {seconds:6.1f}s  rel diff {diff:.1e}  {' '.join(ops)}")


if __name__ == "__main__":
    main()
