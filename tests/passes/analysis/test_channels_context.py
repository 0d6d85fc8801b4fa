"""The primitives rules use (irprune/passes/analysis/channels.py ``Context``), on one value's
channel axis: lining two layouts up by cutting and coarsening groups, joining, refining, cutting,
and what freezes when they cannot line up. Gaps mutation testing found (docs/mutation.md)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from irprune.ir import Graph, Node, Value
from irprune.passes.analysis.channels import ChannelAnalysis, Context
from irprune.passes.analysis.layout import Segment as S

MISMATCH = "index maps meeting at 'v' do not line up"


def _ctx(rank: int = 2) -> tuple[Context, Value]:
    g = Graph()
    v = g.add_value(Value("v", 1, ("N", 8, 1, 1)[:rank]))
    return Context(g), v


def _groups(res: ChannelAnalysis) -> list[tuple[int, tuple[str, ...]]]:
    return [(g.size, g.frozen) for g in res.groups]


def test_a_group_is_cut_where_the_other_side_has_a_boundary() -> None:
    for swap in (False, True):
        ctx, v = _ctx()
        whole, left, right = ctx._new_root(8), ctx._new_root(4), ctx._new_root(4)
        first, second = (S(whole, 8),), (S(left, 4), S(right, 4))
        if swap:
            first, second = second, first
        ctx.set_layout(v, 1, first)
        ctx.set_layout(v, 1, second)
        res = ctx.result()
        assert _groups(res) == [(4, ()), (4, ())], swap
        assert res.layout("v", 1) == (S(0, 4), S(1, 4))
        assert res.layout("v", -1) is None  # result layouts are keyed by the stored axis


def test_a_finer_group_is_coarsened_to_the_other_sides_blocks() -> None:
    for swap in (False, True):
        ctx, v = _ctx()
        fine, coarse = ctx._new_root(8), ctx._new_root(2)
        first, second = (S(fine, 8),), (S(coarse, 2, inner=4),)
        if swap:
            first, second = second, first
        ctx.set_layout(v, 1, first)
        ctx.set_layout(v, -1, second)  # the same axis, counted from the end
        res = ctx.result()
        assert _groups(res) == [(2, ())], swap
        assert res.layout("v", 1) == (S(0, 2, inner=4),)


def test_blocks_that_do_not_divide_freeze() -> None:
    g = Graph()
    v = g.add_value(Value("v", 1, ("N", 12)))
    ctx = Context(g)
    a, b = ctx._new_root(2), ctx._new_root(3)
    ctx.set_layout(v, 1, (S(a, 2, inner=6),))
    ctx.set_layout(v, 1, (S(b, 3, inner=4),))  # blocks of 6 against blocks of 4
    assert _groups(ctx.result()) == [(2, (MISMATCH,)), (3, (MISMATCH,))]


def test_layouts_that_cannot_line_up_freeze_every_group_in_them() -> None:
    ctx, v = _ctx()
    a, b = ctx._new_root(6), ctx._new_root(4)
    ctx.set_layout(v, 1, (S(a, 6),))
    ctx.set_layout(v, 1, (S(b, 4), S(None, 2)))  # a's last 2 channels meet fixed ones
    res = ctx.result()
    assert _groups(res) == [(4, (MISMATCH,)), (4, (MISMATCH,)), (2, (MISMATCH,))]
    assert res.layout("v", 1) == (S(1, 4), S(2, 2))


def test_fixed_channels_are_split_and_coupled_with_fixed_ones_only() -> None:
    ctx, v = _ctx()
    ctx.set_layout(v, 1, (S(None, 8),))
    ctx.set_layout(v, 1, (S(None, 3), S(None, 5)))  # fixed against fixed: nothing to do
    assert ctx.result().groups == ()
    ctx, v = _ctx()
    left, right = ctx._new_root(4), ctx._new_root(4)
    ctx.set_layout(v, 1, (S(None, 8),))
    ctx.set_layout(v, 1, (S(left, 4), S(right, 4)))
    assert _groups(ctx.result()) == [(4, (MISMATCH,)), (4, (MISMATCH,))]


def test_a_repeated_segment_cannot_be_cut() -> None:
    ctx, v = _ctx()
    rep, left, right = ctx._new_root(4), ctx._new_root(4), ctx._new_root(4)
    ctx.set_layout(v, 1, (S(rep, 4, outer=2),))
    ctx.set_layout(v, 1, (S(left, 4), S(right, 4)))
    assert all(MISMATCH in g.frozen for g in ctx.result().groups)


def test_join_couples_equal_sizes_and_freezes_different_ones() -> None:
    ctx, _ = _ctx()
    r = [ctx._new_root(n) for n in (4, 4, 4, 6, 2)]
    ctx.join(r[1], r[2], "J")
    ctx.join(r[0], r[1], "J")  # the lower root's class is the smaller one
    assert ctx.find(r[2]) == ctx.find(r[0]) == r[0]
    assert sorted(ctx.members[r[0]]) == [0, 1, 2]
    ctx.join(r[3], r[4], "K")
    assert _groups(ctx.result()) == [(4, ()), (6, ("K: sizes differ",)), (2, ("K: sizes differ",))]


def test_coarsen() -> None:
    ctx, v = _ctx()
    root = ctx._new_root(8)
    assert ctx.coarsen(root, 1) and ctx.coarsen(root, 0)
    assert not ctx.retired  # nothing refined
    assert not ctx.coarsen(root, 3)
    other = ctx._new_root(6)  # no layout holds it
    assert ctx.coarsen(other, 2)
    ctx.set_layout(v, 1, (S(root, 8),))
    assert ctx.coarsen(root, 4)
    res = ctx.result()
    assert _groups(res) == [(3, ()), (2, ())]  # ``other``'s piece was made first
    assert res.layout("v", 1) == (S(1, 2, inner=4),)


def test_refine_refuses_what_it_cannot_express_and_changes_nothing() -> None:
    ctx, v = _ctx()
    root = ctx._new_root(4)
    ctx.set_layout(v, 1, (S(root, 4, outer=2),))
    assert not ctx.refine(root, (S(0, 1), S(1, 3)))
    assert ctx.get(v, 1) == (S(root, 4, outer=2),) and not ctx.retired
    assert ctx.refine(root, (S(0, 2, inner=2),))  # one piece: expressible


def test_pieces_of_a_frozen_group_stay_frozen() -> None:
    ctx, v = _ctx()
    root = ctx._new_root(8)
    ctx.set_layout(v, 1, (S(root, 8),))
    ctx.freeze((S(root, 8),), "why")
    assert ctx.refine(root, (S(0, 3), S(1, 5)))
    ctx.freeze((S(root, 8),), "later")  # reaches the pieces of a refined root
    res = ctx.result()
    assert _groups(res) == [(3, ("why", "later")), (5, ("why", "later"))]


def test_cut_splits_fixed_and_grouped_segments_at_the_offsets() -> None:
    ctx, v = _ctx()
    root = ctx._new_root(8)
    ctx.set_layout(v, 1, (S(None, 3), S(root, 8)))
    got = ctx.cut(v, 1, [1, 5, 3, 11])  # inside the fixed part, inside the group, on boundaries
    assert got is not None
    assert [(s.root is None, s.size) for s in got] == [(True, 1), (True, 2), (False, 2), (False, 6)]
    assert ctx.get(v, 1) == got
    blocks, w = _ctx()
    root = blocks._new_root(4)
    blocks.set_layout(w, 1, (S(root, 4, inner=2),))
    assert blocks.cut(w, 1, [3]) is None  # inside a block
    assert blocks.cut(w, 1, [4]) is not None
    repeated, u = _ctx()
    root = repeated._new_root(2)
    repeated.set_layout(u, 1, (S(root, 2, outer=4),))
    assert repeated.cut(u, 1, [1]) is None  # inside a repeated segment
    empty, x = _ctx()
    assert empty.cut(x, 1, [2]) is None  # no layout


def test_axes_and_get() -> None:
    ctx, v = _ctx(rank=4)
    root = ctx._new_root(8)
    ctx.set_layout(v, 1, (S(root, 8),))
    assert ctx.axes(v) == {1: (S(root, 8),)} and ctx.axes(None) == {}
    assert ctx.get(v, -3) == (S(root, 8),) and ctx.get(None, 1) is None
    assert ctx.get(Value("shapeless"), 0) is None


def _line_up(first: tuple[S, ...], second: tuple[S, ...], span: int = 8) -> ChannelAnalysis:
    """``first`` and then ``second`` on one value's channel axis; roots are ``_new_root``s."""
    g = Graph()
    v = g.add_value(Value("v", 1, ("N", span)))
    ctx = Context(g)
    sizes: dict[int, int] = {}
    for s in (*first, *second):
        if s.root is not None:
            sizes[s.root] = s.size
    for r in range(max(sizes, default=-1) + 1):
        ctx._new_root(sizes.get(r, 1))
    ctx.set_layout(v, 1, first)
    ctx.set_layout(v, 1, second)
    res = ctx.result()
    assert all(type(g.size) is int for g in res.groups)
    assert all(type(s.size) is int for s in res.layout("v", 1) or ())
    return res


def test_a_common_prefix_is_skipped_then_the_rest_is_cut() -> None:
    res = _line_up((S(0, 4), S(1, 4)), (S(2, 4), S(3, 2), S(4, 2)))
    assert _groups(res) == [(4, ()), (2, ()), (2, ())]
    assert res.layout("v", 1) == (S(0, 4), S(1, 2), S(2, 2))


def test_one_segment_against_many() -> None:
    res = _line_up((S(0, 8),), (S(1, 2), S(2, 2), S(3, 2), S(4, 2)))
    assert _groups(res) == [(2, ())] * 4


@pytest.mark.parametrize("long_first", [True, False])
def test_fixed_channels_after_a_group_are_split_on_either_side(long_first: bool) -> None:
    long = (S(0, 4), S(None, 4), S(1, 2))
    short = (S(2, 4), S(None, 1), S(None, 3), S(3, 2))
    res = _line_up(*((long, short) if long_first else (short, long)), span=10)
    assert _groups(res) == [(4, ()), (2, ())]
    stored = long if long_first else short  # the first layout stays as stored
    assert res.layout("v", 1) == (S(0, 4), *stored[1:-1], S(1, 2))


def test_coarsening_by_two() -> None:
    res = _line_up((S(0, 8),), (S(1, 4, inner=2),))
    assert _groups(res) == [(4, ())] and res.layout("v", 1) == (S(0, 4, inner=2),)


def test_blocks_that_are_not_multiples_freeze_unrefined() -> None:
    res = _line_up((S(0, 4, inner=10),), (S(1, 10, inner=4),), span=40)
    assert _groups(res) == [(4, (MISMATCH,)), (10, (MISMATCH,))]


def test_a_group_meeting_fixed_blocks_or_a_repeat_is_not_coarsened() -> None:
    res = _line_up((S(0, 8),), (S(None, 2, inner=4),))
    assert _groups(res) == [(8, (MISMATCH,))]
    res = _line_up((S(0, 4, outer=2),), (S(1, 2, inner=4),))
    assert _groups(res) == [(4, (MISMATCH,)), (2, (MISMATCH,))]


def test_a_cut_inside_a_block_freezes_without_refining() -> None:
    res = _line_up((S(0, 4, inner=2),), (S(1, 3), S(2, 5)))
    assert _groups(res) == [(4, (MISMATCH,)), (3, (MISMATCH,)), (5, (MISMATCH,))]


def test_a_layout_stale_after_refinement() -> None:
    g = Graph()
    v, u = g.add_value(Value("v", 1, ("N", 16))), g.add_value(Value("u", 1, ("N", 16)))
    ctx = Context(g)
    root, other = ctx._new_root(8), ctx._new_root(16)
    ctx.set_layout(v, 1, (S(other, 16),))
    assert ctx.refine(root, (S(0, 4), S(1, 4)))
    stale = (S(root, 8, outer=2),)  # a repeated segment of a root now in two pieces
    ctx.set_layout(u, 1, stale)
    ctx.set_layout(v, 1, stale)
    res = ctx.result()
    frozen = {g.size: g.frozen for g in res.groups}
    assert frozen[4] == ("layout of 'u' cannot be expressed after refinement", MISMATCH)
    assert frozen[16] == (MISMATCH,)
    assert res.layout("u", 1) is None


def test_unknown_shapes_freeze() -> None:
    g = Graph()
    shapeless = g.add_value(Value("u", 1))
    ctx = Context(g)
    a, b, c = ctx._new_root(4), ctx._new_root(4), ctx._new_root(4)
    ctx.set_layout(shapeless, 1, (S(a, 4),))
    node = Node("Relu", name="r", inputs=(shapeless, None))
    ctx.tie(node, 0, 1, (S(b, 4),))
    ctx.tie(node, 1, 1, (S(c, 4),))
    assert _groups(ctx.result()) == [
        (4, ("shape of 'u' is unknown",)),
        (4, ("r: input 0 has no known shape",)),
        (4, ("r: input 1 has no known shape",)),
    ]


def test_a_rank_one_axis_from_the_end() -> None:
    g = Graph()
    v = g.add_value(Value("v", 1, (8,)))
    ctx = Context(g)
    root = ctx._new_root(8)
    ctx.set_layout(v, -1, (S(None, 2), S(root, 6)))
    assert ctx.get(v, 0) == (S(None, 2), S(root, 6))
    assert ctx.cut(v, -1, [1]) == (S(None, 1), S(None, 1), S(root, 6))


def test_cut_splits_only_the_fixed_segment_at_the_offset() -> None:
    g = Graph()
    v = g.add_value(Value("v", 1, ("N", 9)))
    ctx = Context(g)
    root = ctx._new_root(3)
    ctx.set_layout(v, 1, (S(None, 3), S(root, 3), S(None, 3)))
    assert ctx.cut(v, 1, [7]) == (S(None, 3), S(root, 3), S(None, 1), S(None, 2))


def test_cut_refuses_a_segment_whose_group_changed_size() -> None:
    ctx, v = _ctx()
    root = ctx._new_root(8)
    ctx.set_layout(v, 1, (S(root, 4, inner=2),))  # says 4 channels: the group has 8
    assert ctx.cut(v, 1, [4]) is None and not ctx.retired


def test_labels_fall_back_to_the_name_then_the_op() -> None:
    ctx, _ = _ctx()
    assert ctx.label(Node("Relu", name="r")) == "r"
    assert ctx.label(Node("Relu")) == "Relu"


def test_an_op_without_a_rule_is_named_with_its_domain() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from irprune.frontends.onnx import import_model
    from irprune.passes.analysis.channels import analyze

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
        helper.make_node("Mystery", ["a"], ["y"], name="m"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 2, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    (group,) = analyze(import_model(model)).groups
    assert "Mystery 'm': no channel rule for ai.onnx::Mystery" in group.frozen


def test_why_a_use_a_rule_did_not_tie_freezes() -> None:
    g = Graph()
    v, y, z, o = (g.add_value(Value(k, 1, ("N", 8))) for k in "vyzo")
    seen, refused, inside = (
        g.add_node(Node("Relu", name="r", inputs=(v,), outputs=(y,))),
        g.add_node(Node("Neg", name="n", inputs=(v,), outputs=(z,))),
        g.add_node(Node("Loop", name="l", inputs=(None,), outputs=(o,), implicit_inputs=(v,))),
    )
    g.outputs.append(v)
    ctx = Context(g)
    root = ctx._new_root(8)
    ctx.set_layout(v, 1, (S(root, 8),))
    ctx.refuse(refused, "not today")
    ctx.freeze_unbound(lambda n: n is not inside)
    ((_, frozen),) = _groups(ctx.result())
    assert frozen == (
        "reaches graph output 'v'",
        "Relu 'r' does not map axis 1 of input 0 ('v')",
        "Neg 'n': not today",
        "Loop 'l' reads 'v' inside a subgraph",
    )
    assert seen is g.nodes[0]


def test_what_a_tie_couples_with() -> None:
    g = Graph()
    x = g.add_value(Value("x", 1, ("N", 8)))
    g.inputs.append(x)
    v = g.add_value(Value("v", 1, ("N", 8)))
    w = g.add_value(Value("w", 1, (8, 3), const=np.zeros((8, 3), np.float32)))
    bad = g.add_value(Value("bad", 1, (6, 3), const=np.zeros((6, 3), np.float32)))
    fixed = g.add_value(Value("f", 1, ("N", 8)))
    node = Node("Op", name="op", inputs=(x, v, w, bad, fixed))
    ctx = Context(g)
    r = [ctx._new_root(n) for n in (8, 8, 6, 6, 8)]
    ctx.tie(node, 0, 1, (S(r[0], 8),))
    ctx.set_layout(v, 1, (S(None, 8),))
    ctx.tie(node, 1, 1, (S(r[1], 8),))  # meets v's fixed channels: cannot line up
    ctx.tie(node, 2, 0, (S(r[2], 6),))  # w has 8 rows
    ctx.tie(node, 3, 0, (S(r[3], 6),))  # ... and bad 6: it takes the layout
    ctx.tie(node, 4, 1, (S(r[4], 8),))
    assert ctx.get(bad, 0) == (S(r[3], 6),) and ctx.get(w, 0) is None
    assert [g.frozen for g in ctx.result().groups] == [
        ("op: coupled with 'x' (a graph input)",),
        ("index maps meeting at 'v' do not line up",),
        ("constant 'w' does not match its channels",),
        (),
        ("op: coupled with 'f' (fixed channels)",),
    ]


def test_reasons_of_a_joined_root_reach_the_group_after_a_refined_one() -> None:
    ctx, _ = _ctx()
    first, a, b = ctx._new_root(4), ctx._new_root(4), ctx._new_root(4)
    ctx.freeze((S(first, 4),), "first")
    assert ctx.refine(first, (S(0, 2), S(1, 2)))  # ``first`` is retired, its pieces frozen
    ctx.join(a, b, "j")
    ctx.freeze((S(b, 4),), "second")  # recorded on b, not on its class's top a
    assert _groups(ctx.result()) == [(4, ("second",)), (2, ("first",)), (2, ("first",))]


def test_no_default_opset_import_reads_as_the_oldest_opset() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from irprune.frontends.onnx import import_model
    from irprune.passes.analysis.channels import analyze

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
        helper.make_node("Softmax", ["a"], ["y"], name="s"),  # axis -1 from opset 13, 1 before
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    ir = import_model(model)
    ir.opset_imports = {}
    (group,) = analyze(ir).groups
    assert "Softmax 's': normalises over the channel axis" in group.frozen


def test_analyze_logs_its_counts(caplog: pytest.LogCaptureFixture) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from irprune.frontends.onnx import import_model
    from irprune.passes.analysis.channels import analyze

    w1 = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((2, 4, 1, 1), np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 2, 2])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    ir = import_model(model)
    with caplog.at_level(logging.INFO, logger="irprune.passes.analysis.channels"):
        analyze(ir)
    assert "analysis: 2 groups, 1 prunable" in caplog.messages
