"""Rule helpers (irprune/passes/analysis/rules/base.py, const_chain.py): known answers.
Gaps mutation testing found (docs/mutation.md)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from irprune.frontends.onnx import import_model
from irprune.ir import Node, Value
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.layout import Segment
from irprune.passes.analysis.rules.base import axes_arg, const_ints, static_product


def test_static_product_of_the_known_dims() -> None:
    assert static_product((2, 3, 5)) == 30
    assert static_product(("N", 3, None, 5)) == 15
    assert static_product((2, 3, 5), skip={1}) == 10
    assert static_product(None) == 1 and static_product(()) == 1


def test_const_ints_flattens_and_axes_arg_reads_the_attribute_before_the_input() -> None:
    assert const_ints(Value("c", 7, (2, 2), const=np.array([[1, 2], [3, 4]]))) == [1, 2, 3, 4]
    assert const_ints(Value("s", 7, (), const=np.array(5))) == [5]
    assert const_ints(Value("v", 7, (2,))) is None and const_ints(None) is None
    axes = Value("axes", 7, (1,), const=np.array([1]))
    assert axes_arg(17, Node("ReduceMean", attrs={"axes": (2, 3)}, inputs=(None, axes)), 18) == [
        2,
        3,
    ]
    assert axes_arg(17, Node("ReduceMean"), 18) is None
    assert axes_arg(18, Node("ReduceMean", attrs={"axes": (2,)}, inputs=(None, axes)), 18) == [1]
    assert axes_arg(18, Node("ReduceMean", inputs=(None,)), 18) is None


@pytest.mark.parametrize("perm", [None, [1, 0]])
def test_a_weight_behind_a_transpose_is_sliced_on_the_matching_axis(perm: list | None) -> None:
    """Gemm(x, Transpose(W)): B's output-channel axis 1 is W's axis 0 (perm reversed)."""
    w = numpy_helper.from_array(np.ones((8, 5), np.float32), "w")  # [N=8, K=5]
    w2 = numpy_helper.from_array(np.ones((3, 8), np.float32), "w2")
    kw = {} if perm is None else {"perm": perm}
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], **kw),
        helper.make_node("Gemm", ["x", "wt"], ["a"]),
        helper.make_node("Gemm", ["a", "w2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    res = analyze(import_model(model))
    (group,) = res.prunable
    assert group.size == 8
    assert res.layout("w", 0) == (Segment(group.id, 8),) and res.layout("w", 1) is None
    assert res.layout("wt", 1) == (Segment(group.id, 8),)


def _conv_then(op_nodes: list, y_shape: list, opset: int = 17, extra_inputs: tuple = ()):
    """x[N,3,4,4] -> Conv(w 8 out) -> a -> ``op_nodes`` -> y; returns the analysis."""
    w = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w")
    inits = [w, numpy_helper.from_array(np.array([2, 3], np.int64), "spatial")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"]), *op_nodes]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])]
    inputs += [helper.make_tensor_value_info(k, TensorProto.INT64, [2]) for k in extra_inputs]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10 if opset > 17 else 8
    )
    res = analyze(import_model(model))
    return res, res.groups[0]


def test_a_reduction_over_other_axes_carries_the_channels_to_the_shifted_axis() -> None:
    node = helper.make_node("ReduceMean", ["a"], ["y"], axes=[0], keepdims=0, name="r")
    res, group = _conv_then([node], [8, 4, 4])
    assert res.layout("y", 0) == (Segment(group.id, 8),) and res.layout("y", 1) is None
    node = helper.make_node("ReduceMax", ["a"], ["y"], axes=[0], name="r")  # keepdims=1
    res, group = _conv_then([node], [1, 8, 4, 4])
    assert res.layout("y", 1) == (Segment(group.id, 8),) and res.layout("y", 0) is None


@pytest.mark.parametrize(
    ("op", "opset"), [("ReduceSum", 13), ("ReduceSum", 17), ("ReduceMean", 18)]
)
def test_reduction_axes_from_an_input_since_the_op_took_them(op: str, opset: int) -> None:
    node = helper.make_node(op, ["a", "spatial"], ["y"], name="r")
    res, group = _conv_then([node], ["N", 8, 1, 1], opset)
    assert res.layout("y", 1) == (Segment(group.id, 8),)
    assert group.frozen == ("reaches graph output 'y'",)
    node = helper.make_node(op, ["a", "axes"], ["y"], name="r")
    _, group = _conv_then([node], ["N", 8, 1, 1], opset, extra_inputs=("axes",))
    assert f"{op} 'r': reduction axes are computed at run time" in group.frozen


def test_an_empty_reduction_is_a_no_op_only_when_asked() -> None:
    node = helper.make_node("ReduceMean", ["a"], ["y"], name="r", noop_with_empty_axes=1)
    res, group = _conv_then([node], ["N", 8, 4, 4], opset=18)
    assert res.layout("y", 1) == (Segment(group.id, 8),)
    node = helper.make_node("ReduceMean", ["a"], ["y"], name="r")
    _, group = _conv_then([node], ["N", 1, 1, 1], opset=18)
    assert "ReduceMean 'r': reduces over the channel axis" in group.frozen


def _softmax(opset: int, channels_last: bool, **attrs: int):
    """x -> (MatMul: [N, S, 8] | Conv1d: [N, 8, S]) -> Softmax -> y; (output layout, frozen)."""
    if channels_last:
        w = numpy_helper.from_array(np.ones((3, 8), np.float32), "w")
        first = helper.make_node("MatMul", ["x", "w"], ["a"])
        shape = ["N", 5, 8]
    else:
        w = numpy_helper.from_array(np.ones((8, 3, 1), np.float32), "w")
        first = helper.make_node("Conv", ["x", "w"], ["a"])
        shape = ["N", 8, 5]
    x_shape = ["N", 5, 3] if channels_last else ["N", 3, 5]
    nodes = [first, helper.make_node("Softmax", ["a"], ["y"], name="s", **attrs)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    res = analyze(import_model(model))
    (group,) = res.groups
    axis = 2 if channels_last else 1
    return res.layout("y", axis), group.frozen


MIXES = "Softmax 's': normalises over the channel axis"


@pytest.mark.parametrize("opset", [13, 17])
def test_softmax_from_opset_13_normalises_over_one_axis_the_last_by_default(opset: int) -> None:
    carried, frozen = _softmax(opset, channels_last=False)  # over the last axis: S
    assert carried is not None and MIXES not in frozen
    carried, frozen = _softmax(opset, channels_last=True)  # over the channels
    assert carried is None and MIXES in frozen
    carried, frozen = _softmax(opset, channels_last=True, axis=1)  # over S only
    assert carried is not None and MIXES not in frozen


def test_softmax_before_opset_13_normalises_from_its_axis_to_the_end() -> None:
    _, frozen = _softmax(12, channels_last=False)  # default axis 1: the channels onwards
    assert MIXES in frozen
    carried, frozen = _softmax(12, channels_last=False, axis=2)  # S only: channels carried
    assert carried is not None and MIXES not in frozen
    _, frozen = _softmax(12, channels_last=True, axis=1)  # S and the channels after it
    assert MIXES in frozen


def test_misaligned_finds_the_first_segment_too_fine_for_the_unit() -> None:
    from irprune.passes.analysis.rules.blocks import misaligned

    fine, coarse = Segment(1, 3, inner=2), Segment(2, 2, inner=4)
    assert misaligned((Segment(None, 4), Segment(0, 2, inner=4), coarse), 4) is None
    assert misaligned((Segment(None, 4), Segment(0, 2, inner=4), fine, coarse), 4) == fine
    assert misaligned((Segment(3, 4), Segment(0, 2, inner=4)), 2) == Segment(3, 4)
    for bad in [
        (Segment(None, 2), Segment(0, 2, inner=4)),  # the group starts inside a unit
        (Segment(0, 1, inner=4), Segment(None, 2)),  # a fixed segment ends inside one
        (Segment(0, 1, inner=4), Segment(None, 4), Segment(None, 2), Segment(1, 1, inner=4)),
    ]:
        with pytest.raises(ValueError, match="a block of 4 positions straddles two channel"):
            misaligned(bad, 4)


def test_an_elementwise_op_of_unknown_output_shape_is_refused() -> None:
    w = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.ones((1, 8, 1, 1), np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"]),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 2, 2])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    ir = import_model(model)
    ir.values["y"].shape = None
    (group,) = analyze(ir).groups
    assert "Add 'add': output shape unknown" in group.frozen


def test_pooling_carries_the_channels_unless_its_indices_are_read() -> None:
    pool = helper.make_node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2], name="p")
    res, group = _conv_then([pool], ["N", 8, 3, 3])
    assert res.layout("y", 1) == (Segment(group.id, 8),) and res.layout("y", 2) is None
    assert group.frozen == ("reaches graph output 'y'",)
    nodes = [
        helper.make_node("MaxPool", ["a"], ["p", "i"], kernel_shape=[2, 2], name="p"),
        helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT),
    ]
    _, group = _conv_then(nodes, ["N", 8, 3, 3])
    assert "MaxPool 'p': MaxPool Indices output is used" in group.frozen


@pytest.mark.parametrize("axis", [None, 2, -1, 1])
def test_layer_normalization_refuses_only_when_it_normalises_the_channels(axis: int | None) -> None:
    """Conv1d [N, 8, 5] -> LayerNormalization over the axes from ``axis`` (default -1) on."""
    w = numpy_helper.from_array(np.ones((8, 3, 1), np.float32), "w")
    shape = (8, 5) if axis == 1 else (5,)
    scale = numpy_helper.from_array(np.ones(shape, np.float32), "scale")
    kw = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"]),
        helper.make_node("LayerNormalization", ["a", "scale"], ["y"], name="ln", **kw),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 5])],
        [w, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    res = analyze(import_model(model))
    (group,) = res.groups
    refused = "LayerNormalization 'ln': LayerNormalization normalises over the channel axis"
    if axis == 1:
        assert refused in group.frozen and res.layout("y", 1) is None
    else:
        assert refused not in group.frozen
        assert res.layout("y", 1) == (Segment(group.id, 8),)
