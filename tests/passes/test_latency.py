"""The latency model: tables, the fitted line, the cache, and the measured target in the API.

No assertion here depends on how fast anything runs: the model is checked for its structure
(monotone, exact at the two fitted points, cached timings reused), the API for keeping its
promises about what it reports and writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import irprune
from irprune.demo import build_demo_model
from irprune.emit.verify import random_inputs, session
from irprune.errors import UsageError
from irprune.frontends.onnx import import_model
from irprune.passes import latency as lat
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.fold import fold_constants


@pytest.fixture
def cache(tmp_path: Path) -> lat.TimingCache:
    return lat.TimingCache(tmp_path / "latency.json")


def _setup() -> tuple[Any, ...]:
    model = build_demo_model()
    graph = import_model(model)
    fold_constants(graph)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    data = model.SerializeToString()
    feeds = random_inputs(session(data), batch=1)
    return model, graph, analysis, cost, data, feeds


def test_grid_holds_the_widths_allocation_can_choose() -> None:
    grid = lat._grid(64, True, 16, 0.9)
    assert grid[-1] == 64 and grid[0] == 16
    assert all(w % 16 == 0 for w in grid)
    assert list(lat._grid(64, False, 16, 0.9)) == [64.0]


def test_model_is_exact_at_full_width_and_monotone(cache: lat.TimingCache) -> None:
    _model, graph, analysis, cost, data, feeds = _setup()
    probed: list[np.ndarray] = []

    def probe(widths: np.ndarray) -> bytes:
        probed.append(widths)
        return data  # any runnable model: only the fit's arithmetic is checked here

    m = lat.build_latency_model(
        graph, analysis, cost, data, feeds, round_to=8, threads=1, probe=probe, cache=cache
    )
    assert m.tables, "the demo's convolutions must be tabled"
    for t in m.tables:
        assert np.all(np.diff(t.ms, axis=0) >= 0) and np.all(np.diff(t.ms, axis=1) >= 0)
    assert m.at(cost.base_widths) == pytest.approx(m.base_ms, rel=1e-9)
    assert len(probed) == 1
    prunable = [g.id for g in analysis.prunable]
    narrower = cost.base_widths.copy()
    previous = m.tabled(narrower)
    for gid in prunable:
        narrower[gid] = max(8.0, narrower[gid] - 8)
        now = m.tabled(narrower)
        assert now <= previous + 1e-12
        previous = now
    assert m.tabled(narrower) < m.tabled(cost.base_widths)


def test_timings_are_cached_on_disk(
    cache: lat.TimingCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, graph, analysis, cost, data, feeds = _setup()
    first = lat.build_latency_model(graph, analysis, cost, data, feeds, round_to=8, cache=cache)
    calls: list[Any] = []
    monkeypatch.setattr(lat, "_time_op", lambda *a: calls.append(a) or 1.0)
    again = lat.build_latency_model(
        graph, analysis, cost, data, feeds, round_to=8, cache=lat.TimingCache(cache.path)
    )
    assert calls == []
    assert [t.ms.tolist() for t in again.tables] == [t.ms.tolist() for t in first.tables]


def test_one_op_models_are_valid() -> None:
    conv = lat.OpShape("Conv", (("pads", [1, 1, 1, 1]),), 1, (8, 8), (3, 3), False, 0)
    dw = lat.OpShape("Conv", (("pads", [1, 1, 1, 1]),), 1, (8, 8), (3, 3), True, 0)
    grouped = lat.OpShape("Conv", (), 1, (8, 8), (1, 1), False, 4)
    gemm = lat.OpShape("Gemm", (("transB", 1),), 1, (), (), False, 0)
    matmul = lat.OpShape("MatMul", (), 16, (), (), False, 0)
    for shape, out_c, in_c in ((conv, 16, 8), (dw, 16, 1), (grouped, 16, 2), (gemm, 10, 32),
                               (matmul, 24, 12)):  # fmt: skip
        model, feeds = lat._one_op_model(shape, out_c, in_c)
        onnx.checker.check_model(model, full_check=True)
        (y,) = session(model.SerializeToString()).run(None, feeds)
        assert out_c in y.shape


def test_prune_to_a_latency_target_reports_its_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IRPRUNE_CACHE", str(tmp_path))
    # The demo model runs in well under a millisecond, so onnxruntime's fixed overhead bounds
    # what pruning can save (measured floors 0.6-0.8 here): ask for what any machine reaches.
    result = irprune.prune(build_demo_model(), target_latency=0.9, round_to=8)
    latency = result.report["latency"]
    assert result.report["target"] == {"metric": "latency", "fraction": 0.9}
    assert 1 <= len(latency["rounds"]) <= 3
    assert isinstance(latency["met"], bool)
    assert latency["met"] == (latency["after_ms"] <= 0.91 * latency["before_ms"])
    for r in latency["rounds"]:
        assert r["predicted"] <= r["budget"] + 1e-9
    assert result.report["cost"]["ratio"]["macs"] < 1.0
    onnx.checker.check_model(result.model, full_check=True)
    assert (tmp_path / "latency.json").is_file()


def test_exactly_one_target() -> None:
    with pytest.raises(UsageError):
        irprune.prune(build_demo_model(), target_flops=0.5, target_latency=0.5)


class _WidthSum:
    """A stand-in latency model: cost = sum of the widths (unlike MACs or params)."""

    def at(self, widths: np.ndarray) -> float:
        return float(np.sum(widths))


def test_allocation_prices_every_step_with_the_latency_model() -> None:
    from irprune.passes.allocation import Target, allocate
    from irprune.passes.importance import score

    _, graph, analysis, cost, _, _ = _setup()
    model = _WidthSum()
    scores = score(graph, analysis, "l1")
    plan = allocate(
        analysis,
        cost,
        scores,
        Target("latency", 0.8),
        round_to=1,
        latency=model,  # type: ignore[arg-type]
    )
    ratio = model.at(plan.widths) / model.at(cost.base_widths)
    assert plan.ratio == pytest.approx(ratio)
    assert 0.8 - 0.01 <= ratio <= 0.8


class _Weighted:
    """A stand-in latency model where one group's width costs far more than the others'."""

    def __init__(self, heavy: int) -> None:
        self.heavy = heavy

    def at(self, widths: np.ndarray) -> float:
        return float(np.sum(widths) + 100.0 * widths[self.heavy])


def test_latency_strategy_cuts_first_where_latency_per_mac_is_highest() -> None:
    from irprune.passes.allocation import Target, allocate
    from irprune.passes.importance import score

    _, graph, analysis, cost, _, _ = _setup()
    scores = score(graph, analysis, "l1")
    prunable = sorted(analysis.prunable, key=lambda g: -g.size)
    for heavy in (prunable[0].id, prunable[-1].id):
        plan = allocate(
            analysis, cost, scores, Target("macs", 0.8), strategy="latency", round_to=1,
            latency=_Weighted(heavy),  # type: ignore[arg-type]
        )  # fmt: skip
        assert 0.78 <= plan.ratio <= 0.8
        kept = {g.id: plan.widths[g.id] / g.size for g in analysis.prunable}
        assert kept[heavy] <= 0.55  # cut first, down to about half (the slack refilled)
        assert min(kept.values()) >= 0.5  # no group below half while the target allows
        ranked = allocate(analysis, cost, scores, Target("macs", 0.8), round_to=1)
        assert ranked.widths[heavy] > plan.widths[heavy]  # the ranking alone cuts it less


def test_latency_strategy_with_a_mac_target_through_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IRPRUNE_CACHE", str(tmp_path))
    result = irprune.prune(build_demo_model(), target_flops=0.6, strategy="latency", round_to=8)
    assert result.report["settings"]["strategy"] == "latency"
    assert 0.58 <= result.report["cost"]["ratio"]["macs"] <= 0.6
    assert "rounds" not in result.report["latency"]  # a MAC target is not corrected by timing
    search = result.report["settings"]["latency_search"]  # checked against global, refined
    assert search["start"] in ("latency", "global")
    assert 0 <= search["kept"] <= search["measured"] <= search["moves"]
    onnx.checker.check_model(result.model, full_check=True)
    assert (tmp_path / "latency.json").is_file()  # the op timings it planned with
