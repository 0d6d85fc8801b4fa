"""Op rules on tiny graphs: which spaces join, which freeze and why, and that dropping is exact.

Every model here is also pruned (half of each prunable group, chosen at random) and checked
against the masked-original oracle (``tests/reference_mask.py``, which places its masks by the ONNX
ops' semantics, not by the layouts under test), so a rule that maps indices wrongly fails
numerically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from irprune.emit import to_model, verify
from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import ChannelAnalysis, analyze
from irprune.passes.analysis.layout import Segment
from irprune.passes.rewrite.drop import drop
from tests.helpers import feeds_for, make_model, rel_diff, run
from tests.reference_mask import masked_reference

RNG = np.random.default_rng(0)


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def group_of(analysis: ChannelAnalysis, source: str):
    return next(g for g in analysis.groups if any(s.node == source for s in g.sources))


def drop_half_and_check(
    model: onnx.ModelProto, seed: int = 0, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> ChannelAnalysis:
    graph = import_model(model, input_shapes)
    analysis = analyze(graph)
    rng = np.random.default_rng(seed)
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    kept = {}
    for g in analysis.prunable:
        if g.size > 1:
            kept[g.id] = np.sort(rng.choice(g.size, g.size // 2, replace=False))
            widths[g.id] = g.size // 2
    plan = Plan(widths, kept, 0.0)
    drop(graph, analysis, plan)
    graph.verify()
    pruned = to_model(graph)
    feeds = feeds_for(model, batch=2, seed=seed)
    verify(pruned, feeds)
    expected = run(masked_reference(model, analysis, plan), feeds)
    got = run(pruned, feeds)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert rel_diff(e, g) <= 1e-5
    return analysis


def test_residual_add_joins_groups() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Conv", ["x", "w2"], ["b"], "c2"),
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Relu", ["s"], ["r"]),
            helper.make_node("Conv", ["r", "w3"], ["out"], "c3"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(8, 3, 1, 1), "w2": w(8, 3, 1, 1), "w3": w(2, 8, 1, 1)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert {s.node for s in g.sources} == {"c1", "c2"} and g.prunable


def test_add_with_graph_input_freezes() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Add", ["a", "skip"], ["s"]),
            helper.make_node("Conv", ["s", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4]), ("skip", ["N", 8, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(8, 3, 1, 1), "w2": w(2, 8, 1, 1)},
    )
    g = group_of(analyze(import_model(model)), "c1")
    assert not g.prunable and "graph input" in g.frozen[0]


def test_concat_offsets_and_depthwise() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], "ca"),
            helper.make_node("Conv", ["x", "wb", "bb"], ["b"], "cb"),
            helper.make_node("Concat", ["a", "x", "b"], ["cat"], axis=1),
            helper.make_node("Conv", ["cat", "wd", "bd"], ["d"], "dw", group=13, pads=[1] * 4),
            helper.make_node("BatchNormalization", ["d", "s", "bi", "m", "v"], ["n"]),
            helper.make_node("Conv", ["n", "wc"], ["out"], "cc"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "wa": w(4, 3, 1, 1),
            "wb": w(6, 3, 1, 1),
            "bb": w(6),
            "wd": w(13, 1, 3, 3),
            "bd": w(13),
            "s": w(13),
            "bi": w(13),
            "m": w(13),
            "v": np.abs(w(13)) + 0.5,
            "wc": w(2, 13, 1, 1),
        },
    )
    analysis = drop_half_and_check(model)
    ga, gb = group_of(analysis, "ca"), group_of(analysis, "cb")
    assert analysis.layout("cat", 1) == (Segment(ga.id, 4), Segment(None, 3), Segment(gb.id, 6))
    assert analysis.layout("wc", 1) == analysis.layout("cat", 1)
    pruned = to_model(_pruned(model))
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert {a.name: a.i for a in dw.attribute}["group"] == 2 + 3 + 3  # halves of a, all of x, b


def _pruned(model: onnx.ModelProto):
    graph = import_model(model)
    analysis = analyze(graph)
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    kept = {}
    for g in analysis.prunable:
        kept[g.id] = np.arange(g.size // 2)
        widths[g.id] = g.size // 2
    drop(graph, analysis, Plan(widths, kept, 0.0))
    return graph


def test_grouped_conv_freezes_with_reason() -> None:
    # the conv groups (4 + 4 channels) do not fall on whole blocks of c1's 3 and c2's 5 channels
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a1"], "c1"),
            helper.make_node("Conv", ["x", "w3"], ["a2"], "c2"),
            helper.make_node("Concat", ["a1", "a2"], ["a"], axis=1),
            helper.make_node("Conv", ["a", "w2"], ["out"], "g", group=2),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 4, 4, 4])],
        {"w1": w(3, 3, 1, 1), "w3": w(5, 3, 1, 1), "w2": w(4, 4, 1, 1)},
    )
    g = group_of(analyze(import_model(model)), "c1")
    assert not g.prunable and "grouped convolution (group=2)" in g.frozen[0]


def test_unknown_and_shape_consumers_freeze() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Shape", ["a"], ["sh"]),
            helper.make_node("Reshape", ["a", "sh"], ["r"]),
            helper.make_node("Hardmax", ["r"], ["out"], domain="test.unknown"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 8, 4, 4])],
        {"w1": w(8, 3, 1, 1)},
    )
    model.opset_import.append(helper.make_opsetid("test.unknown", 1))
    g = group_of(analyze(import_model(model)), "c1")
    assert not g.prunable  # the Shape only reads sizes for a Reshape target: not a reason
    assert g.frozen == ("Hardmax 'Hardmax_3': no channel rule for test.unknown::Hardmax",)


def test_per_channel_constants_are_sliced() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Mul", ["a", "scale"], ["b"]),
            helper.make_node("Add", ["b", "shift"], ["c"]),
            helper.make_node("PRelu", ["c", "slope"], ["d"]),
            helper.make_node("Conv", ["d", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": w(8, 3, 1, 1),
            "scale": w(8, 1, 1),
            "shift": w(1, 8, 1, 1),
            "slope": w(8, 1, 1),
            "w2": w(2, 8, 1, 1),
        },
    )
    analysis = drop_half_and_check(model)
    assert group_of(analysis, "c1").prunable


def test_channels_last_flatten_uses_outer_repeat() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["t", "shape"], ["f"]),
            helper.make_node("MatMul", ["f", "fc"], ["out"], "fc"),
        ],
        [("x", ["N", 3, 2, 2])],
        [("out", ["N", 5])],
        {"w1": w(4, 3, 1, 1), "shape": np.array([-1, 16], dtype=np.int64), "fc": w(16, 5)},
    )
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert analysis.layout("f", 1) == (Segment(g.id, 4, inner=1, outer=4),)


def test_reshape_splitting_channels_freezes() -> None:
    # 8 = 3 + 5 channels split into (2, 4): neither axis can carry the two groups whole
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a1"], "c1"),
            helper.make_node("Conv", ["x", "w2"], ["a2"], "c2"),
            helper.make_node("Concat", ["a1", "a2"], ["a"], axis=1),
            helper.make_node("Reshape", ["a", "shape"], ["out"]),
        ],
        [("x", [1, 3, 2, 2])],
        [("out", [1, 2, 4, 4])],
        {
            "w1": w(3, 3, 1, 1),
            "w2": w(5, 3, 1, 1),
            "shape": np.array([1, 2, 4, 4], dtype=np.int64),
        },
    )
    g = group_of(analyze(import_model(model)), "c1")
    assert any("splits a channel axis" in r for r in g.frozen)


def test_reductions_and_softmax() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("Gemm", ["m", "fc", "fb"], ["g"], "fc", transB=1),
            helper.make_node("Softmax", ["g"], ["out"], axis=1),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 6])],
        {"w1": w(8, 3, 1, 1), "fc": w(6, 8), "fb": w(6)},
        opset=13,
    )
    analysis = drop_half_and_check(model)
    assert group_of(analysis, "c1").prunable
    assert not group_of(analysis, "fc").prunable


def test_reduce_over_channels_freezes() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("ReduceMean", ["a", "axes"], ["out"], keepdims=1),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 1, 4, 4])],
        {"w1": w(8, 3, 1, 1), "axes": np.array([1], dtype=np.int64)},
        opset=18,
    )
    g = group_of(analyze(import_model(model)), "c1")
    assert any("reduces over the channel axis" in r for r in g.frozen)


def test_matmul_mlp_with_unsqueeze_squeeze() -> None:
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], "up"),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),
            helper.make_node("Squeeze", ["u", "ax"], ["s"]),
            helper.make_node("MatMul", ["s", "w2"], ["out"], "down"),
        ],
        [("x", ["N", 5, 8])],
        [("out", ["N", 5, 8])],
        {"w1": w(8, 32), "b1": w(32), "ax": np.array([1], dtype=np.int64), "w2": w(32, 8)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "up")
    assert g.prunable and g.size == 32


def _split_model(opset: int, split_kind: str) -> onnx.ModelProto:
    """conv(10) -> Split [4, 6] -> conv each; the cut at 4 splits the conv's group in two."""
    if split_kind == "input":
        split = helper.make_node("Split", ["a", "sizes"], ["p", "q"], axis=1)
        inits = {"sizes": np.array([4, 6], dtype=np.int64)}
    elif split_kind == "attr":
        split = helper.make_node("Split", ["a"], ["p", "q"], axis=1, split=[4, 6])
        inits = {}
    else:
        split = helper.make_node("Split", ["a"], ["p", "q"], axis=1, num_outputs=2)
        inits = {}
    sizes = [4, 6] if split_kind != "even" else [5, 5]
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            split,
            helper.make_node("Conv", ["p", "wp"], ["op"], "cp"),
            helper.make_node("Conv", ["q", "wq"], ["oq"], "cq"),
            helper.make_node("Add", ["op", "oq"], ["out"]),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {
            "w1": w(10, 3, 1, 1),
            "wp": w(2, sizes[0], 1, 1),
            "wq": w(2, sizes[1], 1, 1),
            **inits,
        },
        opset=opset,
    )


def test_split_cuts_the_group_and_rewrites_sizes() -> None:
    for opset, kind in [(13, "input"), (11, "attr"), (18, "even"), (18, "input")]:
        model = _split_model(opset, kind)
        analysis = drop_half_and_check(model)
        groups = [g for g in analysis.groups if any(s.node == "c1" for s in g.sources)]
        assert len(groups) == 2 and all(g.prunable for g in groups), (opset, kind)
        expected = [4, 6] if kind != "even" else [5, 5]
        assert sorted(g.size for g in groups) == sorted(expected)


def test_add_of_a_conv_and_a_concat_cuts_the_conv_group() -> None:
    """conv c (8) + concat(conv a (4), conv b (4)): c is cut into two groups joined with a, b."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], "ca"),
            helper.make_node("Conv", ["x", "wb"], ["b"], "cb"),
            helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
            helper.make_node("Conv", ["x", "wc"], ["c"], "cc"),
            helper.make_node("Add", ["c", "ab"], ["s"]),
            helper.make_node("Relu", ["s"], ["r"]),
            helper.make_node("Conv", ["r", "wo"], ["out"], "co"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"wa": w(4, 3, 1, 1), "wb": w(4, 3, 1, 1), "wc": w(8, 3, 1, 1), "wo": w(2, 8, 1, 1)},
    )
    analysis = drop_half_and_check(model)
    ga, gb = group_of(analysis, "ca"), group_of(analysis, "cb")
    assert ga.id != gb.id and ga.prunable and gb.prunable
    assert {s.node for s in ga.sources} == {"ca", "cc"}
    assert {s.node for s in gb.sources} == {"cb", "cc"}
    assert ga.size == gb.size == 4
