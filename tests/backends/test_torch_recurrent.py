"""The torch backend's LSTM (irprune/backends/torch_recurrent.py) against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from irprune.errors import UnsupportedOpError
from tests.helpers import IR_VERSION, rel_diff, run

torch = pytest.importorskip("torch")
from irprune.backends.torch import from_onnx, outputs_numpy  # noqa: E402 - after the skip

RNG = np.random.default_rng(0)
T, N, IN, H = 5, 3, 4, 6


def _lstm(direction: str, *, bias: bool, init: bool, peep: bool, layout: int = 0):  # type: ignore[no-untyped-def]
    d = 2 if direction == "bidirectional" else 1
    inits = {
        "W": RNG.standard_normal((d, 4 * H, IN)).astype(np.float32) * 0.5,
        "R": RNG.standard_normal((d, 4 * H, H)).astype(np.float32) * 0.5,
    }
    names = ["x", "W", "R", "", "", "", "", ""]
    if bias:
        inits["B"] = RNG.standard_normal((d, 8 * H)).astype(np.float32) * 0.3
        names[3] = "B"
    if init:
        shape = (N, d, H) if layout else (d, N, H)
        inits["h0"] = RNG.standard_normal(shape).astype(np.float32)
        inits["c0"] = RNG.standard_normal(shape).astype(np.float32)
        names[5], names[6] = "h0", "c0"
    if peep:
        inits["P"] = RNG.standard_normal((d, 3 * H)).astype(np.float32) * 0.3
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    node = helper.make_node(
        "LSTM", names, ["y", "yh", "yc"], direction=direction, hidden_size=H, layout=layout
    )
    x_shape = [N, T, IN] if layout else [T, N, IN]
    graph = helper.make_graph(
        [node],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "yh", "yc")],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=IR_VERSION
    )
    return model, RNG.standard_normal(x_shape).astype(np.float32)


@pytest.mark.parametrize(
    ("direction", "bias", "init", "peep", "layout"),
    [
        ("forward", False, False, False, 0),
        ("bidirectional", True, True, False, 0),  # ddddocr's form
        ("reverse", True, True, True, 0),
    ],
)
def test_lstm_matches_onnxruntime(
    direction: str, bias: bool, init: bool, peep: bool, layout: int
) -> None:
    model, x = _lstm(direction, bias=bias, init=init, peep=peep, layout=layout)
    expected = run(model, {"x": x})
    got = outputs_numpy(from_onnx(model), {"x": x})
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert rel_diff(e, g) <= 1e-5


def test_lstm_is_differentiable() -> None:
    model, x = _lstm("bidirectional", bias=True, init=False, peep=False)
    module = from_onnx(model)
    weights = dict(module.named_weights())
    for param in weights.values():
        param.requires_grad_(True)
    (y, *_) = module.run({"x": x})
    y.sum().backward()
    assert {"W", "R", "B"} <= set(weights)
    for name in ("W", "R", "B"):
        grad = weights[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize(("attr", "value"), [("clip", 1.0), ("input_forget", 1)])
def test_unsupported_lstm_modes_are_named(attr: str, value: object) -> None:
    model, x = _lstm("forward", bias=False, init=False, peep=False)
    model.graph.node[0].attribute.append(helper.make_attribute(attr, value))
    with pytest.raises(UnsupportedOpError, match=rf"LSTM with {attr}"):
        outputs_numpy(from_onnx(model), {"x": x})
