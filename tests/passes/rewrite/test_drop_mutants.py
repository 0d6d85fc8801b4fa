"""``drop`` on a two-conv graph: what it slices, the shapes it records, what it reports.
Gaps mutation testing found (docs/mutation.md)."""

from __future__ import annotations

import logging
from types import MappingProxyType

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import analyze
from irprune.passes.rewrite.drop import DropSummary, _onnx_dtype, drop


def _graph():
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 2, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return import_model(model)


def test_drop_slices_records_the_new_shapes_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    graph = _graph()
    analysis = analyze(graph)
    (group,) = analysis.prunable
    w1, w2 = graph.values["w1"].const.copy(), graph.values["w2"].const.copy()
    keep = np.array([0, 2, 5])
    widths = np.array([g.size for g in analysis.groups], dtype=np.float64)
    widths[group.id] = 3
    plan = Plan(widths=widths, kept=MappingProxyType({group.id: keep}), ratio=0.0)
    with caplog.at_level(logging.INFO, logger="irprune.passes.rewrite.drop"):
        summary = drop(graph, analysis, plan)
    assert summary == DropSummary(constants_sliced=3, shapes_changed=2, nodes_edited=0)
    assert "drop: DropSummary(constants_sliced=3, shapes_changed=2, nodes_edited=0)" in (
        caplog.messages
    )
    v = graph.values
    assert np.array_equal(v["w1"].const, w1[keep]) and np.array_equal(v["w2"].const, w2[:, keep])
    assert v["w1"].shape == (3, 3, 1, 1) and v["b1"].shape == (3,) and v["w2"].shape == (4, 3, 1, 1)
    assert v["a"].shape == v["r"].shape == ("N", 3, 2, 2)
    assert v["y"].shape == ("N", 4, 2, 2) and v["x"].shape == ("N", 3, 2, 2)
    graph.verify()


def test_rewrite_hooks_add_int64_inputs_only() -> None:
    assert _onnx_dtype(np.zeros(2, np.int64)) == TensorProto.INT64
    with pytest.raises(ValueError, match="rewrite hooks add int64 inputs only, got float32"):
        _onnx_dtype(np.zeros(2, np.float32))
