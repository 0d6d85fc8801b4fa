"""Normalisation rules: LayerNormalization (and its decomposed form), GroupNormalization (opset 18
and 21) and the InstanceNormalization form torch exports for nn.GroupNorm, and a channels-last
ConvNeXt block. Each graph is pruned (half of every prunable group, at random) and checked against
the masked-original oracle; the groups, their sizes and the freezing reasons are asserted."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup, analyze
from irprune.passes.analysis.layout import Segment
from tests.helpers import make_model
from tests.passes.analysis.test_rules import drop_half_and_check

RNG = np.random.default_rng(3)
LN_REASON = "LayerNormalization normalises over the channel axis"


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def group_of(analysis: ChannelAnalysis, source: str) -> ChannelGroup:
    (group,) = [g for g in analysis.groups if any(s.node == source for s in g.sources)]
    return group


def _pruned_node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    from irprune.emit import to_model
    from irprune.passes.allocation import Plan
    from irprune.passes.rewrite.drop import drop

    graph = import_model(model)
    analysis = analyze(graph)
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    kept = {g.id: np.arange(g.size // 2) for g in analysis.prunable}
    for g in analysis.prunable:
        widths[g.id] = g.size // 2
    drop(graph, analysis, Plan(widths, kept, 0.0))
    return next(n for n in to_model(graph).graph.node if n.name == name)


# --- LayerNormalization -------------------------------------------------------------------------


def test_layer_norm_freezes_the_normalised_axis_with_its_reason() -> None:
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], "up"),
            helper.make_node("LayerNormalization", ["h", "s", "b"], ["n"], "ln", axis=-1),
            helper.make_node("MatMul", ["n", "w2"], ["out"], "down"),
        ],
        [("x", ["N", 5, 8])],
        [("out", ["N", 5, 4])],
        {"w1": w(8, 16), "s": w(16), "b": w(16), "w2": w(16, 4)},
    )
    analysis = drop_half_and_check(model)
    up = group_of(analysis, "up")
    assert up.size == 16 and up.frozen == (f"LayerNormalization 'ln': {LN_REASON}",)


def test_layer_norm_passes_the_axes_before_axis() -> None:
    """Channels on axis 1, normalised over (H, W) from axis 2: the channels pass through, scale
    and bias ([H, W]) are untouched, and the Mean output carries the channels too."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("LayerNormalization", ["a", "s", "b"], ["n", "mean"], "ln", axis=2),
            helper.make_node("Add", ["n", "mean"], ["m"]),
            helper.make_node("Conv", ["m", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(8, 3, 1, 1), "s": w(4, 4), "b": w(4, 4), "w2": w(2, 8, 1, 1)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.prunable and g.size == 8
    assert analysis.layout("mean", 1) == (Segment(g.id, 8),)
    assert analysis.layout("s", 0) is None


@pytest.mark.parametrize("opset", [17, 18])
def test_decomposed_layer_norm_freezes_at_the_reduction(opset: int) -> None:
    """ReduceMean/Sub/Pow/Sqrt/Div over the last axis: the reduce rule's reason surfaces."""
    axes: dict = {"axes": [-1]} if opset < 18 else {}
    extra = ["ax"] if opset >= 18 else []
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], "up"),
            helper.make_node("ReduceMean", ["h", *extra], ["mu"], "rm1", **axes),
            helper.make_node("Sub", ["h", "mu"], ["d"]),
            helper.make_node("Pow", ["d", "two"], ["d2"]),
            helper.make_node("ReduceMean", ["d2", *extra], ["var"], "rm2", **axes),
            helper.make_node("Add", ["var", "eps"], ["ve"]),
            helper.make_node("Sqrt", ["ve"], ["sd"]),
            helper.make_node("Div", ["d", "sd"], ["nrm"]),
            helper.make_node("Mul", ["nrm", "gamma"], ["sc"]),
            helper.make_node("Add", ["sc", "beta"], ["n"]),
            helper.make_node("MatMul", ["n", "w2"], ["out"], "down"),
        ],
        [("x", ["N", 5, 8])],
        [("out", ["N", 5, 4])],
        {
            "w1": w(8, 16),
            "ax": ints(-1),
            "two": np.array(2.0, dtype=np.float32),
            "eps": np.array(1e-5, dtype=np.float32),
            "gamma": w(16),
            "beta": w(16),
            "w2": w(16, 4),
        },
        opset=opset,
    )
    up = group_of(drop_half_and_check(model), "up")
    assert not up.prunable
    assert "ReduceMean 'rm1': reduces over the channel axis" in up.frozen


# --- GroupNormalization ---------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_prunes_whole_groups(opset: int) -> None:
    params = 4 if opset < 21 else 16  # GroupNormalization-18: per group; 21: per channel
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["a"], "c1"),
            helper.make_node("GroupNormalization", ["a", "s", "b"], ["n"], "gn", num_groups=4),
            helper.make_node("Conv", ["n", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(16, 3, 1, 1), "b1": w(16), "s": w(params), "b": w(params), "w2": w(2, 16, 1, 1)},
        opset=opset,
    )
    # ONNX shape inference does not cover GroupNormalization: the file must say its shape
    model.graph.value_info.append(
        helper.make_tensor_value_info("n", onnx.TensorProto.FLOAT, ["N", 16, 4, 4])
    )
    # onnx.checker rejects GroupNormalization-18 (deprecated): its analysis only
    analysis = drop_half_and_check(model) if opset >= 21 else analyze(import_model(model))
    g = group_of(analysis, "c1")
    assert g.prunable and g.size == 4  # four groups of four channels
    assert analysis.layout("a", 1) == (Segment(g.id, 4, inner=4),)
    expected = Segment(g.id, 4) if opset < 21 else Segment(g.id, 4, inner=4)
    assert analysis.layout("s", 0) == (expected,)
    attrs = {a.name: a.i for a in _pruned_node(model, "gn").attribute}
    assert attrs["num_groups"] == 2


def test_group_normalization_refuses_groups_straddling_channel_groups() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], "ca"),
            helper.make_node("Conv", ["x", "wb"], ["b"], "cb"),
            helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
            helper.make_node("GroupNormalization", ["cat", "s", "bi"], ["n"], "gn", num_groups=4),
            helper.make_node("Conv", ["n", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"wa": w(6, 3, 1, 1), "wb": w(10, 3, 1, 1), "s": w(16), "bi": w(16), "w2": w(2, 16, 1, 1)},
        opset=21,
    )
    model.graph.value_info.append(
        helper.make_tensor_value_info("n", onnx.TensorProto.FLOAT, ["N", 16, 4, 4])
    )
    analysis = drop_half_and_check(model)
    reason = (
        "GroupNormalization 'gn': GroupNormalization: its groups of 4 channels do not fall on "
        "whole blocks of one channel group"
    )
    assert group_of(analysis, "ca").frozen == (reason,)


def _torch_group_norm_form(runtime_back: bool) -> onnx.ModelProto:
    """conv(16) -> Reshape [0, 4, -1] -> InstanceNormalization -> Reshape back (to Shape(a) when
    ``runtime_back``, as torch exports it) -> Mul/Add per channel -> conv."""
    back = ["a_shape"] if runtime_back else ["shape_back"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
        helper.make_node("Reshape", ["a", "to_groups"], ["g"], "r1"),
        helper.make_node("InstanceNormalization", ["g", "s", "b"], ["gn"], "inorm"),
        helper.make_node("Reshape", ["gn", *back], ["r"], "r2"),
        helper.make_node("Mul", ["r", "gamma"], ["sc"]),
        helper.make_node("Add", ["sc", "beta"], ["n"]),
        helper.make_node("Conv", ["n", "w2"], ["out"], "c2"),
    ]
    if runtime_back:
        nodes.insert(1, helper.make_node("Shape", ["a"], ["a_shape"], "sh"))
    return make_model(
        nodes,
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": w(16, 3, 1, 1),
            "to_groups": ints(0, 4, -1),
            "s": w(4),
            "b": w(4),
            "shape_back": ints(-1, 16, 4, 4),
            "gamma": w(16, 1, 1),
            "beta": w(16, 1, 1),
            "w2": w(2, 16, 1, 1),
        },
    )


@pytest.mark.parametrize("runtime_back", [False, True])
def test_instance_norm_form_of_group_norm_prunes_whole_groups(runtime_back: bool) -> None:
    model = _torch_group_norm_form(runtime_back)
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.prunable and g.size == 4
    assert analysis.layout("g", 1) == (Segment(g.id, 4),)
    assert analysis.layout("r", 1) == (Segment(g.id, 4, inner=4),)
    assert analysis.layout("gamma", 0) == (Segment(g.id, 4, inner=4),)


def test_torch_exported_group_norm() -> None:
    torch = pytest.importorskip("torch")
    import io

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 1)
            self.norm = torch.nn.GroupNorm(4, 16)
            self.head = torch.nn.Conv2d(16, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.norm(self.conv(x))))

    torch.manual_seed(0)
    block = Block().eval()
    with torch.no_grad():
        for p in block.norm.parameters():
            p.normal_()
    buf = io.BytesIO()
    torch.onnx.export(
        block,
        (torch.randn(1, 3, 4, 4),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "N"}},
    )
    model = onnx.load_from_string(buf.getvalue())
    analysis = drop_half_and_check(model)
    conv = group_of(analysis, "/conv/Conv")
    assert conv.prunable and conv.size == 4


# --- channels-last block (ConvNeXt) -------------------------------------------------------------


def test_convnext_block_prunes_the_mlp_and_freezes_the_stream() -> None:
    """stem conv -> dwconv -> NHWC -> LayerNorm -> Linear -> GELU (erf) -> Linear -> layer scale
    -> NCHW -> residual Add -> head conv."""
    c, hidden = 8, 32
    model = make_model(
        [
            helper.make_node("Conv", ["x", "stem"], ["s"], "stem"),
            helper.make_node("Conv", ["s", "dw", "dwb"], ["d"], "dw", group=c, pads=[1] * 4),
            helper.make_node("Transpose", ["d"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("LayerNormalization", ["t", "lns", "lnb"], ["ln"], "ln", axis=-1),
            helper.make_node("MatMul", ["ln", "w1"], ["h"], "pw1"),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Div", ["hb", "sqrt2"], ["hs"]),
            helper.make_node("Erf", ["hs"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]),
            helper.make_node("Mul", ["hb", "e1"], ["g0"]),
            helper.make_node("Mul", ["g0", "half"], ["g"]),
            helper.make_node("MatMul", ["g", "w2"], ["p"], "pw2"),
            helper.make_node("Add", ["p", "b2"], ["pb"]),
            helper.make_node("Mul", ["pb", "gamma"], ["ls"]),
            helper.make_node("Transpose", ["ls"], ["back"], perm=[0, 3, 1, 2]),
            helper.make_node("Add", ["s", "back"], ["res"]),
            helper.make_node("Conv", ["res", "head"], ["out"], "head"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "stem": w(c, 3, 1, 1),
            "dw": w(c, 1, 3, 3),
            "dwb": w(c),
            "lns": w(c),
            "lnb": w(c),
            "w1": w(c, hidden),
            "b1": w(hidden),
            "sqrt2": np.array(np.sqrt(2.0), dtype=np.float32),
            "one": np.array(1.0, dtype=np.float32),
            "half": np.array(0.5, dtype=np.float32),
            "w2": w(hidden, c),
            "b2": w(c),
            "gamma": w(c),
            "head": w(2, c, 1, 1),
        },
    )
    analysis = drop_half_and_check(model)
    mlp = group_of(analysis, "pw1")
    assert mlp.prunable and mlp.size == hidden
    stream = group_of(analysis, "stem")
    assert {s.node for s in stream.sources} == {"stem", "pw2"}
    assert f"LayerNormalization 'ln': {LN_REASON}" in stream.frozen
