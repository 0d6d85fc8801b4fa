"""Streaming emit: a graph written tensor by tensor to a model file and one external data file.

For models whose weights are large (over ``STREAM_THRESHOLD`` bytes) or whose input kept its
weights in external data, no ModelProto with the weights inside is ever built (protobuf cannot
serialize one past 2 GB, and it would be a second full copy): each initializer of at least
``EXTERNAL_DATA_MIN_TENSOR`` bytes is appended to the data file (page-aligned, so onnxruntime can
map it) as the model proto is built, and the proto keeps only external references.

The files go to a private staging folder (``stage``); the caller verifies them from there
(``emit.verify.verify(staged.model_path)``) and ``Staged.publish`` moves them into place: the data
file to ``<output>.data`` (renamed, or copied and renamed across file systems), then the model,
whose references are rewritten to that name, via ``atomic_write``. A staging folder nobody
publishes is removed when its ``Staged`` is garbage-collected or the interpreter exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import onnx
from onnx import helper, numpy_helper

from irprune.emit.onnx import to_model
from irprune.emit.verify import (
    EXTERNAL_DATA_MIN_TENSOR,
    EXTERNAL_DATA_THRESHOLD,
    _umask,
    atomic_write,
)
from irprune.ir import Graph
from irprune.ir.mapped import release

log = logging.getLogger(__name__)

STREAM_THRESHOLD = EXTERNAL_DATA_THRESHOLD  # bytes of weights above which the emit streams
MODEL_NAME = "model.onnx"
_ALIGN = 4096  # tensors start on page boundaries
_CHUNK = 1 << 24  # bytes per write call
# numpy dtypes whose bytes are ONNX's raw little-endian layout (others are written inline)
_RAW_KINDS = {"f", "i", "u", "b"}


def weight_bytes(graph: Graph) -> int:
    """Bytes of every constant in ``graph`` (mapped ones included, without reading them)."""
    return sum(int(v.const.nbytes) for v in graph.constants() if v.const is not None)


def should_stream(graph: Graph, external: bool, threshold: int | None = None) -> bool:
    """Stream when the input kept its weights in external data or they exceed ``threshold``."""
    limit = STREAM_THRESHOLD if threshold is None else threshold
    return external or weight_bytes(graph) > limit


@dataclass(eq=False)
class Staged:
    """A model file and its data file, written but not yet in place."""

    model_path: Path
    data_path: Path
    folder: Path | None  # the private staging folder, until published
    _cleanup: weakref.finalize | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.folder is not None:
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def proto(self) -> onnx.ModelProto:
        """The model proto; its large initializers are references to ``data_path``."""
        return onnx.load(str(self.model_path), load_external_data=False)

    def publish(self, path: Path) -> Path:
        """Move (or, once published, copy) the files to ``path`` and ``<path>.data``."""
        path = Path(path)
        data = path.with_name(path.name + ".data")
        if self.data_path.resolve() != data.resolve():
            _place(self.data_path, data, move=self.folder is not None)
        model = self.proto()
        for tensor in _external_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data.name
        atomic_write(model.SerializeToString(), path, external_data=False)
        self.discard()
        self.model_path, self.data_path = path, data
        log.info("wrote %s with external data %s", path, data.name)
        return path

    def discard(self) -> None:
        """Remove the staging folder now (the published files, if any, stay)."""
        if self._cleanup is not None:
            self._cleanup()
        self.folder = None


def stage(
    graph: Graph, folder: Path | None = None, *, min_tensor: int = EXTERNAL_DATA_MIN_TENSOR
) -> Staged:
    """Write ``graph`` to a new staging folder inside ``folder`` (default: the temp folder)."""
    where = Path(tempfile.mkdtemp(prefix=".irprune-", suffix=".tmp", dir=folder))
    staged = Staged(where / MODEL_NAME, where / f"{MODEL_NAME}.data", where)
    try:
        with staged.data_path.open("wb") as f:
            model = to_model(graph, tensor=_Writer(f, staged.data_path.name, min_tensor))
            f.flush()
            os.fsync(f.fileno())
        with staged.model_path.open("wb") as f:
            f.write(model.SerializeToString())
    except BaseException:
        staged.discard()
        raise
    log.info("staged %s (%d bytes of data)", staged.model_path, staged.data_path.stat().st_size)
    return staged


@dataclass
class _Writer:
    """``to_model``'s tensor factory: large arrays to the data file, small ones inline."""

    file: IO[bytes]
    location: str
    min_tensor: int

    def __call__(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        if array.nbytes < self.min_tensor or not _raw(array.dtype):
            return numpy_helper.from_array(np.asarray(array), name)
        self.file.write(b"\0" * (-self.file.tell() % _ALIGN))
        offset = self.file.tell()
        data = np.ascontiguousarray(array)
        raw = memoryview(data.reshape(-1).view(np.uint8).data)
        for start in range(0, len(raw), _CHUNK):
            self.file.write(raw[start : start + _CHUNK])
        release(array)  # a mapped weight written unchanged: its pages leave this process
        tensor = onnx.TensorProto(name=name, dims=array.shape)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", offset), ("length", len(raw))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        return tensor


def _raw(dtype: np.dtype) -> bool:
    """Whether the array's bytes can be written as they are (``bfloat16`` counts: kind 'V')."""
    little = dtype.byteorder in ("<", "=", "|") and sys.byteorder == "little"
    return little and (dtype.kind in _RAW_KINDS or dtype.name == "bfloat16")


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def _place(source: Path, target: Path, *, move: bool) -> None:
    """``source`` to ``target`` atomically: renamed when allowed and on the same file system,
    else copied (kernel-side, not through this process's memory) to a temp file and renamed."""
    if move:
        try:
            os.replace(source, target)
            return
        except OSError:
            log.info("staged data is on another file system; copying it to %s", target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
