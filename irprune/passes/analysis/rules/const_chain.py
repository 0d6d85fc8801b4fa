"""Weights reached through a chain of Identity / Cast / Transpose from a constant.

Exporters sometimes feed a weight through such ops (Gemm B = Transpose(W), a Cast of an fp16
initializer, an Identity left by deduplication). Each op in the chain maps its output axis k to
input axis k (Identity, Cast) or perm[k] (Transpose), so a layout required on the chain's end is
the same layout on the constant's matching axis: ``tie`` and ``source`` carry it down the chain
(``set_layout`` on every intermediate value, ``tie`` on every chain op's input), and the constant
is sliced like any other weight. The chain's ops keep their own rules; their outputs simply
carry the layout. A chain value read by anything else than the next op of the chain leaves that
use unmapped, so its groups freeze (fail closed).

``Context.tie`` does not look through chains itself: a non-constant input without a layout
freezes the group (e.g. an Add whose bias is Identity(initializer)). Calling ``tie`` below from
``Context.tie`` for that case would extend this to every rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node, Value
from irprune.passes.analysis.layout import Layout

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context

_CHAIN_OPS = frozenset({("", "Identity"), ("", "Cast"), ("", "Transpose")})


def _link(value: Value) -> Node | None:
    """The chain op producing ``value`` (None when ``value`` is not made by one)."""
    node = value.producer
    return node if node is not None and node.key in _CHAIN_OPS else None


def is_const(value: Value | None) -> bool:
    """True for a constant, or a value computed from one by a chain of Identity/Cast/Transpose."""
    while value is not None and value.const is None:
        node = _link(value)
        value = node.required(0) if node is not None else None
    return value is not None


def _input_axis(node: Node, axis: int) -> int:
    if node.op_type != "Transpose":
        return axis
    rank = node.outputs[0].rank or 0
    perm = node.attr("perm") or list(reversed(range(rank)))
    return int(perm[axis])


def tie(ctx: Context, node: Node, index: int, axis: int, layout: Layout) -> None:
    """``ctx.tie``, carrying the layout down a constant chain first when input ``index`` is one."""
    value = node.inputs[index]
    if value is not None and value.rank and value.const is None and is_const(value):
        axis %= value.rank
        if ctx.get(value, axis) is None:
            link = _link(value)
            assert link is not None
            tie(ctx, link, 0, _input_axis(link, axis), layout)
            ctx.set_layout(value, axis, layout)
    ctx.tie(node, index, axis, layout)


def source(
    ctx: Context, node: Node, w_index: int, w_axis: int, out: Value, out_axis: int
) -> Layout:
    """``ctx.source`` for a weight that is a constant or a constant chain's end.

    Through a chain, the source is recorded on the chain op that reads the constant (its weight
    is that constant), and every value up the chain carries the new layout.
    """
    weight = node.required(w_index)
    if weight.const is not None:
        return ctx.source(node, w_index, w_axis, out, out_axis)
    link = _link(weight)
    assert link is not None and weight.rank
    w_axis %= weight.rank
    layout = source(ctx, link, 0, _input_axis(link, w_axis), weight, w_axis)
    ctx.tie(node, w_index, w_axis, layout)
    ctx.set_layout(out, out_axis, layout)
    return layout
