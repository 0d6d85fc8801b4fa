"""Constants broadcast by Expand to a run-time shape: a class token joining a channel group.

A ViT prepends a learned class token (and DeiT a distillation token) to the patch tokens:
``cls_token.expand(B, -1, -1)`` then Concat on the token axis. The Expand's data input is a
constant c (shape [1, 1, D]); its target shape is built at run time from Shape(tokens) (the batch
B), so y = Expand(c, target) is not a constant, and a rule tying y's channel axis to the patch
tokens' layout would find a value with fixed channels.

Index map: Expand aligns c to y from the right (numpy broadcasting). For y's axis k and c's axis
a = k - (rank(y) - rank(c)), when c's dim D on a is not a broadcast 1 and equals y's dim,

    y[..., j, ...] = c[..., j, ...]        (j on axis k / axis a, every other index broadcast)

so channel j of y's axis k is channel j of the constant's axis a: when a consumer ties y's axis k
to a layout L, c's axis a takes L (the constant is sliced with the group, like a per-channel
bias) and y carries L. After slicing, y's dim on k must follow the new width by itself: the
target's entry aligned with k must be 1 (then y's dim is c's), or, for a constant target, equal
to D (the Expand rule's rewrite writes the new width there). Any other entry (a literal in a
shape computed at run time, a size read from another tensor, an unreadable target), a broadcast
axis of c, or a data input that is neither a constant nor a chain of Identity / Cast / Transpose
from one (``const_chain``) is not mapped: ``carry`` returns False and the caller freezes the
group (fail closed).

Pure positional ops, so the masked-equivalence oracle holds with the token's removed channels
zeroed, as every other member's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.layout import Layout
from irprune.passes.analysis.rules import const_chain, dynamic_shape

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _expand_axis(node: Node, axis: int) -> int | None:
    """The axis of the Expand's data input that the output's ``axis`` copies, or None."""
    x, y = node.required(0), node.outputs[0]
    if x.rank is None or y.rank is None:
        return None
    a = axis - (y.rank - x.rank)
    dim = x.static_dim(a) if a >= 0 else None
    if dim is None or dim == 1 or y.static_dim(axis) != dim:
        return None
    target = node.input(1)
    got = dynamic_shape.entries(target)
    if target is None or got is None or len(got) > y.rank:
        return None
    j = axis - (y.rank - len(got))
    if j < 0:
        return a  # the target does not reach this axis: c's dim is kept
    entry = got[j]
    return a if entry == 1 or (entry == dim and target.const is not None) else None


def carry(ctx: Context, node: Node, index: int, axis: int, layout: Layout) -> bool:
    """Tie ``layout`` on input ``index``'s ``axis`` of ``node`` through the Expand of a
    constant that produces it; False (nothing changed) when that input is not such a value."""
    value = node.inputs[index]
    link = value.producer if value is not None else None
    if value is None or link is None or link.key != ("", "Expand") or value.rank is None:
        return False
    data = link.required(0)
    a = _expand_axis(link, axis % value.rank)
    if a is None or not const_chain.is_const(data):
        return False
    if data.static_dim(a) != lay.span(layout):
        return False
    const_chain.tie(ctx, link, 0, a, layout)
    ctx.set_layout(value, axis, layout)
    return True
