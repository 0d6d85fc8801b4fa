"""Ops that change some axes and leave others alone: channel axes pass through only if left alone.

Each op below computes y[..., c, ...] from x[..., c, ...] alone along every axis it leaves alone,
so such an axis of y carries x's layout (the identity map). An axis carrying channels that the op
changes (or may change: parameters computed at run time) is left unmapped, with the reason, so its
groups freeze.

- Pad: the axes with zero padding at both ends are left alone (any mode: reflect and edge read
  along the padded axes only). Pads are an attribute before opset 11, a constant input from 11,
  restricted to an ``axes`` input from 18.
- Resize (opset >= 10) and Upsample: the axes with scale 1, or with an output size equal to the
  input size, are left alone (every interpolation mode samples exactly the input at scale 1).
  Scales are input 1 in Resize-10 and Upsample-9, input 2 from Resize-11 (sizes input 3), an
  attribute in Upsample-7; from opset 18 they may cover only the ``axes`` attribute. A listed
  axis under tf_crop_and_resize or a keep_aspect_ratio_policy other than stretch is changed.
  A constant ``sizes`` input is rewritten with the new channel counts.
- Tile (opset >= 6): the axes repeated once are left alone. The repeats may be computed at run
  time (``x.repeat(B, 1, 1)``: Concat(Unsqueeze(Shape(y)[0]), [1, 1])): an entry that reads as
  the literal 1 (``dynamic_shape.entries``) is 1 whatever the run-time values; an entry read
  from a run-time size (even one that is 1 at the example) is a tiled axis.
- Expand: x is aligned to the output from the right; an axis whose target entry is 1, or equal
  to x's size, or absent is left alone (an entry equal to x's size is rewritten as the new size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from irprune.ir import Node, Value
from irprune.passes.analysis.rules.base import NodeEdit, OpRule, RewriteView, const_ints
from irprune.passes.analysis.rules.dynamic_shape import entries, resize_sizes_kept
from irprune.passes.analysis.rules.slicing import ints_like

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _pass_through(ctx: Context, node: Node, alone: set[int], why: str, shift: int = 0) -> None:
    """Carry x's channel axes in ``alone`` to y (moved by ``shift``); refuse the others."""
    x, y = node.required(0), node.outputs[0]
    changed = False
    for axis, layout in ctx.axes(x).items():
        if axis in alone:
            ctx.tie(node, 0, axis, layout)
            ctx.set_layout(y, axis + shift, layout)
        else:
            changed = True
    if changed:
        ctx.refuse(node, why)


def _floats(value: Value | None) -> list[float] | None:
    if value is None or value.const is None:
        return None
    return [float(v) for v in np.asarray(value.const).reshape(-1)]


def _pad(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None or not ctx.axes(x):
        return
    rank = x.rank
    axes = list(range(rank))
    if node.input(3) is not None:
        listed = const_ints(node.input(3))
        if listed is None:
            ctx.refuse(node, "padded axes are computed at run time")
            return
        axes = [a % rank for a in listed]
    pads = node.attr("pads", node.attr("paddings"))
    pads = [int(p) for p in pads] if pads is not None else const_ints(node.input(1))
    if pads is None or len(pads) != 2 * len(axes):
        _pass_through(ctx, node, set(range(rank)) - set(axes), "pads are computed at run time")
        return
    n = len(axes)
    padded = {a for i, a in enumerate(axes) if pads[i] or pads[i + n]}
    _pass_through(ctx, node, set(range(rank)) - padded, "pads a channel axis")


def _text(node: Node, name: str, default: str) -> str:
    value = node.attr(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _resize_params(ctx: Context, node: Node) -> tuple[list[float] | None, list[int] | None]:
    """(scales, sizes) when constant and given, else None."""
    if node.op_type == "Upsample":
        scales = node.attr("scales")
        return ([float(s) for s in scales] if scales else _floats(node.input(1))), None
    scales = _floats(node.input(1 if ctx.opset < 11 else 2))
    return scales or None, const_ints(node.input(3))


def _resized_axes(node: Node, rank: int) -> list[int]:
    return [int(a) % rank for a in node.attr("axes", range(rank))]


def _resize(ctx: Context, node: Node) -> None:
    x, y = node.required(0), node.outputs[0]
    if x.rank is None or not ctx.axes(x):
        return
    axes = _resized_axes(node, x.rank)
    scales, sizes = _resize_params(ctx, node)
    alone = set(range(x.rank)) - set(axes)
    runtime: set[int] = set()
    crop = _text(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    if not crop and _text(node, "keep_aspect_ratio_policy", "stretch") == "stretch":
        if scales is not None and len(scales) == len(axes):
            alone |= {a for a, s in zip(axes, scales, strict=True) if s == 1.0}
        elif sizes is not None and len(sizes) == len(axes):
            alone |= {a for a, s in zip(axes, sizes, strict=True) if s == x.static_dim(a)}
        elif node.op_type == "Resize" and ctx.opset >= 11:
            runtime = resize_sizes_kept(node)  # sizes[a] is x's own axis a at run time
            alone |= runtime
    # a run-time size is x's own: y's dim may be unknown to shape inference, never different
    same = {a for a in runtime if y.static_dim(a) in (None, x.static_dim(a))}
    alone = {a for a in alone if y.static_dim(a) == x.static_dim(a) or a in same}
    _pass_through(ctx, node, alone, "resizes a channel axis (or its scales are not constant)")


def _resize_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    x, sizes_in, new_shape = node.required(0), node.input(3), view.shape(node.required(0))
    sizes = const_ints(sizes_in)
    if node.op_type != "Resize" or sizes is None or new_shape is None or x.rank is None:
        return None
    new = list(sizes)
    for i, a in enumerate(_resized_axes(node, x.rank)):
        if view.layout(x, a) is not None and isinstance(dim := new_shape[a], int):
            new[i] = dim
    if new == sizes:
        return None
    return NodeEdit(const_inputs={3: ints_like(sizes_in, new)})


def _tile(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None or not ctx.axes(x):
        return
    repeats = entries(node.input(1)) if ctx.opset >= 6 else None
    alone = {a for a, r in enumerate(repeats or ()) if r == 1}
    _pass_through(ctx, node, alone, "tiles a channel axis (or its repeats are not constant)")


def _expand_entries(node: Node) -> dict[int, int] | None:
    """x's axis -> the entry of the constant target shape aligned with it (from the right)."""
    x, target = node.required(0), const_ints(node.input(1))
    if target is None or x.rank is None:
        return None
    return {a: target[j] for a in range(x.rank) if (j := a + len(target) - x.rank) >= 0}


def _expand(ctx: Context, node: Node) -> None:
    x, y = node.required(0), node.outputs[0]
    if x.rank is None or y.rank is None or not ctx.axes(x):
        return
    entries = _expand_entries(node)
    if entries is None:
        ctx.refuse(node, "target shape is computed at run time")
        return
    alone = {a for a in range(x.rank) if entries.get(a, 1) in (1, x.static_dim(a))}
    _pass_through(ctx, node, alone, "broadcasts a channel axis", y.rank - x.rank)


def _expand_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    x, target_in, new_shape = node.required(0), node.input(1), view.shape(node.required(0))
    entries, target = _expand_entries(node), const_ints(target_in)
    if entries is None or target is None or new_shape is None or x.rank is None:
        return None
    new = list(target)
    for a, entry in entries.items():
        dim = new_shape[a]
        if entry != 1 and view.layout(x, a) is not None and isinstance(dim, int):
            new[a + len(target) - x.rank] = dim
    if new == target:
        return None
    return NodeEdit(const_inputs={1: ints_like(target_in, new)})


PAD = OpRule(_pad)
RESIZE = OpRule(_resize, rewrite=_resize_rewrite)
TILE = OpRule(_tile)
EXPAND = OpRule(_expand, rewrite=_expand_rewrite)
