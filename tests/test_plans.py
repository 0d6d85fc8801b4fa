"""Plan documents (``irprune.plans``): round trip, fingerprint, validation, the JSON Schema."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune import plans
from irprune.emit import to_model
from irprune.frontends.onnx import import_model
from irprune.ir import Graph
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import ChannelAnalysis, analyze
from irprune.passes.fold import fold_constants
from irprune.passes.rewrite.drop import drop
from irprune.plans import PlanError
from tests.helpers import make_model

RNG = np.random.default_rng(0)


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


WEIGHTS = {"w0": w(6, 4, 1, 1), "w1": w(8, 6, 1, 1), "w2": w(8, 4, 1, 1), "w3": w(2, 8, 1, 1)}


def tiny(names: tuple[str, ...] = ("c0", "c1", "c2", "c3"), **shapes: tuple[int, ...]):
    """x -> Conv c0 (6) -> Relu -> Conv c1 (8) -> grouped Conv c2 (2 blocks of 4) -> Conv c3 (2,
    a graph output: frozen). Groups: c0's 6 channels, c1+c2's 2 blocks, c3's 2 (frozen)."""
    inits = {k: (w(*shapes[k]) if k in shapes else v) for k, v in WEIGHTS.items()}
    return make_model(
        [
            helper.make_node("Conv", ["x", "w0"], ["a"], names[0]),
            helper.make_node("Relu", ["a"], ["r"], "relu"),
            helper.make_node("Conv", ["r", "w1"], ["b"], names[1]),
            helper.make_node("Conv", ["b", "w2"], ["c"], names[2], group=2),
            helper.make_node("Conv", ["c", "w3"], ["out"], names[3]),
        ],
        [("x", ["N", 4, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        inits,
    )


def imported(model: onnx.ModelProto) -> tuple[Graph, ChannelAnalysis]:
    graph = import_model(model)
    fold_constants(graph)
    return graph, analyze(graph)


def group_ids(analysis: ChannelAnalysis) -> tuple[int, int, int]:
    """The ids of the plain, the blocked and the frozen group."""
    by_node = {s.node: g.id for g in analysis.groups for s in g.sources}
    return by_node["c0"], by_node["c1"], by_node["c3"]


def a_plan(analysis: ChannelAnalysis) -> Plan:
    plain, blocked, _ = group_ids(analysis)
    widths = np.array([float(g.size) for g in analysis.groups])
    widths[plain], widths[blocked] = 3, 1
    kept = {plain: np.array([0, 2, 5]), blocked: np.array([1])}
    return Plan(widths, MappingProxyType(kept), ratio=0.61, round_to=2)


@pytest.fixture
def setup() -> tuple[Graph, ChannelAnalysis, str, dict[str, Any]]:
    graph, analysis = imported(tiny())
    fp = plans.fingerprint(graph)
    settings = {"target_flops": 0.6, "criterion": "l1", "ignore": {3, 1}, "shape": (1, 2)}
    doc = plans.to_dict(a_plan(analysis), analysis, fingerprint=fp, settings=settings,
                        model_name="tiny.onnx")  # fmt: skip
    return graph, analysis, fp, doc


def test_round_trip_through_json_text(setup, tmp_path: Path) -> None:
    _, analysis, fp, doc = setup
    plan = a_plan(analysis)
    path = plans.save(tmp_path / "plan.json", doc)
    assert not [p for p in tmp_path.iterdir() if p.name != "plan.json"]  # no temporary left
    text = path.read_text()
    assert json.loads(text) == doc == plans.load(path)
    back = plans.from_dict(json.loads(text), analysis, fingerprint=fp)
    assert np.array_equal(back.widths, plan.widths)
    assert set(back.kept) == set(plan.kept)
    for gid, idx in plan.kept.items():
        assert back.kept[gid].tolist() == idx.tolist()
    assert (back.ratio, back.round_to, back.narrow) == (0.61, 2, False)


def test_document_contents(setup) -> None:
    _, analysis, fp, doc = setup
    plain, blocked, frozen = group_ids(analysis)
    assert (doc["format"], doc["version"]) == ("irprune-plan", 1)
    assert doc["model"] == {"name": "tiny.onnx", "fingerprint": fp}
    assert doc["settings"] == {"target_flops": 0.6, "criterion": "l1", "ignore": [1, 3],
                               "shape": [1, 2]}  # fmt: skip
    groups = {g["id"]: g for g in doc["groups"]}
    assert groups[plain] == {"id": plain, "size": 6, "unit": 1, "width": 3,
                             "sources": ["c0:w0:0"], "frozen": [], "kept": [0, 2, 5]}  # fmt: skip
    assert (groups[blocked]["size"], groups[blocked]["unit"]) == (2, 4)
    assert groups[blocked]["sources"] == ["c1:w1:0", "c2:w2:0"]
    assert "kept" not in groups[frozen] and groups[frozen]["frozen"]


def test_loaded_plan_applies(setup) -> None:
    graph, analysis, fp, doc = setup
    plan = plans.from_dict(json.loads(json.dumps(doc)), analysis, fingerprint=fp)
    drop(graph, analysis, plan)
    graph.verify()
    dims = {t.name: list(t.dims) for t in to_model(graph).graph.initializer}
    assert dims["w0"] == [3, 4, 1, 1] and dims["w1"] == [4, 3, 1, 1] and dims["w3"][1] == 4


def test_planner_output_round_trips() -> None:
    from irprune import prune

    model = tiny()
    result = prune(model, target_flops=0.6, round_to=1, dry_run=True, measure_latency=False)
    graph, analysis = imported(model)
    assert result.plan is not None and len(result.plan.kept) > 0
    fp = plans.fingerprint(graph)
    doc = plans.to_dict(result.plan, analysis, fingerprint=fp, settings={}, model_name="m")
    back = plans.from_dict(json.loads(json.dumps(doc)), analysis, fingerprint=fp)
    assert np.array_equal(back.widths, result.plan.widths)
    assert {k: v.tolist() for k, v in back.kept.items()} == {
        k: np.asarray(v).tolist() for k, v in result.plan.kept.items()
    }


def test_fingerprint_stable_and_structural() -> None:
    fp = plans.fingerprint(imported(tiny())[0])
    assert len(fp) == 64 and fp == plans.fingerprint(imported(tiny())[0])
    assert plans.fingerprint(imported(tiny(w0=(6, 4, 1, 1)))[0]) == fp  # new values, same shape
    renamed = tiny(("c0", "c1", "c2", "last"))
    assert plans.fingerprint(imported(renamed)[0]) != fp
    reshaped = tiny(w0=(6, 4, 3, 3))
    assert plans.fingerprint(imported(reshaped)[0]) != fp


def test_fingerprint_mismatch(setup) -> None:
    _, analysis, fp, doc = setup
    other = plans.fingerprint(imported(tiny(("c0", "c1", "c2", "last")))[0])
    with pytest.raises(PlanError, match="made for a different model") as exc:
        plans.from_dict(doc, analysis, fingerprint=other)
    assert fp in str(exc.value) and other in str(exc.value)
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("format", "onnx", "not an irprune plan"),
        ("version", 2, "unsupported plan version 2"),
        ("version", True, "unsupported plan version"),
        ("round_to", 0, "'round_to' must be an integer >= 1"),
        ("ratio", "half", "'ratio' must be a finite number"),
        ("groups", {}, "'groups' must be a list"),
    ],
)
def test_header_errors(setup, key: str, value: object, message: str) -> None:
    _, analysis, fp, doc = setup
    doc[key] = value
    with pytest.raises(PlanError, match=message):
        plans.from_dict(doc, analysis, fingerprint=fp)


def entry(doc: dict[str, Any], gid: int) -> dict[str, Any]:
    return next(g for g in doc["groups"] if g["id"] == gid)


def test_unknown_missing_and_repeated_groups(setup) -> None:
    _, analysis, fp, doc = setup
    n = len(analysis.groups)
    extra = copy.deepcopy(doc)
    extra["groups"].append({**extra["groups"][0], "id": n})
    with pytest.raises(PlanError, match=f"group {n}: no such group"):
        plans.from_dict(extra, analysis, fingerprint=fp)
    short = copy.deepcopy(doc)
    gone = short["groups"].pop(1)["id"]
    with pytest.raises(PlanError, match=f"group {gone}: missing from the plan"):
        plans.from_dict(short, analysis, fingerprint=fp)
    twice = copy.deepcopy(doc)
    twice["groups"].append(twice["groups"][0])
    with pytest.raises(PlanError, match=f"group {twice['groups'][0]['id']}: listed twice"):
        plans.from_dict(twice, analysis, fingerprint=fp)


@pytest.mark.parametrize(
    ("which", "edit", "message"),
    [
        ("frozen", {"width": 1, "kept": [0]}, "frozen .* but the plan shrinks it to 1"),
        ("plain", {"width": 4}, "width 4 but 3 kept indices"),
        ("plain", {"kept": [0, 5, 2]}, "kept indices must be sorted and unique"),
        ("plain", {"kept": [0, 2, 2]}, "kept indices must be sorted and unique"),
        ("plain", {"kept": [0, 2, 6]}, r"kept index 6 is out of range \[0, 6\)"),
        ("plain", {"kept": [-1, 2, 5]}, r"kept index -1 is out of range"),
        ("plain", {"kept": [0, 2.0, 5]}, "'kept' must be a list of integers"),
        ("plain", {"width": 0, "kept": []}, "width 0 is not between 1 and its size 6"),
        ("plain", {"width": 7}, "width 7 is not between 1 and its size 6"),
        ("plain", {"width": "3"}, "width '3' is not between"),
        ("blocked", {"kept": None}, "shrinks to 1 but lists no 'kept' indices"),
        ("blocked", {"kept": [2]}, r"kept index 2 is out of range \[0, 2\)"),
        ("blocked", {"unit": 1}, "unit 1 in the plan, 4 in the model"),
        ("blocked", {"size": 8}, "size 8 in the plan, 2 in the model"),
    ],
)
def test_group_errors_name_the_group(setup, which: str, edit: dict, message: str) -> None:
    _, analysis, fp, doc = setup
    gid = dict(zip(("plain", "blocked", "frozen"), group_ids(analysis), strict=True))[which]
    target = entry(doc, gid)
    for k, v in edit.items():
        if v is None:
            target.pop(k)
        else:
            target[k] = v
    with pytest.raises(PlanError, match=f"^group {gid}: {message}"):
        plans.from_dict(doc, analysis, fingerprint=fp)


def test_hand_edit_keeping_more_is_accepted(setup) -> None:
    _, analysis, fp, doc = setup
    plain, blocked, _ = group_ids(analysis)
    entry(doc, plain).update(width=5, kept=[0, 1, 2, 4, 5])
    entry(doc, blocked).update(width=2)  # back to full: "kept" is then optional
    entry(doc, blocked).pop("kept")
    plan = plans.from_dict(doc, analysis, fingerprint=fp)
    assert plan.widths[plain] == 5 and plan.kept[plain].tolist() == [0, 1, 2, 4, 5]
    assert plan.widths[blocked] == 2 and blocked not in plan.kept
    entry(doc, plain).update(width=6, kept=list(range(6)))  # a full, explicit "kept" is fine
    assert plain not in plans.from_dict(doc, analysis, fingerprint=fp).kept


def test_settings_must_be_json(setup) -> None:
    _, analysis, fp, _ = setup
    with pytest.raises(PlanError, match="setting 'calib'"):
        plans.to_dict(a_plan(analysis), analysis, fingerprint=fp, settings={"calib": object()},
                      model_name="m")  # fmt: skip


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read plan"):
        plans.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        plans.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(PlanError, match="not a JSON object"):
        plans.load(tmp_path / "list.json")


# --- the schema, checked by a small validator of the keywords it uses (no dependency) -------------
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float),
         "integer": int}  # fmt: skip


def conforms(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "$") -> list[str]:
    """Violations of ``schema`` by ``value``, for the keywords plan.schema.json uses."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    errors = []
    kind = schema.get("type")
    if kind and (
        not isinstance(value, TYPES[kind]) or isinstance(value, bool) != (kind == "boolean")
    ):
        return [f"{at}: not {kind}"]
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{at}: does not match {schema['pattern']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{at}: not {schema['const']!r}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{at}: below {schema['minimum']}")
    if schema.get("uniqueItems") and len(set(map(repr, value))) != len(value):
        errors.append(f"{at}: repeated items")
    errors += [f"{at}: no {k!r}" for k in schema.get("required", ()) if k not in value]
    for k, sub in schema.get("properties", {}).items():
        if isinstance(value, dict) and k in value:
            errors += conforms(value[k], sub, root, f"{at}.{k}")
    if "items" in schema:
        for i, item in enumerate(value):
            errors += conforms(item, schema["items"], root, f"{at}[{i}]")
    return errors


KNOWN = {"$schema", "title", "description", "type", "required", "properties", "$defs", "$ref",
         "const", "minimum", "items", "uniqueItems", "pattern"}  # fmt: skip


def keywords(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    subs = [*schema.get("properties", {}).values(), *schema.get("$defs", {}).values()]
    subs += [schema["items"]] if "items" in schema else []
    return set(schema) | {k for s in subs for k in keywords(s)}


def test_document_matches_schema(setup) -> None:
    _, _, _, doc = setup
    schema = json.loads(plans.SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert keywords(schema) <= KNOWN  # the validator above understands every keyword used
    assert conforms(json.loads(json.dumps(doc)), schema, schema) == []
    # "blocks" only in plans that remove residual blocks: test_depth_document_matches_schema
    assert set(schema["properties"]) == set(doc) | {"blocks"}
    assert set(schema["$defs"]["group"]["properties"]) == {k for g in doc["groups"] for k in g}
    broken = copy.deepcopy(doc)
    del broken["groups"][0]["width"]
    broken["round_to"] = "16"
    assert conforms(broken, schema, schema) == [
        "$.round_to: not integer",
        "$.groups[0]: no 'width'",
    ]


def test_depth_document_matches_schema(tmp_path: Path) -> None:
    """A plan that removes residual blocks records them (by Add output) as the schema says."""
    import irprune
    from tests.passes.analysis.test_blocks import basic_net

    path = tmp_path / "res.onnx"
    onnx.save(basic_net(4), path)
    analysis = irprune.analyze(path)
    doc = analysis.plan(0.53, analysis.score("l1"), depth="only").to_document()
    schema = json.loads(plans.SCHEMA.read_text())
    assert conforms(json.loads(json.dumps(doc)), schema, schema) == []
    assert set(schema["properties"]) == set(doc)
    assert set(schema["$defs"]["block"]["properties"]) == {k for b in doc["blocks"] for k in b}
    assert [b["output"] for b in plans.blocks_of(doc)] == [b["output"] for b in doc["blocks"]]
    for broken, message in (([{"add": "x"}], "blocks\\[0\\]"), ("b0.add", "must be a list")):
        with pytest.raises(PlanError, match=message):
            plans.blocks_of({**doc, "blocks": broken})
    twice = {**doc, "blocks": [doc["blocks"][0], doc["blocks"][0]]}
    with pytest.raises(PlanError, match="twice"):
        plans.blocks_of(twice)


def test_a_width_off_the_rounding_is_applied_and_said(setup, caplog) -> None:
    """round-to 2 in the document: width 4 of the plain group is on it and passes quietly; a
    hand edit to 5 is applied as given, with a warning naming the group and the step."""
    _, analysis, fp, doc = setup
    plain, _, _ = group_ids(analysis)
    entry(doc, plain).update(width=4, kept=[0, 1, 2, 5])
    plan = plans.from_dict(doc, analysis, fingerprint=fp)
    assert plans.rounding_notes(plan, analysis) == [] and "not a multiple" not in caplog.text
    entry(doc, plain).update(width=5, kept=[0, 1, 2, 4, 5])
    plan = plans.from_dict(doc, analysis, fingerprint=fp)
    assert plan.widths[plain] == 5
    (note,) = plans.rounding_notes(plan, analysis)
    assert note.startswith(f"group {plain}: width 5 is not a multiple of 2")
    assert note in caplog.text
