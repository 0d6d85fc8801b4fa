"""Residual-block analysis: each block kind found on a small graph, each non-block rejected with
its reason, nothing changed. The builders here are shared with the removal and score tests."""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from irprune.emit import to_model
from irprune.frontends.onnx import import_model
from irprune.ir import Graph
from irprune.passes.analysis.blocks import BlockAnalysis, find_blocks
from tests.helpers import IR_VERSION

B, C, H, W = 2, 8, 6, 6  # static batch: MACs are counted at it
T, D = 5, 16  # tokens, model width


class Net:
    """A tiny ONNX graph builder: ``op`` appends a node named ``name`` whose output is named
    ``name`` too (so tests can refer to nodes and values by one name)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits[name] = np.asarray(array, dtype=np.float32)
        return name

    def weight(self, name: str, *shape: int) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return self.const(name, self.rng.standard_normal(shape) / np.sqrt(fan_in))

    def op(self, op: str, name: str, *inputs: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, name: str, x: str, c_in: int, c_out: int, k: int = 3, **attrs: object) -> str:
        group = int(attrs.get("group", 1))  # type: ignore[call-overload]
        w = self.weight(f"{name}.w", c_out, c_in // group, k, k)
        b = self.const(f"{name}.b", 0.1 * self.rng.standard_normal(c_out))
        return self.op("Conv", name, x, w, b, pads=[k // 2] * 4, **attrs)

    def bn(self, name: str, x: str, c: int) -> str:
        r = self.rng
        params = [
            self.const(f"{name}.scale", 1.0 + 0.2 * r.standard_normal(c)),
            self.const(f"{name}.bias", 0.1 * r.standard_normal(c)),
            self.const(f"{name}.mean", 0.1 * r.standard_normal(c)),
            self.const(f"{name}.var", 1.0 + 0.2 * r.random(c)),
        ]
        return self.op("BatchNormalization", name, x, *params)

    def linear(self, name: str, x: str, d_in: int, d_out: int) -> str:
        h = self.op("MatMul", f"{name}.mm", x, self.weight(f"{name}.w", d_in, d_out))
        return self.op(
            "Add", name, h, self.const(f"{name}.b", 0.1 * self.rng.standard_normal(d_out))
        )

    def layernorm(self, name: str, x: str, d: int) -> str:
        gamma = self.const(f"{name}.g", 1.0 + 0.1 * self.rng.standard_normal(d))
        beta = self.const(f"{name}.beta", 0.1 * self.rng.standard_normal(d))
        return self.op("LayerNormalization", name, x, gamma, beta, axis=-1)

    def model(
        self, inputs: list[tuple[str, list[int]]], outputs: list[tuple[str, list[int] | None]]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "blocks",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
        )
        onnx.checker.check_model(model, full_check=True)
        return model


IMAGE = [("input", [2, 3, H, W])]


def _stem(net: Net) -> str:
    return net.op("Relu", "stem", net.conv("stem.conv", "input", 3, C))


def _head(net: Net, x: str) -> onnx.ModelProto:
    pooled = net.op("GlobalAveragePool", "pool", x)
    flat = net.op("Flatten", "flat", pooled)
    net.op(
        "Gemm", "logits", flat, net.weight("fc.w", 4, C), net.const("fc.b", np.zeros(4)), transB=1
    )
    return net.model(IMAGE, [("logits", [2, 4])])


def basic_block(net: Net, name: str, x: str, zero: bool = False) -> str:
    """``relu(x + conv(relu(conv(x))))``; ``zero``: the last conv's weights and bias zeroed."""
    h = net.op("Relu", f"{name}.relu1", net.conv(f"{name}.conv1", x, C, C))
    last = net.conv(f"{name}.conv2", h, C, C)
    if zero:
        net.inits[f"{name}.conv2.w"][:] = 0.0
        net.inits[f"{name}.conv2.b"][:] = 0.0
    return net.op("Relu", f"{name}.out", net.op("Add", f"{name}.add", x, last))


def basic_net(blocks: int = 2, zero: tuple[int, ...] = (), seed: int = 0) -> onnx.ModelProto:
    """stem -> ``blocks`` basic blocks (``b0``, ``b1``, ...) -> pool -> Gemm."""
    net = Net(seed)
    x = _stem(net)
    for i in range(blocks):
        x = basic_block(net, f"b{i}", x, zero=i in zero)
    return _head(net, x)


def bottleneck_net(seed: int = 0) -> onnx.ModelProto:
    """stem -> a bottleneck 1x1-3x3-1x1 with explicit BN (``neck``) -> head."""
    net = Net(seed)
    x = _stem(net)
    h = x
    for i, (c_in, c_out, k) in enumerate(((C, C // 2, 1), (C // 2, C // 2, 3), (C // 2, C, 1))):
        h = net.bn(f"neck.bn{i}", net.conv(f"neck.conv{i}", h, c_in, c_out, k=k), c_out)
        if i < 2:
            h = net.op("Relu", f"neck.relu{i}", h)
    return _head(net, net.op("Relu", "neck.out", net.op("Add", "neck.add", x, h)))


def inverted_net(seed: int = 0) -> onnx.ModelProto:
    """stem -> MobileNetV2 inverted residual (expand 4x, ReLU6, depthwise, linear project)."""
    net = Net(seed)
    x = _stem(net)
    lo, hi = net.const("six.lo", np.array(0.0)), net.const("six.hi", np.array(6.0))
    h = net.bn("ir.bn0", net.conv("ir.expand", x, C, 4 * C, k=1), 4 * C)
    h = net.op("Clip", "ir.act0", h, lo, hi)
    h = net.bn("ir.bn1", net.conv("ir.dw", h, 4 * C, 4 * C, k=3, group=4 * C), 4 * C)
    h = net.op("Clip", "ir.act1", h, lo, hi)
    h = net.bn("ir.bn2", net.conv("ir.project", h, 4 * C, C, k=1), C)
    return _head(net, net.op("Add", "ir.add", h, x))


TOKENS = [("tokens", [2, T, D])]


def attention_block(net: Net, name: str, x: str) -> str:
    """``x + Wo softmax(q k^T / sqrt(D)) v`` with q, k, v linear in LN(x) (one head)."""
    h = net.layernorm(f"{name}.ln", x, D)
    q, k, v = (net.linear(f"{name}.{p}", h, D, D) for p in "qkv")
    kt = net.op("Transpose", f"{name}.kt", k, perm=[0, 2, 1])
    scores = net.op("MatMul", f"{name}.scores", q, kt)
    scaled = net.op("Mul", f"{name}.scaled", scores, net.const(f"{name}.temp", np.array(D**-0.5)))
    probs = net.op("Softmax", f"{name}.probs", scaled, axis=-1)
    mixed = net.op("MatMul", f"{name}.mixed", probs, v)
    return net.op("Add", f"{name}.add", x, net.linear(f"{name}.o", mixed, D, D))


def mlp_block(net: Net, name: str, x: str, zero: bool = False) -> str:
    h = net.layernorm(f"{name}.ln", x, D)
    h = net.op("Relu", f"{name}.act", net.linear(f"{name}.fc1", h, D, 2 * D))
    last = net.linear(f"{name}.fc2", h, 2 * D, D)
    if zero:
        net.inits[f"{name}.fc2.w"][:] = 0.0
        net.inits[f"{name}.fc2.b"][:] = 0.0
    return net.op("Add", f"{name}.add", x, last)


def transformer_net(
    layers: int = 2, zero_mlp: tuple[int, ...] = (), seed: int = 0
) -> onnx.ModelProto:
    """``layers`` pre-LN layers (``l0.attn``, ``l0.mlp``, ...) on a token input, then LN."""
    net = Net(seed)
    x = net.op("Identity", "embed", "tokens")
    for i in range(layers):
        x = attention_block(net, f"l{i}.attn", x)
        x = mlp_block(net, f"l{i}.mlp", x, zero=i in zero_mlp)
    net.layernorm("final", x, D)
    return net.model(TOKENS, [("final", [2, T, D])])


def projection_net() -> onnx.ModelProto:
    """A downsampling block whose shortcut is a strided 1x1 Conv."""
    net = Net()
    x = _stem(net)
    h = net.op("Relu", "down.relu", net.conv("down.conv1", x, C, C, strides=[2, 2]))
    h = net.conv("down.conv2", h, C, C)
    short = net.conv("down.proj", x, C, C, k=1, strides=[2, 2])
    return _head(net, net.op("Add", "down.add", short, h))


def leaky_net() -> onnx.ModelProto:
    """A basic block whose inner activation is also a graph output."""
    net = Net()
    y = basic_block(net, "b0", _stem(net))
    model = _head(net, y)
    model.graph.output.append(
        helper.make_tensor_value_info("b0.relu1", TensorProto.FLOAT, [B, C, H, W])
    )
    return model


def broadcast_net() -> onnx.ModelProto:
    """``x + gap(conv(x))``: the branch is [N, C, 1, 1] against x's [N, C, H, W]."""
    net = Net()
    x = _stem(net)
    g = net.op("GlobalAveragePool", "se.pool", net.conv("se.conv", x, C, C, k=1))
    return _head(net, net.op("Add", "se.add", x, g))


def output_net() -> onnx.ModelProto:
    """Two basic blocks; the first block's Add output is also a graph output."""
    model = basic_net(2)
    model.graph.output.append(
        helper.make_tensor_value_info("b0.add", TensorProto.FLOAT, [B, C, H, W])
    )
    return model


def nested_net() -> onnx.ModelProto:
    """``x + conv2(relu(inner(conv1(x))))`` with ``inner(u) = u + conv(relu(conv(u)))``."""
    net = Net()
    x = _stem(net)
    u = net.op("Relu", "outer.relu1", net.conv("outer.conv1", x, C, C))
    z = net.op(
        "Add",
        "inner.add",
        u,
        net.conv(
            "inner.conv2", net.op("Relu", "inner.relu", net.conv("inner.conv1", u, C, C)), C, C
        ),
    )
    h = net.conv("outer.conv2", net.op("Relu", "outer.relu2", z), C, C)
    return _head(net, net.op("Add", "outer.add", x, h))


def shortcut_ops_net() -> onnx.ModelProto:
    """A basic block whose shortcut is ``Dropout(Identity(x))`` (identities at inference)."""
    net = Net()
    x = _stem(net)
    s = net.op("Dropout", "b0.drop", net.op("Identity", "b0.id", x))
    h = net.op("Relu", "b0.relu1", net.conv("b0.conv1", x, C, C))
    return _head(net, net.op("Add", "b0.add", s, net.conv("b0.conv2", h, C, C)))


def control_flow_net() -> onnx.ModelProto:
    """f = conv(If(c, relu(x), x)): a subgraph inside f."""
    net = Net()
    x = _stem(net)
    out = helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Relu", [x], ["branch"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Identity", [x], ["branch"])], "else", [], [out])
    cond = "cond"
    net.inits[cond] = np.array(True)
    net.nodes.append(
        helper.make_node("If", [cond], ["cf.if"], name="cf.if", then_branch=then, else_branch=other)
    )
    return _head(net, net.op("Add", "cf.add", x, net.conv("cf.conv", "cf.if", C, C)))


def graph_of(model: onnx.ModelProto) -> Graph:
    return import_model(model)


def analysed(model: onnx.ModelProto) -> tuple[Graph, BlockAnalysis]:
    graph = graph_of(model)
    return graph, find_blocks(graph)


def _reason(analysis: BlockAnalysis, output: str) -> str:
    (found,) = [r for r in analysis.rejected if r.output == output]
    return found.reason


# --- the block kinds ----------------------------------------------------------------------------
def test_basic_blocks() -> None:
    _, analysis = analysed(basic_net(2))
    assert [b.output for b in analysis.blocks] == ["b0.add", "b1.add"]
    assert analysis.rejected == ()
    b0, b1 = analysis.blocks
    assert (b0.input, b0.branch, b1.input) == ("stem", "b0.conv2", "b0.out")
    assert b0.nodes == ("b0.conv1", "b0.relu1", "b0.conv2")
    assert b0.shortcut == ()
    assert b0.kind == "basic"
    assert b0.macs == B * 2 * H * W * C * C * 9  # two 3x3 convs, C -> C, same size
    assert b0.params == 2 * (C * C * 9 + C)


def test_bottleneck_block() -> None:
    _, analysis = analysed(bottleneck_net())
    (block,) = analysis.blocks
    assert block.kind == "bottleneck"
    assert block.input == "stem" and block.branch == "neck.bn2"
    assert len(block.nodes) == 8  # 3 conv + 3 BN + 2 ReLU
    half = C // 2
    assert block.macs == B * H * W * (C * half + half * half * 9 + half * C)


def test_inverted_residual_block() -> None:
    _, analysis = analysed(inverted_net())
    (block,) = analysis.blocks
    assert block.kind == "inverted residual"
    assert block.input == "stem" and block.branch == "ir.bn2"  # Add(f(x), x): either order
    assert block.macs == B * H * W * (C * 4 * C + 4 * C * 9 + 4 * C * C)


def test_transformer_sub_blocks() -> None:
    _, analysis = analysed(transformer_net(2))
    kinds = [(b.output, b.kind) for b in analysis.blocks]
    assert kinds == [
        ("l0.attn.add", "attention"),
        ("l0.mlp.add", "mlp"),
        ("l1.attn.add", "attention"),
        ("l1.mlp.add", "mlp"),
    ]
    attn, mlp = analysis.blocks[:2]
    assert attn.input == "embed" and mlp.input == "l0.attn.add"
    # q, k, v, o projections (T x D x D each) and the two token-token products (T x T x D)
    assert attn.macs == B * (4 * T * D * D + 2 * T * T * D)
    assert mlp.macs == B * 2 * T * D * 2 * D


def test_nested_blocks_both_found() -> None:
    _, analysis = analysed(nested_net())
    outer, inner = analysis.block("outer.add"), analysis.block("inner.add")
    assert set(inner.nodes) < set(outer.nodes) and "inner.add" in outer.nodes
    assert analysis.macs == outer.macs  # the inner block counted once, inside the outer


def test_shortcut_through_identity_ops() -> None:
    _, analysis = analysed(shortcut_ops_net())
    (block,) = analysis.blocks
    assert block.input == "stem"
    assert block.shortcut == ("b0.id", "b0.drop")


def test_graph_output_y_is_still_a_block() -> None:
    _, analysis = analysed(output_net())
    assert [b.output for b in analysis.blocks] == ["b0.add", "b1.add"]


# --- rejections -----------------------------------------------------------------------------------
def test_projection_shortcut_rejected() -> None:
    _, analysis = analysed(projection_net())
    assert analysis.blocks == ()
    reason = _reason(analysis, "down.add")
    assert "projection shortcut" in reason and "Conv" in reason and "'stem'" in reason


def test_branch_feeding_elsewhere_rejected() -> None:
    _, analysis = analysed(leaky_net())
    assert analysis.blocks == ()
    assert "b0.relu1" in _reason(analysis, "b0.add")
    assert "graph output" in _reason(analysis, "b0.add")


def test_branch_read_by_another_node_rejected() -> None:
    model = basic_net(1)
    extra = helper.make_node("Relu", ["b0.relu1"], ["spy"], name="spy")
    model.graph.node.append(extra)
    model.graph.output.append(helper.make_tensor_value_info("spy", TensorProto.FLOAT, [B, C, H, W]))
    _, analysis = analysed(model)
    assert analysis.blocks == ()
    assert "f feeds elsewhere" in _reason(analysis, "b0.add")
    assert "'spy'" in _reason(analysis, "b0.add")


def test_broadcasting_add_rejected() -> None:
    _, analysis = analysed(broadcast_net())
    assert analysis.blocks == ()
    assert _reason(analysis, "se.add").startswith("broadcasting Add")


def test_control_flow_rejected() -> None:
    _, analysis = analysed(control_flow_net())
    assert analysis.blocks == ()
    assert "control flow" in _reason(analysis, "cf.add")


def test_output_read_inside_a_subgraph_rejected() -> None:
    """y read by an If branch by name: it cannot be rewired to x, so no block."""
    net = Net()
    y = net.op("Add", "b0.add", _stem(net), net.conv("b0.conv", "stem", C, C))
    out = helper.make_tensor_value_info("picked", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Relu", [y], ["picked"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Neg", [y], ["picked"])], "else", [], [out])
    net.inits["cond"] = np.array(True)
    net.nodes.append(
        helper.make_node("If", ["cond"], ["if"], name="if", then_branch=then, else_branch=other)
    )
    _, analysis = analysed(_head(net, "if"))
    assert analysis.blocks == ()
    assert "read inside a subgraph" in _reason(analysis, "b0.add")


def test_elementwise_expression_is_not_a_block() -> None:
    """``x + x^3``-style Adds (a GELU's inner polynomial) have no weight op: not blocks."""
    net = Net()
    x = _stem(net)
    cube = net.op("Mul", "cube", net.op("Mul", "sq", x, x), x)
    model = _head(net, net.op("Add", "poly", x, cube))
    _, analysis = analysed(model)
    assert analysis.blocks == ()
    assert "no Conv/Gemm/MatMul" in _reason(analysis, "poly")


def test_bias_add_is_not_a_candidate() -> None:
    _, analysis = analysed(transformer_net(1))
    names = {r.output for r in analysis.rejected} | {b.output for b in analysis.blocks}
    assert not any(n.endswith((".q", ".o", ".fc1", ".fc2")) for n in names)


# --- properties ---------------------------------------------------------------------------------
def test_analysis_changes_nothing() -> None:
    graph = graph_of(nested_net())
    before = to_model(graph).SerializeToString()
    find_blocks(graph)
    graph.verify()
    assert to_model(graph).SerializeToString() == before


def test_deep_stack_is_fast() -> None:
    """300 adjacent blocks: every block found, in time far from quadratic blow-up."""
    graph = graph_of(transformer_net(150))
    start = time.perf_counter()
    analysis = find_blocks(graph)
    assert len(analysis.blocks) == 300
    assert time.perf_counter() - start < 5.0
