"""Verify a model before it is written, and write it atomically.

A model is written only after ``onnx.checker`` (full check), strict ONNX shape inference and an
onnxruntime session run all pass. Given a ``SecondShape``, it also runs at that second input
shape (a symbolic dim changed) and must give the original's output shapes there; a shape warning
onnxruntime prints in either run (its declared shapes contradict what it computes) rejects it.
The write goes to a temporary file in the destination folder, is flushed to disk, then renamed
over the destination.

A model is given as a ModelProto, its serialized bytes, or the path of a file (a staged model
with external data, or a lazily read input): a file is checked and run from the path, so a model
over protobuf's 2 GB limit is never parsed into memory, and onnxruntime memory-maps its external
weights instead of copying them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from irprune.errors import VerificationError

log = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes: larger models keep their weights in <output>.data
EXTERNAL_DATA_MIN_TENSOR = 1024  # bytes: smaller tensors stay inside the model file
# One-shot runs (the reference run, verification) use the cores; the latency measurement keeps
# its own thread count (what the user deploys with)
RUN_THREADS = max(1, min(4, os.cpu_count() or 1))

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


ModelData = onnx.ModelProto | bytes | Path
_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def session(
    model: ModelData,
    *,
    threads: int = 1,
    optimize: bool = False,
    folder: Path | None = None,
    prepack: bool = True,
    warnings: bool = False,
) -> ort.InferenceSession:
    """An onnxruntime CPU session; graph optimizations off unless asked (for exact comparisons).

    A path is loaded by onnxruntime itself (external data mapped, not copied); ``folder`` is
    where an in-memory model's external data files are. ``prepack`` False skips the repacking
    of MatMul/Gemm weights at session start: for sessions that run once (verification, the
    reference run), where packing costs more than it saves (14 s for a 2.5 GB decoder).
    ``warnings``: onnxruntime logs warnings (to stderr), for ``captured_warnings``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # fatal only: run-time errors reach the user as our exceptions
    opts.log_severity_level = 2 if warnings else 4
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if isinstance(model, Path):
        source: str | bytes = str(model)
        folder = model.resolve().parent
    else:
        source = model if isinstance(model, bytes) else model.SerializeToString()
    if folder is not None:
        opts.add_session_config_entry(_FOLDER_KEY, str(folder))
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises untyped errors
        supported = _max_ir_version(str(exc))
        if supported is None:
            raise
    # A newer IR version than this onnxruntime reads (onnx 1.23 stamps 14, ORT 1.31 reads 13):
    # run a copy stamped with the version it accepts; the written model keeps its own.
    log.info("onnxruntime reads IR version <= %d; running a copy stamped so", supported)
    if isinstance(source, str):
        proto = onnx.load(source, load_external_data=False)  # weights stay in their files
    else:
        proto = onnx.ModelProto.FromString(source)
    proto.ir_version = supported
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _max_ir_version(message: str) -> int | None:
    match = re.search(
        r"Unsupported model IR version: \d+, max supported IR version: (\d+)", message
    )
    return int(match.group(1)) if match else None


def run_batched(
    sess: ort.InferenceSession, names: list[str] | None, feeds: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """``sess.run``, split into runs the model accepts when its batch is fixed: a model whose
    input declares axis 0 as 1 (ddddocr, many detectors) takes calibration data (batch on axis
    0) in chunks of that size; the outputs are joined along axis 0. Inputs whose axis 0 is not
    the feeds' batch (masks, states) go whole to every run."""
    arrays = {k: np.asarray(v) for k, v in feeds.items()}
    total = max((a.shape[0] for a in arrays.values() if a.ndim), default=0)
    fixed = [
        inp.shape[0]
        for inp in sess.get_inputs()
        if inp.name in arrays
        and arrays[inp.name].ndim
        and arrays[inp.name].shape[0] == total
        and inp.shape
        and isinstance(inp.shape[0], int)
        and 0 < inp.shape[0] < total
    ]
    if not fixed:
        return list(sess.run(names, dict(arrays)))
    size = min(fixed)
    runs = []
    for start in range(0, total, size):
        chunk = {
            k: a[start : start + size] if a.ndim and a.shape[0] == total else a
            for k, a in arrays.items()
        }
        runs.append(sess.run(names, chunk))
    return [np.concatenate(parts, axis=0) for parts in zip(*runs, strict=True)]


def random_inputs(
    sess: ort.InferenceSession,
    *,
    batch: int = 1,
    seed: int = 0,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every input, at ``shapes`` (``irprune.shapes``) where given;
    other inputs' symbolic dims become ``batch``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        dtype = _ORT_TYPES.get(inp.type)
        if dtype is None:
            raise VerificationError(f"input {inp.name!r} has unsupported type {inp.type}")
        if shapes is not None and inp.name in shapes:
            shape = list(shapes[inp.name])
        else:
            shape = [d if isinstance(d, int) and d > 0 else batch for d in inp.shape]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[inp.name] = rng.integers(0, 8, shape).astype(dtype)
    return feeds


@dataclass(frozen=True)
class SecondShape:
    """Inputs at a second shape (``irprune.shapes.InputShapes.second``) and the shapes of the
    original model's outputs on them."""

    feeds: Mapping[str, np.ndarray]
    output_shapes: tuple[tuple[int, ...], ...]

    def describe(self) -> str:
        return ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in self.feeds.items())

    def ran_as(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """``feeds`` are these very arrays: the main run is the run at the second shape."""
        return feeds.keys() == self.feeds.keys() and all(
            feeds[k] is v for k, v in self.feeds.items()
        )


def verify(
    model: ModelData,
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    second: SecondShape | None = None,
    tolerated: frozenset[str] = frozenset(),
) -> list[np.ndarray]:
    """Check and run ``model``; return its outputs on ``feeds`` (random when None).

    ``onnx.checker``'s full check includes strict ONNX shape inference with type checks. Pass the
    serialized bytes when you have them: a large model is then serialized once, not per check.
    A path (a model with external data) is checked, shape-inferred and run from the file.
    With ``second`` the model also runs there and must match the original's output shapes; a
    shape warning from onnxruntime in either run fails verification, except on the values
    named in ``tolerated`` (those the original model itself warns about: its own declared
    output shapes are wrong, and the pruned model keeps them as they are).
    """
    data = model if isinstance(model, bytes | Path) else model.SerializeToString()
    try:
        if isinstance(data, Path):
            _check_file(data)
        else:
            onnx.checker.check_model(data, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"the rewritten model fails onnx.checker: {exc}") from exc
    with captured_warnings() as warned:
        try:
            sess = session(data, prepack=False, warnings=True, threads=RUN_THREADS)
            run_feeds = dict(feeds) if feeds is not None else random_inputs(sess)
            outputs = run_batched(sess, None, run_feeds)
            again = None
            if second is not None:
                again = outputs if second.ran_as(run_feeds) else sess.run(None, dict(second.feeds))
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise VerificationError(
                f"onnxruntime could not run the rewritten model: {exc}"
            ) from exc
    _check_warnings(warned, tolerated)
    if second is not None and again is not None:
        got = tuple(tuple(int(d) for d in np.shape(a)) for a in again)
        if got != second.output_shapes:
            raise VerificationError(
                f"at the second input shape ({second.describe()}) the rewritten model's outputs "
                f"have shapes {list(got)}, the original's {list(second.output_shapes)}"
            )
    return outputs


_SHAPE_WARNING = re.compile(r"shape|dimension", re.IGNORECASE)
_WARNED_VALUE = re.compile(r"for output (\S+?)(?:\x1b\[m)?$")


def warned_values(lines: list[str]) -> frozenset[str]:
    """The values onnxruntime's shape warnings in ``lines`` name."""
    return frozenset(
        m.group(1)
        for line in lines
        if _SHAPE_WARNING.search(line) and (m := _WARNED_VALUE.search(line)) is not None
    )


def _check_warnings(lines: list[str], tolerated: frozenset[str] = frozenset()) -> None:
    shape = [
        line
        for line in lines
        if _SHAPE_WARNING.search(line) and not (warned_values([line]) & tolerated)
    ]
    for line in lines:
        if line not in shape:
            log.info("onnxruntime: %s", line)
    if shape:
        raise VerificationError(
            f"onnxruntime warns that the rewritten model's declared shapes do not hold: "
            f"{shape[0]}" + (f" (and {len(shape) - 1} more)" if len(shape) > 1 else "")
        )


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """What onnxruntime writes to the process's stderr (file descriptor 2, which its C++ logger
    uses) inside the block, as a list of lines filled when the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _check_file(path: Path) -> None:
    """The checker and strict shape inference on a file: the path forms read the model without
    its external data (no 2 GB limit) and check the data files' locations."""
    onnx.checker.check_model(str(path), full_check=True)
    fd, inferred = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".inferred", dir=path.parent)
    os.close(fd)
    try:
        onnx.shape_inference.infer_shapes_path(
            str(path), inferred, check_type=True, strict_mode=True
        )
    finally:
        Path(inferred).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    model: onnx.ModelProto | bytes, path: str | Path, *, external_data: bool | None = None
) -> Path:
    """Serialize ``model`` to ``path`` via a temporary file and rename; never a partial file.

    With ``external_data`` (None: when the model is over ``EXTERNAL_DATA_THRESHOLD`` bytes)
    the weights go to one ``<path>.data`` file next to it, written and renamed the same way
    (data first, so the model never points at a missing file).
    """
    path = Path(path)
    size = len(model) if isinstance(model, bytes) else model.ByteSize()
    if external_data is None:
        external_data = size > EXTERNAL_DATA_THRESHOLD
    if external_data:
        proto = onnx.ModelProto.FromString(model) if isinstance(model, bytes) else model
        return _write_external(proto, path)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a new file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %s (%d bytes)", path, len(data))
    return path


def _write_external(model: onnx.ModelProto, path: Path) -> Path:
    """The model and one ``<path>.data`` file, staged in a hidden folder beside ``path``."""
    location = f"{path.name}.data"
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."))
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        staged = stage / path.name
        onnx.save_model(
            copy,
            str(staged),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=location,
            size_threshold=EXTERNAL_DATA_MIN_TENSOR,
        )
        for f in (stage / location, staged):
            if f.exists():
                _fsync(f)
        if (stage / location).exists():
            os.replace(stage / location, path.with_name(location))
        os.replace(staged, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("wrote %s with external data %s", path, location)
    return path


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
