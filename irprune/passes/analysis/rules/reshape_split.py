"""A Reshape that splits one channel axis into several: [.., C, ..] -> [.., d_0, ..., d_k-1, ..].

Position p of the input axis lands at (i_0, ..., i_k-1) with p = i_0 * (d_1 ... d_k-1) + ... +
i_k-1 (row-major). A subset of positions survives as a tensor only when it is a product of
subsets of the d_j, so exactly one output axis j carries channels and the others are kept whole.
With O = d_0 ... d_j-1 and I = d_j+1 ... d_k-1, the input axis is O consecutive *chunks* of
d_j * I positions, and i_j selects a run of I positions inside a chunk. Axis j can carry a layout
L (span d_j) when every chunk is L with each channel's ``inner`` (a fixed segment's span) scaled
by I:

- O == 1: the input is L with blocks of I positions per unit of L. Whole heads: the input
  Segment(r, H, inner=D) split into (H, D) gives axis H Segment(r, H), axis D kept whole;
  Segment(r, n, inner=2) split into (n, 2) gives axis n Segment(r, n).
- O > 1: each chunk carries the same channel subset, so the chunks' layouts must have the same
  geometry and their roots are joined (``set_layout`` once per chunk). Segment(r, n, outer=g)
  split into (g, n) gives axis n Segment(r, n); a concat [Segment(a, n), Segment(b, n)] split
  into (2, n) (ShuffleNet v2's channel shuffle) gives axis n Segment(a, n) with a and b joined.

The first axis j (in order) that fits without changing any group is taken. Next, an axis with
O > 1 whose chunks differ only in block sizes is made to fit by coarsening the finer groups to
the coarser blocks (after a first shuffle, ShuffleNet v2's pass-through half has blocks of 2
and its branch's fresh channels are paired to match; blocks double with every unit). Last, the
first axis of size > 1 is used with the groups coarsened into blocks of I positions
(``blocks.align``): a plain Segment(r, C) split into (H, D) prunes whole heads (r becomes
Segment(r', H, inner=D)), a channel shuffle's (g, C / g) keeps or drops whole sub-blocks. When
that cannot be done either (a block straddles two segments, sizes do not divide), the node is
refused. A run that splits and merges at once ([a, b] -> [c, d] with no 1:1 factor) is refused.
"""

from __future__ import annotations

from dataclasses import replace
from math import lcm, prod
from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.layout import Layout, Segment
from irprune.passes.analysis.rules import blocks

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def chunks(layout: Layout, count: int) -> list[Layout] | None:
    """``layout`` as ``count`` consecutive equal chunks (a repeated segment may span several,
    one repetition or more per chunk); None when a segment straddles a chunk boundary."""
    size = lay.span(layout) // count
    out: list[list[Segment]] = [[] for _ in range(count)]
    pos = 0
    for s in layout:
        k, off = divmod(pos, size)
        if off + s.span <= size:
            out[k].append(s)
        elif off == 0 and size % (s.size * s.inner) == 0 and s.span % size == 0:
            per_chunk = replace(s, outer=size // (s.size * s.inner))
            out[k : k + s.span // size] = [[*c, per_chunk] for c in out[k : k + s.span // size]]
        else:
            return None
        pos += s.span
    return [tuple(c) for c in out]


def _aligned(layout: Layout, unit: int) -> bool:
    try:
        return blocks.misaligned(layout, unit) is None
    except ValueError:
        return False


def _exact(layout: Layout, dims: list[int]) -> tuple[int, list[Layout]] | None:
    """The first output axis that carries the channels as they are, with its chunks' layouts."""
    for j, d in enumerate(dims):
        if d == 1:
            continue
        inner = prod(dims[j + 1 :])
        parts = chunks(layout, prod(dims[:j]))
        if (
            parts is not None
            and all(_aligned(c, inner) for c in parts)
            and all(lay.same_geometry(parts[0], c) for c in parts)
        ):
            return j, [blocks.rescale(c, inner, 1) for c in parts]
    return None


def _unify(ctx: Context, parts: list[Layout], unit: int) -> bool:
    """Coarsen groups so all chunks get the same geometry, aligned to ``unit``: the segments at
    each place must have the same span and no outer repeat; each group's blocks grow to the lcm
    of the ``inner`` at that place (ShuffleNet v2: a half that went through an earlier shuffle
    has blocks of 2, 4, ...; the other half's fresh channels are coarsened to match)."""
    if any(len(c) != len(parts[0]) for c in parts):
        return False
    plan: dict[int, int] = {}
    for place in zip(*parts, strict=True):
        if any(s.span != place[0].span or s.outer != 1 for s in place):
            return False
        if any((s.root is None) != (place[0].root is None) for s in place):
            return False
        target = lcm(unit, *(s.inner for s in place))
        for s in place:
            if s.root is not None and s.inner != target:
                if s.size % (target // s.inner) or plan.get(s.root, target) != target:
                    return False
                plan[s.root] = target
    inners = {s.root: s.inner for c in parts for s in c if s.root is not None}
    return all(ctx.coarsen(r, target // inners[r]) for r, target in plan.items())


def _unified(
    ctx: Context, node: Node, axis: int, dims: list[int]
) -> tuple[int, list[Layout]] | None:
    """The first output axis with several chunks that can be made to match by coarsening."""
    x = node.required(0)
    for j, d in enumerate(dims):
        layout = ctx.get(x, axis)
        parts = chunks(layout, prod(dims[:j])) if layout is not None and d > 1 else None
        if parts is not None and len(parts) > 1 and _unify(ctx, parts, prod(dims[j + 1 :])):
            current = ctx.get(x, axis)
            return _exact(current, dims) if current is not None else None
    return None


def _coarsened(ctx: Context, node: Node, axis: int, dims: list[int]) -> tuple[int, list[Layout]]:
    """The first output axis of size > 1, the groups coarsened into blocks of the axes after it."""
    j = next((k for k, d in enumerate(dims) if d > 1), 0)
    inner = prod(dims[j + 1 :])
    aligned = blocks.align(ctx, node.required(0), axis, inner)
    return j, ([blocks.rescale(aligned, inner, 1)] if aligned is not None else [])


def split_axis(ctx: Context, node: Node, src: range, dst: range) -> bool:
    """Carry the channel axis ``src`` of the Reshape's input onto the output axes ``dst`` it is
    split into; refuse (and return False) when no output axis can carry it."""
    x, y = node.required(0), node.outputs[0]
    dims = [y.static_dim(k) for k in dst]
    known = [d for d in dims if d is not None]
    layout = ctx.get(x, src.start)
    if len(src) != 1 or layout is None or len(known) != len(dims):
        ctx.refuse(node, "splits and merges channel axes at once (or sizes are unknown)")
        return False
    j, parts = (
        _exact(layout, known)
        or _unified(ctx, node, src.start, known)
        or _coarsened(ctx, node, src.start, known)
    )
    current = ctx.get(x, src.start)
    if not parts or current is None:
        ctx.refuse(node, f"splits a channel axis into {tuple(known)}: no axis can carry it whole")
        return False
    ctx.tie(node, 0, src.start, current)
    for part in parts:
        ctx.set_layout(y, dst.start + j, part)
    return True
