"""The cost model sees dims that depend on the batch through run-time shape arithmetic."""

from __future__ import annotations

import io

import pytest

from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model


def test_runtime_reshape_after_symbolic_batch_is_counted() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(8, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            y = self.a(x)
            b, c, h, w = y.size()
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, -1, h, w)
            y1, y2 = y.chunk(2, dim=1)
            return self.b(torch.cat([y1, y2], 1))

    buf = io.BytesIO()
    torch.onnx.export(
        Shuffle().eval(),
        torch.randn(1, 8, 8, 8),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
    )
    import onnx

    graph = import_model(onnx.load_from_string(buf.getvalue()))
    cost = build_cost_model(graph, analyze(graph))
    assert cost.macs_at(cost.base_widths) == 64 * 16 * 8 * 9 + 64 * 16 * 16 * 9
    assert cost.unknown == ()


def test_conv_with_a_computed_weight_is_counted() -> None:
    """Regression (tests/test_hostile.py, QDQ): a Conv whose weight comes out of
    DequantizeLinear cost nothing, so a pruned QDQ model overshot its MAC target."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.ones((16, 8, 3, 3), np.int8), "qw"),
        numpy_helper.from_array(np.float32(0.1), "s"),
        numpy_helper.from_array(np.int8(0), "z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["qw", "s", "z"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    ir = import_model(model)
    cost = build_cost_model(ir, analyze(ir))
    assert cost.macs_at(cost.base_widths) == 64 * 16 * 8 * 9


def test_mac_ops_inside_if_branches_are_named_not_counted() -> None:
    """An If whose branches each hold a Conv (silero-vad: every Conv and LSTM is inside its
    top-level If on ``sr``): the main graph counts 0 MACs and ``subgraph_macs`` names the If."""
    from tests.test_inputs import _rate_model

    graph = import_model(_rate_model(conv_in_main=False))
    cost = build_cost_model(graph, analyze(graph))
    assert cost.macs_at(cost.base_widths) == 0
    assert list(cost.subgraph_macs.values()) == [{"Conv": 2}]
    graph = import_model(_rate_model(conv_in_main=True))
    cost = build_cost_model(graph, analyze(graph))
    assert cost.macs_at(cost.base_widths) > 0 and not cost.subgraph_macs
