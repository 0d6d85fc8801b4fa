"""Progress display: silent unless stderr is a terminal (and not --quiet); passes only report
through ``irprune.progress`` (calibration batches, sensitivity groups, latency runs)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from irprune import progress
from irprune.cli import main
from irprune.demo import build_demo_model
from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.calibration import iterate_exposed
from irprune.passes.importance import score
from irprune.passes.sensitivity import measure
from irprune.report import MIN_TIMED_RUNS, latency, prepare_session
from tests.helpers import feeds_for


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


Event = tuple[str, int, "int | None"]


def _recorder() -> tuple[list[Event], progress.Callback]:
    events: list[Event] = []
    return events, lambda label, done, total: events.append((label, done, total))


def test_track_yields_items_and_reports_each() -> None:
    events, callback = _recorder()
    assert list(progress.track(iter("abc"), "letters", total=3, callback=callback)) == list("abc")
    assert events == [("letters", k, 3) for k in range(4)]
    events.clear()
    assert list(progress.track([1, 2], "sized", callback=callback)) == [1, 2]  # total from len
    assert events[-1] == ("sized", 2, 2)


def test_line_format() -> None:
    assert progress.line("calibration", 6, 12, 1.25) == (
        "calibration  6/12 [############............]  50%  1.2s"
    )
    assert progress.line("steps", 7, None, 0.5) == "steps  7  0.5s"


def test_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()  # isatty() is False
    with progress.enabled(stream, delay=0) as display:
        list(progress.track(range(5), "work"))
    assert display is None and stream.getvalue() == ""


def test_silent_when_quiet_even_on_a_terminal() -> None:
    stream = FakeTTY()
    with progress.enabled(stream, quiet=True, delay=0) as display:
        list(progress.track(range(5), "work"))
    assert display is None and stream.getvalue() == ""


def test_draws_on_a_terminal_and_erases_the_line_at_the_end() -> None:
    stream = FakeTTY()
    with progress.enabled(stream, delay=0):
        list(progress.track(range(3), "work"))
    text = stream.getvalue()
    assert "work  0/3 [" in text and "work  3/3 [########################] 100%" in text
    assert text.endswith("\r\x1b[K")  # erased: what follows starts on a clean line
    assert "\n" not in text
    # outside the block nothing draws any more
    list(progress.track(range(3), "later"))
    assert "later" not in stream.getvalue()


def test_interrupt_erases_the_line_and_the_next_update_redraws() -> None:
    stream = FakeTTY()
    with progress.enabled(stream, delay=0), progress.task("work", 4) as t:
        t.advance()
        progress.interrupt()
        stream.write("a log line\n")
        t.advance(3)
    text = stream.getvalue()
    before, after = text.split("a log line\n")
    assert before.endswith("\r\x1b[K") and "work  0/4" in before
    assert "work  4/4" in after


def test_forced_display_and_delay() -> None:
    stream = io.StringIO()
    with progress.enabled(stream, force=True, delay=60):  # every step here is quicker than 60 s
        list(progress.track(range(3), "quick"))
    assert stream.getvalue() == ""
    with progress.enabled(stream, force=True, delay=0):
        list(progress.track(range(3), "quick"))
    assert "quick  3/3" in stream.getvalue()


# --- the passes report through it -------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> onnx.ModelProto:
    return build_demo_model(seed=0)


def test_calibration_reports_one_unit_per_batch(demo: onnx.ModelProto) -> None:
    graph = import_model(demo)
    feeds = feeds_for(demo, batch=70)
    events, callback = _recorder()
    out = list(iterate_exposed(graph, ["logits"], feeds, batch=32, callback=callback))
    assert len(out) == 3
    assert events == [("calibration", k, 3) for k in range(4)]


def test_sensitivity_reports_one_unit_per_group(demo: onnx.ModelProto) -> None:
    graph = import_model(demo)
    analysis = analyze(graph)
    scores = score(graph, analysis, "l1")
    events, callback = _recorder()
    measure(graph, analysis, scores, feeds_for(demo, batch=4), callback=callback)
    n = len(scores.by_group)
    assert n > 0 and events == [("sensitivity", k, n) for k in range(n + 1)]


def test_latency_reports_every_run(demo: onnx.ModelProto) -> None:
    events, callback = _recorder()
    latency(demo, demo, feeds_for(demo, batch=1), runs=4, warmup=1, callback=callback)
    assert events == [("latency", k, 5) for k in range(6)]


@pytest.mark.parametrize("interleave", [True, False])
def test_latency_budget_stops_after_the_minimum_runs(
    demo: onnx.ModelProto, interleave: bool
) -> None:
    """A budget already spent stops timing after MIN_TIMED_RUNS runs; the report counts the
    runs made, and the display still ends full."""
    events, callback = _recorder()
    out = latency(
        demo, demo, feeds_for(demo, batch=1), runs=50, warmup=1, callback=callback,
        interleave=interleave, budget_s=1e-9,
    )  # fmt: skip
    assert out["runs"] == MIN_TIMED_RUNS
    assert events[-1] == ("latency", events[-1][2], events[-1][2])
    assert events[0][1] == 0


def test_latency_uses_the_sessions_prepared_in_the_background(demo: onnx.ModelProto) -> None:
    """Sessions made ahead by ``prepare_session`` are the ones timed: the models passed beside
    them are not loaded (empty bytes would fail to load)."""
    data = demo.SerializeToString()
    prepared = (prepare_session(data, 1), prepare_session(data, 1))
    out = latency(b"", b"", feeds_for(demo, batch=1), runs=3, warmup=0, prepared=prepared)
    assert out["runs"] == 3 and out["before_ms"] > 0 and out["after_ms"] > 0


def test_latency_budget_never_cuts_the_runs_asked_for_below_it(demo: onnx.ModelProto) -> None:
    out = latency(demo, demo, feeds_for(demo, batch=1), runs=3, warmup=0, budget_s=1e-9)
    assert out["runs"] == 3


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def calib_run(tmp_path: Path, demo: onnx.ModelProto) -> list[str]:
    onnx.save(demo, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", input=rng.standard_normal((40, 3, 32, 32)).astype(np.float32))
    # apoz reads activations (calibration runs), sensitivity measures curves; drop keeps it quick
    model, calib = str(tmp_path / "m.onnx"), str(tmp_path / "c.npz")
    flags = ["--criterion", "apoz", "--strategy", "sensitivity", "--rewrite", "drop"]
    return [model, "--target-flops", "0.5", "--calib", calib, *flags]


def test_cli_draws_progress_on_a_terminal(
    calib_run: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "DEFAULT_DELAY", 0.0)
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(calib_run) == 0
    drawn = tty.getvalue()
    for label in ("calibration", "sensitivity", "latency"):
        assert f"\r\x1b[K{label}  " in drawn, label
    assert "wrote" in capsys.readouterr().out  # the report still goes to stdout


def test_cli_quiet_draws_nothing_on_a_terminal(
    calib_run: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "DEFAULT_DELAY", 0.0)
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main([*calib_run, "-q", "--no-latency"]) == 0
    assert tty.getvalue() == "" and capsys.readouterr().out == ""


def test_cli_stderr_is_clean_when_not_a_terminal(calib_run: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "irprune", *calib_run],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout and "wrote" in proc.stdout
