"""Known answers for the cost model (irprune/passes/analysis/cost.py) on a two-conv graph, and
the incremental ``Probe`` against full evaluation; gaps mutation testing found (docs/mutation.md).

x[N,3,8,8] -> Conv(w1 [8,3,3,3], b1) -> Relu -> Conv(w2 [4,8,1,1]) -> Reshape(shape) -> y.
Group 0 is conv 1's 8 output channels, group 1 conv 2's 4; at widths (a, b), per sample:
MACs = 64 * 27 a + 64 * a b; params = 27 a + a + a b; bytes = 4 params + 16 (the int64 shape).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from irprune.frontends.onnx import import_model
from irprune.ir import Graph, Value
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import Cost, CostModel, build_cost_model


def _graph() -> Graph:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["c"]),
        helper.make_node("Reshape", ["c", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return import_model(model)


def _flattened() -> Graph:
    """x[N,3,4,4] -> Conv(8, stride 2) -> [N,8,2,2] -> Flatten -> Gemm(w2 [5, 32]) -> y: each of
    the conv's channels is a block of 4 columns of w2 (a factor with coefficient 4)."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((5, 32)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "flattened",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return import_model(model)


def _model(graph: Graph | None = None) -> tuple[Graph, CostModel]:
    graph = graph or _graph()
    return graph, build_cost_model(graph, analyze(graph))


def _expected(a: float, b: float) -> Cost:
    params = 27 * a + a + a * b
    return Cost(64 * 27 * a + 64 * a * b, params, 4 * params + 16)


def test_costs_are_the_known_answers_at_any_widths() -> None:
    _, cm = _model()
    assert list(cm.base_widths) == [8.0, 4.0] and cm.unknown == ()
    assert cm.evaluate() == _expected(8, 4)
    for a, b in [(5, 4), (1, 1), (8, 2), (3, 3)]:
        widths = np.array([a, b], dtype=np.int64)
        assert cm.evaluate(widths) == _expected(a, b)
        assert cm.macs_at(widths) == _expected(a, b).macs
        assert cm.params_at(widths) == _expected(a, b).params


def test_axis_size_follows_the_widths_where_an_axis_has_a_layout() -> None:
    graph, cm = _model()
    values = cm.factor_values(np.array([5.0, 3.0]))
    w1, w2, x = graph.values["w1"], graph.values["w2"], graph.values["x"]
    assert cm.axis_size(values, w1, 0) == 5.0
    assert cm.axis_size(values, w1, -4) == 5.0  # the same axis, counted from the end
    assert cm.axis_size(values, graph.values["b1"], -1) == 5.0  # a rank-1 value too
    assert cm.axis_size(values, w2, 0) == 3.0 and cm.axis_size(values, w2, 1) == 5.0
    assert cm.axis_size(values, w1, 1) == 3 and cm.axis_size(values, w1, 3) == 3
    assert cm.axis_size(values, x, 0) == 1  # the batch, bound to 1
    assert cm.axis_size(values, x, 9) is None


def test_a_block_of_columns_per_channel_counts_its_block() -> None:
    _, cm = _model(_flattened())
    for a, b in [(8, 5), (3, 5), (8, 2)]:
        widths = np.array([a, b], dtype=np.float64)
        assert cm.params_at(widths) == 27 * a + 4 * a * b
        assert cm.macs_at(widths) == 4 * 27 * a + 4 * a * b


@pytest.mark.parametrize("graph", [_graph, _flattened])
@pytest.mark.parametrize("metric", ["macs", "params"])
def test_a_probe_agrees_with_full_evaluation(metric: str, graph: Callable[[], Graph]) -> None:
    _, cm = _model(graph())
    assert cm.base_widths[0] == 8.0
    full = cm.macs_at if metric == "macs" else cm.params_at
    start = cm.base_widths.copy()
    b = start[1]
    probe = cm.probe(metric, start)
    assert probe.total == full(start)
    assert probe.with_width(0, 5) == full(np.array([5.0, b]))
    assert probe.with_width(1, 2) == full(np.array([8.0, 2.0]))
    assert probe.total == full(start)  # asking changed nothing
    probe.set_width(0, 6)
    assert probe.total == full(np.array([6.0, b]))
    assert probe.with_width(1, 1) == full(np.array([6.0, 1.0]))
    probe.set_width(1, 3)
    probe.set_width(0, 2)
    assert probe.total == full(np.array([2.0, 3.0])) and list(probe.widths) == [2.0, 3.0]
    assert list(start) == [8.0, b]  # the probe works on its own copy


def test_a_probe_from_integer_widths_takes_fractional_steps() -> None:
    _, cm = _model()
    probe = cm.probe("macs", np.array([8, 4]))
    probe.set_width(0, 2.5)
    assert probe.with_width(0, 3) == cm.macs_at(np.array([3.0, 4.0]))
    assert probe.total == cm.macs_at(np.array([2.5, 4.0]))


def test_a_probe_of_a_group_no_term_reads() -> None:
    _, cm = _model()
    probe = cm.probe("macs", cm.base_widths)
    probe.widths = np.append(probe.widths, 7.0)  # a third group, in no factor
    assert probe.with_width(2, 1) == probe.total == cm.macs_at(cm.base_widths)


def test_an_unknown_dim_counts_as_one_and_is_named() -> None:
    graph = _graph()
    a = graph.values["a"]
    a.shape = a.sample = ("N", 8, None, None)  # conv 1's output size unknown
    _, cm = _model(graph)
    assert cm.unknown == ("a",)
    assert cm.evaluate().macs == 27 * 8 + 64 * 8 * 4


def _onnx(nodes: list, inits: list, x: list, y: list) -> Graph:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        [numpy_helper.from_array(a, k) for k, a in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return import_model(model)


def test_fixed_channels_on_both_sides_of_a_group_are_all_counted() -> None:
    """Concat(x, conv(x), x) on channels: w2's input axis is [3 fixed][a][3 fixed]."""
    w1, w2 = np.ones((8, 3, 1, 1), np.float32), np.ones((4, 14, 1, 1), np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Concat", ["x", "a", "x"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"]),
    ]
    graph = _onnx(nodes, [("w1", w1), ("w2", w2)], ["N", 3, 2, 2], ["N", 4, 2, 2])
    _, cm = _model(graph)
    for a, b in [(8, 4), (2, 4), (5, 1)]:
        widths = np.array([a, b], dtype=np.float64)
        assert cm.params_at(widths) == 3 * a + b * (6 + a)
        assert cm.macs_at(widths) == 4 * (3 * a + b * (6 + a))


def test_an_axis_of_fixed_channels_only() -> None:
    """Split(Concat(x, conv(x))) into [3 fixed] and [a]; the conv reading the fixed part comes
    last, so the last factor (w2's input axis) has no group in it."""
    inits = [
        ("w1", np.ones((8, 3, 1, 1), np.float32)),
        ("split", np.array([3, 8], np.int64)),
        ("w3", np.ones((2, 8, 1, 1), np.float32)),
        ("w2", np.ones((4, 3, 1, 1), np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Concat", ["x", "a"], ["cat"], axis=1),
        helper.make_node("Split", ["cat", "split"], ["s0", "s1"], axis=1),
        helper.make_node("Conv", ["s1", "w3"], ["z"]),
        helper.make_node("Conv", ["s0", "w2"], ["w"]),
        helper.make_node("Concat", ["z", "w"], ["y"], axis=1),
    ]
    graph = _onnx(nodes, inits, ["N", 3, 2, 2], ["N", 6, 2, 2])
    _, cm = _model(graph)
    assert list(cm.base_widths) == [8, 2, 4]
    for a, c, b in [(8, 2, 4), (5, 1, 3)]:
        widths = np.array([a, c, b], dtype=np.float64)
        assert cm.params_at(widths) == 3 * a + c * a + 3 * b
        assert cm.macs_at(widths) == 4 * (3 * a + c * a + 3 * b)


def test_a_graph_without_mac_ops_or_groups() -> None:
    c = np.arange(6, dtype=np.float32)
    nodes = [helper.make_node("Add", ["x", "c"], ["y"])]
    _, cm = _model(_onnx(nodes, [("c", c)], ["N", 6], ["N", 6]))
    assert cm.evaluate() == Cost(0.0, 6.0, 24.0) and len(cm.base_widths) == 0


def test_only_constants_something_reads_count() -> None:
    graph = _graph()
    graph.add_value(Value("unused", 1, (100,), const=np.zeros(100, np.float32)))
    _, cm = _model(graph)
    assert cm.evaluate() == _expected(8, 4)


def test_widths_are_floats() -> None:
    _, cm = _model()  # callers copy them and write candidate (fractional) widths in
    assert cm.base_widths.dtype == np.float64


def test_ratio_is_one_where_the_base_is_zero() -> None:
    assert Cost(2, 3, 5).ratio(Cost(4, 12, 10)) == Cost(0.5, 0.25, 0.5)
    assert Cost(2, 3, 5).ratio(Cost(0, 0, 0)) == Cost(1.0, 1.0, 1.0)


def test_subgraph_compute_counts_the_mac_ops_of_every_nested_subgraph() -> None:
    from onnx import AttributeProto

    from irprune.ir import Node, Opaque
    from irprune.passes.analysis.cost import subgraph_compute

    def sub(*nodes: object) -> object:
        return helper.make_graph(list(nodes), "sub", [], [])

    def attr(name: str, value: object) -> Opaque:
        proto: AttributeProto = helper.make_attribute(name, value)
        kind = "GRAPH" if proto.type == AttributeProto.GRAPH else "GRAPHS"
        return Opaque(kind, proto.SerializeToString())

    gemms = sub(*(helper.make_node("Gemm", ["a", "b"], [f"c{k}"]) for k in range(2)))
    then = sub(
        helper.make_node("Conv", ["a", "b"], ["c"]),
        helper.make_node("MatMul", ["a", "b"], ["d"], domain="ai.onnx"),
        helper.make_node("Conv", ["a", "b"], ["e"], domain="com.example"),  # not ONNX's
        helper.make_node("Loop", ["n", "k"], ["f"], body=gemms),  # nested: GRAPH
        helper.make_node("Multi", [], ["g"], domain="x", bodies=[gemms, sub()]),  # GRAPHS
        helper.make_node("Relu", ["a"], ["h"]),
    )
    g = Graph()
    g.add_node(Node("If", name="branchy", attrs={"then_branch": attr("then_branch", then)}))
    g.add_node(Node("Scan", attrs={"bodies": attr("bodies", [gemms, sub()]), "k": 3}))
    g.add_node(Node("Loop", name="empty", attrs={"body": attr("body", sub())}))
    assert subgraph_compute(g) == {
        "branchy": {"Conv": 1, "Gemm": 4, "MatMul": 1},
        "Scan_1": {"Gemm": 2},
    }
