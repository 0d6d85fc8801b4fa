"""The staged API (issue #18): ``analyze -> Analysis.score -> Analysis.plan -> Plan.apply``, one
test per stage (what it returns, that it leaves the model alone, that its result is frozen),
plans through plan files and by hand, the stages composed giving ``prune``'s bytes, and ``irprune
plan`` then ``irprune apply`` giving one ``irprune`` call's bytes on the reference models and
three zoo models."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

import irprune
from irprune.api import prune
from irprune.demo import build_demo_model
from irprune.errors import TargetError, UsageError
from irprune.passes import importance
from irprune.plans import PlanError
from irprune.shapes import InputShapeError
from irprune.stages import ApplyOptions, Plan, PlanOptions, ScoreOptions, Target
from irprune.stages import plan as stage_plan
from tests.conftest import REFERENCE
from tests.helpers import make_model

CliRun = Callable[..., tuple[int, str, str]]


def _sha(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


@pytest.fixture
def model() -> onnx.ModelProto:
    return build_demo_model(seed=0, explicit_bn=True)


@pytest.fixture
def calib(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {model.graph.input[0].name: rng.standard_normal((16, 3, 32, 32)).astype(np.float32)}


def _frozen(obj: Any, name: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, None)


# --- one stage each ------------------------------------------------------------------------------
def test_analyze_finds_groups_costs_and_reasons_and_leaves_the_model_alone(
    model: onnx.ModelProto,
) -> None:
    before = model.SerializeToString()
    analysis = irprune.analyze(model, input_shapes={"input": (1, 3, 32, 32)})
    assert model.SerializeToString() == before
    assert isinstance(analysis, irprune.Analysis)
    assert analysis.input_shapes == {"input": (1, 3, 32, 32)}
    assert len(analysis.fingerprint) == 64 and analysis.macs > 0 and analysis.params > 0
    assert [g.id for g in analysis.groups] == list(range(len(analysis.channels.groups)))
    frozen = [g for g in analysis.groups if not g.prunable]
    assert frozen and all(g.frozen for g in frozen)  # every frozen group says why
    assert dict(analysis.frozen) == {g.id: g.frozen for g in frozen}
    assert any("logits" in reason for g in frozen for reason in g.frozen)
    assert all(0.0 <= g.macs_share <= 1.0 for g in analysis.groups)
    assert max(g.macs_share for g in analysis.groups) > 0.1
    assert all(g.members and g.sources and g.size > 0 for g in analysis.groups)
    assert 0 < analysis.prunable_macs_share <= 1
    # the removable residual blocks (depth): the demo model's one identity-shortcut block
    assert [(b.add, b.kind) for b in analysis.blocks] == [("add6", "basic")]
    assert 0.3 < analysis.blocks[0].macs_share < 0.5 and analysis.blocks[0].params > 0
    assert all(r.reason for r in analysis.rejected_blocks)
    _frozen(analysis, "fingerprint")
    _frozen(analysis.groups[0], "size")
    with pytest.raises(TypeError):
        analysis.input_shapes["input"] = (2, 3, 32, 32)  # type: ignore[index]


def test_analyze_takes_the_deployment_shape_from_calibration_data() -> None:
    """A model with symbolic H and W: costed at the calibration data's shape, or as given."""
    rng = np.random.default_rng(0)
    weights = {
        "w0": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "w1": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
    }
    symbolic = make_model(
        [
            helper.make_node("Conv", ["x", "w0"], ["a"], "c0", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["a"], ["r"], "relu"),
            helper.make_node("Conv", ["r", "w1"], ["y"], "c1"),
        ],
        [("x", ["N", 3, "H", "W"])],
        [("y", ["N", 4, "H", "W"])],
        weights,
    )
    data = {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    small = irprune.analyze(symbolic, calib=data)
    large = irprune.analyze(symbolic, input_shapes={"x": (1, 3, 16, 16)})
    assert small.input_shapes == {"x": (1, 3, 8, 8)}
    assert large.macs == pytest.approx(4 * small.macs)
    assert large.fingerprint == small.fingerprint  # the graph is the same
    with pytest.raises(InputShapeError, match="H"):
        irprune.analyze(symbolic)  # a symbolic dim that is not the batch, and no shape


def test_score_returns_read_only_scores_per_prunable_group(model: onnx.ModelProto) -> None:
    analysis = irprune.analyze(model)
    graph = analysis.loaded.graph()
    weights = {v.name: np.array(v.const) for v in graph.constants() if v.const is not None}
    scores = analysis.score("l1")
    assert isinstance(scores, irprune.Scores)
    assert scores.criterion == "l1" and scores.options == ScoreOptions("l1", 0)
    assert set(scores.by_group) == {g.id for g in analysis.channels.prunable}
    for gid, values in scores.by_group.items():
        assert values.shape == (analysis.channels.groups[gid].size,)
        with pytest.raises(ValueError):
            values[0] = 1.0
    _frozen(scores, "criterion")
    assert "importance" in scores.timings
    # read-only on the model: same graph, same weights
    assert analysis.loaded.graph() is graph
    assert all(np.array_equal(np.array(v.const), weights[v.name]) for v in graph.constants())
    auto = analysis.score()  # auto without data: l1, and it says what was asked
    assert auto.criterion == "l1" and auto.options.criterion == "auto"
    assert all(np.array_equal(auto.by_group[g], scores.by_group[g]) for g in scores.by_group)


def test_score_options_are_checked(model: onnx.ModelProto) -> None:
    analysis = irprune.analyze(model)
    with pytest.raises(UsageError, match="unknown criterion"):
        analysis.score("l7")
    with pytest.raises(UsageError, match="calibration data"):
        analysis.score("apoz")


def test_plan_meets_the_target_and_is_frozen(model: onnx.ModelProto) -> None:
    analysis = irprune.analyze(model)
    scores = analysis.score("l1")
    before = analysis.loaded.graph()
    plan = analysis.plan(0.5, scores, strategy="global")
    assert isinstance(plan, irprune.Plan)
    assert plan.target == Target("macs", 0.5)
    assert 0.48 <= plan.ratio <= 0.5
    macs = analysis.cost.macs_at(plan.allocation.widths)
    assert plan.ratio == pytest.approx(macs / analysis.macs)
    assert set(plan.widths) == {g.id for g in analysis.groups}
    for g in analysis.groups:
        assert 1 <= plan.widths[g.id] <= g.size
        if plan.widths[g.id] < g.size:
            assert len(plan.kept[g.id]) == plan.widths[g.id] and g.prunable
    assert any(plan.widths[g.id] < g.size for g in analysis.groups)
    assert plan.settings["strategy"] == "global" and plan.settings["criterion"] == "l1"
    assert analysis.loaded.graph() is before  # planning reads the model only
    _frozen(plan, "ratio")
    with pytest.raises(TypeError):
        plan.widths[0] = 1  # type: ignore[index]
    params = analysis.plan({"params": 0.6}, scores, strategy="uniform")
    assert params.target == Target("params", 0.6) and params.ratio <= 0.6


def test_plan_options_are_checked(model: onnx.ModelProto) -> None:
    analysis = irprune.analyze(model)
    with pytest.raises(UsageError, match="unknown strategy"):
        analysis.plan(0.5, strategy="greedy")
    with pytest.raises(UsageError, match=r"target must be in \(0, 1\]"):
        analysis.plan(1.5)
    with pytest.raises(UsageError, match="sensitivity needs calibration data"):
        analysis.plan(0.5, strategy="sensitivity")
    with pytest.raises(TargetError):
        analysis.plan(0.01, max_prune=0.5)
    assert PlanOptions().round_to == 16 and PlanOptions().max_prune == 0.9


def test_a_plan_round_trips_through_its_plan_file(model: onnx.ModelProto, tmp_path: Path) -> None:
    analysis = irprune.analyze(model)
    plan = analysis.plan(0.5, analysis.score("l2"))
    path = plan.save(tmp_path / "plan.json")
    document = json.loads(path.read_text())
    assert document["format"] == "irprune-plan" and document["settings"]["criterion"] == "l2"
    assert document["settings"]["target"] == {"metric": "macs", "fraction": 0.5}
    again = Plan.from_document(analysis, path)
    assert dict(again.widths) == dict(plan.widths) and dict(again.kept) == dict(plan.kept)
    assert again.target == plan.target and again.ratio == pytest.approx(plan.ratio)
    assert again.to_document() == plan.to_document() == document
    # a fresh analysis of the same model takes it; another model's is refused
    assert dict(irprune.analyze(model).load_plan(document).widths) == dict(plan.widths)
    other = irprune.analyze(build_demo_model(seed=0, explicit_bn=False))
    with pytest.raises(PlanError, match="different model"):
        Plan.from_document(other, path)


def test_from_widths_keeps_the_best_channels_and_names_the_group_of_a_bad_width(
    model: onnx.ModelProto,
) -> None:
    analysis = irprune.analyze(model)
    group = max(analysis.channels.prunable, key=lambda g: g.size)
    plan = Plan.from_widths(analysis, {group.id: 8})
    assert plan.widths[group.id] == 8 and plan.target is None
    assert all(plan.widths[g.id] == g.size for g in analysis.groups if g.id != group.id)
    best = np.sort(np.argsort(-analysis.score("l1").by_group[group.id], kind="stable")[:8])
    assert plan.kept[group.id] == tuple(int(i) for i in best)
    assert 0 < plan.ratio < 1
    frozen = next(g for g in analysis.channels.groups if g.frozen)
    bad: list[tuple[dict[Any, Any], str]] = [
        ({group.id: 0}, f"group {group.id}: width 0 is not between 1"),
        ({group.id: group.size + 1}, f"group {group.id}: width {group.size + 1}"),
        ({group.id: 2.5}, f"group {group.id}: width 2.5"),
        ({frozen.id: 1}, f"group {frozen.id}: frozen"),
        ({999: 4}, "group 999: no such group"),
    ]
    for widths, message in bad:
        with pytest.raises(PlanError, match=message):
            Plan.from_widths(analysis, widths)


def test_apply_rewrites_a_copy_and_can_run_again(model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    analysis = irprune.analyze(model)
    scores = analysis.score("l1")
    plan = analysis.plan(0.5, scores)
    result = plan.apply(rewrite="compensate", measure_latency=False)
    assert isinstance(result, irprune.Result)
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report["settings"]["rewrite"] == "compensate"
    assert result.report["cost"]["ratio"]["macs"] == pytest.approx(plan.ratio)
    assert "latency" not in result.report and "fidelity" in result.report
    # the analysed graph went to the rewrite: the stages still read the original model
    rescored = analysis.score("l1")
    assert all(np.array_equal(rescored.by_group[g], scores.by_group[g]) for g in scores.by_group)
    again = plan.apply(rewrite="compensate", measure_latency=False)
    assert _sha(again.serialized or b"") == _sha(result.serialized or b"")
    assert ApplyOptions().rewrite is None
    with pytest.raises(UsageError, match="needs calibration data"):
        plan.apply(rewrite="reconstruct")


def test_preview_is_the_dry_run(model: onnx.ModelProto) -> None:
    analysis = irprune.analyze(model)
    plan = analysis.plan(0.5, analysis.score("l1"))
    preview = plan.preview()
    dry = prune(model, target_flops=0.5, criterion="l1", dry_run=True)
    assert preview.model.SerializeToString() == model.SerializeToString()
    assert preview.report["groups"] == dry.report["groups"]
    assert preview.report["settings"] == dry.report["settings"]
    assert preview.plan_document() == dry.plan_document()


# --- the stages composed are prune ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "data"),
    [
        ({"target_flops": 0.5}, False),
        ({"target_flops": 0.5, "criterion": "fpgm", "rewrite": "merge"}, False),
        ({"target_params": 0.6, "strategy": "uniform", "round_to": 8}, False),
        ({"target_flops": 0.5, "criterion": "l2"}, True),
    ],
    ids=["default", "merge", "params", "calib"],
)
def test_the_stages_composed_give_prunes_bytes(
    model: onnx.ModelProto, calib: dict[str, np.ndarray], settings: dict[str, Any], data: bool
) -> None:
    given = calib if data else None
    direct = prune(model, **settings, calib=given, measure_latency=False)
    target = Target(
        "macs" if "target_flops" in settings else "params",
        settings.get("target_flops") or settings["target_params"],
    )
    analysis = irprune.analyze(model, calib=given)
    scores = analysis.score(settings.get("criterion", "auto"), calib=given)
    plan = analysis.plan(
        target,
        scores,
        strategy=settings.get("strategy", "global"),
        round_to=settings.get("round_to", 16),
        calib=given,
    )
    staged = plan.apply(rewrite=settings.get("rewrite"), calib=given, measure_latency=False)
    assert direct.serialized and _sha(staged.serialized or b"") == _sha(direct.serialized)
    assert staged.report["settings"] == direct.report["settings"]
    assert staged.report["fidelity_inputs"] == direct.report["fidelity_inputs"]


def test_prune_from_a_plan_skips_scoring_and_allocation(
    model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = prune(model, target_flops=0.5, measure_latency=False)
    document = first.plan_document()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("scored although a plan was given")

    monkeypatch.setattr(importance, "score", refuse)
    monkeypatch.setattr(stage_plan, "make_plan", refuse)
    again = prune(model, from_plan=document, measure_latency=False)
    assert _sha(again.serialized or b"") == _sha(first.serialized or b"")
    assert "importance" not in again.report["timings_s"]
    assert "allocation" not in again.report["timings_s"]


# --- plan then apply on the reference models and the zoo -----------------------------------------
def _plan_then_apply(model: Path, tmp_path: Path, cli: CliRun, *options: str) -> None:
    plan, applied, direct = tmp_path / "plan.json", tmp_path / "a.onnx", tmp_path / "b.onnx"
    common = ("--no-latency", *options)
    code, _, err = cli("plan", model, "--target-flops", "0.5", *common, "-o", plan)
    assert code == 0, err
    code, _, err = cli("apply", model, plan, *common, "-o", applied)
    assert code == 0, err
    code, _, err = cli(model, "--target-flops", "0.5", *common, "-o", direct)
    assert code == 0, err
    assert _sha(applied) == _sha(direct)
    assert onnx.load(str(applied)).graph.node  # a model, not an empty file


@pytest.mark.parametrize("name", REFERENCE)
def test_plan_then_apply_equals_one_call_on_the_reference_models(
    name: str, reference_onnx: Callable[[str, str], Path], tmp_path: Path, cli: CliRun
) -> None:
    _plan_then_apply(reference_onnx(name, "explicit"), tmp_path, cli)


ZOO_CASES = [("se_resnet", "explicit"), ("mobilenet_v3_small", "folded"), ("hf_bert", "folded")]


@pytest.mark.parametrize(("name", "style"), ZOO_CASES)
def test_plan_then_apply_equals_one_call_on_zoo_models(
    name: str, style: str, zoo_onnx: Callable[[str, str], Path], tmp_path: Path, cli: CliRun
) -> None:
    _plan_then_apply(zoo_onnx(name, style), tmp_path, cli, "--rewrite", "drop")


def test_apply_refuses_a_plan_made_for_another_model(tmp_path: Path, cli: CliRun) -> None:
    one, other, plan = tmp_path / "one.onnx", tmp_path / "other.onnx", tmp_path / "plan.json"
    onnx.save(build_demo_model(seed=0, explicit_bn=True), str(one))
    onnx.save(build_demo_model(seed=0, explicit_bn=False), str(other))
    code, _, err = cli("plan", one, "--target-flops", "0.5", "--no-latency", "-o", plan)
    assert code == 0, err
    code, out, err = cli("apply", other, plan, "--no-latency", "-o", tmp_path / "out.onnx")
    assert code == 2 and out == ""
    assert "made for a different model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()
