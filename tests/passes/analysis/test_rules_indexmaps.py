"""Index-map rules: Slice, Gather, grouped and transposed convs, Pad/Resize/Tile/Expand, and
Reshape axis splits (channel shuffle, heads). Each tiny graph is pruned (half of every prunable
group, at random) and checked against the masked-original oracle; the groups, their sizes and
the reasons for freezing are asserted, and for graphs with MACs the cost model is checked against
the independent counter on the pruned model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.emit import to_model
from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup, analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.analysis.layout import Segment
from irprune.passes.rewrite.drop import drop
from tests.helpers import make_model
from tests.oracles import count_macs
from tests.passes.analysis.test_rules import drop_half_and_check

RNG = np.random.default_rng(1)
I64 = np.int64


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=I64)


def groups_of(analysis: ChannelAnalysis, source: str) -> list[ChannelGroup]:
    return [g for g in analysis.groups if any(s.node == source for s in g.sources)]


def group_of(analysis: ChannelAnalysis, source: str) -> ChannelGroup:
    (group,) = groups_of(analysis, source)
    return group


def reasons(model: onnx.ModelProto, source: str) -> str:
    analysis = analyze(import_model(model))
    return " | ".join(r for g in groups_of(analysis, source) for r in g.frozen)


def prune_first_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep the first half of every prunable group; check the cost model's MACs on the way."""
    graph = import_model(model)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    kept = {}
    for g in analysis.prunable:
        kept[g.id] = np.arange(g.size // 2)
        widths[g.id] = g.size // 2
    drop(graph, analysis, Plan(widths, kept, 0.0))
    pruned = to_model(graph)
    assert cost.evaluate().macs == pytest.approx(count_macs(model))
    assert cost.macs_at(widths) == pytest.approx(count_macs(pruned))
    return pruned


def attrs_of(model: onnx.ModelProto, name: str) -> dict:
    node = next(n for n in model.graph.node if n.name == name)
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def const_of(model: onnx.ModelProto, name: str, index: int) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == name)
    init = next(i for i in model.graph.initializer if i.name == node.input[index])
    return onnx.numpy_helper.to_array(init)


def conv_sandwich(
    middle: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    c: int,
    c_out: int,
    opset: int,
    hw: tuple[int, int] = (4, 4),
    out_hw: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """x -> conv c1 (c channels) -> a -> ``middle`` -> m -> conv c2 (2 channels) -> out."""
    out_hw = out_hw or hw
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            *middle,
            helper.make_node("Conv", ["m", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, *hw])],
        [("out", ["N", 2, *out_hw])],
        {"w1": w(c, 3, 1, 1), "w2": w(2, c_out, 1, 1), **inits},
        opset=opset,
    )


# --- Slice --------------------------------------------------------------------------------------


def _slice_model(opset: int, starts: int, ends: int, **extra: int) -> onnx.ModelProto:
    """conv(10) -> Slice on the channel axis -> conv."""
    if opset < 10:
        node = helper.make_node("Slice", ["a"], ["m"], "s", starts=[starts], ends=[ends], axes=[1])
        inits: dict[str, np.ndarray] = {}
    else:
        names = ["a", "st", "en", "ax"] + (["sp"] if "step" in extra else [])
        node = helper.make_node("Slice", names, ["m"], "s")
        inits = {"st": ints(starts), "en": ints(ends), "ax": ints(1)}
        if "step" in extra:
            inits["sp"] = ints(extra["step"])
    width = len(range(10)[slice(starts, ends, extra.get("step", 1))])
    return conv_sandwich([node], inits, 10, width, opset)


@pytest.mark.parametrize(
    ("opset", "starts", "ends", "pieces"),
    [
        (13, 2, 7, [2, 5, 3]),
        (11, -6, 2**63 - 1, [4, 6]),  # negative start, INT64_MAX end (x[:, -6:])
        (9, 0, -3, [7, 3]),  # attributes, negative end (x[:, :-3])
    ],
)
def test_slice_cuts_the_group(opset: int, starts: int, ends: int, pieces: list[int]) -> None:
    model = _slice_model(opset, starts, ends)
    analysis = drop_half_and_check(model)
    groups = groups_of(analysis, "c1")
    assert sorted(g.size for g in groups) == sorted(pieces)
    assert all(g.prunable for g in groups)
    pruned = prune_first_half(model)
    lo, hi = range(10)[slice(starts, ends)][0], range(10)[slice(starts, ends)][-1] + 1
    kept = np.concatenate([np.arange(p // 2) + off for p, off in _offsets(pieces)])
    new = (int(np.searchsorted(kept, lo)), int(np.searchsorted(kept, hi)))
    if opset < 10:
        got = attrs_of(pruned, "s")["starts"][0], attrs_of(pruned, "s")["ends"][0]
    else:
        got = int(const_of(pruned, "s", 1)[0]), int(const_of(pruned, "s", 2)[0])
    assert got == new


def _offsets(pieces: list[int]) -> list[tuple[int, int]]:
    return [(p, sum(pieces[:k])) for k, p in enumerate(pieces)]


def test_slice_step_one_input_and_spatial_slice_pass_through() -> None:
    model = _slice_model(13, 3, 8, step=1)
    assert all(g.prunable for g in groups_of(drop_half_and_check(model), "c1"))
    spatial = helper.make_node("Slice", ["a", "st", "en", "ax"], ["m"], "s")
    inits = {"st": ints(1, 0), "en": ints(3, 3), "ax": ints(2, 3)}
    model = conv_sandwich([spatial], inits, 8, 8, 13, out_hw=(2, 3))
    analysis = drop_half_and_check(model)
    assert group_of(analysis, "c1").prunable and group_of(analysis, "c1").size == 8


def test_slice_refusals() -> None:
    stepped = _slice_model(13, 0, 10, step=2)
    assert "step 2 on a channel axis" in reasons(stepped, "c1")
    dynamic = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Slice", ["a", "st", "en", "ax"], ["m"], "s"),
            helper.make_node("Conv", ["m", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4]), ("st", [1])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(8, 3, 1, 1), "w2": w(2, 4, 1, 1), "en": ints(4), "ax": ints(1)},
        opset=13,
    )
    dynamic.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.INT64
    assert "bounds on a channel axis are computed at run time" in reasons(dynamic, "c1")


# --- Gather -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("opset", "indices"), [(13, [2, 3, 4, 5]), (11, [-6, -5, -4])])
def test_gather_ascending_run_is_a_slice(opset: int, indices: list[int]) -> None:
    gather = helper.make_node("Gather", ["a", "idx"], ["m"], "gat", axis=1)
    model = conv_sandwich([gather], {"idx": ints(*indices)}, 9, len(indices), opset)
    analysis = drop_half_and_check(model)
    assert all(g.prunable for g in groups_of(analysis, "c1"))
    assert len(groups_of(analysis, "c1")) == 3
    new = const_of(prune_first_half(model), "gat", 1)
    assert new.dtype == np.int64 and np.all(np.diff(new) == 1)


def test_gather_refusals() -> None:
    for idx, why in [
        (ints(0, 2), "not one ascending run"),
        (ints(3, 2), "not one ascending run"),
        (np.array(1, dtype=I64), "a scalar index removes a channel axis"),
    ]:
        gather = helper.make_node("Gather", ["a", "idx"], ["m"], "gat", axis=1)
        model = make_model(
            [helper.make_node("Conv", ["x", "w1"], ["a"], "c1"), gather],
            [("x", ["N", 3, 4, 4])],
            [("m", None)],
            {"w1": w(8, 3, 1, 1), "idx": idx},
        )
        assert why in reasons(model, "c1")


def test_gather_on_another_axis_renumbers_channels() -> None:
    """conv [N, 8, 4, 5] -> Gather(axis 2, scalar) [N, 8, 5] -> Transpose -> MatMul over 8."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Gather", ["a", "idx"], ["g"], "gat", axis=2),
            helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["t", "fc"], ["out"], "fc"),
        ],
        [("x", ["N", 3, 4, 5])],
        [("out", ["N", 5, 6])],
        {"w1": w(8, 3, 1, 1), "idx": np.array(2, dtype=I64), "fc": w(8, 6)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.prunable and analysis.layout("g", 1) == (Segment(g.id, 8),)
    prune_first_half(model)


def _export(module: object, opset: int, dynamo: bool) -> onnx.ModelProto:
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(1, 3, 4, 4),), buf, opset_version=opset, dynamo=dynamo
        )
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = 10
    return model


def test_chunk_and_slice_from_torch_export() -> None:
    """torch.chunk and x[:, 2:6]: the torch.export exporter emits Split and a constant Slice;
    the TorchScript one computes chunk bounds from Shape at run time (refused, see the reason)."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 12, 1)
            self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.c3 = torch.nn.Conv2d(12, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.c1(x)
            p, q, _ = a.chunk(3, dim=1)
            return self.c3(torch.cat([p, self.c2(q), a[:, 2:6]], 1))

    model = _export(Net().eval(), 18, dynamo=True)
    assert {"Split", "Slice"} <= {n.op_type for n in model.graph.node}
    analysis = drop_half_and_check(model)
    first = model.graph.node[0].name
    pieces = groups_of(analysis, first)
    assert sorted(g.size for g in pieces) == [2, 2, 2, 2, 4]  # cut at 2, 4, 6, 8
    assert all(g.prunable for g in pieces)
    legacy = _export(Net().eval(), 13, dynamo=False)
    why = reasons(legacy, legacy.graph.node[0].name)
    assert "bounds on a channel axis are computed at run time" in why


# --- grouped convolution ------------------------------------------------------------------------


def _resnext(opset: int = 17) -> onnx.ModelProto:
    """stem(8) -> [1x1 (16) -> BN -> Relu -> 3x3 group 4 -> BN -> Relu -> 1x1 (8)] + stem."""

    def bn(prefix: str, c: int) -> dict[str, np.ndarray]:
        return {
            f"{prefix}s": w(c),
            f"{prefix}b": w(c),
            f"{prefix}m": w(c),
            f"{prefix}v": np.abs(w(c)) + 0.5,
        }

    def bn_node(x: str, y: str, p: str) -> onnx.NodeProto:
        return helper.make_node("BatchNormalization", [x, f"{p}s", f"{p}b", f"{p}m", f"{p}v"], [y])

    return make_model(
        [
            helper.make_node("Conv", ["x", "ws"], ["s0"], "stem"),
            helper.make_node("Relu", ["s0"], ["s"]),
            helper.make_node("Conv", ["s", "wa"], ["a0"], "reduce"),
            bn_node("a0", "a1", "n1"),
            helper.make_node("Relu", ["a1"], ["a"]),
            helper.make_node("Conv", ["a", "wg"], ["g0"], "grouped", group=4, pads=[1] * 4),
            bn_node("g0", "g1", "n2"),
            helper.make_node("Relu", ["g1"], ["g"]),
            helper.make_node("Conv", ["g", "wb", "bb"], ["b"], "expand"),
            helper.make_node("Add", ["b", "s"], ["r0"]),
            helper.make_node("Relu", ["r0"], ["r"]),
            helper.make_node("Conv", ["r", "wh"], ["out"], "head"),
        ],
        [("x", ["N", 3, 5, 5])],
        [("out", ["N", 2, 5, 5])],
        {
            "ws": w(8, 3, 1, 1),
            "wa": w(16, 8, 1, 1),
            **bn("n1", 16),
            "wg": w(16, 4, 3, 3),
            **bn("n2", 16),
            "wb": w(8, 16, 1, 1),
            "bb": w(8),
            "wh": w(2, 8, 1, 1),
        },
        opset=opset,
    )


@pytest.mark.parametrize("opset", [11, 17])
def test_resnext_block_keeps_whole_groups(opset: int) -> None:
    model = _resnext(opset)
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "grouped")
    assert {s.node for s in g.sources} == {"reduce", "grouped"}
    assert g.prunable and g.size == 4
    assert analysis.layout("a", 1) == (Segment(g.id, 4, inner=4),)
    assert analysis.layout("g", 1) == (Segment(g.id, 4, inner=4),)
    assert analysis.layout("wb", 1) == (Segment(g.id, 4, inner=4),)
    assert analysis.layout("wg", 1) is None
    residual = group_of(analysis, "stem")
    assert residual.prunable and {s.node for s in residual.sources} == {"stem", "expand"}
    pruned = prune_first_half(model)
    assert attrs_of(pruned, "grouped")["group"] == 2


def test_grouped_conv_changes_width_and_meets_another_grouping() -> None:
    """a (16) feeds a group-4 conv (16 -> 8, bias) and a group-2 conv: blocks become 8 wide."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Conv", ["a", "g4", "b4"], ["p"], "g4", group=4),
            helper.make_node("Conv", ["a", "g2"], ["q"], "g2", group=2),
            helper.make_node("Concat", ["p", "q"], ["pq"], axis=1),
            helper.make_node("Conv", ["pq", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": w(16, 3, 1, 1),
            "g4": w(8, 4, 1, 1),
            "b4": w(8),
            "g2": w(6, 8, 1, 1),
            "w2": w(2, 14, 1, 1),
        },
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.size == 2 and {s.node for s in g.sources} == {"c1", "g4", "g2"}
    assert analysis.layout("a", 1) == (Segment(g.id, 2, inner=8),)
    assert analysis.layout("p", 1) == (Segment(g.id, 2, inner=4),)
    assert analysis.layout("q", 1) == (Segment(g.id, 2, inner=3),)
    pruned = prune_first_half(model)
    assert attrs_of(pruned, "g4")["group"] == 2 and attrs_of(pruned, "g2")["group"] == 1


def test_depthwise_with_channel_multiplier_and_concat_input() -> None:
    """[conv a (4), x (3)] -> depthwise, multiplier 2 (group 7, 14 outputs) -> conv."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Concat", ["a", "x"], ["cat"], axis=1),
            helper.make_node("Conv", ["cat", "wd", "bd"], ["d"], "dw", group=7, pads=[1] * 4),
            helper.make_node("Conv", ["d", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(4, 3, 1, 1), "wd": w(14, 1, 3, 3), "bd": w(14), "w2": w(2, 14, 1, 1)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.prunable and g.size == 4
    assert analysis.layout("d", 1) == (Segment(g.id, 4, inner=2), Segment(None, 6))
    assert attrs_of(prune_first_half(model), "dw")["group"] == 5


def test_grouped_conv_refuses_groups_straddling_segments() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a1"], "c1"),
            helper.make_node("Conv", ["x", "w3"], ["a2"], "c3"),
            helper.make_node("Concat", ["a1", "a2"], ["a"], axis=1),
            helper.make_node("Conv", ["a", "wg"], ["g"], "g", group=2),
            helper.make_node("Conv", ["g", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": w(2, 3, 1, 1),
            "w3": w(6, 3, 1, 1),
            "wg": w(4, 4, 1, 1),
            "w2": w(2, 4, 1, 1),
        },
    )
    why = reasons(model, "c1")
    assert "grouped convolution (group=2): its groups of 4 input channels" in why
    drop_half_and_check(model)


# --- ConvTranspose ------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 17, 22])
def test_conv_transpose_consumes_and_sources(opset: int) -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("ConvTranspose", ["a", "wt", "bt"], ["u"], "up", strides=[2, 2]),
            helper.make_node("Relu", ["u"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 3, 3])],
        [("out", ["N", 2, 6, 6])],
        {"w1": w(6, 3, 1, 1), "wt": w(6, 5, 2, 2), "bt": w(5), "w2": w(2, 5, 1, 1)},
        opset=opset,
    )
    analysis = drop_half_and_check(model)
    g1, gt = group_of(analysis, "c1"), group_of(analysis, "up")
    assert g1.prunable and gt.prunable and (g1.size, gt.size) == (6, 5)
    assert analysis.layout("wt", 0) == (Segment(g1.id, 6),)
    assert analysis.layout("wt", 1) == analysis.layout("bt", 0) == (Segment(gt.id, 5),)
    prune_first_half(model)


@pytest.mark.parametrize(("group", "wt_shape"), [(6, (6, 1, 3, 3)), (2, (6, 2, 3, 3))])
def test_grouped_and_depthwise_conv_transpose(group: int, wt_shape: tuple[int, ...]) -> None:
    c_out = group * wt_shape[1]
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("ConvTranspose", ["a", "wt", "bt"], ["u"], "up", group=group),
            helper.make_node("Conv", ["u", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 3, 3])],
        [("out", ["N", 2, 5, 5])],
        {"w1": w(6, 3, 1, 1), "wt": w(*wt_shape), "bt": w(c_out), "w2": w(2, c_out, 1, 1)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    blocks = 6 // (6 // group)
    assert g.prunable and g.size == blocks
    assert analysis.layout("u", 1) == (Segment(g.id, blocks, inner=c_out // group),)
    assert attrs_of(prune_first_half(model), "up")["group"] == blocks // 2


# --- Pad, Resize, Upsample, Tile, Expand ----------------------------------------------------------


def _pad_case(opset: int, channel: int) -> onnx.ModelProto:
    pads = [0, channel, 1, 1, 0, 0, 1, 1]
    if opset < 11:
        node = helper.make_node("Pad", ["a"], ["m"], "p", pads=pads, mode="edge")
        inits: dict[str, np.ndarray] = {}
    elif opset < 18:
        node = helper.make_node("Pad", ["a", "pads", "v"], ["m"], "p")
        inits = {"pads": ints(*pads), "v": np.array(0.5, dtype=np.float32)}
    else:
        node = helper.make_node("Pad", ["a", "pads", "", "ax"], ["m"], "p", mode="reflect")
        inits = {"pads": ints(channel, 1, 1, 0, 1, 1), "ax": ints(1, 2, 3)}
    return conv_sandwich([node], inits, 8, 8 + channel, opset, out_hw=(6, 6))


@pytest.mark.parametrize("opset", [7, 13, 18])
def test_pad(opset: int) -> None:
    analysis = drop_half_and_check(_pad_case(opset, 0))
    assert group_of(analysis, "c1").prunable
    assert "pads a channel axis" in reasons(_pad_case(opset, 1), "c1")


def _resize_case(opset: int, op: str, channel_scale: float, use_sizes: bool) -> onnx.ModelProto:
    scales = np.array([1, channel_scale, 2, 2], dtype=np.float32)
    sizes = ints(1, int(8 * channel_scale), 8, 8)
    attrs = {} if op == "Upsample" or opset < 11 else {"mode": "linear"}
    if op == "Upsample" and opset < 9:
        node = helper.make_node(op, ["a"], ["m"], "rs", scales=[float(s) for s in scales])
        inits: dict[str, np.ndarray] = {}
    elif op == "Upsample" or opset < 11:
        node = helper.make_node(op, ["a", "sc"], ["m"], "rs")
        inits = {"sc": scales}
    elif use_sizes:
        node = helper.make_node(op, ["a", "", "", "sz"], ["m"], "rs", **attrs)
        inits = {"sz": sizes}
    elif opset >= 18:
        node = helper.make_node(op, ["a", "", "sc"], ["m"], "rs", axes=[1, 2, 3], **attrs)
        inits = {"sc": scales[1:]}
    else:
        node = helper.make_node(op, ["a", "roi", "sc"], ["m"], "rs", **attrs)
        inits = {"roi": np.zeros(0, dtype=np.float32), "sc": scales}
    c_out = int(8 * channel_scale)
    model = conv_sandwich([node], inits, 8, c_out, opset, out_hw=(8, 8))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    return model


@pytest.mark.parametrize(
    ("opset", "op", "use_sizes"),
    [
        (7, "Upsample", False),
        (9, "Upsample", False),
        (10, "Resize", False),
        (11, "Resize", False),
        (13, "Resize", True),
        (18, "Resize", False),
        (19, "Resize", True),
    ],
)
def test_resize(opset: int, op: str, use_sizes: bool) -> None:
    model = _resize_case(opset, op, 1.0, use_sizes)
    analysis = drop_half_and_check(model)
    assert group_of(analysis, "c1").prunable
    pruned = prune_first_half(model)
    if use_sizes:
        assert list(const_of(pruned, "rs", 3)) == [1, 4, 8, 8]
    refused = _resize_case(opset, op, 2.0, use_sizes)
    assert "resizes a channel axis" in reasons(refused, "c1")


def test_tile_and_expand() -> None:
    tile = helper.make_node("Tile", ["a", "rep"], ["m"], "t")
    model = conv_sandwich([tile], {"rep": ints(1, 1, 2, 1)}, 8, 8, 13, out_hw=(8, 4))
    assert group_of(drop_half_and_check(model), "c1").prunable
    model = conv_sandwich([tile], {"rep": ints(1, 2, 1, 1)}, 8, 16, 13)
    assert "tiles a channel axis" in reasons(model, "c1")

    for target in (ints(1, 8, 4, 4), ints(4, 4), ints(1, 1, 1, 4, 4)):
        rank = 4 + (len(target) == 5)
        nodes = [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("ReduceMean", ["a"], ["pooled"], axes=[2, 3]),
            helper.make_node("Expand", ["pooled", "shape"], ["e"], "ex"),
            helper.make_node("Reshape", ["e", "flat"], ["m"]) if rank == 5 else None,
            helper.make_node("Conv", ["m" if rank == 5 else "e", "w2"], ["out"], "c2"),
        ]
        model = make_model(
            [n for n in nodes if n is not None],
            [("x", [1, 3, 4, 4])],
            [("out", [1, 2, 4, 4])],
            {"w1": w(8, 3, 1, 1), "w2": w(2, 8, 1, 1), "shape": target, "flat": ints(1, 8, 4, 4)},
            opset=13,
        )
        analysis = drop_half_and_check(model)
        assert group_of(analysis, "c1").prunable, target
    broadcast = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Expand", ["a", "shape"], ["m"], "ex"),
        ],
        [("x", [1, 3, 4, 4])],
        [("m", None)],
        {"w1": w(1, 3, 1, 1), "shape": ints(1, 8, 4, 4)},
    )
    assert "broadcasts a channel axis" in reasons(broadcast, "c1")


# --- Reshape axis splits: channel shuffle, heads --------------------------------------------------


def _shuffle(inp: str, out: str, g: int, n: int, hw: int = 4) -> tuple[list, dict]:
    nodes = [
        helper.make_node("Reshape", [inp, f"{out}_s1"], [f"{out}_r"]),
        helper.make_node("Transpose", [f"{out}_r"], [f"{out}_t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", [f"{out}_t", f"{out}_s2"], [out]),
    ]
    inits = {f"{out}_s1": ints(0, g, n, hw, hw), f"{out}_s2": ints(0, g * n, hw, hw)}
    return nodes, inits


@pytest.mark.parametrize("opset", [13, 17])
def test_shufflenet_v2_shuffle_joins_the_concatenated_halves(opset: int) -> None:
    """[conv a (4), conv b (4)] -> shuffle (2 x 4) -> conv: channel k of a and of b interleave,
    so a and b keep the same subset (one group) and the shuffled axis is a, b, a, b, ..."""
    shuffle, inits = _shuffle("cat", "m", 2, 4)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], "ca"),
            helper.make_node("Conv", ["x", "wb"], ["b"], "cb"),
            helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
            *shuffle,
            helper.make_node("Conv", ["m", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"wa": w(4, 3, 1, 1), "wb": w(4, 3, 1, 1), "w2": w(2, 8, 1, 1), **inits},
        opset=opset,
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "ca")
    assert g.prunable and g.size == 4 and {s.node for s in g.sources} == {"ca", "cb"}
    assert analysis.layout("m_r", 2) == (Segment(g.id, 4),)
    assert analysis.layout("m_r", 1) is None
    assert analysis.layout("m", 1) == (Segment(g.id, 4, inner=2),)
    prune_first_half(model)


def test_shufflenet_v2_units_coarsen_the_fresh_half_to_match() -> None:
    """Two ShuffleNet v2 units: a stride-2-style unit (two branches) then a unit that splits its
    input in halves, keeps the first and sends the second through convs. The kept half has
    blocks of 2 after the first shuffle, so the new branch's channels are paired to match."""
    shuffle1, inits1 = _shuffle("cat1", "y1", 2, 4)
    shuffle2, inits2 = _shuffle("cat2", "y2", 2, 4)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "ws"], ["s"], "stem"),
            helper.make_node("Conv", ["s", "wb1"], ["b1"], "b1"),
            helper.make_node("Conv", ["s", "wb2"], ["b2"], "b2"),
            helper.make_node("Concat", ["b1", "b2"], ["cat1"], axis=1),
            *shuffle1,
            helper.make_node("Split", ["y1", "halves"], ["x1", "x2"], axis=1),
            helper.make_node("Conv", ["x2", "wa"], ["a0"], "a"),
            helper.make_node("Relu", ["a0"], ["a"]),
            helper.make_node("Conv", ["a", "wc"], ["c"], "c"),
            helper.make_node("Concat", ["x1", "c"], ["cat2"], axis=1),
            *shuffle2,
            helper.make_node("Conv", ["y2", "wh"], ["out"], "head"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "ws": w(8, 3, 1, 1),
            "wb1": w(4, 8, 1, 1),
            "wb2": w(4, 8, 1, 1),
            "halves": ints(4, 4),
            "wa": w(4, 4, 1, 1),
            "wc": w(4, 4, 1, 1),
            "wh": w(2, 8, 1, 1),
            **inits1,
            **inits2,
        },
    )
    analysis = drop_half_and_check(model)
    assert all(g.prunable for g in analysis.groups if not any(s.node == "head" for s in g.sources))
    kept_half = group_of(analysis, "c")
    (sent_half,) = [g for g in groups_of(analysis, "b1") if g.id != kept_half.id]
    assert {s.node for s in kept_half.sources} == {"b1", "b2", "c"} and kept_half.size == 2
    assert {s.node for s in sent_half.sources} == {"b1", "b2"} and sent_half.size == 2
    assert analysis.layout("c", 1) == (Segment(kept_half.id, 2, inner=2),)
    assert analysis.layout("y2", 1) == (Segment(kept_half.id, 2, inner=4),)
    assert group_of(analysis, "a").size == 4
    prune_first_half(model)


def test_shuffle_of_plain_channels_keeps_whole_sub_blocks() -> None:
    """conv (12) -> shuffle (3 x 4) -> conv: the conv's channels become 3 blocks of 4."""
    shuffle, inits = _shuffle("a", "m", 3, 4)
    model = conv_sandwich(shuffle, inits, 12, 12, 17)
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.prunable and g.size == 3
    assert analysis.layout("a", 1) == (Segment(g.id, 3, inner=4),)
    assert analysis.layout("m_r", 1) == (Segment(g.id, 3),)
    assert analysis.layout("m", 1) == (Segment(g.id, 3, outer=4),)


def test_shufflenet_v1_unit_grouped_conv_then_shuffle() -> None:
    """conv (8) -> group-2 conv (8) -> shuffle (2 x 4) -> depthwise -> conv: the grouped conv's
    output blocks are exactly the shuffle's sub-blocks (no refinement needed)."""
    shuffle, inits = _shuffle("g", "s", 2, 4)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Conv", ["a", "wg"], ["g"], "gc", group=2),
            *shuffle,
            helper.make_node("Conv", ["s", "wd"], ["d"], "dw", group=8, pads=[1] * 4),
            helper.make_node("Conv", ["d", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": w(8, 3, 1, 1),
            "wg": w(8, 4, 1, 1),
            "wd": w(8, 1, 3, 3),
            "w2": w(2, 8, 1, 1),
            **inits,
        },
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "gc")
    assert g.prunable and g.size == 2 and analysis.layout("d", 1) == (Segment(g.id, 2, outer=4),)
    prune_first_half(model)


def test_shufflenet_v1_shuffle_into_grouped_conv_freezes_with_reason() -> None:
    """After a shuffle, each group of the next grouped conv holds one channel of every block:
    whole groups no longer fall on whole blocks."""
    shuffle, inits = _shuffle("g", "s", 2, 4)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Conv", ["a", "wg"], ["g"], "gc", group=2),
            *shuffle,
            helper.make_node("Conv", ["s", "wg2"], ["out"], "gc2", group=2),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 4, 4, 4])],
        {"w1": w(8, 3, 1, 1), "wg": w(8, 4, 1, 1), "wg2": w(4, 4, 1, 1), **inits},
    )
    assert "grouped convolution (group=2): its groups of 4" in reasons(model, "gc")


def test_heads_split_keeps_whole_heads() -> None:
    """MatMul (8 = 2 heads x 4) -> Reshape [N, S, 2, 4] -> Reshape back -> MatMul: a plain group
    is coarsened into heads; a group already in blocks of 4 splits as it is."""
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "wq"], ["q"], "q"),
            helper.make_node("Reshape", ["q", "heads"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Reshape", ["hr", "flat"], ["f"]),
            helper.make_node("MatMul", ["f", "wo"], ["out"], "o"),
        ],
        [("x", ["N", 5, 6])],
        [("out", ["N", 5, 6])],
        {"wq": w(6, 8), "heads": ints(0, 0, 2, 4), "flat": ints(0, 0, 8), "wo": w(8, 6)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "q")
    assert g.prunable and g.size == 2
    assert analysis.layout("q", 2) == (Segment(g.id, 2, inner=4),)
    assert analysis.layout("h", 2) == (Segment(g.id, 2),) and analysis.layout("h", 3) is None
    prune_first_half(model)


def test_split_that_fits_no_axis_freezes() -> None:
    shuffle, inits = _shuffle("a", "m", 4, 3)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a1"], "c1"),
            helper.make_node("Conv", ["x", "w3"], ["a2"], "c3"),
            helper.make_node("Concat", ["a1", "a2"], ["a"], axis=1),
            *shuffle,
            helper.make_node("Conv", ["m", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(5, 3, 1, 1), "w3": w(7, 3, 1, 1), "w2": w(2, 12, 1, 1), **inits},
    )
    assert "splits a channel axis into (4, 3)" in reasons(model, "c1")
