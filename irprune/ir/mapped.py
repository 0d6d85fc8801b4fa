"""Memory-mapped constants: weights the ONNX frontend maps read-only from external data files
(one mapping per file; each tensor is an ``np.memmap`` view into it).

A mapped array costs no memory until it is read; the pages read then count in the process's
resident set until the mapping goes away or is released here. Passes that read every weight once
(importance, drop, the streaming emitter) release what they read, so reading a model larger than
memory never holds more than the tensor at hand. Released pages stay in the OS page cache and are
mapped again on the next access: releasing never changes a value.

This module imports neither onnx nor torch.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import TYPE_CHECKING, Any

import numpy as np

try:  # numpy >= 2
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy 1.x
    from numpy import byte_bounds  # type: ignore[attr-defined,no-redef]

if TYPE_CHECKING:
    from irprune.ir.graph import Graph


def _chain(array: Any) -> tuple[mmap.mmap | None, Any]:
    """The file mapping an array (or a view of one) reads from, and the array directly on it."""
    root, base = None, array
    while base is not None and not isinstance(base, mmap.mmap):
        root, base = base, getattr(base, "base", None)
    return base, root


def mapping_of(array: Any) -> mmap.mmap | None:
    """The file mapping an array (or a view of one) reads from; None for in-memory data."""
    return _chain(array)[0]


def is_mapped(array: Any) -> bool:
    return mapping_of(array) is not None


def release(array: Any) -> None:
    """Drop the pages under ``array`` from this process (no-op for in-memory data); other
    tensors mapped from the same file keep theirs (up to the pages they share with it)."""
    mapping, root = _chain(array)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None or not isinstance(array, np.ndarray) or not array.size:
        return
    if not isinstance(root, np.ndarray):  # not laid out by numpy: release the whole mapping
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(advice)
        return
    # ``root`` starts ``offset % ALLOCATIONGRANULARITY`` bytes into the mapping (np.memmap)
    start_of_mapping = root.ctypes.data - getattr(root, "offset", 0) % mmap.ALLOCATIONGRANULARITY
    low, high = byte_bounds(array)
    start = low - start_of_mapping
    start -= start % mmap.PAGESIZE
    length = min(high - start_of_mapping, len(mapping)) - start
    with contextlib.suppress(OSError, ValueError):  # a closed mapping
        mapping.madvise(advice, start, length)


def release_constants(graph: Graph) -> None:
    """``release`` every constant of ``graph``."""
    for value in graph.values.values():
        if value.const is not None:
            release(value.const)
