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

The first axis j (in order) that fits without changing any group is taken, unless the output
axis is *taken apart* further on (through Transposes, a Split into pieces of size 1, as torch's
``unbind`` exports, or a Gather of one index): such an axis can never carry channels (the op
taking it apart removes it), so it is skipped. Next, an axis with
O > 1 whose chunks differ only in block sizes is made to fit by coarsening the finer groups to
the coarser blocks (after a first shuffle, ShuffleNet v2's pass-through half has blocks of 2
and its branch's fresh channels are paired to match; blocks double with every unit). Last, the
first axis of size > 1 is used with the groups coarsened into blocks of I positions
(``blocks.align``): a plain Segment(r, C) split into (H, D) prunes whole heads (r becomes
Segment(r', H, inner=D)), a channel shuffle's (g, C / g) keeps or drops whole sub-blocks. When
that cannot be done either (a block straddles two segments, sizes do not divide), the node is
refused. A run that splits and merges at once ([a, b] -> [c, d] with no 1:1 factor) is refused.

Fused q/k/v (``qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)``): the 3 axis is
taken apart, so it is skipped, and (only when an axis before it was skipped) the axis H with
O = 3 is used: the input's groups are first cut at the chunk boundaries (``Context.cut`` at
multiples of H * hd: the q, k and v rows), each chunk coarsened into blocks of hd (``_unify``),
and the chunks joined. So head h of q, of k and of v (positions c * H * hd + h * hd + i, c < 3,
i < hd) form channel h of one group: removing head h removes it from all three, and the
contractions q @ k^T and attn @ v then sum over the kept heads only (head_dim stays whole).
"""

from __future__ import annotations

from dataclasses import replace
from math import lcm, prod
from typing import TYPE_CHECKING

from irprune.ir import Node, Value
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


def _exact(
    layout: Layout, dims: list[int], skip: frozenset[int] = frozenset()
) -> tuple[int, list[Layout]] | None:
    """The first output axis (not in ``skip``) that carries the channels as they are, with its
    chunks' layouts."""
    for j, d in enumerate(dims):
        if d == 1 or j in skip:
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
    ctx: Context, node: Node, axis: int, dims: list[int], skip: frozenset[int]
) -> tuple[int, list[Layout]] | None:
    """The first output axis with several chunks that can be made to match by coarsening."""
    x = node.required(0)
    for j, d in enumerate(dims):
        layout = ctx.get(x, axis)
        ok = layout is not None and d > 1 and j not in skip
        parts = chunks(layout, prod(dims[:j])) if ok and layout is not None else None
        if parts is not None and len(parts) > 1 and _unify(ctx, parts, prod(dims[j + 1 :])):
            current = ctx.get(x, axis)
            return _exact(current, dims, skip) if current is not None else None
    return None


def _cut_unified(
    ctx: Context, node: Node, axis: int, dims: list[int], skip: frozenset[int]
) -> tuple[int, list[Layout]] | None:
    """Only when an axis before it is taken apart (fused q/k/v): the first output axis with
    several chunks, the groups cut at the chunk boundaries, then coarsened to match."""
    x = node.required(0)
    for j, d in enumerate(dims):
        count = prod(dims[:j])
        if not skip or d == 1 or j in skip or count == 1 or not any(k < j for k in skip):
            continue
        layout = ctx.get(x, axis)
        size = lay.span(layout) // count if layout is not None else 0
        cut = ctx.cut(x, axis, [k * size for k in range(1, count)]) if size else None
        parts = chunks(cut, count) if cut is not None else None
        if parts is not None and _unify(ctx, parts, prod(dims[j + 1 :])):
            current = ctx.get(x, axis)
            return _exact(current, dims, skip) if current is not None else None
        return None
    return None


def _coarsened(
    ctx: Context, node: Node, axis: int, dims: list[int], skip: frozenset[int]
) -> tuple[int, list[Layout]]:
    """The first output axis of size > 1 (not in ``skip``), the groups coarsened into blocks of
    the axes after it."""
    j = next((k for k, d in enumerate(dims) if d > 1 and k not in skip), 0)
    if prod(dims[:j]) > 1:  # the axes before it are not whole blocks of one channel
        return j, []
    inner = prod(dims[j + 1 :])
    aligned = blocks.align(ctx, node.required(0), axis, inner)
    return j, ([blocks.rescale(aligned, inner, 1)] if aligned is not None else [])


_MAX_LOOKAHEAD = 8


def taken_apart(value: Value, axis: int, depth: int = 0) -> bool:
    """True when ``value``'s ``axis`` is, through Transposes / Identities, split into pieces of
    size 1 (``unbind``) or indexed by one scalar (``x[:, 0]``): an axis that cannot carry
    channels."""
    if value.rank is None or depth > _MAX_LOOKAHEAD:
        return False
    axis %= max(value.rank, 1)
    for user, i in value.uses:
        if i != 0:
            continue
        if user.key in (("", "Transpose"), ("", "Identity")):
            perm = user.attr("perm") if user.op_type == "Transpose" else None
            perm = list(perm) if perm is not None else list(range(value.rank))
            if user.op_type == "Transpose" and user.attr("perm") is None:
                perm.reverse()
            if taken_apart(user.outputs[0], perm.index(axis), depth + 1):
                return True
        elif user.key == ("", "Split") and user.attr("axis", 0) % value.rank == axis:
            if all(o.static_dim(axis) == 1 for o in user.outputs):
                return True
        elif user.key == ("", "Gather") and user.attr("axis", 0) % value.rank == axis:
            indices = user.required(1).const
            if indices is not None and indices.ndim == 0:
                return True
    return False


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
    skip = frozenset(j for j, d in enumerate(known) if d > 1 and taken_apart(y, dst.start + j))
    j, parts = (
        _exact(layout, known, skip)
        or _unified(ctx, node, src.start, known, skip)
        or _cut_unified(ctx, node, src.start, known, skip)
        or _coarsened(ctx, node, src.start, known, skip)
    )
    current = ctx.get(x, src.start)
    if not parts or current is None:
        ctx.refuse(node, f"splits a channel axis into {tuple(known)}: no axis can carry it whole")
        return False
    ctx.tie(node, 0, src.start, current)
    for part in parts:
        ctx.set_layout(y, dst.start + j, part)
    return True
