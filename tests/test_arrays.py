"""Training data from a folder of memory-mapped .npy files and shards (irprune.arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from irprune.arrays import Sharded, read_folder
from irprune.errors import CalibrationError


def _shards(tmp_path: Path, whole: np.ndarray, cuts: list[int]) -> Sharded:
    folder = tmp_path / "x"
    folder.mkdir()
    for k, part in enumerate(np.split(whole, cuts)):
        np.save(folder / f"part-{k:03d}.npy", part)
    return read_folder(tmp_path)["x"]  # type: ignore[return-value]


def test_shards_read_as_their_concatenation(tmp_path: Path) -> None:
    whole = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    sharded = _shards(tmp_path, whole, [5, 6, 15])  # includes a one-row shard
    assert len(sharded) == 23 and sharded.shape == (23, 3) and sharded.dtype == np.float32
    rows = np.random.default_rng(0).permutation(23)[:11]
    assert np.array_equal(sharded[rows], whole[rows])
    assert np.array_equal(sharded[3:17], whole[3:17])
    assert np.array_equal(sharded[np.array([-1, 0])], whole[[-1, 0]])
    with pytest.raises(IndexError):
        sharded[np.array([23])]


def test_a_folder_holds_whole_arrays_memory_mapped_and_shards(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    np.save(tmp_path / "input.1.npy", x)  # an input name with a dot
    (tmp_path / "y").mkdir()
    np.save(tmp_path / "y" / "a.npy", np.arange(4))
    np.save(tmp_path / "y" / "b.npy", np.arange(4, 10))
    arrays = read_folder(tmp_path)
    assert sorted(arrays) == ["input.1", "y"]
    assert isinstance(arrays["input.1"], np.memmap)
    assert np.array_equal(arrays["y"][np.arange(10)], np.arange(10))


def test_shards_that_disagree_and_empty_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    np.save(tmp_path / "x" / "a.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "x" / "b.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(CalibrationError, match="does not match the first"):
        read_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match=r"no \.npy files"):
        read_folder(empty)
