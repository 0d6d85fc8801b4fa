"""Depth pruning end to end (issue #16): ``--depth only`` / ``auto`` on a small residual net,
checked by the independent MAC counter (``tests/oracles.py``) and, without width pruning, by the
independent oracle (the original with each removed block's Add replaced by ``Identity(x)``, a
proto edit sharing no code with the pass); plan files with blocks; ``inspect``; depth off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import irprune
from irprune import cli, plans
from irprune.errors import TargetError
from irprune.inspect import inspect_model
from tests.helpers import rel_diff, run
from tests.oracles import count_macs
from tests.passes.analysis.test_blocks import basic_net
from tests.passes.rewrite.test_remove_blocks import skipped

SHAPE = {"input": [2, 3, 6, 6]}  # basic_net's fixed input
FAST = dict(measure_latency=False, round_to=1)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stem -> 4 basic blocks (each ~24% of the MACs) -> pool -> Gemm."""
    path = tmp_path_factory.mktemp("depth") / "res.onnx"
    onnx.save(basic_net(4), path)
    return path


@pytest.fixture(scope="module")
def calib() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(1).standard_normal((16, 3, 6, 6)).astype(np.float32)}


def mac_ratio(model: onnx.ModelProto, original: Path) -> float:
    return count_macs(model, SHAPE) / count_macs(onnx.load(original), SHAPE)


def test_only_removes_blocks_equal_to_the_oracle(net: Path) -> None:
    result = irprune.prune(net, target_flops=0.53, depth="only", rewrite="drop", **FAST)
    removed = result.report["blocks_removed"]
    assert len(removed) == 2
    assert all(b["criterion"] == "weight_norm" and b["score"] is not None for b in removed)
    assert 0.51 <= mac_ratio(result.model, net) <= 0.53
    assert all(g["kept"] == g["size"] for g in result.report["groups"])  # no width pruning
    analysis = irprune.analyze(net)
    inputs = {b.add: b.input for b in analysis.blocks}
    oracle = skipped(onnx.load(net), {b["add"]: inputs[b["add"]] for b in removed})
    feeds = {"input": np.random.default_rng(0).standard_normal(SHAPE["input"], np.float32)}
    expected, got = run(oracle, feeds), run(result.model, feeds)
    assert max(rel_diff(e, g) for e, g in zip(expected, got, strict=True)) < 1e-5
    assert len(result.model.graph.node) < len(onnx.load(net).graph.node)


def test_only_refuses_what_blocks_cannot_reach(net: Path) -> None:
    with pytest.raises(TargetError, match="blocks alone cannot meet it"):
        irprune.prune(net, target_flops=0.3, depth="only", max_blocks=1, rewrite="drop", **FAST)


def test_auto_is_valid_and_on_target(net: Path, calib: dict[str, np.ndarray]) -> None:
    result = irprune.prune(net, target_flops=0.5, depth="auto", calib=calib, rewrite="drop",
                           **FAST)  # fmt: skip
    assert 0.48 <= mac_ratio(result.model, net) <= 0.5
    assert result.report["settings"]["depth"] == "auto"
    for block in result.report.get("blocks_removed", []):
        assert block["criterion"] == "removal_error"


def test_repair_runs_after_removal(net: Path, calib: dict[str, np.ndarray]) -> None:
    """The calibrated repair on a depth+width plan: valid, on target, and closer to the
    original than the same plan dropped without repair."""
    analysis = irprune.analyze(net)
    plan = analysis.plan(0.35, analysis.score("l1"), depth="auto", calib=calib, round_to=1)
    assert plan.blocks, "the test needs a plan that removes blocks"
    repaired = plan.apply(rewrite="reconstruct", calib=calib, measure_latency=False)
    dropped = irprune.Plan.from_document(irprune.analyze(net), plan.to_document())
    plain = dropped.apply(rewrite="drop", measure_latency=False)
    assert 0.33 <= mac_ratio(repaired.model, net) <= 0.35
    assert repaired.report["fidelity"]["rel_l2"] < plain.report["fidelity"]["rel_l2"]


def test_plan_then_apply_is_byte_identical(net: Path, tmp_path: Path) -> None:
    one = irprune.prune(net, target_flops=0.53, depth="only", rewrite="drop", **FAST)
    analysis = irprune.analyze(net)
    plan = analysis.plan(0.53, analysis.score("l1"), depth="only", round_to=1)
    path = plan.save(tmp_path / "p.json")
    document = json.loads(path.read_text())
    assert [b["output"] for b in document["blocks"]] == [b.output for b in plan.blocks]
    again = irprune.Plan.from_document(irprune.analyze(net), path)
    assert again.blocks == plan.blocks or [b.output for b in again.blocks] == [
        b.output for b in plan.blocks
    ]
    applied = again.apply(rewrite="drop", measure_latency=False)
    assert applied.model.SerializeToString() == one.model.SerializeToString()
    assert applied.report["blocks_removed"][0]["output"] == plan.blocks[0].output


def test_a_plan_naming_a_missing_block_fails_with_exit_2(net: Path, tmp_path: Path) -> None:
    analysis = irprune.analyze(net)
    document = analysis.plan(0.53, analysis.score("l1"), depth="only").to_document()
    document["blocks"][0]["output"] = "no.such.add"
    path = plans.save(tmp_path / "bad.json", document)
    with pytest.raises(plans.PlanError, match=r"no\.such\.add"):
        irprune.Plan.from_document(analysis, path)
    code = cli.main(["apply", str(net), str(path), "-o", str(tmp_path / "o.onnx"), "-q"])
    assert code == 2


def test_cli_depth_options(net: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    argv = [str(net), "--target-flops", "0.53", "--depth", "only", "--max-blocks", "2",
            "--rewrite", "drop", "--no-latency", "-o", str(out), "--report", str(report),
            "-q"]  # fmt: skip
    assert cli.main(argv) == 0
    assert len(json.loads(report.read_text())["blocks_removed"]) == 2
    assert cli.main([*argv[:6], "1", *argv[7:]]) == 4  # one block cannot reach 0.53


def test_inspect_lists_candidates(net: Path) -> None:
    info = inspect_model(net)
    assert [b["add"] for b in info["blocks"]] == [f"b{i}.add" for i in range(4)]
    assert all(0.2 < b["macs_share"] < 0.3 and b["params"] > 0 for b in info["blocks"])
    assert "residual blocks: 4 removable" in info["text"]
    assert [b.add for b in irprune.analyze(net).blocks] == [b["add"] for b in info["blocks"]]


def test_depth_off_is_the_width_plan(net: Path) -> None:
    off = irprune.prune(net, target_flops=0.5, depth="off", rewrite="drop", **FAST)
    default = irprune.prune(net, target_flops=0.5, rewrite="drop", **FAST)
    assert off.model.SerializeToString() == default.model.SerializeToString()
    assert "blocks_removed" not in off.report and "depth" not in off.report["settings"]
