"""Ops that take contiguous pieces of a channel axis: offset maps.

Split on axis a into sizes s_0, s_1, ...: output k holds input positions
[s_0 + ... + s_(k-1), s_0 + ... + s_k) of that axis. The input's layout is cut at those offsets
(``Context.cut`` refines a group that straddles a cut into two groups, in every tensor it
reaches), and each output carries the segments between its offsets. Other axes pass through to
every output. After slicing, the sizes are the outputs' new widths, written as the ``split``
input (attribute before opset 13); an even ``num_outputs`` split (opset 18) becomes explicit.
A cut inside a block (a head) or a repeated segment is refused.
"""

from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np

from irprune.ir import Node
from irprune.passes.analysis.layout import Layout, Segment
from irprune.passes.analysis.rules.base import NodeEdit, OpRule, RewriteView

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _pieces(layout: Layout, sizes: list[int]) -> list[Layout] | None:
    """The segments of ``layout`` that fall into each consecutive piece of ``sizes``."""
    out: list[list[Segment]] = [[] for _ in sizes]
    ends = list(accumulate(sizes))
    k = pos = 0
    for s in layout:
        while k < len(sizes) and pos >= ends[k]:
            k += 1
        if k == len(sizes) or pos + s.span > ends[k]:
            return None
        out[k].append(s)
        pos += s.span
    return [tuple(p) for p in out]


def _split(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None:
        return
    axis = node.attr("axis", 0) % x.rank
    if ctx.get(x, axis) is not None:
        sizes = [o.static_dim(axis) for o in node.outputs]
        known = [s for s in sizes if s is not None]
        if len(known) != len(sizes):
            ctx.refuse(node, "split sizes are unknown")
            return
        layout = ctx.cut(x, axis, list(accumulate(known))[:-1])
        pieces = _pieces(layout, known) if layout is not None else None
        if layout is None or pieces is None:
            ctx.refuse(node, "a split point falls inside a block of channels")
            return
        ctx.tie(node, 0, axis, layout)
        for out, piece in zip(node.outputs, pieces, strict=True):
            if piece:
                ctx.set_layout(out, axis, piece)
    for a, layout in ctx.axes(x).items():
        if a != axis:
            ctx.tie(node, 0, a, layout)
            for out in node.outputs:
                ctx.set_layout(out, a, layout)


def _split_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    x = node.required(0)
    if x.rank is None:
        return None
    axis = node.attr("axis", 0) % x.rank
    old = [o.shape[axis] if o.shape else None for o in node.outputs]
    new = [(view.shape(o) or ())[axis] for o in node.outputs]
    if new == old:
        return None
    sizes = np.asarray(new, dtype=np.int64)
    if "split" in node.attrs:
        return NodeEdit(attrs={"split": [int(s) for s in sizes]})
    return NodeEdit(const_inputs={1: sizes}, drop_attrs=("num_outputs",))


SPLIT = OpRule(_split, rewrite=_split_rewrite)
