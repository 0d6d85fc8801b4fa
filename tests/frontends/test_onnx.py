"""ONNX frontend and emitter: round trips, Constant nodes, old-style inputs, external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.api import prune
from irprune.demo import build_demo_model
from irprune.emit import to_model
from irprune.errors import InvalidModelError
from irprune.frontends.onnx import import_model
from tests.conftest import REFERENCE, STYLES
from tests.helpers import feeds_for, make_model, run


def _round_trip_identical(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = import_model(model)
    graph.verify()
    again = to_model(graph)
    onnx.checker.check_model(again, full_check=True)
    feeds = feeds_for(model, batch=2)
    for a, b in zip(run(model, feeds), run(again, feeds), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b), "round trip changed the outputs"
    assert [i.SerializeToString() for i in again.graph.input] == [
        i.SerializeToString() for i in model.graph.input
    ]
    assert [o.SerializeToString() for o in again.graph.output] == [
        o.SerializeToString() for o in model.graph.output
    ]
    return again


def test_round_trip_demo(demo_model: onnx.ModelProto) -> None:
    demo_model.doc_string = "a doc"
    demo_model.metadata_props.add(key="origin", value="test")
    again = _round_trip_identical(demo_model)
    assert again.doc_string == "a doc" and again.metadata_props == demo_model.metadata_props
    assert again.producer_name == demo_model.producer_name
    assert again.opset_import == demo_model.opset_import


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", REFERENCE)
def test_round_trip_reference(reference_onnx, name: str, style: str) -> None:
    _round_trip_identical(onnx.load(reference_onnx(name, style)))


def test_constant_nodes_become_constants() -> None:
    model = make_model(
        [
            helper.make_node("Constant", [], ["s"], value_floats=[2.0]),
            helper.make_node("Constant", [], ["shape"], value_ints=[0, -1]),
            helper.make_node("Mul", ["x", "s"], ["y"]),
            helper.make_node("Reshape", ["y", "shape"], ["out"]),
        ],
        [("x", ["N", 2, 3])],
        [("out", ["N", 6])],
        {},
    )
    graph = import_model(model)
    assert graph.values["s"].is_const and graph.values["shape"].is_const
    assert [n.op_type for n in graph.nodes] == ["Mul", "Reshape"]
    _round_trip_identical(model)


def test_initializers_listed_as_inputs_still_prune() -> None:
    model = build_demo_model()
    inits = model.graph.initializer
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
    )
    _round_trip_identical(model)
    result = prune(model, target_flops=0.5, measure_latency=False)
    names = [i.name for i in result.model.graph.input]
    assert names[0] == "input" and len(names) == len(model.graph.input)


def test_symbolic_batch_survives_pruning() -> None:
    result = prune(build_demo_model(), target_flops=0.5, measure_latency=False)
    dim = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    out_dim = result.model.graph.output[0].type.tensor_type.shape.dim[0]
    assert out_dim.dim_param == "batch"


def test_external_data(tmp_path: Path) -> None:
    model = build_demo_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").stat().st_size > 10_000
    result = prune(path, target_flops=0.5, measure_latency=False)
    out = tmp_path / "pruned.onnx"
    result.save(out)
    onnx.checker.check_model(onnx.load(out), full_check=True)


@pytest.mark.parametrize("opset", [13, 15, 17, 19, 21])
def test_opsets(opset: int) -> None:
    model = build_demo_model(opset=opset)
    _round_trip_identical(model)
    result = prune(model, target_flops=0.5, measure_latency=False)
    assert result.model.opset_import[0].version == opset
    assert 0.48 <= result.report["cost"]["ratio"]["macs"] <= 0.5


def test_unknown_ops_are_carried_through_untouched() -> None:
    rng = np.random.default_rng(0)
    custom = helper.make_node("Frobnicate", ["a"], ["b"], "odd", domain="com.example", k=3)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["a"]),
            custom,
            helper.make_node("Relu", ["b"], ["out"]),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 8, 4, 4])],
        {"w": rng.standard_normal((8, 3, 1, 1)).astype(np.float32)},
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    again = to_model(import_model(model))
    assert again.graph.node[1] == custom
    assert any(o.domain == "com.example" for o in again.opset_import)


def test_known_but_unruled_op_freezes_only_its_inputs() -> None:
    """LRN mixes neighbouring channels and has no rule: its input group freezes, others prune."""
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("LRN", ["a"], ["b"], size=3),
            helper.make_node("Conv", ["b", "w2"], ["c"], "c2"),
            helper.make_node("Relu", ["c"], ["d"]),
            helper.make_node("Conv", ["d", "w3"], ["out"], "c3"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 4, 4, 4])],
        {
            "w1": rng.standard_normal((8, 3, 1, 1)).astype(np.float32),
            "w2": rng.standard_normal((16, 8, 1, 1)).astype(np.float32),
            "w3": rng.standard_normal((4, 16, 1, 1)).astype(np.float32),
        },
    )
    result = prune(model, target_flops=0.84, round_to=1, measure_latency=False)
    by_source = {g["sources"][0]: g for g in result.report["groups"]}
    assert by_source["c1"]["frozen"] and "no channel rule" in by_source["c1"]["frozen"][0]
    assert by_source["c2"]["kept"] < 16
    assert [n.op_type for n in result.model.graph.node].count("LRN") == 1


def test_unsupported_model_object_is_a_usage_error() -> None:
    from irprune.errors import UsageError

    with pytest.raises(UsageError, match="cannot prune a dict"):
        prune({"not": "a model"}, target_flops=0.5)  # type: ignore[arg-type]


# --- regressions from tests/test_hostile.py --------------------------------------------------


def _two_convs() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1] * 4),
    ]
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "w2": rng.standard_normal((4, 8, 3, 3)).astype(np.float32),
    }
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])], inits)


def test_value_info_contradicting_inference_is_ignored() -> None:
    model = _two_convs()
    model.graph.value_info.extend(
        [
            helper.make_tensor_value_info("c1", onnx.TensorProto.FLOAT, [1, 99, 3, 3]),
            helper.make_tensor_value_info("r1", onnx.TensorProto.FLOAT, [7]),
        ]
    )
    graph = import_model(model)
    assert graph.values["c1"].shape == ("N", 8, 8, 8)
    assert graph.values["r1"].shape == ("N", 8, 8, 8)


def test_missing_initializer_and_cycle_are_named() -> None:
    model = _two_convs()
    del model.graph.initializer[1]
    with pytest.raises(InvalidModelError, match=r"'w2', which no initializer.*missing initializer"):
        import_model(model)
    model = _two_convs()
    model.graph.node[0].input[0] = "r1"
    with pytest.raises(InvalidModelError, match=r"'r1' before the node producing it.*cycle"):
        import_model(model)


@pytest.mark.parametrize(
    ("attr", "value", "says"),
    [("kernel_shape", [10**9] * 2, "impossible shape"), ("pads", [10**5] * 4, "elements")],
)
def test_impossible_or_huge_shapes_are_refused_before_onnxruntime(
    attr: str, value: list[int], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _two_convs()
    conv = model.graph.node[0]
    kept = [a for a in conv.attribute if a.name != attr]
    del conv.attribute[:]
    conv.attribute.extend([*kept, helper.make_attribute(attr, value)])

    def no_session(*args: object, **kwargs: object) -> None:
        raise AssertionError("onnxruntime was asked to run it")

    import importlib

    verify_module = importlib.import_module("irprune.emit.verify")  # not the same-named function
    monkeypatch.setattr(verify_module, "session", no_session)
    with pytest.raises(InvalidModelError, match=says):
        import_model(model)


def test_values_after_a_loop_get_dtype_and_shape_from_the_probe() -> None:
    """ONNX shape inference cannot type a Loop's carried output; one onnxruntime run at batch 1
    and one at batch 2 give the dtype, the static dims, and leave the batch unknown."""
    model = _two_convs()
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("Add", ["acc_in", "r1"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", onnx.TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, None),
        ],
    )
    model.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array(2, np.int64), "trip"),
            onnx.numpy_helper.from_array(np.array(True), "cond"),
        ]
    )
    model.graph.node.insert(2, helper.make_node("Loop", ["trip", "cond", "r1"], ["l"], body=body))
    model.graph.node[3].input[0] = "l"
    graph = import_model(model)
    assert graph.values["l"].dtype == onnx.TensorProto.FLOAT
    assert graph.values["l"].shape == (None, 8, 8, 8)
    assert graph.values["l"].sample_shape == (1, 8, 8, 8)


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    model = _two_convs()
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, size_threshold=0)
    stored = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for t in stored.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../elsewhere.bin"
    (tmp_path / "m.onnx").write_bytes(stored.SerializeToString())
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        import_model(tmp_path / "m.onnx")
