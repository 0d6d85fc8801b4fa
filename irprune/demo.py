"""The bundled demo model, built from code with seeded weights (nothing is downloaded).

A small CNN with the structures pruning must get right: a residual block with an identity
shortcut, one with a strided projection shortcut, a two-branch Concat, a depthwise conv, and
global pooling -> Flatten -> Gemm. BatchNormalization nodes are explicit or folded into the convs.
Input ``input`` [batch, 3, 32, 32], output ``logits`` [batch, 10].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 17


class _Builder:
    def __init__(self, seed: int, explicit_bn: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.explicit_bn = explicit_bn
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def _const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(
        self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1
    ) -> str:
        """Conv followed by BN (explicit node, or folded into the conv's weights and bias)."""
        name = self._name("conv")
        fan_in = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        gamma = self.rng.uniform(0.5, 1.5, cout)
        beta = self.rng.normal(0, 0.1, cout)
        mean = self.rng.normal(0, 0.1, cout)
        var = self.rng.uniform(0.5, 1.5, cout)
        attrs: dict[str, Any] = dict(
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group
        )
        if self.explicit_bn:
            self.nodes.append(
                helper.make_node("Conv", [x, self._const(f"{name}.w", w)], [name], name, **attrs)
            )
            params = [
                self._const(f"{name}.bn.{p}", v)
                for p, v in (("scale", gamma), ("bias", beta), ("mean", mean), ("var", var))
            ]
            out = f"{name}.bn"
            self.nodes.append(
                helper.make_node("BatchNormalization", [name, *params], [out], f"{name}_bn")
            )
            return out
        scale = gamma / np.sqrt(var + 1e-5)
        wf = w * scale[:, None, None, None]
        bf = beta - mean * scale
        inputs = [x, self._const(f"{name}.w", wf), self._const(f"{name}.b", bf)]
        self.nodes.append(helper.make_node("Conv", inputs, [name], name, **attrs))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], out, **attrs))
        return out


def build_demo_model(
    seed: int = 0, explicit_bn: bool = True, opset: int = OPSET
) -> onnx.ModelProto:
    b = _Builder(seed, explicit_bn)
    x = b.op("Relu", [b.conv_bn("input", 3, 16)])
    # residual block, identity shortcut
    y = b.conv_bn(b.op("Relu", [b.conv_bn(x, 16, 16)]), 16, 16)
    x = b.op("Relu", [b.op("Add", [y, x])])
    # residual block, strided projection shortcut
    y = b.conv_bn(b.op("Relu", [b.conv_bn(x, 16, 32, stride=2)]), 32, 32)
    x = b.op("Relu", [b.op("Add", [y, b.conv_bn(x, 16, 32, k=1, stride=2)])])
    # two branches concatenated, then a depthwise conv over the concatenation
    left = b.op("Relu", [b.conv_bn(x, 32, 24, k=1)])
    right = b.op("Relu", [b.conv_bn(x, 32, 24)])
    x = b.op("Concat", [left, right], axis=1)
    x = b.op(
        "Clip",
        [
            b.conv_bn(x, 48, 48, group=48),
            b._const("zero", np.array(0.0)),
            b._const("six", np.array(6.0)),
        ],
    )
    x = b.op("Relu", [b.conv_bn(x, 48, 64, k=1)])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    fc_w = b._const("fc.w", b.rng.standard_normal((10, 64)) * np.sqrt(1.0 / 64))
    fc_b = b._const("fc.b", b.rng.normal(0, 0.01, 10))
    b.nodes.append(helper.make_node("Gemm", [x, fc_w, fc_b], ["logits"], "fc", transB=1))
    graph = helper.make_graph(
        b.nodes,
        "irprune_demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    model.producer_name = "irprune-demo"
    onnx.checker.check_model(model, full_check=True)
    return model
