"""Gemm and MatMul: with constant weights (linear layers) and of two activations (attention).

A "constant" weight below is an initializer or one reached through Identity / Cast / Transpose
(``const_chain``: the layout is carried down the chain and the initializer is sliced).

Gemm: Y = alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB; A' is [M, K],
B' is [K, N]. A's K axis and B's K axis are tied (B constant: its K axis is sliced as a
consumer). B's N axis is a new source when B is constant (otherwise it passes through) and Y's
axis 1 and C's last axis carry it; A's M axis passes through to Y's axis 0 (and C's axis 0).

MatMul, Y[..., m, n] = sum_k A[..., m, k] * B[..., k, n] (numpy semantics, both ranks >= 2):
- B a constant matrix [K, N] (a linear layer, GPT-2's Conv1D weight [in, out]): A's last axis is
  tied to B's axis 0, B's axis 1 is a new source carried by Y's last axis, A's other axes pass
  through to Y.
- otherwise (attention: Q @ K^T, softmax(..) @ V): the batch axes are aligned from the right and
  tied like an elementwise op's, skipping broadcast 1s (this joins Q's heads with K's, then with
  V's); A's last axis is tied to B's second-to-last (the contraction: head_dim, kept whole when
  heads are pruned); Y's M axis comes from A's second-to-last, its N axis from B's last.
A rank-1 operand carrying channels is refused.

MACs: Gemm = M * K * N; MatMul = K * (product of Y's dims), so attention products are counted
and shrink with the heads.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from irprune.ir import Node, Value
from irprune.passes.analysis.layout import Layout
from irprune.passes.analysis.rules import const_chain
from irprune.passes.analysis.rules.base import Contraction, OpRule, Term
from irprune.passes.analysis.rules.elementwise import broadcast_axis

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _carry(
    ctx: Context, node: Node, index: int, axis: int, y: Value, out_axis: int
) -> Layout | None:
    """Input ``index``'s ``axis`` passes through to ``y``'s ``out_axis``."""
    layout = ctx.get(node.inputs[index], axis)
    if layout is not None:
        ctx.tie(node, index, axis, layout)
        ctx.set_layout(y, out_axis, layout)
    return layout


def _contract(ctx: Context, node: Node, k_a: int, k_b: int) -> None:
    """A's ``k_a`` and B's ``k_b`` are summed against each other: one layout for both."""
    layout = ctx.get(node.inputs[0], k_a) or ctx.get(node.inputs[1], k_b)
    if layout is not None:
        const_chain.tie(ctx, node, 0, k_a, layout)
        const_chain.tie(ctx, node, 1, k_b, layout)


def _gemm(ctx: Context, node: Node) -> None:
    b, y = node.required(1), node.outputs[0]
    if b.rank != 2:
        ctx.refuse(node, "B is not a matrix of known shape")
        return
    k_a, m_a = (0, 1) if node.attr("transA", 0) else (1, 0)
    k_b, n_b = (1, 0) if node.attr("transB", 0) else (0, 1)
    rows = _carry(ctx, node, 0, m_a, y, 0)
    _contract(ctx, node, k_a, k_b)
    if const_chain.is_const(b):
        cols: Layout | None = const_chain.source(ctx, node, 1, n_b, y, 1)
    else:
        cols = _carry(ctx, node, 1, n_b, y, 1)
    c = node.input(2)
    if c is None or not c.rank:
        return
    if cols is not None and c.static_dim(-1) == y.static_dim(1):
        const_chain.tie(ctx, node, 2, -1, cols)
    if rows is not None and c.rank == 2 and c.static_dim(0) == y.static_dim(0) != 1:
        const_chain.tie(ctx, node, 2, 0, rows)


def _broadcast_batch(ctx: Context, node: Node, k: int) -> None:
    """Y's batch axis ``k``: the operands' batch axes aligned with it share one layout."""
    broadcast_axis(ctx, node, k, (0, 1), functools.partial(const_chain.tie, ctx))


def _matmul(ctx: Context, node: Node) -> None:
    a, b, y = node.required(0), node.required(1), node.outputs[0]
    if a.rank is None or b.rank is None or y.rank is None or a.rank < 2 or b.rank < 2:
        if ctx.axes(a) or ctx.axes(b):
            ctx.refuse(node, "MatMul with a vector operand or of unknown ranks")
        return
    if b.rank == 2 and const_chain.is_const(b):
        for axis in ctx.axes(a):
            if axis < a.rank - 1:
                _carry(ctx, node, 0, axis, y, axis + y.rank - a.rank)
        _contract(ctx, node, a.rank - 1, 0)
        const_chain.source(ctx, node, 1, 1, y, -1)
        return
    for k in range(y.rank - 2):
        _broadcast_batch(ctx, node, k)
    _contract(ctx, node, a.rank - 1, b.rank - 2)
    _carry(ctx, node, 0, a.rank - 2, y, y.rank - 2)
    _carry(ctx, node, 1, b.rank - 1, y, y.rank - 1)


def _gemm_macs(node: Node) -> list[Term]:
    b, y = node.required(1), node.outputs[0]
    if b.rank != 2 or y.rank != 2:
        return []
    k_b, n_b = (1, 0) if node.attr("transB", 0) else (0, 1)
    return [Term(1.0, ((y, 0), (b, k_b), (b, n_b)))]


def _matmul_macs(node: Node) -> list[Term]:
    a, b, y = node.required(0), node.required(1), node.outputs[0]
    if a.rank is None or b.rank is None or y.rank is None:
        return []
    k = (b, b.rank - 2) if b.rank >= 2 else (a, a.rank - 1)
    return [Term(1.0, (k, *((y, i) for i in range(y.rank))))]


def _gemm_contracts(node: Node) -> list[Contraction]:
    b = node.input(1)
    if b is None or b.const is None:
        return []
    k_a = 0 if node.attr("transA", 0) else 1
    k_b = 1 if node.attr("transB", 0) else 0
    return [Contraction(data=0, data_axis=k_a, weight=1, weight_axis=k_b)]


def _matmul_contracts(node: Node) -> list[Contraction]:
    a, b = node.required(0), node.input(1)
    if b is None or b.const is None or b.const.ndim != 2 or a.rank is None:
        return []
    return [Contraction(data=0, data_axis=a.rank - 1, weight=1, weight_axis=0)]


GEMM = OpRule(_gemm, macs=_gemm_macs, contracts=_gemm_contracts)
MATMUL = OpRule(_matmul, macs=_matmul_macs, contracts=_matmul_contracts)
