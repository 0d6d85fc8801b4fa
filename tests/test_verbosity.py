"""`-v` / `-q`, exit codes in `--help`, internal errors (one line; a traceback with -v)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

import irprune.api
from irprune.cli import EXIT_CODES
from irprune.demo import build_demo_model

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    onnx.save(build_demo_model(seed=0), str(tmp_path / "m.onnx"))
    return [str(tmp_path / "m.onnx"), "--target-flops", "0.5", "--no-latency"]


@pytest.fixture
def noisy(monkeypatch: pytest.MonkeyPatch) -> None:
    """prune() that also logs one record per level through an irprune logger."""
    real = irprune.api.prune
    logger = logging.getLogger("irprune.api")

    def prune(*a: Any, **k: Any) -> Any:
        logger.debug("debug-record")
        logger.info("info-record")
        logger.warning("warning-record")
        logger.error("error-record")
        return real(*a, **k)

    monkeypatch.setattr(irprune.api, "prune", prune)


@pytest.mark.usefixtures("noisy")
@pytest.mark.parametrize(
    ("flag", "shown", "hidden", "table"),
    [
        ("-v", {"DEBUG", "INFO", "WARNING", "ERROR"}, set(), True),
        (None, {"WARNING", "ERROR"}, {"DEBUG", "INFO"}, True),
        ("-q", {"ERROR"}, {"DEBUG", "INFO", "WARNING"}, False),
    ],
)
def test_log_levels(
    flag: str | None, shown: set[str], hidden: set[str], table: bool, args: list[str], cli: Run
) -> None:
    code, out, err = cli(*args, *([flag] if flag else []))
    assert code == 0, err
    for level in shown:
        assert f"irprune: {level}: {level.lower()}-record" in err
    for level in hidden:
        assert f"{level.lower()}-record" not in err
    assert ("macs" in out and "wrote" in out) == table
    if not table:
        assert out == ""


def test_internal_error_is_one_line_or_a_traceback_with_verbose(
    args: list[str], cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(irprune.api, "prune", broken)
    code, out, err = cli(*args)
    assert code == 70 and out == ""
    assert err == "irprune: internal error: RuntimeError: boom (rerun with -v for a traceback)\n"
    code, out, err = cli(*args, "-v")
    assert code == 70 and out == ""
    assert err.startswith("Traceback (most recent call last):") and "in broken" in err
    assert err.splitlines()[-1] == "irprune: internal error: RuntimeError: boom"


@pytest.mark.parametrize("command", [[], ["inspect"], ["demo"]])
def test_help_documents_exit_codes(command: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "irprune", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert EXIT_CODES in proc.stdout
    for code in ("0", "2", "3", "4", "5", "70"):
        assert f"\n  {code} " in proc.stdout
