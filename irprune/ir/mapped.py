"""Memory-mapped constants: weights the ONNX frontend maps read-only from external data files.

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

if TYPE_CHECKING:
    from irprune.ir.graph import Graph


def mapping_of(array: Any) -> mmap.mmap | None:
    """The file mapping an array (or a view of one) reads from; None for in-memory data."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base


def is_mapped(array: Any) -> bool:
    return mapping_of(array) is not None


def release(array: Any) -> None:
    """Drop the pages of ``array``'s file mapping from this process (no-op for other data)."""
    mapping = mapping_of(array)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None:
        return
    with contextlib.suppress(OSError, ValueError):  # a closed mapping
        mapping.madvise(advice)


def release_constants(graph: Graph) -> None:
    """``release`` every constant of ``graph``."""
    for value in graph.values.values():
        if value.const is not None:
            release(value.const)
