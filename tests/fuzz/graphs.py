"""A hypothesis strategy for random *valid* ONNX CNN graphs built from the ops irprune supports.

A graph is a stem convolution followed by a random sequence of blocks acting on one NCHW feature
map: conv units (explicit BatchNormalization or BN folded into the conv bias), grouped and
depthwise convs, residual adds with identity or projection shortcuts, concats, channel splits,
squeeze-and-excitation, channel shuffle (Reshape -> Transpose -> Reshape), pooling, per-channel
constants, channel-last MatMul, constant Slices and Gathers, ConvTranspose/Resize upsampling,
Pad, InstanceNormalization, a QDQ-quantized conv, If with outer-scope reads, and *unknown ops*:
standard ONNX ops irprune has no rule for (LRN, CumSum, Shrink, LpNormalization,
SpaceToDepth -> DepthToSpace), so onnxruntime can still run them while irprune must fail closed
around them. A head ends the graph (global pool -> Flatten -> Gemm, Flatten of the whole map ->
Gemm, MatMul, optionally with a hidden Gemm layer, or the feature map itself), and sometimes an
intermediate map is a second graph output. One graph in five stores its conv weights as fp16
behind a Cast to float.

Structure is drawn from hypothesis (so failures shrink to small graphs); weights come from a
numpy generator seeded by one drawn integer (drawing every weight would only slow shrinking).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSETS = (17, 18, 19, 20, 21)
ACTIVATIONS = ("Relu", "Sigmoid", "LeakyRelu", "Clip", "HardSwish", "Tanh", None)
# MeanVarianceNormalization is left out: onnx 1.23's checker rejects its own function body.
UNKNOWN_OPS = ("LRN", "CumSum", "Shrink", "LpNormalization", "D2S")


@dataclass(frozen=True)
class Tensor:
    """A 4-D NCHW feature map flowing through the generator."""

    name: str
    c: int
    h: int
    w: int


@dataclass
class Builder:
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)  # block names, for failure messages
    count: int = 0
    narrow: bool = False  # conv weights stored as fp16 behind a Cast

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def stored_weight(self, stem: str, array: np.ndarray) -> str:
        """A float weight; with ``narrow`` set, stored as fp16 and Cast to float at run time."""
        if not self.narrow:
            return self.const(stem, array)
        (w,) = self.node("Cast", [self.const(stem, array.astype(np.float16))], to=TensorProto.FLOAT)
        return w

    def weight(self, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        w = self.rng.standard_normal(shape) * scale / np.sqrt(max(fan_in, 1))
        return w.astype(np.float32)

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: object) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(f"n_{op}"), **attrs))
        return outs


def conv(
    b: Builder,
    x: Tensor,
    cout: int,
    *,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    bn: str = "folded",
    act: str | None = "Relu",
) -> Tensor:
    """Conv (+ explicit BatchNormalization, or BN folded into the bias) (+ activation)."""
    w = b.stored_weight("W", b.weight((cout, x.c // groups, k, k)))
    inputs = [x.name, w]
    if bn != "explicit":
        inputs.append(b.const("B", (b.rng.standard_normal(cout) * 0.1).astype(np.float32)))
    pad = k // 2
    (y,) = b.node(
        "Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups
    )
    h, wd = (x.h + 2 * pad - k) // stride + 1, (x.w + 2 * pad - k) // stride + 1
    if bn == "explicit":
        params = [
            (1.0 + 0.2 * b.rng.standard_normal(cout)),
            0.1 * b.rng.standard_normal(cout),
            0.1 * b.rng.standard_normal(cout),
            0.5 + b.rng.random(cout),
        ]
        names = [b.const(s, p.astype(np.float32)) for s, p in zip("gbmv", params, strict=True)]
        (y,) = b.node("BatchNormalization", [y, *names], epsilon=1e-5)
    return activation(b, Tensor(y, cout, h, wd), act)


def activation(b: Builder, x: Tensor, act: str | None) -> Tensor:
    if act is None:
        return x
    if act == "Clip":
        lo, hi = b.const("lo", np.float32(0.0)), b.const("hi", np.float32(6.0))
        (y,) = b.node("Clip", [x.name, lo, hi])
    elif act == "LeakyRelu":
        (y,) = b.node("LeakyRelu", [x.name], alpha=0.1)
    else:
        (y,) = b.node(act, [x.name])
    return Tensor(y, x.c, x.h, x.w)


# --- blocks: (builder, draw, x) -> y -----------------------------------------------------------

Draw = Callable[[st.SearchStrategy], object]
widths = st.integers(4, 24)
bn_styles = st.sampled_from(("explicit", "folded", "none"))
acts = st.sampled_from(ACTIVATIONS)


def _conv_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    stride = draw(st.sampled_from((1, 2))) if x.h >= 4 else 1
    return conv(
        b,
        x,
        draw(widths),
        k=draw(st.sampled_from((1, 3))),
        stride=stride,
        bn=draw(bn_styles),
        act=draw(acts),
    )


def _grouped_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    options = [g for g in (2, 3, 4) if x.c % g == 0]
    if not options:
        return _conv_block(b, draw, x)
    g = draw(st.sampled_from(options))
    return conv(b, x, g * draw(st.integers(1, 4)), groups=g, bn=draw(bn_styles), act=draw(acts))


def _depthwise_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    mult = draw(st.sampled_from((1, 1, 2)))
    y = conv(b, x, x.c * mult, groups=x.c, bn=draw(bn_styles), act=draw(acts))
    if draw(st.booleans()):  # MobileNet: pointwise after depthwise
        y = conv(b, y, draw(widths), k=1, bn=draw(bn_styles), act=draw(acts))
    return y


def _residual_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    projection = draw(st.booleans())
    cout = draw(widths) if projection else x.c
    stride = draw(st.sampled_from((1, 2))) if projection and x.h >= 4 else 1
    bn = draw(bn_styles)
    y = conv(b, x, draw(widths), stride=stride, bn=bn, act="Relu")
    y = conv(b, y, cout, bn=bn, act=None)
    short = conv(b, x, cout, k=1, stride=stride, bn=bn, act=None) if projection else x
    (s,) = b.node("Add", [y.name, short.name])
    return activation(b, Tensor(s, cout, y.h, y.w), draw(st.sampled_from(("Relu", None))))


def _concat_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    branches = [conv(b, x, draw(widths), k=draw(st.sampled_from((1, 3))), bn=draw(bn_styles))]
    if draw(st.booleans()):
        branches.append(x)  # DenseNet: the input itself is concatenated
    else:
        branches.append(conv(b, x, draw(widths), k=1, bn=draw(bn_styles), act=draw(acts)))
    (y,) = b.node("Concat", [t.name for t in branches], axis=1)
    return Tensor(y, sum(t.c for t in branches), x.h, x.w)


def _split_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    if x.c < 2:
        return _conv_block(b, draw, x)
    first = draw(st.integers(1, x.c - 1))
    sizes = b.const("split", np.array([first, x.c - first], dtype=np.int64))
    lo, hi = b.node("Split", [x.name, sizes], n_out=2, axis=1)
    right = conv(b, Tensor(hi, x.c - first, x.h, x.w), draw(widths), bn=draw(bn_styles))
    if draw(st.booleans()):  # ShuffleNet: keep one half, transform the other, concatenate
        (y,) = b.node("Concat", [lo, right.name], axis=1)
        return Tensor(y, first + right.c, x.h, x.w)
    left = conv(b, Tensor(lo, first, x.h, x.w), right.c, k=1, bn=draw(bn_styles))
    (y,) = b.node("Add", [left.name, right.name])
    return Tensor(y, right.c, x.h, x.w)


def _se_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    (p,) = b.node("GlobalAveragePool", [x.name])
    squeeze = conv(b, Tensor(p, x.c, 1, 1), draw(st.integers(1, 6)), k=1, bn="folded", act="Relu")
    excite = conv(b, squeeze, x.c, k=1, bn="folded", act="Sigmoid")
    (y,) = b.node("Mul", [x.name, excite.name])
    return Tensor(y, x.c, x.h, x.w)


def _shuffle_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    options = [g for g in (2, 3, 4) if x.c % g == 0 and x.c > g]
    if not options:
        return _conv_block(b, draw, x)
    g = draw(st.sampled_from(options))
    split = b.const("shape", np.array([0, g, x.c // g, x.h, x.w], dtype=np.int64))
    (r,) = b.node("Reshape", [x.name, split])
    (t,) = b.node("Transpose", [r], perm=[0, 2, 1, 3, 4])
    merged = b.const("shape", np.array([0, x.c, x.h, x.w], dtype=np.int64))
    (y,) = b.node("Reshape", [t, merged])
    return Tensor(y, x.c, x.h, x.w)


def _pool_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    if x.h < 2 or x.w < 2:
        return x
    op = draw(st.sampled_from(("MaxPool", "AveragePool")))
    (y,) = b.node(op, [x.name], kernel_shape=[2, 2], strides=[2, 2])
    return Tensor(y, x.c, x.h // 2, x.w // 2)


def _channel_const_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    op = draw(st.sampled_from(("Mul", "Add")))
    shape = draw(st.sampled_from(((1, x.c, 1, 1), (x.c, 1, 1))))
    k = b.const("k", (1.0 + 0.3 * b.rng.standard_normal(shape)).astype(np.float32))
    (y,) = b.node(op, [x.name, k])
    return Tensor(y, x.c, x.h, x.w)


def _unknown_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    op = draw(st.sampled_from(UNKNOWN_OPS))
    if op == "LRN":
        (y,) = b.node("LRN", [x.name], size=3)
    elif op == "CumSum":
        (y,) = b.node("CumSum", [x.name, b.const("axis", np.array(1, dtype=np.int64))])
    elif op == "Shrink":
        (y,) = b.node("Shrink", [x.name], lambd=0.1)
    elif op == "LpNormalization":
        (y,) = b.node("LpNormalization", [x.name], axis=1, p=2)
    else:
        if x.h % 2 or x.w % 2:
            return x
        (d,) = b.node("SpaceToDepth", [x.name], blocksize=2)
        (y,) = b.node("DepthToSpace", [d], blocksize=2, mode="DCR")
    return Tensor(y, x.c, x.h, x.w)


def _channels_last_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    """ConvNeXt-style pointwise linear: NCHW -> NHWC -> MatMul (+ bias) -> NCHW."""
    cout = draw(widths)
    (t,) = b.node("Transpose", [x.name], perm=[0, 2, 3, 1])
    (m,) = b.node("MatMul", [t, b.const("L", b.weight((x.c, cout)))])
    if draw(st.booleans()):
        (m,) = b.node("Add", [m, b.const("LB", (0.1 * b.rng.standard_normal(cout)).astype("f4"))])
    (y,) = b.node("Transpose", [m], perm=[0, 3, 1, 2])
    return activation(b, Tensor(y, cout, x.h, x.w), draw(acts))


def _slice_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    """Keep a channel range (constant Slice bounds), as detection heads do."""
    if x.c < 2:
        return x
    start = draw(st.integers(0, x.c - 1))
    end = draw(st.integers(start + 1, x.c))
    bounds = [b.const(s, np.array([v], dtype=np.int64)) for s, v in (("s", start), ("e", end))]
    (y,) = b.node("Slice", [x.name, *bounds, b.const("ax", np.array([1], dtype=np.int64))])
    return Tensor(y, end - start, x.h, x.w)


def _upsample_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    """Decoder-style upsampling: ConvTranspose (stride 2) or Resize (nearest, x2)."""
    if x.h > 8:
        return x
    if draw(st.booleans()):
        cout = draw(widths)
        w = b.stored_weight("T", b.weight((x.c, cout, 2, 2)))
        inputs = [x.name, w, b.const("TB", np.zeros(cout, np.float32))]
        (y,) = b.node("ConvTranspose", inputs, kernel_shape=[2, 2], strides=[2, 2])
        return activation(b, Tensor(y, cout, 2 * x.h, 2 * x.w), draw(acts))
    scales = b.const("sc", np.array([1, 1, 2, 2], dtype=np.float32))
    (y,) = b.node("Resize", [x.name, "", scales], mode="nearest")
    return Tensor(y, x.c, 2 * x.h, 2 * x.w)


def _pad_norm_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    """Spatial Pad then a 3x3 valid conv, or InstanceNormalization (per-channel scale/bias)."""
    if draw(st.booleans()):
        pads = b.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64))
        modes = ("constant", "reflect", "edge") if min(x.h, x.w) >= 2 else ("constant", "edge")
        mode = draw(st.sampled_from(modes))  # reflect needs 2 pixels along each padded axis
        (p,) = b.node("Pad", [x.name, pads], mode=mode)
        cout = draw(widths)
        (y,) = b.node("Conv", [p, b.stored_weight("W", b.weight((cout, x.c, 3, 3)))])
        return activation(b, Tensor(y, cout, x.h, x.w), draw(acts))
    scale = b.const("is", (1 + 0.1 * b.rng.standard_normal(x.c)).astype(np.float32))
    bias = b.const("ib", (0.1 * b.rng.standard_normal(x.c)).astype(np.float32))
    (y,) = b.node("InstanceNormalization", [x.name, scale, bias])
    return Tensor(y, x.c, x.h, x.w)


def _gather_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    """Pick channels with a constant Gather on axis 1 (a fixed reordering/selection)."""
    idx = draw(st.lists(st.integers(0, x.c - 1), min_size=1, max_size=x.c))
    (y,) = b.node("Gather", [x.name, b.const("gi", np.array(idx, dtype=np.int64))], axis=1)
    return Tensor(y, len(idx), x.h, x.w)


def _qdq_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    """A quantized conv in QDQ form: the activation through QuantizeLinear/DequantizeLinear,
    int8 weights through DequantizeLinear (no rule: irprune must freeze around it)."""
    cout = draw(widths)
    scale, zero = b.const("qs", np.float32(0.05)), b.const("qz", np.int8(0))
    (q,) = b.node("QuantizeLinear", [x.name, scale, zero])
    (dq,) = b.node("DequantizeLinear", [q, scale, zero])
    qw = b.const("QW", b.rng.integers(-60, 60, (cout, x.c, 3, 3)).astype(np.int8))
    (w,) = b.node("DequantizeLinear", [qw, b.const("ws", np.float32(0.01)), zero])
    (y,) = b.node("Conv", [dq, w], pads=[1] * 4)
    return activation(b, Tensor(y, cout, x.h, x.w), draw(acts))


def _if_block(b: Builder, draw: Draw, x: Tensor) -> Tensor:
    """If on a constant condition; both branches read the feature map from the outer scope."""
    branches = []
    for name, op in (("then", "Relu"), ("else", draw(st.sampled_from(("Sigmoid", "Tanh"))))):
        out = b.name(f"{name}_out")
        branches.append(
            helper.make_graph(
                [helper.make_node(op, [x.name], [out])],
                b.name(name),
                [],
                [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
            )
        )
    cond = b.const("cond", np.array(draw(st.booleans())))
    (y,) = b.node("If", [cond], then_branch=branches[0], else_branch=branches[1])
    return Tensor(y, x.c, x.h, x.w)


BLOCKS: dict[str, Callable[[Builder, Draw, Tensor], Tensor]] = {
    "conv": _conv_block,
    "grouped": _grouped_block,
    "depthwise": _depthwise_block,
    "residual": _residual_block,
    "concat": _concat_block,
    "split": _split_block,
    "se": _se_block,
    "shuffle": _shuffle_block,
    "pool": _pool_block,
    "channel_const": _channel_const_block,
    "unknown": _unknown_block,
    "channels_last": _channels_last_block,
    "slice": _slice_block,
    "qdq": _qdq_block,
    "if": _if_block,
    "upsample": _upsample_block,
    "pad_norm": _pad_norm_block,
    "gather": _gather_block,
}


def _head(b: Builder, draw: Draw, x: Tensor) -> tuple[str, list[int]]:
    """The graph output (name, shape without the batch dim)."""
    kind = draw(st.sampled_from(("gap_gemm", "gap_gemm", "flatten_gemm", "matmul", "map")))
    classes = draw(st.integers(2, 10))
    if kind == "map":
        return x.name, [x.c, x.h, x.w]
    if kind == "flatten_gemm":
        (f,) = b.node("Flatten", [x.name], axis=1)
        features = x.c * x.h * x.w
    else:
        (p,) = b.node("GlobalAveragePool", [x.name])
        (f,) = b.node("Flatten", [p], axis=1)
        features = x.c
    if draw(st.booleans()):  # a hidden fully connected layer: a prunable Gemm group
        hidden = draw(widths)
        w = b.const("H", b.weight((features, hidden)))
        (f,) = b.node("Gemm", [f, w, b.const("HB", np.zeros(hidden, np.float32))])
        (f,) = b.node("Relu", [f])
        features = hidden
    if kind == "matmul":
        (y,) = b.node("MatMul", [f, b.const("M", b.weight((features, classes)))])
        return y, [classes]
    w = b.const("G", b.weight((classes, features)))
    (y,) = b.node("Gemm", [f, w, b.const("GB", np.zeros(classes, np.float32))], transB=1)
    return y, [classes]


@dataclass(frozen=True)
class Case:
    """One generated model and how it was built (printed when a property fails)."""

    model: onnx.ModelProto
    blocks: tuple[str, ...]
    batch: int | str
    narrow: bool = False
    # the deployment shape when H and W are symbolic in the model (None: static spatial dims)
    deploy: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        opset = self.model.opset_import[0].version
        blocks = list(self.blocks)
        return (
            f"Case(opset={opset}, batch={self.batch!r}, blocks={blocks}, narrow={self.narrow}, "
            f"deploy={self.deploy})"
        )

    def feed_shape(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The input's shape for a run: the deployment shape (or the static one) at ``batch``
        where the batch is symbolic."""
        dims = self.model.graph.input[0].type.tensor_type.shape.dim
        static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        shape = list(self.deploy) if self.deploy is not None else static
        shape[0] = self.batch if isinstance(self.batch, int) else batch
        return {"input": tuple(int(d) for d in shape)}  # type: ignore[arg-type]


@st.composite
def onnx_graphs(draw: Draw, max_blocks: int = 8) -> Case:
    seed = draw(st.integers(0, 2**31 - 1))
    b = Builder(np.random.default_rng(seed), narrow=draw(st.integers(0, 4)) == 0)
    batch: int | str = draw(st.sampled_from(("N", 1, 2)))
    c0, hw = draw(st.integers(1, 4)), draw(st.sampled_from((4, 6, 8)))
    symbolic = draw(st.integers(0, 3)) == 0  # exporters' [N, C, H, W]: a quarter of the graphs
    x = Tensor("input", c0, hw, hw)
    x = conv(b, x, draw(widths), bn=draw(bn_styles), act=draw(acts))
    extra_outputs: list[tuple[str, list[int]]] = []
    names = draw(st.lists(st.sampled_from(sorted(BLOCKS)), min_size=2, max_size=max_blocks))
    for name in names:
        x = BLOCKS[name](b, draw, x)
        b.ops.append(name)
        if draw(st.integers(0, 19)) == 0:  # an intermediate map as a second graph output
            extra_outputs.append((x.name, [x.c, x.h, x.w]))
    out, shape = _head(b, draw, x)
    outputs = [(out, shape), *[o for o in extra_outputs if o[0] != out]]
    spatial: list[int | str] = ["H", "W"] if symbolic else [hw, hw]
    graph = helper.make_graph(
        b.nodes,
        "fuzz",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, c0, *spatial])],
        [
            helper.make_tensor_value_info(
                n, TensorProto.FLOAT, [batch, s[0], *([None] * len(s[1:]) if symbolic else s[1:])]
            )
            for n, s in outputs
        ],
        b.inits,
    )
    opset = draw(st.sampled_from(OPSETS))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    deploy = (batch if isinstance(batch, int) else 1, c0, hw, hw) if symbolic else None
    return Case(model, tuple(b.ops), batch, b.narrow, deploy)
