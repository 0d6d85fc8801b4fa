"""ViT idioms as small graphs: the class (and distillation) token Expand + Concat, positional
embedding Adds, and fused q/k/v attention (reshape -> permute -> unbind / select). Each graph is
pruned (half of every prunable group, at random) and compared with the independent masked
reference (``tests/reference_mask.py``) at two batch sizes and two sequence lengths where those
dims are symbolic. The reference carries removed channels from the source weights only, so the
constants that join a group (tokens, embeddings) get those channels zeroed in the original first:
what pruning claims is that those channels are gone from every member of the group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from irprune.emit import to_model
from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import ChannelAnalysis, analyze
from irprune.passes.analysis.layout import Segment
from irprune.passes.rewrite.drop import drop
from tests.helpers import make_model, rel_diff, run
from tests.passes.analysis.test_rules_transformers import _Builder, group_of, ints
from tests.reference_mask import masked_reference

P, D, K = 6, 8, 5  # patch features, embedding width, classes
C, H, HD = 12, 3, 4  # attention width, heads, head dim


def _rng_w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (0.5 * rng.standard_normal(shape)).astype(np.float32)


def _zeroed(
    model: onnx.ModelProto, analysis: ChannelAnalysis, plan: Plan, consts: Mapping[str, int]
) -> onnx.ModelProto:
    """``model`` with the plan's removed channels zeroed in the constants ``consts`` (name ->
    channel axis), each of which must carry one unrefined group on that axis."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name not in consts:
            continue
        axis = consts[init.name]
        (seg,) = analysis.layout(init.name, axis) or (None,)
        assert seg is not None and seg.root is not None and (seg.inner, seg.outer) == (1, 1)
        data = numpy_helper.to_array(init).copy()
        gone = np.setdiff1d(np.arange(seg.size), plan.kept[seg.root])
        np.moveaxis(data, axis, 0)[gone] = 0.0
        init.CopyFrom(numpy_helper.from_array(data, init.name))
    return out


def prune_and_compare(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    consts: Mapping[str, int] | None = None,
    seed: int = 0,
) -> ChannelAnalysis:
    """Drop a random half of every prunable group; the pruned model must equal the masked
    reference (of the original with ``consts``' removed channels zeroed) on every feed."""
    graph = import_model(model, {n: list(a.shape) for n, a in feeds[0].items()})
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
    reference = masked_reference(_zeroed(model, analysis, plan, consts or {}), analysis, plan)
    onnx.checker.check_model(pruned, full_check=True)
    for feed in feeds:
        expected, got = run(reference, feed), run(pruned, feed)
        for e, g in zip(expected, got, strict=True):
            assert e.shape == g.shape
            assert rel_diff(e, g) <= 1e-5
    return analysis


def _feeds(shapes: Mapping[str, Sequence[Sequence[int]]], seed: int = 1) -> list[dict]:
    """One feed per combination listed: ``shapes`` maps each input to its shape per feed."""
    rng = np.random.default_rng(seed)
    count = len(next(iter(shapes.values())))
    return [
        {n: rng.standard_normal(s[i]).astype(np.float32) for n, s in shapes.items()}
        for i in range(count)
    ]


SIZES = [(1, 5), (3, 5), (1, 7), (3, 7)]  # (batch, tokens)


# --- class token, distillation token, positional embedding ---------------------------------------


def _tokens(b: _Builder, rng: np.random.Generator, names: Sequence[str], entry: int) -> list[str]:
    """The tokens ``names`` ([1, 1, D] constants) each expanded to [B, 1, D] by a target built
    at run time: Concat(Unsqueeze(Shape(patches)[0]), [1, entry]) (torch's cls.expand(B, -1, -1),
    lowered with 1 for -1; ``entry`` D is a literal the pruner cannot rewrite)."""
    shape = b.op("Shape", ["patches"])
    batch = b.op("Gather", [shape, b.const("i0", np.array(0, dtype=np.int64))], axis=0)
    batch = b.op("Unsqueeze", [batch, b.const("ax0", ints(0))])
    out = []
    for name in names:
        target = b.op("Concat", [batch, b.const(f"{name}.rest", ints(1, entry))], axis=0)
        token = b.const(name, _rng_w(rng, 1, 1, D))
        out.append(b.op("Expand", [token, target], f"{name}.expand"))
    return out


def token_model(tokens: Sequence[str], pos: str, entry: int = 1, seed: int = 3) -> onnx.ModelProto:
    """patches [B, T, P] -> embed (MatMul) -> Concat(tokens..., patches) on the token axis ->
    + a positional constant -> Relu -> head [.., K]. ``pos``: "static" ([1, T + n, D], T = 5),
    "broadcast" ([1, 1, D]: T stays symbolic) or "none"."""
    rng = np.random.default_rng(seed)
    b = _Builder()
    emb = b.op("MatMul", ["patches", b.const("embed.w", _rng_w(rng, P, D))], "embed")
    emb = b.op("Add", [emb, b.const("embed.b", _rng_w(rng, D))])
    seq = b.op("Concat", [*_tokens(b, rng, tokens, entry), emb], "cat", axis=1)
    t = 5 if pos == "static" else "T"
    if pos != "none":
        n = 5 + len(tokens) if pos == "static" else 1
        seq = b.op("Add", [seq, b.const("pos_embed", _rng_w(rng, 1, n, D))], "pos")
    head = b.op("MatMul", [b.op("Relu", [seq]), b.const("head.w", _rng_w(rng, D, K))], "head")
    b.nodes.append(helper.make_node("Identity", [head], ["out"]))
    seq_len = t + len(tokens) if isinstance(t, int) else None
    return make_model(b.nodes, [("patches", ["B", t, P])], [("out", ["B", seq_len, K])], b.inits)


def _check_tokens(analysis: ChannelAnalysis, consts: Sequence[str]) -> None:
    g = group_of(analysis, "embed")
    assert g.prunable and g.size == D
    for name in consts:  # the constants are members: sliced with the embedding channels
        assert analysis.layout(name, 2) == (Segment(g.id, D),)


@pytest.mark.parametrize("tokens", [["cls_token"], ["cls_token", "dist_token"]])
def test_class_tokens_and_broadcast_embedding_join_the_group(tokens: list[str]) -> None:
    model = token_model(tokens, pos="broadcast")
    feeds = _feeds({"patches": [(bs, t, P) for bs, t in SIZES]})
    consts = {name: 2 for name in [*tokens, "pos_embed"]}
    analysis = prune_and_compare(model, feeds, consts)
    _check_tokens(analysis, consts)


def test_static_positional_embedding_and_class_token() -> None:
    model = token_model(["cls_token", "dist_token"], pos="static")
    feeds = _feeds({"patches": [(1, 5, P), (3, 5, P)]})
    consts = {"cls_token": 2, "dist_token": 2, "pos_embed": 2}
    analysis = prune_and_compare(model, feeds, consts)
    _check_tokens(analysis, consts)


def test_class_token_without_embedding_is_the_only_other_member() -> None:
    analysis = prune_and_compare(
        token_model(["cls_token"], pos="none"),
        _feeds({"patches": [(bs, t, P) for bs, t in SIZES]}),
        {"cls_token": 2},
    )
    _check_tokens(analysis, ["cls_token"])


def test_expand_to_a_literal_channel_count_at_run_time_freezes() -> None:
    """Concat(B, [1, D]) as the target: the literal D would not follow the pruning (it is not a
    constant target the Expand rule rewrites), so the group stays frozen."""
    model = token_model(["cls_token"], pos="none", entry=D)
    analysis = prune_and_compare(model, _feeds({"patches": [(2, 5, P)]}))
    g = group_of(analysis, "embed")
    assert not g.prunable
    assert any("coupled with" in r and "(fixed channels)" in r for r in g.frozen)
    assert analysis.layout("cls_token", 2) is None


def test_expand_of_a_computed_value_still_freezes() -> None:
    """Only a constant's Expand is followed: a graph input's expanded [1, 1, D] is fixed."""
    b = _Builder()
    rng = np.random.default_rng(5)
    emb = b.op("MatMul", ["patches", b.const("embed.w", _rng_w(rng, P, D))], "embed")
    shape = b.op("Shape", ["patches"])
    batch = b.op("Gather", [shape, b.const("i0", np.array(0, dtype=np.int64))], axis=0)
    batch = b.op("Unsqueeze", [batch, b.const("ax0", ints(0))])
    target = b.op("Concat", [batch, b.const("rest", ints(1, 1))], axis=0)
    token = b.op("Expand", ["tok", target])
    seq = b.op("Concat", [token, emb], axis=1)
    head = b.op("MatMul", [seq, b.const("head.w", _rng_w(rng, D, K))], "head")
    b.nodes.append(helper.make_node("Identity", [head], ["out"]))
    model = make_model(
        b.nodes, [("patches", ["B", "T", P]), ("tok", [1, 1, D])], [("out", ["B", None, K])],
        b.inits,
    )  # fmt: skip
    g = group_of(analyze(import_model(model, {"patches": [1, 5, P]})), "embed")
    assert not g.prunable and any(f"'{token}' (fixed channels)" in r for r in g.frozen)


# --- fused q/k/v attention -------------------------------------------------------------------


def _split_heads(b: _Builder, qkv: str, mode: str) -> list[str]:
    """[3, B, H, T, HD] -> q, k, v: ``unbind(0)`` (Split into ones + Squeeze) or ``qkv[i]``
    (Gather of one index)."""
    if mode == "unbind":
        parts = [f"{qkv}.{n}" for n in "qkv"]
        b.nodes.append(helper.make_node("Split", [qkv, b.const("ones", ints(1, 1, 1))], parts))
        return [b.op("Squeeze", [p, b.const(f"sq{i}", ints(0))]) for i, p in enumerate(parts)]
    picks = [b.const(f"pick{i}", np.array(i, dtype=np.int64)) for i in range(3)]
    return [b.op("Gather", [qkv, i], axis=0) for i in picks]


def _runtime_target(b: _Builder, x: str, tail: Sequence[int], tag: str) -> str:
    """Concat(Shape(x)[0], Shape(x)[1], tail): the run-time target torch's exporters build."""
    shape = b.op("Shape", [x])
    dims = [
        b.op("Unsqueeze", [
            b.op("Gather", [shape, b.const(f"{tag}i{i}", np.array(i, dtype=np.int64))], axis=0),
            b.const(f"{tag}ax{i}", ints(0)),
        ])
        for i in (0, 1)
    ]  # fmt: skip
    return b.op("Concat", [*dims, b.const(f"{tag}tail", ints(*tail))], axis=0)


def attention_model(mode: str, blocks: int = 1, seed: int = 11) -> onnx.ModelProto:
    """x [B, T, C] -> ``blocks`` times: x + proj(attention(qkv(x))) with timm's fused q/k/v:
    qkv.reshape(B, T, 3, H, HD).permute(2, 0, 3, 1, 4), split into q, k, v by ``mode``."""
    rng = np.random.default_rng(seed)
    b = _Builder()
    h = "x"
    for i in range(blocks):
        p = f"b{i}."
        qkv = b.op("MatMul", [h, b.const(f"{p}qkv.w", _rng_w(rng, C, 3 * C))], f"{p}qkv")
        qkv = b.op("Add", [b.const(f"{p}qkv.b", _rng_w(rng, 3 * C)), qkv])
        split = b.op("Reshape", [qkv, _runtime_target(b, h, [3, H, HD], f"{p}r")], f"{p}split")
        perm = b.op("Transpose", [split], f"{p}permute", perm=[2, 0, 3, 1, 4])
        q, k, v = _split_heads(b, perm, mode)
        kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = b.op("Mul", [b.op("MatMul", [q, kt]), b.const(f"{p}s", np.float32(HD**-0.5))])
        attn = b.op("Softmax", [scores], axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
        merged = b.op("Reshape", [ctx, _runtime_target(b, ctx, [C], f"{p}m")], f"{p}merge")
        proj = b.op("MatMul", [merged, b.const(f"{p}proj.w", _rng_w(rng, C, C))], f"{p}proj")
        h = b.op("Add", [h, proj])
    b.nodes.append(helper.make_node("Identity", [h], ["out"]))
    return make_model(b.nodes, [("x", ["B", "T", C])], [("out", ["B", "T", C])], b.inits)


@pytest.mark.parametrize("mode", ["unbind", "select"])
def test_fused_qkv_heads_are_prunable_with_q_k_v_coupled(mode: str) -> None:
    model = attention_model(mode, blocks=2)
    analysis = prune_and_compare(model, _feeds({"x": [(bs, t, C) for bs, t in SIZES]}))
    for i in range(2):
        heads = group_of(analysis, f"b{i}.qkv")
        assert heads.prunable and heads.size == H
        assert {s.node for s in heads.sources} == {f"b{i}.qkv"}
        # rows c * C + h * HD + j (c < 3: q, k, v) are head h of one group
        assert analysis.layout(f"b{i}.qkv.w", 1) == (Segment(heads.id, H, inner=HD),) * 3
        assert analysis.layout(f"b{i}.qkv.b", 0) == (Segment(heads.id, H, inner=HD),) * 3
        assert analysis.layout(f"b{i}.proj.w", 0) == (Segment(heads.id, H, inner=HD),)
    stream = group_of(analysis, "b0.proj")
    assert not stream.prunable  # x is a graph input, and the stream reaches the output


def test_fused_qkv_pruned_shapes() -> None:
    model = attention_model("unbind")
    graph = import_model(model, {"x": [2, 5, C]})
    analysis = analyze(graph)
    heads = group_of(analysis, "b0.qkv")
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    widths[heads.id] = 1
    drop(graph, analysis, Plan(widths, {heads.id: np.array([2])}, 0.0))
    pruned = to_model(graph)
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert shapes["b0.qkv.w"] == [C, 3 * HD] and shapes["b0.proj.w"] == [HD, C]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b0.qkv.w"))
    got = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == "b0.qkv.w"))
    rows = [c * C + 2 * HD + j for c in range(3) for j in range(HD)]  # head 2 of q, k and v
    np.testing.assert_array_equal(got, w[:, rows])


def test_split_that_is_not_taken_apart_keeps_the_first_axis() -> None:
    """Without an unbind, a [C] -> [3, H, HD] split keeps its old map (whole thirds): the
    look-ahead only skips an axis that is taken apart."""
    b = _Builder()
    rng = np.random.default_rng(2)
    qkv = b.op("MatMul", ["x", b.const("qkv.w", _rng_w(rng, C, 3 * C))], "qkv")
    split = b.op("Reshape", [qkv, b.const("shape", ints(0, 0, 3, H, HD))])
    summed = b.op("ReduceSum", [split, b.const("axes", ints(3, 4))], keepdims=0)
    out = b.op("MatMul", [summed, b.const("w2", _rng_w(rng, 3, K))], "w2")
    b.nodes.append(helper.make_node("Identity", [out], ["out"]))
    model = make_model(b.nodes, [("x", ["B", "T", C])], [("out", ["B", "T", K])], b.inits)
    analysis = analyze(import_model(model, {"x": [2, 5, C]}))
    g = group_of(analysis, "qkv")
    assert g.size == 3 and analysis.layout("qkv.w", 1) == (Segment(g.id, 3, inner=C),)
