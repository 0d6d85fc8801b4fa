"""Transformer blocks: attention heads, MLP hidden dims, LayerNorm, GELU, GPT-2's Conv1D layout,
shape subgraphs computed at run time, shared and transposed/cast weights, and exported BERT and
GPT-2 models. Each graph is pruned (half of every prunable group, at random) and checked against
the masked-original oracle; groups, sizes and freezing reasons are asserted."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import irprune
from irprune.emit import to_model
from irprune.emit.verify import session
from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup, analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.analysis.layout import Segment
from irprune.passes.rewrite.drop import drop
from tests.helpers import make_model
from tests.oracles import count_macs
from tests.passes.analysis.test_rules import drop_half_and_check

RNG = np.random.default_rng(7)
LN_REASON = "LayerNormalization normalises over the channel axis"
C, H, D, F, T = 32, 4, 8, 64, 6  # width, heads, head dim, MLP hidden, sequence length


def w(*shape: int) -> np.ndarray:
    return (0.3 * RNG.standard_normal(shape)).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def groups_of(analysis: ChannelAnalysis, source: str) -> list[ChannelGroup]:
    return [g for g in analysis.groups if any(s.node == source for s in g.sources)]


def group_of(analysis: ChannelAnalysis, source: str) -> ChannelGroup:
    (group,) = groups_of(analysis, source)
    return group


def prune_first_half(
    model: onnx.ModelProto,
    check_cost: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> onnx.ModelProto:
    """Keep the first half of every prunable group; check the cost model against the independent
    MAC counter before and after (which needs every dim that matters known to ONNX inference),
    both at ``input_shapes``."""
    graph = import_model(model, input_shapes)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    kept = {g.id: np.arange(g.size // 2) for g in analysis.prunable}
    for g in analysis.prunable:
        widths[g.id] = g.size // 2
    drop(graph, analysis, Plan(widths, kept, 0.0))
    pruned = to_model(graph)
    if check_cost:
        assert cost.evaluate().macs == pytest.approx(count_macs(model, input_shapes))
        assert cost.macs_at(widths) == pytest.approx(count_macs(pruned, input_shapes))
    return pruned


# --- a hand-built encoder -----------------------------------------------------------------------


class _Builder:
    """Nodes and initializers of a small transformer encoder, built with onnx.helper."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = value
        return name

    def op(self, op: str, inputs: list[str], name: str = "", **attrs: object) -> str:
        self.count += 1
        out = f"{name or op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name or None, **attrs))
        return out

    def linear(self, x: str, name: str, cin: int, cout: int) -> str:
        h = self.op("MatMul", [x, self.const(f"{name}.w", w(cin, cout))], name)
        return self.op("Add", [h, self.const(f"{name}.b", w(cout))])

    def layer_norm(self, x: str, name: str) -> str:
        scale, bias = self.const(f"{name}.s", 1 + w(C)), self.const(f"{name}.b", w(C))
        return self.op("LayerNormalization", [x, scale, bias], name, axis=-1)

    def gelu(self, x: str, tanh: bool, p: str) -> str:
        if not tanh:  # 0.5 x (1 + erf(x / sqrt 2))
            e = self.op("Erf", [self.op("Div", [x, self.const(f"{p}r2", scalar(2**0.5))])])
            e1 = self.op("Add", [e, self.const(f"{p}one", scalar(1.0))])
        else:  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
            cube = self.op("Pow", [x, self.const(f"{p}three", scalar(3.0))])
            inner = self.op(
                "Add", [x, self.op("Mul", [cube, self.const(f"{p}c", scalar(0.044715))])]
            )
            scaled = self.op("Mul", [inner, self.const(f"{p}k", scalar((2 / np.pi) ** 0.5))])
            e1 = self.op("Add", [self.op("Tanh", [scaled]), self.const(f"{p}one", scalar(1.0))])
        return self.op("Mul", [self.op("Mul", [x, e1]), self.const(f"{p}half", scalar(0.5))])

    def target(self, x: str, p: str, runtime: bool, tail: list[int], literal: bool) -> str:
        """[B, T, *tail]: constant ([0, T, ...]) or built at run time from Shape(x) (batch and
        sequence copied, ``tail`` from a constant Concat input; with ``literal`` the channel
        entries are literal counts rather than -1)."""
        if not runtime:
            return self.const(f"{p}shape", ints(0, T, *tail))
        shape, axes = self.op("Shape", [x]), self.const(f"{p}ax0", ints(0))
        dims = [
            self.op("Gather", [shape, self.const(f"{p}i{i}", np.array(i, dtype=np.int64))])
            for i in (0, 1)
        ]
        dims = [self.op("Unsqueeze", [d, axes]) for d in dims]
        rest = self.const(f"{p}rest", ints(*tail) if literal else ints(-1, *tail[1:]))
        return self.op("Concat", [*dims, rest], axis=0)

    def attention(self, x: str, p: str, runtime: bool, literal: bool) -> str:
        q, k, v = (self.linear(x, f"{p}{n}", C, C) for n in "qkv")
        split = [H, D]

        def heads(t: str, tag: str, perm: list[int]) -> str:
            target = self.target(t, f"{p}{tag}.", runtime, split, literal)
            return self.op("Transpose", [self.op("Reshape", [t, target])], perm=perm)

        qh, kt = heads(q, "q", [0, 2, 1, 3]), heads(k, "k", [0, 2, 3, 1])
        vh = heads(v, "v", [0, 2, 1, 3])
        scores = self.op("MatMul", [qh, kt], f"{p}scores")
        scaled = self.op("Div", [scores, self.const(f"{p}sqrt_d", scalar(D**0.5))])
        masked = self.op("Add", [scaled, "mask"])
        attn = self.op("Softmax", [masked], axis=-1)
        ctx = self.op(
            "Transpose", [self.op("MatMul", [attn, vh], f"{p}context")], perm=[0, 2, 1, 3]
        )
        merged = self.op("Reshape", [ctx, self.target(ctx, f"{p}m.", runtime, [C], literal)])
        return self.linear(merged, f"{p}o", C, C)

    def layer(self, x: str, p: str, runtime: bool, literal: bool, tanh: bool) -> str:
        h = self.layer_norm(self.op("Add", [x, self.attention(x, p, runtime, literal)]), f"{p}ln1")
        up = self.gelu(self.linear(h, f"{p}up", C, F), tanh, p)
        return self.layer_norm(self.op("Add", [h, self.linear(up, f"{p}down", F, C)]), f"{p}ln2")


def encoder(layers: int = 2, runtime: bool = False, literal: bool = False) -> onnx.ModelProto:
    """x [B, T, C] and an additive mask [B, 1, 1, T] -> ``layers`` post-LN encoder layers."""
    b = _Builder()
    h = "x"
    for i in range(layers):
        h = b.layer(h, f"l{i}.", runtime, literal, tanh=i % 2 == 1)
    b.nodes.append(helper.make_node("Identity", [h], ["out"]))
    return make_model(
        b.nodes, [("x", ["B", T, C]), ("mask", ["B", 1, 1, T])], [("out", ["B", T, C])], b.inits
    )


def _check_encoder(analysis: ChannelAnalysis, layers: int) -> None:
    for i in range(layers):
        heads = group_of(analysis, f"l{i}.q")
        assert heads.prunable and heads.size == H
        assert {s.node for s in heads.sources} == {f"l{i}.q", f"l{i}.k", f"l{i}.v"}
        assert analysis.layout(f"l{i}.o.w", 0) == (Segment(heads.id, H, inner=D),)
        mlp = group_of(analysis, f"l{i}.up")
        assert mlp.prunable and mlp.size == F
        stream = group_of(analysis, f"l{i}.o")
        assert f"LayerNormalization 'l{i}.ln1': {LN_REASON}" in stream.frozen


def test_encoder_prunes_heads_and_mlp_and_freezes_the_stream() -> None:
    model = encoder()
    analysis = drop_half_and_check(model)
    _check_encoder(analysis, 2)
    stream = group_of(analysis, "l0.o")
    assert any("coupled with 'x' (a graph input)" in r for r in stream.frozen)
    pruned = prune_first_half(model)
    shapes = {i.name: list(i.dims) for i in pruned.graph.initializer}
    assert shapes["l0.q.w"] == [C, C // 2] and shapes["l0.o.w"] == [C // 2, C]
    assert shapes["l0.up.w"] == [C, F // 2]


@pytest.mark.parametrize("literal", [False, True])
def test_encoder_with_run_time_shapes(literal: bool) -> None:
    """Reshape targets built from Shape -> Gather -> Unsqueeze -> Concat: -1 heads (BERT) or
    literal counts (older exports, GPT-2's Conv1D), which are rewritten; batch stays dynamic."""
    model = encoder(runtime=True, literal=literal)
    analysis = drop_half_and_check(model)
    _check_encoder(analysis, 2)
    pruned = prune_first_half(model, check_cost=False)  # ONNX inference cannot see the heads
    consts = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in pruned.graph.initializer}
    if literal:
        assert consts["l0.q.rest"] == [H // 2, D] and consts["l0.m.rest"] == [C // 2]
    else:
        assert consts["l0.q.rest"] == [-1, D] and consts["l0.m.rest"] == [-1]
    feeds = {
        "x": RNG.standard_normal((3, T, C)).astype(np.float32),
        "mask": np.zeros((3, 1, 1, T), dtype=np.float32),
    }
    (out,) = session(pruned).run(None, feeds)
    assert out.shape == (3, T, C)
    assert pruned.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"


def test_mask_of_unknown_head_dim_freezes_the_heads() -> None:
    """A mask whose head axis shape inference cannot tell (here: a graph input of unknown size
    there) may hold one entry per head: the heads are frozen, with the reason."""
    model = encoder(layers=1)
    model.graph.input[1].type.tensor_type.shape.dim[1].dim_param = "M"
    heads = group_of(analyze(import_model(model, {"mask": (1, H, 1, T)})), "l0.q")
    assert not heads.prunable
    assert any("coupled with 'mask' (a graph input)" in r for r in heads.frozen)


# --- GPT-2 Conv1D ([in, out] weights on a 2-D view) -----------------------------------------------


def test_gpt2_conv1d_mlp_with_literal_run_time_shapes() -> None:
    """x.view(-1, x.size(-1)) @ W + b, reshaped to size()[:-1] + (nf,): the MLP's literal width
    is an element of the Concat building the target, rewritten after pruning."""
    b = _Builder()
    shape_x = b.op("Shape", ["x"])
    lead = b.op(
        "Slice",
        [shape_x, b.const("zero", ints(0)), b.const("two", ints(2)), b.const("ax", ints(0))],
    )

    def conv1d(x: str, name: str, cin: int, cout: int) -> str:
        last = b.op(
            "Slice",
            [
                b.op("Shape", [x]),
                b.const(f"{name}.m1", ints(-1)),
                b.const(f"{name}.e", ints(2**62)),
            ],
        )
        flat = b.op(
            "Reshape", [x, b.op("Concat", [b.const(f"{name}.neg", ints(-1)), last], axis=0)]
        )
        y = b.op(
            "Gemm", [flat, b.const(f"{name}.w", w(cin, cout)), b.const(f"{name}.b", w(cout))], name
        )
        target = b.op("Concat", [lead, b.const(f"{name}.nf", ints(cout))], axis=0)
        return b.op("Reshape", [y, target])

    up = b.gelu(conv1d("x", "c_fc", C, F), tanh=True, p="g.")
    b.nodes.append(helper.make_node("Identity", [conv1d(up, "c_proj", F, C)], ["out"]))
    model = make_model(b.nodes, [("x", ["B", "S", C])], [("out", ["B", "S", C])], b.inits)
    shapes = {"x": (1, 4, C)}
    analysis = drop_half_and_check(model, input_shapes=shapes)
    mlp = group_of(analysis, "c_fc")
    assert mlp.prunable and mlp.size == F
    assert analysis.layout("c_proj.w", 0) == (Segment(mlp.id, F),)
    pruned = prune_first_half(model, input_shapes=shapes)
    consts = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in pruned.graph.initializer}
    assert consts["c_fc.nf"] == [F // 2] and consts["c_proj.nf"] == [C]


# --- shape subgraphs ------------------------------------------------------------------------------


def _conv_then(nodes: list[onnx.NodeProto], inits: dict, out: list) -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Conv", ["x", "w1"], ["a"], "c1"), *nodes],
        [("x", ["N", 3, 4, 4])],
        [("out", out)],
        {"w1": w(8, 3, 1, 1), **inits},
    )


def _batch_of(value: str, tag: str) -> list[onnx.NodeProto]:
    """``tag`` = Unsqueeze(Gather(Shape(value), 0)): the run-time batch size as a 1-vector."""
    return [
        helper.make_node("Shape", [value], [f"{tag}_shape"], f"{tag}_shape"),
        helper.make_node("Gather", [f"{tag}_shape", "zero"], [f"{tag}_n"]),  # scalar
        helper.make_node("Unsqueeze", [f"{tag}_n", "ax0"], [tag]),
    ]


def test_view_batch_minus_one_flattens_at_run_time() -> None:
    """torch's x.view(x.size(0), -1) before a Linear."""
    model = _conv_then(
        [
            *_batch_of("a", "n"),
            helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["a", "target"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["out"], "fc", transB=1),
        ],
        {"zero": np.array(0, dtype=np.int64), "ax0": ints(0), "minus1": ints(-1), "fc": w(5, 128)},
        ["N", 5],
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.prunable and analysis.layout("f", 1) == (Segment(g.id, 8, inner=16),)
    assert prune_first_half(model).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_channel_count_in_arithmetic_freezes() -> None:
    """[N, C * 16] computed with a Mul on the channel count: Shape refuses, with where it goes."""
    model = _conv_then(
        [
            *_batch_of("a", "n"),
            helper.make_node("Gather", ["n_shape", "one"], ["c"]),
            helper.make_node("Mul", ["c", "sixteen"], ["cf"], "times16"),
            helper.make_node("Unsqueeze", ["cf", "ax0"], ["cfu"]),
            helper.make_node("Concat", ["n", "cfu"], ["target"], axis=0),
            helper.make_node("Reshape", ["a", "target"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["out"], "fc", transB=1),
        ],
        {
            "zero": np.array(0, dtype=np.int64),
            "one": np.array(1, dtype=np.int64),
            "sixteen": np.array(16, dtype=np.int64),
            "ax0": ints(0),
            "fc": w(5, 128),
        },
        ["N", 5],
    )
    g = group_of(drop_half_and_check(model), "c1")
    assert "Shape 'n_shape': a channel count flows into Mul 'times16'" in g.frozen


def test_rows_as_a_run_time_product_of_batch_and_positions() -> None:
    """Channels last, then [N * H * W, C] with the rows computed as Shape(t)[0] * Shape(t)[1] *
    Shape(t)[2] (Mul): a product of sizes that carry no channels sets a row axis; the channel
    entry is Shape(t)[3], so the group prunes and the rows follow the batch at run time."""
    nodes = [
        helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["t"], ["ts"]),
        *[helper.make_node("Gather", ["ts", f"i{k}"], [f"d{k}"]) for k in range(4)],
        helper.make_node("Mul", ["d0", "d1"], ["p01"]),
        helper.make_node("Mul", ["p01", "d2"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "ax0"], ["rows_v"]),
        helper.make_node("Unsqueeze", ["d3", "ax0"], ["c_v"]),
        helper.make_node("Concat", ["rows_v", "c_v"], ["target"], axis=0),
        helper.make_node("Reshape", ["t", "target"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["out"], "fc", transB=1),
    ]
    inits = {f"i{k}": np.array(k, dtype=np.int64) for k in range(4)}
    model = _conv_then(nodes, {**inits, "ax0": ints(0), "fc": w(5, 8)}, ["M", 5])
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "c1")
    assert g.prunable and analysis.layout("f", 1) == (Segment(g.id, 8),)


def test_literal_channel_count_that_cannot_be_rewritten_freezes() -> None:
    """[N, 8, -1] with the 8 from an Unsqueeze (not a constant input of the Concat)."""
    model = _conv_then(
        [
            *_batch_of("a", "n"),
            helper.make_node("Unsqueeze", ["eight", "ax0"], ["c"]),
            helper.make_node("Concat", ["n", "c", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["a", "target"], ["r"], "r"),
            helper.make_node("ReduceMean", ["r"], ["out"], axes=[2], keepdims=0),
        ],
        {
            "zero": np.array(0, dtype=np.int64),
            "ax0": ints(0),
            "eight": np.array(8, dtype=np.int64),
            "minus1": ints(-1),
        },
        ["N", 8],
    )
    g = group_of(analyze(import_model(model)), "c1")
    why = "Reshape 'r': its run-time target sets channel axis 1 to 8, which cannot follow pruning"
    assert why in g.frozen


def test_channel_count_of_another_value_joins_its_group() -> None:
    """b reshaped to [N, C_a, -1] with C_a read from a: a's and b's channels must stay equal."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], "ca"),
            helper.make_node("Conv", ["x", "wb"], ["b"], "cb"),
            *_batch_of("b", "n"),
            helper.make_node("Shape", ["a"], ["a_shape"]),
            helper.make_node("Gather", ["a_shape", "one"], ["ca_n"]),  # 1-D index: [C_a]
            helper.make_node("Concat", ["n", "ca_n", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["b", "target"], ["r"]),
            helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["rt", "fc"], ["m"], "fc"),
            helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", ["at", "fa"], ["ma"], "fa"),
            helper.make_node("ReduceMean", ["ma"], ["mr"], axes=[1, 2], keepdims=0),
            helper.make_node("ReduceMean", ["m"], ["mm"], axes=[1], keepdims=0),
            helper.make_node("Add", ["mr", "mm"], ["out"]),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 5])],
        {
            "wa": w(8, 3, 1, 1),
            "wb": w(8, 3, 1, 1),
            "zero": np.array(0, dtype=np.int64),
            "one": ints(1),
            "ax0": ints(0),
            "minus1": ints(-1),
            "fc": w(8, 5),
            "fa": w(8, 5),
        },
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "ca")
    assert g.prunable and {s.node for s in g.sources} == {"ca", "cb"}


# --- shared initializers, weights through Transpose / Cast / Identity ---------------------------


def test_shared_weight_joins_its_two_sources() -> None:
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"], "ma"),
            helper.make_node("MatMul", ["y", "W"], ["b"], "mb"),
            helper.make_node("Relu", ["a"], ["ra"]),
            helper.make_node("Relu", ["b"], ["rb"]),
            helper.make_node("MatMul", ["ra", "W2"], ["oa"], "oa"),
            helper.make_node("MatMul", ["rb", "W3"], ["ob"], "ob"),
            helper.make_node("Add", ["oa", "ob"], ["out"]),
        ],
        [("x", ["N", 8]), ("y", ["N", 8])],
        [("out", ["N", 4])],
        {"W": w(8, 16), "W2": w(16, 4), "W3": w(16, 4)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "ma")
    assert g.prunable and g.size == 16 and {s.node for s in g.sources} == {"ma", "mb"}


def test_shared_constant_with_an_unmapped_reader_freezes() -> None:
    """A per-channel bias also read whole by another op: slicing it would change that op."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("Add", ["a", "bias"], ["ab"]),
            helper.make_node("Conv", ["ab", "w2"], ["c"], "c2"),
            helper.make_node("ReduceSum", ["bias"], ["total"], "rs", keepdims=0),
            helper.make_node("Add", ["c", "total"], ["out"]),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w(8, 3, 1, 1), "bias": w(8, 1, 1), "w2": w(2, 8, 1, 1)},
    )
    g = group_of(drop_half_and_check(model), "c1")
    assert g.frozen == ("ReduceSum 'rs': reduces over the channel axis",)


def test_weights_through_transpose_and_cast() -> None:
    """Gemm B = Transpose(W) and MatMul B = Cast(W_fp16): the constants are sliced; the source is
    recorded on the op that reads the constant."""
    model = make_model(
        [
            helper.make_node("Transpose", ["W"], ["Wt"], "wt", perm=[1, 0]),
            helper.make_node("Gemm", ["x", "Wt", "b"], ["h"], "fc1"),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Cast", ["W2h"], ["W2"], "w2cast", to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["r", "W2"], ["out"], "fc2"),
        ],
        [("x", ["N", 8])],
        [("out", ["N", 4])],
        {"W": w(16, 8), "b": w(16), "W2h": w(16, 4).astype(np.float16)},
    )
    analysis = drop_half_and_check(model)
    g = group_of(analysis, "wt")
    assert g.prunable and g.size == 16
    assert analysis.layout("W", 0) == analysis.layout("W2h", 0) == (Segment(g.id, 16),)
    shapes = {i.name: list(i.dims) for i in prune_first_half(model).graph.initializer}
    assert shapes["W"] == [8, 8] and shapes["W2h"] == [8, 4] and shapes["b"] == [8]


def test_weight_chain_with_another_reader_freezes() -> None:
    model = make_model(
        [
            helper.make_node("Identity", ["W"], ["Wi"], "wi"),
            helper.make_node("MatMul", ["x", "Wi"], ["h"], "fc1"),
            helper.make_node("MatMul", ["h", "W2"], ["out"], "fc2"),
            helper.make_node("Hardmax", ["Wi"], ["side"], "hm", domain="test.unknown"),
        ],
        [("x", ["N", 8])],
        [("out", ["N", 4]), ("side", [8, 16])],
        {"W": w(8, 16), "W2": w(16, 4)},
    )
    model.opset_import.append(helper.make_opsetid("test.unknown", 1))
    g = group_of(analyze(import_model(model)), "wi")
    assert g.frozen == ("Hardmax 'hm': no channel rule for test.unknown::Hardmax",)


def test_bias_through_identity_is_fixed_channels() -> None:
    """Add(Identity(b)) after a MatMul: the elementwise rule does not look through the Identity
    (that needs ``Context.tie`` to use ``const_chain``), so the group freezes with the reason."""
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], "fc1"),
            helper.make_node("Identity", ["b"], ["bi"], "bi"),
            helper.make_node("Add", ["h", "bi"], ["hb"], "add"),
            helper.make_node("MatMul", ["hb", "W2"], ["out"], "fc2"),
        ],
        [("x", ["N", 8])],
        [("out", ["N", 4])],
        {"W": w(8, 16), "b": w(16), "W2": w(16, 4)},
    )
    g = group_of(drop_half_and_check(model), "fc1")
    assert g.frozen == ("add: coupled with 'bi' (fixed channels)",)


# --- exported BERT and GPT-2 (transformers, random weights) --------------------------------------


@pytest.fixture(scope="module", params=["bert", "gpt2"])
def exported(request: pytest.FixtureRequest) -> tuple[str, onnx.ModelProto]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if request.param == "bert":
        config = transformers.BertConfig(
            hidden_size=C, num_hidden_layers=2, num_attention_heads=H, intermediate_size=F,
            vocab_size=100, max_position_embeddings=32,
        )  # fmt: skip
        model = transformers.BertModel(config, add_pooling_layer=False)
    else:
        config = transformers.GPT2Config(
            n_embd=C, n_layer=2, n_head=H, vocab_size=100, n_positions=32
        )
        model = transformers.GPT2Model(config)
    model.eval()
    with torch.no_grad():  # trained-like weights: no zero biases deduplicated into Identity nodes
        for p in model.parameters():
            p.normal_(0, 0.1)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=ids, attention_mask=mask, return_dict=False)[0]

    buf = io.BytesIO()
    ids, mask = torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    dims = {0: "B", 1: "T"}
    torch.onnx.export(
        Wrapped().eval(), (ids, mask), buf, dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask"], output_names=["out"],
        dynamic_axes={"input_ids": dims, "attention_mask": dims, "out": dims},
    )  # fmt: skip
    return request.param, onnx.load_from_string(buf.getvalue())


SEQ8 = {"input_ids": (1, 8), "attention_mask": (1, 8)}  # the deployment shape: 8 tokens


def _frozen_reasons(report: dict) -> str:
    return " | ".join(r for g in report["groups"] for r in g["frozen"])


def test_exported_model_prunes_to_the_target(exported: tuple[str, onnx.ModelProto]) -> None:
    name, model = exported
    result = irprune.prune(
        model, target_flops=0.6, measure_latency=False, input_shapes={"input_ids": (1, 8)}
    )
    ratio = result.report["cost"]["ratio"]["macs"]
    assert count_macs(result.model, SEQ8) / count_macs(model, SEQ8) == pytest.approx(ratio)
    assert 0.58 <= ratio <= 0.6
    mlp = [g for g in result.report["groups"] if g["size"] == (F if name == "bert" else 4 * C)]
    assert len(mlp) == 2 and all(g["kept"] < g["size"] for g in mlp)
    assert LN_REASON in _frozen_reasons(result.report)


def test_exported_model_prunes_heads_with_symbolic_shapes(
    exported: tuple[str, onnx.ModelProto],
) -> None:
    """With dims that symbolic shape inference resolves (the mask's head axis is 1, the heads
    Reshape's -1 is 4), whole heads prune too: masked equivalence holds with half the heads."""
    symbolic = pytest.importorskip("onnxruntime.tools.symbolic_shape_infer")
    name, model = exported
    refined = symbolic.SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    analysis = drop_half_and_check(refined, input_shapes=SEQ8)
    heads = [g for g in analysis.groups if g.size == H]
    assert len(heads) == 2 and all(g.prunable for g in heads)
    assert len(heads[0].sources) == (3 if name == "bert" else 1)
