"""Per-group rounding: narrow groups round to a finer multiple (not below 8), wide ones as asked."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from onnx import helper

from irprune.api import _import
from irprune.passes.allocation import Target, allocate
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.importance import Scores
from irprune.passes.rounding import group_step
from tests.conftest import CliRun
from tests.helpers import make_model


@pytest.mark.parametrize(
    ("size", "round_to", "step"),
    [
        (16, 16, 8),  # 16 would leave only "keep all"
        (32, 16, 8),  # 16 would leave only "whole or half"
        (47, 16, 8),
        (48, 16, 16),  # three steps of 16: as asked
        (64, 16, 16),
        (1024, 16, 16),
        (12, 16, 8),
        (16, 32, 8),
        (64, 32, 16),
        (96, 32, 32),
        (16, 8, 8),  # 8 and below apply as given
        (5, 4, 4),
        (3, 1, 1),
        (12, 12, 12),  # halving 12 would go below 8
    ],
)
def test_group_step(size: int, round_to: int, step: int) -> None:
    assert group_step(size, round_to) == step


def _chain(widths: list[int]):
    """x -> Conv(w0) -> Relu -> Conv(w1) -> Relu -> ... -> Conv(10): one group per hidden conv."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], {}, "x", 3
    for i, w in enumerate([*widths, 10]):
        inits[f"w{i}"] = rng.standard_normal((w, cin, 3, 3)).astype(np.float32)
        out = "out" if i == len(widths) else f"c{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], f"conv{i}", pads=[1] * 4))
        if i < len(widths):
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], f"relu{i}"))
            prev = f"r{i}"
        cin = w
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("out", ["N", 10, 8, 8])], inits)


def _plan(target: float, *, finer: bool = True):
    graph = _import(_chain([16, 32, 64, 64]))
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    assert sorted(g.size for g in analysis.prunable) == [16, 32, 64, 64]
    by_group = {g.id: 1.0 + np.linspace(0, 0.01, g.size) for g in analysis.prunable}
    scores = Scores("test", MappingProxyType(by_group))
    plan = allocate(analysis, cost, scores, Target("macs", target), round_to=16, finer=finer)
    assert plan.round_to == 16
    assert target - 0.02 <= plan.ratio <= target
    return analysis, plan


def test_round_to_16_as_asked_while_no_group_loses_more_than_half() -> None:
    analysis, plan = _plan(0.3)
    assert not plan.narrow
    assert all(plan.widths[g.id] % 16 == 0 for g in analysis.prunable if g.size >= 16)


def test_narrow_groups_round_finer_when_16_would_cut_a_group_by_more_than_half() -> None:
    """At 0.25, steps of 16 would leave a 64-wide group at 16; the narrow groups (16, 32 wide)
    then round to 8 and take their share, the wide ones keep multiples of 16."""
    analysis, plan = _plan(0.25)
    assert plan.narrow
    for g in analysis.prunable:
        kept = int(plan.widths[g.id])
        assert kept % (8 if g.size < 48 else 16) == 0
        if g.size == 64:
            assert kept >= 32


def test_strict_rounding_keeps_multiples_of_16_and_cuts_the_wide_group_instead() -> None:
    """The same target without finer rounding: every width a multiple of 16, and the trade it
    makes visible: a 64-wide group loses more than half."""
    analysis, plan = _plan(0.25, finer=False)
    assert not plan.narrow
    assert all(plan.widths[g.id] % 16 == 0 for g in analysis.prunable)
    assert min(plan.widths[g.id] for g in analysis.prunable if g.size == 64) < 32


def test_strict_rounding_through_prune_and_the_cli(tmp_path: Path, cli: CliRun) -> None:
    from irprune.api import prune

    model = _chain([16, 32, 64, 64])
    strict = prune(model, target_flops=0.25, dry_run=True, strict_rounding=True)
    assert strict.report["settings"]["strict_rounding"] is True
    assert strict.report["settings"]["round_narrow"] is False
    default = prune(model, target_flops=0.25, dry_run=True)
    assert default.report["settings"]["strict_rounding"] is False
    assert default.report["settings"]["round_narrow"] is True
    path = tmp_path / "chain.onnx"
    path.write_bytes(model.SerializeToString())
    plan = tmp_path / "plan.json"
    code, _, err = cli(path, "--target-flops", "0.25", "--strict-rounding", "--dry-run",
                       "--report", plan)  # fmt: skip
    assert code == 0, err
    assert json.loads(plan.read_text())["settings"]["round_narrow"] is False


def test_latency_grid_offers_the_same_widths_as_the_allocation() -> None:
    from irprune.passes.latency import _grid

    assert set(_grid(32, True, 16, 0.9)) <= {8.0, 16.0, 24.0, 32.0}
    assert 24.0 in set(_grid(32, True, 16, 0.9))
    assert all(w % 16 == 0 for w in _grid(256, True, 16, 0.9))


def test_the_report_says_when_narrow_groups_rounded_finer() -> None:
    from irprune.api import prune
    from irprune.report import format_table

    model = _chain([16, 32, 64, 64])
    coarse = prune(model, target_flops=0.3, dry_run=True)
    finer = prune(model, target_flops=0.25, dry_run=True)
    assert coarse.report["settings"]["round_narrow"] is False
    assert finer.report["settings"]["round_narrow"] is True
    assert "rounded to smaller multiples" not in format_table(coarse.report)
    line = "groups narrower than 48 channels rounded to smaller multiples (down to 8)"
    assert line in format_table(finer.report)
