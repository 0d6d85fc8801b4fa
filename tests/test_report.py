"""irprune.report.latency by the calling thread's CPU time (benchmarks on a shared machine)."""

from __future__ import annotations

import pytest

from irprune.demo import build_demo_model
from irprune.report import latency
from tests.helpers import feeds_for


def test_cpu_time_counts_the_kernels_onnxruntime_runs_in_the_calling_thread() -> None:
    """With one thread onnxruntime runs every kernel in the caller's thread, so its CPU time is
    the run's cost: ~94M MACs take far more than the 0.1 ms left if the work ran elsewhere."""
    model = build_demo_model()
    got = latency(model, model, feeds_for(model, batch=8), runs=5, warmup=1, cpu_time=True)
    assert got["clock"] == "thread CPU time"
    assert got["before_ms"] > 0.1 and got["after_ms"] > 0.1
    assert 0.5 < got["speedup"] < 2.0  # the same model on both sides


def test_cpu_time_needs_one_thread() -> None:
    model = build_demo_model()
    with pytest.raises(ValueError, match="threads=1"):
        latency(model, model, feeds_for(model, batch=1), threads=2, cpu_time=True)
    assert "clock" not in latency(model, model, feeds_for(model, batch=1), runs=2, warmup=0)
