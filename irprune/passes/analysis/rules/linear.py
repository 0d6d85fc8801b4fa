"""Gemm and MatMul with constant weights.

Gemm: Y = alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB; A' is [M, K],
B' is [K, N]. A's K axis and B's K axis are tied (B constant: its K axis is sliced as a
consumer). B's N axis is a new source (B constant) and Y's axis 1 and C's last axis carry it.
MatMul: Y[..., m, n] = sum_k A[..., m, k] * B[k, n] with B a constant matrix: A's last axis is
tied to B's axis 0, B's axis 1 is a new source carried by Y's last axis, and A's other axes pass
through to Y. A MatMul of two activations (attention) is not handled here: inputs unmapped.
MACs: Gemm = M * numel(B); MatMul = (product of Y's dims but the last) * numel(B).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.rules.base import Contraction, OpRule, Term, static_product

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _gemm(ctx: Context, node: Node) -> None:
    a, b, y = node.required(0), node.required(1), node.outputs[0]
    if b is None or b.const is None or b.const.ndim != 2:
        ctx.refuse(node, "weights are not a constant matrix")
        return
    k_a = 0 if node.attr("transA", 0) else 1
    k_b, n_b = (1, 0) if node.attr("transB", 0) else (0, 1)
    layout = ctx.get(a, k_a)
    if layout is not None:
        ctx.tie(node, 0, k_a, layout)
        ctx.tie(node, 1, k_b, layout)
    out = ctx.source(node, 1, n_b, y, 1)
    c = node.input(2)
    if c is not None and c.rank and c.static_dim(-1) == y.static_dim(1):
        ctx.tie(node, 2, -1, out)


def _matmul(ctx: Context, node: Node) -> None:
    a, b, y = node.required(0), node.required(1), node.outputs[0]
    if b is None or b.const is None or b.const.ndim != 2 or a.rank is None or a.rank < 2:
        ctx.refuse(node, "MatMul without a constant weight matrix is not supported yet")
        return
    for axis, layout in ctx.axes(a).items():
        ctx.tie(node, 0, axis, layout)
        if axis == a.rank - 1:
            ctx.tie(node, 1, 0, layout)
        else:
            ctx.set_layout(y, axis, layout)
    ctx.source(node, 1, 1, y, -1)


def _weight_macs(node: Node, skip_last: bool) -> list[Term]:
    b, y = node.required(1), node.outputs[0]
    if b is None or b.const is None or y.rank is None:
        return []
    skip = {y.rank - 1} if skip_last else {1}
    return [Term(float(static_product(y.shape, skip)), ((b, 0), (b, 1)))]


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


GEMM = OpRule(_gemm, macs=lambda n: _weight_macs(n, skip_last=False), contracts=_gemm_contracts)
MATMUL = OpRule(
    _matmul, macs=lambda n: _weight_macs(n, skip_last=True), contracts=_matmul_contracts
)
