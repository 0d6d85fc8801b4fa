"""Ops that take contiguous pieces of a channel axis: offset maps.

Split on axis a into sizes s_0, s_1, ...: output k holds input positions
[s_0 + ... + s_(k-1), s_0 + ... + s_k) of that axis. The input's layout is cut at those offsets
(``Context.cut`` refines a group that straddles a cut into two groups, in every tensor it
reaches), and each output carries the segments between its offsets. Other axes pass through to
every output. After slicing, the sizes are the outputs' new widths, written as the ``split``
input (attribute before opset 13); an even ``num_outputs`` split (opset 18) becomes explicit.
A cut inside a block (a head) or a repeated segment is refused.

Slice with step 1 on a channel axis (bounds clamped as ONNX does: a negative bound counts from
the end, then both are clamped to [0, C]): y[..., k, ...] = x[..., start + k, ...] for
k < end - start. The input's layout is cut at start and end and y carries the segments between;
axes not sliced (or without channels) pass through. Bounds are attributes before opset 10 and
constant inputs from 10 on; after slicing, start and end become the numbers of surviving
positions before them. Another step, or bounds computed at run time, on a channel axis: refused.

Gather on a channel axis with constant 1-D indices i_0, i_1, ... that form one ascending run
(i_k = i_0 + k, negative indices counting from the end) is the Slice [i_0, i_0 + len): the same
cut, and the indices are rewritten as the surviving run. Any other index set, a scalar index
(which removes the axis), or indices computed at run time, on a channel axis: refused. Other
axes pass through (those after the gathered axis move by rank(indices) - 1).
"""

from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np

from irprune.ir import Node, Value
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.layout import Layout, Segment
from irprune.passes.analysis.rules.base import NodeEdit, OpRule, RewriteView, const_ints

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


def ints_like(value: Value | None, data: list[int]) -> np.ndarray:
    """``data`` as an array of ``value``'s integer type (the inputs an edit replaces)."""
    dtype = value.const.dtype if value is not None and value.const is not None else np.int64
    return np.asarray(data, dtype=dtype)


def _clamp(bound: int, dim: int) -> int:
    """A Slice bound as ONNX reads it for step 1: negative counts from the end, then clamped."""
    return min(max(bound + dim if bound < 0 else bound, 0), dim)


def _take_range(ctx: Context, node: Node, axis: int, lo: int, hi: int) -> Layout | None:
    """Cut input 0's layout on ``axis`` at ``lo`` and ``hi``; the segments between (or None)."""
    x = node.required(0)
    if hi <= lo:
        ctx.refuse(node, "takes an empty range of a channel axis")
        return None
    layout = ctx.cut(x, axis, [lo, hi])
    if layout is None:
        ctx.refuse(node, "a range boundary falls inside a block of channels")
        return None
    pieces = _pieces(layout, [lo, hi - lo, lay.span(layout) - hi])
    assert pieces is not None  # the cut put both bounds on segment boundaries
    return pieces[1]


def _carry(ctx: Context, node: Node, ranges: dict[int, tuple[int, int]], moved: int = 0) -> None:
    """Tie every channel axis of input 0. An axis in ``ranges`` gives y the piece of its layout in
    that range; the others pass through, those after the first ranged axis shifted by ``moved``
    (a Gather's index axes replace its gathered axis)."""
    x, y = node.required(0), node.outputs[0]
    pieces = {}
    for axis, (lo, hi) in ranges.items():
        piece = _take_range(ctx, node, axis, lo, hi)
        if piece is None:
            return
        pieces[axis] = piece
    after = node.attr("axis", 0) % (x.rank or 1) if moved else 0
    for axis, layout in ctx.axes(x).items():
        ctx.tie(node, 0, axis, layout)
        out = pieces.get(axis, layout)
        if lay.roots(out):
            ctx.set_layout(y, axis + moved if axis > after else axis, out)


def _bound_list(node: Node, name: str, index: int) -> list[int] | None:
    if name in node.attrs:
        return [int(v) for v in node.attrs[name]]
    return const_ints(node.input(index))


def _slice_spec(node: Node, rank: int) -> dict[int, tuple[int, int, int] | None] | None:
    """axis -> (start, end, step), None for an axis whose bounds are computed at run time;
    None when the sliced axes themselves are."""
    starts, ends = _bound_list(node, "starts", 1), _bound_list(node, "ends", 2)
    axes = _bound_list(node, "axes", 3)
    has_steps = node.input(4) is not None
    steps = const_ints(node.input(4)) if has_steps else None
    if axes is None and node.input(3) is not None:
        return None
    if axes is None:
        count = len(starts) if starts is not None else node.required(1).static_dim(0)
        if count is None:
            return None
        axes = list(range(count))
    spec: dict[int, tuple[int, int, int] | None] = {}
    for i, axis in enumerate(axes):
        if starts is None or ends is None or (has_steps and steps is None):
            spec[axis % rank] = None
        else:
            spec[axis % rank] = (starts[i], ends[i], steps[i] if steps is not None else 1)
    return spec


def _slice(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None or not ctx.axes(x):
        return
    spec = _slice_spec(node, x.rank)
    if spec is None:
        ctx.refuse(node, "sliced axes are computed at run time")
        return
    ranges: dict[int, tuple[int, int]] = {}
    for axis in ctx.axes(x):
        if axis not in spec:
            continue
        bounds, dim = spec[axis], x.static_dim(axis)
        if bounds is None or dim is None:
            ctx.refuse(node, "bounds on a channel axis are computed at run time")
            return
        if bounds[2] != 1:
            ctx.refuse(node, f"step {bounds[2]} on a channel axis")
            return
        ranges[axis] = (_clamp(bounds[0], dim), _clamp(bounds[1], dim))
    _carry(ctx, node, ranges)


def _new_range(view: RewriteView, x: Value, axis: int, lo: int, hi: int) -> tuple[int, int]:
    """Where [lo, hi) of ``axis`` lands once the axis is sliced."""
    layout = view.layout(x, axis)
    if layout is None:
        return lo, hi
    kept = view.positions(layout)
    return int(np.searchsorted(kept, lo)), int(np.searchsorted(kept, hi))


def _slice_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    x = node.required(0)
    if x.rank is None:
        return None
    spec = _slice_spec(node, x.rank)
    starts, ends = _bound_list(node, "starts", 1), _bound_list(node, "ends", 2)
    if spec is None or starts is None or ends is None:
        return None
    changed = False
    for i, axis in enumerate(spec):
        dim = x.static_dim(axis)
        if dim is None or view.layout(x, axis) is None:
            continue
        lo, hi = _clamp(starts[i], dim), _clamp(ends[i], dim)
        new = _new_range(view, x, axis, lo, hi)
        if new != (lo, hi):
            starts[i], ends[i], changed = new[0], new[1], True
    if not changed:
        return None
    if "starts" in node.attrs:
        return NodeEdit(attrs={"starts": starts, "ends": ends})
    return NodeEdit(
        const_inputs={1: ints_like(node.input(1), starts), 2: ints_like(node.input(2), ends)}
    )


def _gather_run(node: Node) -> tuple[int, int] | str:
    """The [lo, hi) run the constant indices take on the gathered axis, or why there is none."""
    x, indices = node.required(0), node.required(1).const
    axis = node.attr("axis", 0) % (x.rank or 1)
    dim = x.static_dim(axis)
    if indices is None or dim is None:
        return "indices on a channel axis are computed at run time"
    if indices.ndim != 1:
        if indices.ndim == 0:
            return "a scalar index removes a channel axis"
        return "multi-dimensional indices on a channel axis"
    idx = np.where(indices < 0, indices + dim, indices).astype(np.int64)
    if idx.size == 0 or np.any(np.diff(idx) != 1):
        return "indices on a channel axis are not one ascending run"
    return int(idx[0]), int(idx[-1]) + 1


def _gather(ctx: Context, node: Node) -> None:
    x, indices = node.required(0), node.required(1)
    if x.rank is None or not ctx.axes(x):
        return
    if indices.rank is None:
        ctx.refuse(node, "indices of unknown rank")
        return
    axis = node.attr("axis", 0) % x.rank
    ranges: dict[int, tuple[int, int]] = {}
    if axis in ctx.axes(x):
        run = _gather_run(node)
        if isinstance(run, str):
            ctx.refuse(node, run)
            return
        ranges[axis] = run
    _carry(ctx, node, ranges, moved=indices.rank - 1)


def _gather_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    x, indices = node.required(0), node.required(1)
    axis = node.attr("axis", 0) % (x.rank or 1)
    if view.layout(x, axis) is None or indices.const is None:
        return None
    run = _gather_run(node)
    if isinstance(run, str):
        return None
    lo, hi = _new_range(view, x, axis, *run)
    if (lo, hi) == run:
        return None
    return NodeEdit(const_inputs={1: np.arange(lo, hi, dtype=indices.const.dtype)})


SPLIT = OpRule(_split, rewrite=_split_rewrite)
SLICE = OpRule(_slice, rewrite=_slice_rewrite)
GATHER = OpRule(_gather, rewrite=_gather_rewrite)
