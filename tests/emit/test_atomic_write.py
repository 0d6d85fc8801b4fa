"""Writes: whole files only, with the mode a new file normally gets."""

from __future__ import annotations

import os
from pathlib import Path

from irprune.demo import build_demo_model
from irprune.emit import atomic_write


def test_written_file_gets_the_usual_mode(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        path = atomic_write(build_demo_model(), tmp_path / "m.onnx")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
