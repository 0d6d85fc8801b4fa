"""Memory-mapped constants (irprune/ir/mapped.py): which pages ``release`` advises away.

A mapping whose ``madvise`` calls are recorded (a subclass of ``mmap.mmap``) pins the exact byte
range handed to the OS, so the page arithmetic is checked to the byte, not through the process's
resident set (tests/emit/test_stream.py checks that the pages really go).
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from irprune.ir import Graph, Value
from irprune.ir.mapped import is_mapped, mapping_of, release, release_constants

PAGE = mmap.PAGESIZE
GRAIN = mmap.ALLOCATIONGRANULARITY
DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
pytestmark = pytest.mark.skipif(DONTNEED is None, reason="no MADV_DONTNEED on this platform")

_MMAP = mmap.mmap


class Recording(_MMAP):
    """A mapping that records its ``madvise`` calls, or raises ``fail`` from them."""

    calls: list[tuple[Any, ...]]
    fail: type[Exception] | None

    def madvise(self, *args: Any) -> None:
        self.calls.append(args)
        if self.fail is not None:
            raise self.fail("refused")
        super().madvise(*args)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "w.bin"
    path.write_bytes(np.arange(2 * GRAIN + 8 * PAGE, dtype=np.uint32).astype(np.uint8).tobytes())
    return path


def _memmap(path: Path, monkeypatch: pytest.MonkeyPatch, offset: int = 0) -> np.memmap:
    """``np.memmap`` as the frontend builds it, on a recording mapping."""
    with monkeypatch.context() as m:
        m.setattr(mmap, "mmap", Recording)
        whole = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
    mapping = mapping_of(whole)
    assert isinstance(mapping, Recording)
    mapping.calls, mapping.fail = [], None
    return whole


def _raw(path: Path) -> Recording:
    with open(path, "rb") as f:
        mapping = Recording(f.fileno(), 0, access=mmap.ACCESS_READ)
    mapping.calls, mapping.fail = [], None
    return mapping


def test_a_view_of_a_memmap_is_mapped_and_in_memory_data_is_not(
    data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _memmap(data_file, monkeypatch)
    view = whole[PAGE : 2 * PAGE].view(np.float32)[::2]
    assert mapping_of(view) is whole._mmap
    assert is_mapped(view) and is_mapped(whole)
    assert mapping_of(np.zeros(4)) is None and not is_mapped(np.zeros(4))


def test_release_advises_the_pages_under_a_view_of_an_offset_memmap(
    data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # np.memmap maps from the allocation grain below ``offset``: the array starts 100 bytes in
    whole = _memmap(data_file, monkeypatch, offset=GRAIN + 100)
    assert whole.offset % GRAIN == 100
    release(whole[3 * PAGE : 5 * PAGE])
    # from the page holding the view's first byte (mapping byte 3 PAGE + 100) to its last one
    assert mapping_of(whole).calls == [(DONTNEED, 3 * PAGE, 2 * PAGE + 100)]


def test_release_advises_the_pages_under_an_array_on_a_mapping(data_file: Path) -> None:
    mapping = _raw(data_file)  # no ``offset`` attribute: the array starts at the mapping
    array = np.ndarray((len(mapping),), dtype=np.uint8, buffer=mapping)
    release(array[3 * PAGE + 8 : 4 * PAGE])
    assert mapping.calls == [(DONTNEED, 3 * PAGE, PAGE)]
    mapping.calls.clear()
    release(array[-1:])  # the last byte: clipped to the mapping's end
    assert mapping.calls == [(DONTNEED, len(mapping) - PAGE, PAGE)]


def test_release_of_nothing_advises_nothing(
    data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _memmap(data_file, monkeypatch)
    release(whole[PAGE:PAGE])  # an empty view
    release(np.zeros(8))  # in-memory data
    release(None)

    class NotAnArray:  # reads from the mapping, but not a numpy array
        base = whole._mmap
        size = 8

    release(NotAnArray())
    assert whole._mmap.calls == []


class _Holder:
    """Exposes the mapping's bytes to numpy through ``__array_interface__``."""

    def __init__(self, mapping: Recording) -> None:
        self.base = mapping
        address = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
        self.__array_interface__ = {
            "shape": (len(mapping),),
            "typestr": "|u1",
            "data": (address, True),
            "version": 3,
        }


def test_release_of_data_numpy_did_not_lay_out_advises_the_whole_mapping(data_file: Path) -> None:
    mapping = _raw(data_file)
    array = np.asarray(_Holder(mapping))
    assert mapping_of(array) is mapping
    release(array[:PAGE])
    assert mapping.calls == [(DONTNEED,)]


@pytest.mark.parametrize("error", [OSError, ValueError])
def test_release_survives_a_refused_or_closed_mapping(
    data_file: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    whole = _memmap(data_file, monkeypatch)
    whole._mmap.fail = error
    release(whole[:PAGE])  # laid out by numpy
    mapping = _raw(data_file)
    mapping.fail = error
    release(np.asarray(_Holder(mapping)))  # not laid out by numpy
    assert len(whole._mmap.calls) == len(mapping.calls) == 1


def test_release_constants_releases_each_constant(
    data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _memmap(data_file, monkeypatch)
    g = Graph()
    g.add_value(Value("x", 1, (4,)))
    g.add_value(Value("w", 2, (PAGE,), const=whole[:PAGE]))
    g.add_value(Value("v", 2, (PAGE,), const=whole[2 * PAGE : 3 * PAGE]))
    g.add_value(Value("b", 1, (4,), const=np.zeros(4, np.float32)))
    release_constants(g)
    assert sorted(whole._mmap.calls) == [(DONTNEED, 0, PAGE), (DONTNEED, 2 * PAGE, PAGE)]
