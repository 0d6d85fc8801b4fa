"""Exporter idioms on small graphs (issue #14): the patterns paddle2onnx (PP-OCR), tf2onnx /
keras2onnx (NHWC), ultralytics YOLOv8 and torch.onnx.export (TorchScript) write into the real
models. Each asserts which channel groups prune or freeze (with the reason) and drops half of
every prunable group at random, checked against the independent masked reference
(``tests/reference_mask.py``) by ``drop_half_and_check``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.layout import Segment
from tests.helpers import make_model
from tests.passes.analysis.test_rules import drop_half_and_check
from tests.passes.analysis.test_rules_transformers import _Builder, group_of, groups_of

GRAPH_OUTPUT = "reaches graph output 'out'"


class Net(_Builder):
    """The encoder tests' builder (nodes, initializers, ``const``, ``op``) with weights drawn
    from a fixed seed."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def w(self, *shape: int) -> np.ndarray:
        return (0.5 * self.rng.standard_normal(shape)).astype(np.float32)

    def const(self, name: str, value: np.ndarray) -> str:
        return super().const(name, np.asarray(value))

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 1, **attrs: object) -> str:
        weight = self.const(f"{name}.w", self.w(cout, cin, k, k))
        bias = self.const(f"{name}.b", self.w(cout))
        pads = [k // 2] * 4
        return self.op("Conv", [x, weight, bias], name, pads=pads, **attrs)

    def silu(self, x: str) -> str:  # x * Sigmoid(x), as torch exports nn.SiLU before opset 22
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(
        self, inputs: list[tuple[str, list]], out: str, shape: list, opset: int
    ) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["out"]))
        return make_model(self.nodes, inputs, [("out", shape)], self.inits, opset=opset)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def sources(analysis: ChannelAnalysis, node: str) -> set[str]:
    return {s.node for s in group_of(analysis, node).sources}


def frozen_only_as_output(analysis: ChannelAnalysis, node: str) -> None:
    g = group_of(analysis, node)
    assert g.frozen == (GRAPH_OUTPUT,), g.frozen


# --- paddle2onnx (PP-OCR) -----------------------------------------------------------------------


@pytest.mark.parametrize(("pool", "opset"), [("GlobalAveragePool", 17), ("ReduceMean", 13)])
def test_paddle_hardswish_se_relu6_and_conv_transpose_head(pool: str, opset: int) -> None:
    """PP-OCR det (MobileNetV3 + DB head): Conv -> HardSwish (opset >= 14; below, paddle2onnx
    writes x * HardSigmoid(x, 1/6, 1/2)); SE: GlobalAveragePool or ReduceMean(axes [2, 3],
    keepdims 1) -> Conv 1x1 squeeze -> Relu -> Conv 1x1 excite -> HardSigmoid -> Mul(x, se);
    Clip(0, 6) with constant min/max inputs; a ConvTranspose head. The SE's inner width prunes
    alone; the excite's output channels join x's through the Mul; the ConvTranspose's input
    channels prune with the conv before it; its output channels are the graph's."""
    n = Net(1)
    stem = n.conv("x", "stem", 3, 8, 3, strides=[2, 2])
    if opset >= 14:
        h = n.op("HardSwish", [stem])
    else:
        h = n.op("Mul", [stem, n.op("HardSigmoid", [stem], alpha=1 / 6, beta=0.5)])
    if pool == "GlobalAveragePool":
        p = n.op("GlobalAveragePool", [h])
    else:
        p = n.op("ReduceMean", [h], axes=[2, 3], keepdims=1)
    sq = n.op("Relu", [n.conv(p, "se.squeeze", 8, 4)])
    gate = n.op("HardSigmoid", [n.conv(sq, "se.excite", 4, 8)], alpha=0.2, beta=0.5)
    m = n.op("Mul", [h, gate])
    c = n.conv(m, "neck", 8, 12, 3)
    relu6 = n.op("Clip", [c, n.const("zero", scalar(0.0)), n.const("six", scalar(6.0))])
    up = n.const("head.w", n.w(12, 4, 2, 2))  # [C_in, C_out, k, k]
    out = n.op("ConvTranspose", [relu6, up, n.const("head.b", n.w(4))], "head", strides=[2, 2])
    model = n.model([("x", ["N", 3, 8, 8])], out, ["N", 4, 8, 8], opset=opset)

    analysis = drop_half_and_check(model, seed=1)
    stem = group_of(analysis, "stem")
    assert stem.prunable and stem.size == 8
    assert sources(analysis, "stem") == {"stem", "se.excite"}
    squeeze = group_of(analysis, "se.squeeze")
    assert squeeze.prunable and squeeze.size == 4
    assert sources(analysis, "se.squeeze") == {"se.squeeze"}
    neck = group_of(analysis, "neck")
    assert neck.prunable and neck.size == 12
    assert analysis.layout("head.w", 0) == (Segment(neck.id, 12),)  # ConvTranspose W axis 0
    frozen_only_as_output(analysis, "head")


def test_paddle_rec_head_squeeze_transpose_matmul() -> None:
    """PP-OCR rec (CRNN): Conv -> HardSwish -> a Slice on H (axis 2) -> ReduceMean over H with
    keepdims=1 -> Squeeze(axis 2) -> Unsqueeze/Squeeze round trip on axis 0 -> Transpose(0, 2,
    1) -> MatMul [C, classes] -> Softmax over classes. None of those ops touches the channel
    axis, so the conv's channels prune with the MatMul's rows."""
    n = Net(2)
    h = n.op("HardSwish", [n.conv("x", "body", 3, 10, 3)])  # opset 14
    s = n.op("Slice", [h, n.const("st", ints(1)), n.const("en", ints(7)), n.const("ax", ints(2))])
    r = n.op("ReduceMean", [s], axes=[2], keepdims=1)  # [N, C, 1, W]
    sq = n.op("Squeeze", [r, n.const("ax2", ints(2))])  # [N, C, W]
    u = n.op("Squeeze", [n.op("Unsqueeze", [sq, n.const("ax0", ints(0))]), "ax0"])
    t = n.op("Transpose", [u], perm=[0, 2, 1])  # [N, W, C]
    logits = n.op("MatMul", [t, n.const("ctc.w", n.w(10, 7))], "ctc")
    out = n.op("Softmax", [n.op("Add", [logits, n.const("ctc.b", n.w(7))])], "ctc.soft", axis=2)
    model = n.model([("x", ["N", 3, 8, 8])], out, ["N", 8, 7], opset=14)

    analysis = drop_half_and_check(model, seed=2)
    body = group_of(analysis, "body")
    assert body.prunable and body.size == 10
    assert analysis.layout(t, 2) == (Segment(body.id, 10),) and analysis.layout(t, 1) is None
    assert analysis.layout("ctc.w", 0) == (Segment(body.id, 10),)
    classes = group_of(analysis, "ctc")
    assert classes.frozen == ("Softmax 'ctc.soft': normalises over the channel axis",)


# --- tf2onnx / keras2onnx (NHWC) ----------------------------------------------------------------


def test_tf2onnx_nhwc_residual_between_transposes() -> None:
    """NHWC input -> Transpose(0, 3, 1, 2) -> Conv -> Relu -> Transpose(0, 2, 3, 1), added in NHWC
    to a second branch (with a channels-last bias [C]), then back to NCHW into a Conv: both
    convs of the residual are one prunable group, whose channels sit on axis 3 in NHWC."""
    n = Net(3)
    x = n.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    a = n.op("Transpose", [n.op("Relu", [n.conv(x, "a", 3, 8, 3)])], perm=[0, 2, 3, 1])
    b = n.op("Transpose", [n.conv(x, "b", 3, 8)], perm=[0, 2, 3, 1])
    b = n.op("Add", [b, n.const("b.nhwc_bias", n.w(8))])  # broadcast on the last axis
    s = n.op("Relu", [n.op("Add", [a, b])])
    back = n.op("Transpose", [s], perm=[0, 3, 1, 2])
    c = n.op("Transpose", [n.conv(back, "c", 8, 5)], perm=[0, 2, 3, 1])
    model = n.model([("x", ["N", 6, 6, 3])], c, ["N", 6, 6, 5], opset=13)

    analysis = drop_half_and_check(model, seed=3)
    g = group_of(analysis, "a")
    assert g.prunable and g.size == 8 and sources(analysis, "a") == {"a", "b"}
    assert analysis.layout(s, 3) == (Segment(g.id, 8),) and analysis.layout(s, 1) is None
    assert analysis.layout("c.w", 1) == (Segment(g.id, 8),)
    frozen_only_as_output(analysis, "c")


@pytest.mark.parametrize("nhwc", [False, True], ids=["slope_C11", "slope_11C_nhwc"])
def test_keras_prelu_per_channel_slope(nhwc: bool) -> None:
    """MTCNN's keras export: Conv -> PRelu with a per-channel slope, [C, 1, 1] in NCHW or
    [1, 1, C] on a channels-last tensor (Keras' shared_axes=[1, 2]); the slope is sliced with
    the conv's channels, which prune with the next conv's input channels."""
    n = Net(4)
    c = n.conv("x", "pnet.conv1", 3, 10, 3)
    if nhwc:
        t = n.op("Transpose", [c], perm=[0, 2, 3, 1])
        p = n.op("PRelu", [t, n.const("slope", n.w(1, 1, 10))])
        p = n.op("Transpose", [p], perm=[0, 3, 1, 2])
    else:
        p = n.op("PRelu", [c, n.const("slope", n.w(10, 1, 1))])
    pooled = n.op("MaxPool", [p], kernel_shape=[2, 2], strides=[2, 2])
    out = n.op("PRelu", [n.conv(pooled, "pnet.conv2", 10, 6, 3), n.const("slope2", n.w(6, 1, 1))])
    model = n.model([("x", ["N", 3, 8, 8])], out, ["N", 6, 4, 4], opset=13)

    analysis = drop_half_and_check(model, seed=4)
    g = group_of(analysis, "pnet.conv1")
    assert g.prunable and g.size == 10
    assert analysis.layout("slope", 2 if nhwc else 0) == (Segment(g.id, 10),)
    frozen_only_as_output(analysis, "pnet.conv2")


# --- ultralytics YOLOv8 -------------------------------------------------------------------------


def test_yolov8_c2f_split_bottleneck_concat() -> None:
    """C2f: Conv (2c) -> SiLU (x * Sigmoid(x)) -> Split(axis 1, [c, c]) -> a bottleneck on the
    second half (Conv c -> c, Conv c -> c, Add residual) -> Concat(half 1, half 2, bottleneck)
    -> Conv 1x1. The Split cuts the first conv's channels into two groups; the second joins the
    bottleneck's last conv through the residual Add; the bottleneck's inner width prunes alone;
    the concat's three parts sit at offsets 0, c, 2c of the last conv's input."""
    c = 6
    n = Net(5)
    y = n.silu(n.conv("x", "cv1", 3, 2 * c))
    n.nodes.append(
        helper.make_node("Split", [y, n.const("halves", ints(c, c))], ["y0", "y1"], axis=1)
    )
    b = n.silu(n.conv("y1", "m.cv1", c, c, 3))
    b = n.silu(n.conv(b, "m.cv2", c, c, 3))
    r = n.op("Add", ["y1", b])
    cat = n.op("Concat", ["y0", "y1", r], axis=1)
    out = n.silu(n.conv(cat, "cv2", 3 * c, 8))
    model = n.model([("x", ["N", 3, 8, 8])], out, ["N", 8, 8, 8], opset=17)

    analysis = drop_half_and_check(model, seed=5)
    first, second = groups_of(analysis, "cv1")
    assert first.prunable and second.prunable and first.size == second.size == c
    assert {s.node for s in first.sources} == {"cv1"}
    assert {s.node for s in second.sources} == {"cv1", "m.cv2"}
    inner = group_of(analysis, "m.cv1")
    assert inner.prunable and inner.size == c
    assert analysis.layout("cv2.w", 1) == (
        Segment(first.id, c),
        Segment(second.id, c),
        Segment(second.id, c),
    )
    frozen_only_as_output(analysis, "cv2")


def _dfl(n: Net, box: str, a: int, batch: str | None) -> str:
    """YOLOv8's DFL decode of box [N, 64, A]: Reshape [N, 4, 16, A] -> Transpose [N, 16, 4, A]
    -> Softmax(axis 1) -> Conv 1x1 with the fixed weight arange(16) [1, 16, 1, 1] -> Reshape
    [N, 4, A]. ``batch``: the run-time batch size as a 1-vector (torch's ``b, _, a = x.shape``),
    else constant targets copying the batch (0)."""
    if batch is not None:
        split = n.op("Concat", [batch, n.const("split", ints(4, 16, a))], axis=0)
        merge = n.op("Concat", [batch, n.const("merge", ints(4, a))], axis=0)
    else:
        split, merge = n.const("split", ints(0, 4, 16, a)), n.const("merge", ints(0, 4, a))
    d = n.op("Reshape", [box, split], "dfl.split")
    soft = n.op("Softmax", [n.op("Transpose", [d], perm=[0, 2, 1, 3])], "dfl.softmax", axis=1)
    proj = n.const("dfl.w", np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1))
    return n.op("Reshape", [n.op("Conv", [soft, proj], "dfl"), merge], "dfl.merge")


def _dfl_head(runtime_batch: bool) -> onnx.ModelProto:
    """One level: a feature conv -> the box conv (64 = 4 x 16) -> Reshape [N, 64, A] -> DFL."""
    n = Net(6)
    feat = n.silu(n.conv("x", "cv2.0", 3, 8, 3))
    box = n.conv(feat, "cv2.box", 8, 64)  # [N, 64, 4, 4]
    batch = None
    if runtime_batch:  # Shape -> Gather(0) -> Unsqueeze
        shape = n.op("Shape", ["x"])
        b = n.op("Gather", [shape, n.const("i0", np.array(0, np.int64))], axis=0)
        batch = n.op("Unsqueeze", [b, n.const("ax0", ints(0))])
        flat = n.op("Concat", [batch, n.const("flat", ints(64, -1))], axis=0)
    else:
        flat = n.const("flat", ints(0, 64, -1))
    dist = _dfl(n, n.op("Reshape", [box, flat]), 16, batch)
    return n.model([("x", ["N", 3, 4, 4])], dist, ["N", 4, 16], opset=17)


def _check_dfl_box(analysis: ChannelAnalysis, box: str) -> None:
    """The 64 box channels are coarsened to the 4 coordinates (blocks of 16 bins, never the bins
    themselves), and those freeze: the DFL conv reads the coordinates on its spatial axis 2."""
    g = group_of(analysis, box)
    assert g.size == 4 and analysis.layout(f"{box}.w", 0) == (Segment(g.id, 4, inner=16),)
    assert len(g.frozen) == 1 and g.frozen[0].startswith(
        "Conv 'dfl' does not map axis 2 of input 0"
    ), g.frozen
    frozen_only_as_output(analysis, "dfl")  # its single output channel


@pytest.mark.parametrize("runtime_batch", [False, True], ids=["const_shape", "shape_gather"])
def test_yolov8_dfl_box_channels_are_not_free(runtime_batch: bool) -> None:
    """The 64 box channels are 4 coordinates x 16 bins: a Softmax over the bins and the fixed
    arange(16) projection, then 4 coordinates per anchor in the graph output. They must not be
    pruned as 64 free channels; the feature conv before them still prunes."""
    analysis = drop_half_and_check(_dfl_head(runtime_batch), seed=6)
    _check_dfl_box(analysis, "cv2.box")
    feat = group_of(analysis, "cv2.0")
    assert feat.prunable and feat.size == 8


def test_yolov8_detect_head_concat_levels_split_box_and_classes() -> None:
    """The whole Detect head: per level Concat(box 64, cls nc) on channels -> Reshape [N, 64 +
    nc, -1]; Concat of the levels on the anchor axis; Split [64, nc] on channels; box -> DFL,
    cls -> Sigmoid; Concat(dist, cls) as the graph output. The levels' box convs join (and
    freeze, as above), the class convs join and freeze as the output; the features prune."""
    nc, n = 3, Net(9)
    feats = [n.silu(n.conv("x", "p3", 3, 8, 3))]
    feats.append(n.silu(n.conv(feats[0], "p4", 8, 8, 3, strides=[2, 2])))  # 4x4 -> 2x2
    levels = []
    for i, f in enumerate(feats):
        box = n.conv(n.silu(n.conv(f, f"cv2.{i}.0", 8, 8, 3)), f"cv2.{i}", 8, 64)
        cls = n.conv(n.silu(n.conv(f, f"cv3.{i}.0", 8, 6, 3)), f"cv3.{i}", 6, nc)
        cat = n.op("Concat", [box, cls], axis=1)
        levels.append(n.op("Reshape", [cat, n.const(f"flat{i}", ints(0, 64 + nc, -1))]))
    a = 16 + 4
    anchors = n.op("Concat", levels, axis=2)
    n.nodes.append(
        helper.make_node("Split", [anchors, n.const("bc", ints(64, nc))], ["box", "cls"], axis=1)
    )
    dist = _dfl(n, "box", a, None)
    out = n.op("Concat", [dist, n.op("Sigmoid", ["cls"])], axis=1)
    model = n.model([("x", ["N", 3, 4, 4])], out, ["N", 4 + nc, a], opset=17)

    analysis = drop_half_and_check(model, seed=9)
    _check_dfl_box(analysis, "cv2.0")
    assert sources(analysis, "cv2.0") == {"cv2.0", "cv2.1"}
    assert sources(analysis, "cv3.0") == {"cv3.0", "cv3.1"}
    frozen_only_as_output(analysis, "cv3.0")
    for conv in ["p3", "p4", "cv2.0.0", "cv2.1.0", "cv3.0.0", "cv3.1.0"]:
        assert group_of(analysis, conv).prunable, conv


# --- TorchScript-style torch.onnx.export ---------------------------------------------------------


def test_torchscript_gap_flatten_gemm() -> None:
    """ResNet's tail: GlobalAveragePool -> Flatten(axis=1) -> Gemm(transB=1): the conv's
    channels prune with the Gemm weight's columns (axis 1)."""
    n = Net(7)
    h = n.op("Relu", [n.conv("x", "layer4", 3, 12, 3)])
    f = n.op("Flatten", [n.op("GlobalAveragePool", [h])], axis=1)
    out = n.op("Gemm", [f, n.const("fc.w", n.w(5, 12)), n.const("fc.b", n.w(5))], "fc", transB=1)
    model = n.model([("x", ["N", 3, 6, 6])], out, ["N", 5], opset=13)

    analysis = drop_half_and_check(model, seed=7)
    g = group_of(analysis, "layer4")
    assert g.prunable and g.size == 12
    assert analysis.layout("fc.w", 1) == (Segment(g.id, 12),)
    frozen_only_as_output(analysis, "fc")


@pytest.mark.parametrize("pooled", [True, False], ids=["after_gap", "flatten_hw"])
def test_torchscript_view_size0_minus1(pooled: bool) -> None:
    """``x.view(x.size(0), -1)``: Shape -> Gather(0) -> Unsqueeze -> Concat with [-1] -> Reshape
    -> Gemm(transB=1). After a global pool the channels map 1:1 onto the features; without it
    each channel is a block of H * W = 4 features (inner), and the Gemm's columns follow."""
    n = Net(8)
    h = n.op("Relu", [n.conv("x", "features", 3, 8, 3)])
    if pooled:
        h = n.op("GlobalAveragePool", [h])
    batch = n.op("Gather", [n.op("Shape", [h]), n.const("i0", np.array(0, np.int64))], axis=0)
    batch = n.op("Unsqueeze", [batch, n.const("ax0", ints(0))])
    target = n.op("Concat", [batch, n.const("m1", ints(-1))], axis=0)
    flat = n.op("Reshape", [h, target])
    k = 8 if pooled else 8 * 4
    out = n.op("Gemm", [flat, n.const("fc.w", n.w(5, k)), n.const("fc.b", n.w(5))], "fc", transB=1)
    model = n.model([("x", ["N", 3, 2, 2])], out, ["N", 5], opset=13)

    analysis = drop_half_and_check(model, seed=8)
    g = group_of(analysis, "features")
    assert g.prunable and g.size == 8
    inner = 1 if pooled else 4
    assert analysis.layout("fc.w", 1) == (Segment(g.id, 8, inner=inner),)
    frozen_only_as_output(analysis, "fc")
