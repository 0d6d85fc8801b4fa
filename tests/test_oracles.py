"""The independent MAC / parameter counter, checked on tiny graphs with hand-computed values."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.oracles import count_macs, count_params

IR_VERSION = 10  # onnxruntime 1.31 loads at most IR 13; onnx 1.23 stamps 14 by default
OPSET = 17

_rng = np.random.default_rng(0)


def _init(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(_rng.standard_normal(shape).astype(dtype), name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, list[int | str]]],
    outputs: list[tuple[str, list[int | str]]],
    inits: list[onnx.TensorProto],
    value_info: list[onnx.ValueInfoProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        inits,
        value_info=value_info or [],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv_model(
    x_shape: list[int | str],
    w_shape: tuple[int, ...],
    y_shape: list[int | str],
    bias: bool = False,
    **attrs: object,
) -> onnx.ModelProto:
    inits = [_init("w", w_shape)]
    names = ["x", "w"]
    if bias:
        inits.append(_init("b", (w_shape[0],)))
        names.append("b")
    node = helper.make_node("Conv", names, ["y"], "conv", **attrs)
    return _model([node], [("x", x_shape)], [("y", y_shape)], inits)


# --- Conv --------------------------------------------------------------------------------------


def test_plain_conv_same_padding() -> None:
    # out [1, 4, 8, 8]: 8*8 positions * 4 out * 3 in * 3*3 kernel
    m = _conv_model(
        [1, 3, 8, 8], (4, 3, 3, 3), [1, 4, 8, 8], bias=True, kernel_shape=[3, 3], pads=[1] * 4
    )
    assert count_macs(m) == 64 * 4 * 3 * 9 == 6912
    assert count_params(m) == 4 * 3 * 3 * 3 + 4 == 112


def test_strided_conv_symbolic_batch_counts_once() -> None:
    # (9 - 3) / 2 + 1 = 4 -> out ["N", 4, 4, 4]; batch is symbolic and counts as 1
    m = _conv_model(
        ["N", 3, 9, 9], (4, 3, 3, 3), ["N", 4, 4, 4], kernel_shape=[3, 3], strides=[2, 2]
    )
    assert count_macs(m) == 16 * 4 * 3 * 9 == 1728


def test_static_batch_counts_once() -> None:
    m = _conv_model([5, 3, 9, 9], (4, 3, 3, 3), [5, 4, 4, 4], kernel_shape=[3, 3], strides=[2, 2])
    assert count_macs(m) == 1728


def test_depthwise_conv() -> None:
    # group = C_in = C_out = 8: each output channel sees one input channel
    m = _conv_model(
        [1, 8, 10, 10], (8, 1, 3, 3), [1, 8, 10, 10], kernel_shape=[3, 3], pads=[1] * 4, group=8
    )
    assert count_macs(m) == 10 * 10 * 8 * 1 * 9 == 7200
    assert count_params(m) == 72


def test_grouped_conv() -> None:
    # C_in 8 in 2 groups of 4, C_out 6; out 5x5 with a 3x3 kernel and no padding
    m = _conv_model([1, 8, 7, 7], (6, 4, 3, 3), [1, 6, 5, 5], kernel_shape=[3, 3], group=2)
    assert count_macs(m) == 25 * 6 * 4 * 9 == 5400


def test_conv_kernel_shape_inferred_from_weight() -> None:
    # no kernel_shape attribute; 1x3 kernel, dilation 2 -> width 10 - 2*(3-1) = 6
    m = _conv_model([1, 2, 4, 10], (3, 2, 1, 3), [1, 3, 4, 6], dilations=[1, 2])
    assert count_macs(m) == 4 * 6 * 3 * 2 * 3 == 432


def test_conv1d() -> None:
    m = _conv_model([1, 4, 20], (6, 4, 5), [1, 6, 16], kernel_shape=[5])
    assert count_macs(m) == 16 * 6 * 4 * 5 == 1920


# --- ConvTranspose -----------------------------------------------------------------------------


def test_conv_transpose() -> None:
    # W [C_in 4, C_out 3, 2, 2], stride 2: every input pixel scatters 3 * 2*2 products per in-ch
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], "ct", strides=[2, 2])
    m = _model([node], [("x", [1, 4, 5, 5])], [("y", [1, 3, 10, 10])], [_init("w", (4, 3, 2, 2))])
    assert count_macs(m) == 25 * 4 * 3 * 4 == 1200


def test_grouped_conv_transpose() -> None:
    # group 2: W [C_in 4, C_out/group 2, 3, 3] -> C_out = 4
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], "ct", group=2)
    inits = [_init("w", (4, 2, 3, 3))]
    m = _model([node], [("x", ["N", 4, 5, 5])], [("y", ["N", 4, 7, 7])], inits)
    assert count_macs(m) == 25 * 4 * 2 * 9 == 1800


# --- Gemm --------------------------------------------------------------------------------------


def test_gemm_trans_b() -> None:
    # A [5, 20], B [30, 20] with transB=1 -> M=5, N=30, K=20
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], "fc", transB=1)
    inits = [_init("b", (30, 20)), _init("c", (30,))]
    m = _model([node], [("a", [5, 20])], [("y", [5, 30])], inits)
    assert count_macs(m) == 5 * 30 * 20 == 3000
    assert count_params(m) == 600 + 30


def test_gemm_trans_b_symbolic_m() -> None:
    node = helper.make_node("Gemm", ["a", "b"], ["y"], "fc", transB=1)
    m = _model([node], [("a", ["batch", 20])], [("y", ["batch", 30])], [_init("b", (30, 20))])
    assert count_macs(m) == 30 * 20 == 600


def test_gemm_trans_a() -> None:
    # A [20, 5] with transA=1 -> M=5, K=20; B [20, 30]
    node = helper.make_node("Gemm", ["a", "b"], ["y"], "fc", transA=1)
    m = _model([node], [("a", [20, 5])], [("y", [5, 30])], [_init("b", (20, 30))])
    assert count_macs(m) == 3000


# --- MatMul ------------------------------------------------------------------------------------


def test_matmul_rank3_input() -> None:
    # [2, 5, 6] @ [6, 7] -> [2, 5, 7]: 2*5 rows * 7 columns * K=6
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    m = _model([node], [("x", [2, 5, 6])], [("y", [2, 5, 7])], [_init("w", (6, 7))])
    assert count_macs(m) == 2 * 5 * 7 * 6 == 420


def test_matmul_rank3_symbolic_batch() -> None:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    m = _model([node], [("x", ["B", 5, 6])], [("y", ["B", 5, 7])], [_init("w", (6, 7))])
    assert count_macs(m) == 5 * 7 * 6 == 210


def test_matmul_batched_both_sides() -> None:
    # [3, 4, 6] @ [3, 6, 2] -> [3, 4, 2]
    node = helper.make_node("MatMul", ["x", "y"], ["z"], "bmm")
    m = _model([node], [("x", [3, 4, 6]), ("y", [3, 6, 2])], [("z", [3, 4, 2])], [])
    assert count_macs(m) == 3 * 4 * 2 * 6 == 144
    assert count_params(m) == 0


def test_matmul_rank1_left() -> None:
    # [6] @ [6, 7] -> [7]
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    m = _model([node], [("x", [6])], [("y", [7])], [_init("w", (6, 7))])
    assert count_macs(m) == 42


# --- whole graphs ------------------------------------------------------------------------------


def test_chain_sums_ops_and_ignores_elementwise() -> None:
    # Conv [1,2,4,4] -> [1,3,4,4] (1x1): 16*3*2 = 96; Relu; Flatten -> [1, 48];
    # Gemm 48 -> 5: 240; Add of a bias vector costs nothing
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("Flatten", ["r"], ["f"], "flat", axis=1),
        helper.make_node("Gemm", ["f", "g"], ["o"], "fc"),
        helper.make_node("Add", ["o", "bias"], ["y"], "add"),
    ]
    inits = [_init("w", (3, 2, 1, 1)), _init("g", (48, 5)), _init("bias", (5,))]
    m = _model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 5])], inits)
    assert count_macs(m) == 96 + 240
    assert count_params(m) == 6 + 240 + 5


def test_misleading_value_info_is_not_trusted() -> None:
    # a stale value_info claiming the conv output is 2x2 must not change the count
    stale = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3, 2, 2])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["y"], "relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [_init("w", (3, 2, 1, 1))],
        value_info=[stale],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    assert count_macs(m) == 16 * 3 * 2


def test_count_params_skips_unused_and_integer_initializers() -> None:
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], "reshape"),
        helper.make_node("MatMul", ["r", "w"], ["y"], "mm"),
    ]
    inits = [shape, _init("w", (12, 3)), _init("unused", (100,))]
    m = _model(nodes, [("x", [1, 3, 4])], [("y", [1, 3])], inits)
    assert count_params(m) == 36
    assert count_macs(m) == 3 * 12


def test_count_params_counts_float16() -> None:
    node = helper.make_node("Mul", ["x", "s"], ["y"], "mul")
    graph = helper.make_graph(
        [node],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4])],
        [numpy_helper.from_array(np.ones(4, np.float16), "s")],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    assert count_params(m) == 4


def test_demo_model_by_hand() -> None:
    from irprune.demo import build_demo_model

    # (out positions, C_out, C_in / group, kernel) for every conv of the demo network
    convs = [
        (32 * 32, 16, 3, 9),  # stem
        (32 * 32, 16, 16, 9),  # block 1
        (32 * 32, 16, 16, 9),
        (16 * 16, 32, 16, 9),  # block 2, strided
        (16 * 16, 32, 32, 9),
        (16 * 16, 32, 16, 1),  # projection shortcut
        (16 * 16, 24, 32, 1),  # concat left
        (16 * 16, 24, 32, 9),  # concat right
        (16 * 16, 48, 1, 9),  # depthwise
        (16 * 16, 64, 48, 1),
    ]
    macs = sum(p * co * ci * k for p, co, ci, k in convs) + 64 * 10
    weights = sum(co * ci * k for _, co, ci, k in convs) + 64 * 10 + 10
    bn = 4 * sum(co for _, co, _, _ in convs)
    model = build_demo_model()
    assert count_macs(model) == macs == 11_694_720
    assert count_params(model) == weights + bn + 2  # + Clip's min and max scalars


def test_unknown_shape_raises() -> None:
    # the oracle must fail loudly rather than guess when a conv's weight has no known shape
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    graph = helper.make_graph(
        [node],
        "t",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    with pytest.raises(ValueError):
        count_macs(m)


def test_oracle_does_not_import_irprune() -> None:
    source = Path(__file__).with_name("oracles.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "irprune" not in imported
    assert imported <= {"__future__", "math", "collections", "numpy", "onnx", "onnxruntime"}
