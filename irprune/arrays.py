"""Training data larger than memory: a folder of ``.npy`` files, memory-mapped.

``read_folder(DIR)`` returns arrays keyed by name, read lazily:

- ``DIR/NAME.npy``: the whole array for ``NAME`` (a model input, or a labels key), memory-mapped
  (``np.load(..., mmap_mode="r")``): rows are read from disk when a batch takes them;
- ``DIR/NAME/*.npy``: shards of ``NAME`` along axis 0, joined in file-name order
  (``part-000.npy``, ``part-001.npy``, ...), each memory-mapped; they must agree on dtype and on
  every axis but the first.

``Sharded`` behaves as a read-only array for what
training does with its data: ``len``, ``shape``, ``dtype``, ``ndim``, and indexing rows with a
slice or an integer array (which returns an ordinary in-memory array of those rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irprune.errors import CalibrationError


class Sharded:
    """Memory-mapped shards read as one array joined along axis 0."""

    def __init__(self, parts: Sequence[np.ndarray], where: str) -> None:
        if not parts:
            raise CalibrationError(f"{where}: no .npy shards")
        first = parts[0]
        for part in parts[1:]:
            if part.dtype != first.dtype or part.shape[1:] != first.shape[1:]:
                raise CalibrationError(
                    f"{where}: shard of {part.dtype} {list(part.shape)} does not match the first "
                    f"({first.dtype} {list(first.shape)})"
                )
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = first.dtype
        self.shape = (int(self.starts[-1]), *first.shape[1:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        rows = np.asarray(index)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError("rows of sharded data are taken with a slice or an integer array")
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range for {len(self)} rows")
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for k in np.unique(part):
            mask = part == k
            out[mask] = self.parts[k][rows[mask] - self.starts[k]]
        return out


def read_folder(folder: Path) -> dict[str, np.ndarray | Sharded]:
    """The arrays of a data folder (see the module docstring), memory-mapped."""
    arrays: dict[str, np.ndarray | Sharded] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix == ".npy":
            arrays[path.stem] = _load(path)
        elif path.is_dir():
            shards = sorted(path.glob("*.npy"))
            if shards:
                arrays[path.name] = Sharded([_load(s) for s in shards], str(path))
    if not arrays:
        raise CalibrationError(f"{folder}: no .npy files (NAME.npy, or NAME/*.npy shards)")
    return arrays  # rows and dtypes are checked against the model (inputs.check_inputs)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a readable .npy file ({exc})") from exc
