"""Ops that move channels between axes or positions without computing on them.

Concat on axis a: the output axis is the inputs' axes one after another, so its layout lists their
segments in order (an input without a layout adds a fixed segment of its size). Every other axis
is shared by all inputs and tied like an elementwise op.

Flatten(axis=k) of [d0, ..., dn] -> [d0*...*d(k-1), dk*...*dn]; Reshape that merges contiguous
axes: a channel axis m merged with others lands at positions
    offset * inner + o * (C * inner) + c * inner + i
where inner is the product of the merged dims after m and the outer count that of those before
(``layout.merge_axes``). Axes kept whole by a Reshape pass through. A Reshape that splits a
channel axis (heads x head_dim, a channel shuffle's groups) is mapped by ``reshape_split``. The
Reshape's constant target shape is rewritten with the new sizes (entries of -1 stay -1).
Targets computed at run time (Shape -> Gather -> Concat) are read and checked by
``dynamic_shape``; runs that merge a channel axis and split it again (nn.GroupNorm's export), or
split it into dims known only from such a target, are mapped by ``regroup``.

Transpose: output axis k is input axis perm[k]. Squeeze/Unsqueeze: axes are renumbered around the
removed or inserted size-1 axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from irprune.ir import Node, Shape
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.layout import Segment
from irprune.passes.analysis.rules import dynamic_shape, regroup, reshape_split
from irprune.passes.analysis.rules.base import (
    NodeEdit,
    OpRule,
    RewriteView,
    axes_arg,
    const_ints,
)

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _concat(ctx: Context, node: Node) -> None:
    out = node.outputs[0]
    if out.rank is None:
        ctx.refuse(node, "output shape unknown")
        return
    axis = node.attr("axis") % out.rank
    present = [(i, v) for i, v in enumerate(node.inputs) if v is not None]
    if any(ctx.get(v, axis) for _, v in present):
        segments: list[Segment] = []
        for i, v in present:
            layout = ctx.get(v, axis)
            if layout is None:
                size = v.static_dim(axis)
                if size is None:
                    ctx.refuse(node, f"concatenated input {v.name!r} has unknown size")
                    return
                if size:
                    segments.append(Segment(None, size))
            else:
                ctx.tie(node, i, axis, layout)
                segments.extend(layout)
        ctx.set_layout(out, axis, tuple(segments))
    for k in range(out.rank):
        if k == axis:
            continue
        layout = next((lt for _, v in present if (lt := ctx.get(v, k))), None)
        if layout is not None:
            ctx.set_layout(out, k, layout)
            for i, _ in present:
                ctx.tie(node, i, k, layout)


def _merge_into(ctx: Context, node: Node, dims: Shape, run: range, out_axis: int) -> bool:
    """Carry the (at most one) channel axis in ``run`` of the input onto ``out_axis``."""
    x = node.required(0)
    carried = [a for a in run if ctx.get(x, a) is not None]
    if not carried:
        return True
    if len(carried) > 1:
        ctx.refuse(node, "merges two channel axes")
        return False
    m = carried[0]
    before, after = dims[run.start : m], dims[m + 1 : run.stop]
    sizes = [_int(d) for d in (*before, *after)]
    if any(d is None for d in sizes):
        ctx.refuse(node, "merges a channel axis with dims of unknown size")
        return False
    layout = ctx.get(x, m)
    assert layout is not None
    outer = int(np.prod([d for d in sizes[: len(before)] if d is not None]))
    inner = int(np.prod([d for d in sizes[len(before) :] if d is not None]))
    merged = lay.merge_axes(layout, outer, inner)
    if merged is None:
        ctx.refuse(node, "merge repeats several channel segments")
        return False
    ctx.tie(node, 0, m, layout)
    ctx.set_layout(node.outputs[0], out_axis, merged)
    return True


def _flatten(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.shape is None:
        return
    k = node.attr("axis", 1) % (x.rank + 1) if x.rank else 0
    if _merge_into(ctx, node, x.shape, range(0, k), 0):
        _merge_into(ctx, node, x.shape, range(k, len(x.shape)), 1)


def _int(dim: object) -> int | None:
    return dim if isinstance(dim, int) else None


def _axis_runs(src: Shape, dst: Shape) -> list[tuple[range, range]] | None:
    """Pair runs of input axes with runs of output axes of equal size (a Reshape's structure)."""
    runs: list[tuple[range, range]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        if src[i] == dst[j]:
            runs.append((range(i, i + 1), range(j, j + 1)))
            i, j = i + 1, j + 1
            continue
        p, q = _int(src[i]), _int(dst[j])
        if p is None or q is None:
            return None
        i0, j0 = i, j
        i, j = i + 1, j + 1
        while p != q:
            a = _int(src[i]) if p < q and i < len(src) else None
            b = _int(dst[j]) if q < p and j < len(dst) else None
            if a is not None:
                p, i = p * a, i + 1
            elif b is not None:
                q, j = q * b, j + 1
            else:
                return None
        runs.append((range(i0, i), range(j0, j)))
    rest_ok = all(d == 1 for d in src[i:]) and all(d == 1 for d in dst[j:])
    return runs if rest_ok else None


def _reshape(ctx: Context, node: Node) -> None:
    x, y = node.required(0), node.outputs[0]
    target = dynamic_shape.read_target(ctx, node)  # constant or computed at run time
    carried = ctx.axes(x)
    if target is None or not carried:
        if target is not None:
            target.check(ctx)
        return
    runs = _axis_runs(target.in_dims, target.out_dims)
    if runs is None:
        runs = dynamic_shape.match_runs(target.in_dims, target.out_dims)
    if runs is None:
        ctx.refuse(node, "cannot match input and output axes")
        target.fail(ctx)
        return
    for src, dst in runs:
        if not any(a in carried for a in src):
            continue
        if len(dst) == 1:
            ok = _merge_into(ctx, node, target.in_dims, src, dst.start)
        elif len(src) == 1 and all(y.static_dim(k) is not None for k in dst):
            ok = reshape_split.split_axis(ctx, node, src, dst)
        else:
            ok = regroup.merge_split(ctx, node, target, src, dst)
        if not ok:
            target.fail(ctx)
            return
    target.check(ctx)


def _reshape_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    target = const_ints(node.input(1))
    new_out = view.shape(node.outputs[0])
    if target is None or new_out is None or new_out == node.outputs[0].shape:
        return None
    updated = [
        t if t == -1 or (t == 0 and old == new) else new
        for t, old, new in zip(target, node.outputs[0].shape or (), new_out, strict=True)
    ]
    return NodeEdit(const_inputs={1: np.asarray(updated, dtype=np.int64)})


def _transpose(ctx: Context, node: Node) -> None:
    x, y = node.required(0), node.outputs[0]
    if x.rank is None:
        return
    perm = node.attr("perm") or list(reversed(range(x.rank)))
    for k, src in enumerate(perm):
        layout = ctx.get(x, src)
        if layout is not None:
            ctx.tie(node, 0, src, layout)
            ctx.set_layout(y, k, layout)


def _renumber(ctx: Context, node: Node, squeeze: bool) -> None:
    x, y = node.required(0), node.outputs[0]
    if x.rank is None or y.rank is None or not ctx.axes(x):
        return
    axes = axes_arg(ctx.opset, node, since=13)
    if axes is None and node.input(1) is not None:
        ctx.refuse(node, "axes are computed at run time")
        return
    if squeeze:
        removed = (
            {a % x.rank for a in axes}
            if axes
            else {a for a, d in enumerate(x.shape or ()) if d == 1}
        )
        kept = [a for a in range(x.rank) if a not in removed]
        mapping = {a: k for k, a in enumerate(kept)}
    else:
        inserted = {a % y.rank for a in axes or ()}
        targets = [k for k in range(y.rank) if k not in inserted]
        mapping = dict(enumerate(targets))
    for axis, layout in ctx.axes(x).items():
        if axis in mapping:
            ctx.tie(node, 0, axis, layout)
            ctx.set_layout(y, mapping[axis], layout)


CONCAT = OpRule(_concat, rewrite=dynamic_shape.concat_rewrite)
FLATTEN = OpRule(_flatten)
RESHAPE = OpRule(_reshape, rewrite=_reshape_rewrite)
TRANSPOSE = OpRule(_transpose)
SQUEEZE = OpRule(lambda ctx, node: _renumber(ctx, node, squeeze=True))
UNSQUEEZE = OpRule(lambda ctx, node: _renumber(ctx, node, squeeze=False))
