"""Convolution, transposed convolution and their per-channel normalisation.

Conv, W of shape [C_out, C_in / g, k...], groups of cin = C_in / g inputs and cout = C_out / g
outputs:
    y[n, o] = b[o] + sum over i in o's group and the kernel of W[o, i, ...] * x[n, i, ...]
- g == 1: W axis 1 is tied to x's channel axis (a consumer: sliced, not scored) and W axis 0
  is a new source of channels, shared by y's channel axis and the bias.
- g > 1 (grouped, depthwise, depthwise with a channel multiplier): whole groups are kept or
  removed. x's layout is coarsened until every group of cin positions lies inside one channel
  block (``blocks.align``; refused when a group straddles two segments or a size does not
  divide), and input block [j * cin, (j + 1) * cin) maps to output block [j * cout, (j + 1) *
  cout): y, W axis 0 and the bias carry x's layout with ``inner`` scaled by cout / cin. When x's
  channels are one block segment and cin > 1 (ResNeXt, RegNet), W axis 0 is also a source,
  coarsened into blocks of that size and joined with x's blocks, so its filters are scored.
  W axis 1 (positions inside a group) is never sliced; ``group`` becomes new C_in / cin.
MACs = (product of y's non-channel dims) * numel(W).

ConvTranspose, W of shape [C_in, C_out / g, k...]:
    y[n, o] = b[o] + sum over i in o's group and the kernel of W[i, o', ...] * x[n, i, ...]
- g == 1: x's channel axis is tied to W axis 0 (a consumer), W axis 1 is a new source shared by
  y's channel axis and the bias.
- g > 1: as for Conv, with W axis 0 tied to x's (aligned) layout and W axis 1 never sliced.
MACs = (product of x's non-channel dims) * numel(W).

BatchNormalization / InstanceNormalization (inference form):
    y[n, c] = scale[c] * (x[n, c] - mean[c]) / sqrt(var[c] + eps) + B[c]
each channel is independent, so y carries x's channel layout and every parameter is sliced on
axis 0 with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.layout import Layout
from irprune.passes.analysis.rules import blocks
from irprune.passes.analysis.rules.base import (
    Contraction,
    NodeEdit,
    OpRule,
    RewriteView,
    Term,
)

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _group_units(node: Node, transposed: bool) -> tuple[int, int] | None:
    """(inputs, outputs) per group, or None when the shapes do not say."""
    w, group = node.required(1), node.attr("group", 1)
    cin = node.required(0).static_dim(1)
    if w.const is None or cin is None or cin % group:
        return None
    cout = w.const.shape[1] if transposed else w.const.shape[0] // group
    return cin // group, int(cout)


def _grouped(ctx: Context, node: Node, transposed: bool) -> Layout | None:
    """Map x's channels onto y's through whole groups; the layout of y (None: unmapped)."""
    x, y, group = node.required(0), node.outputs[0], node.attr("group", 1)
    units = _group_units(node, transposed)
    if ctx.get(x, 1) is None:
        return None
    if units is None:
        ctx.refuse(node, f"grouped convolution (group={group}) with unknown channel counts")
        return None
    cin, cout = units
    xl = blocks.align(ctx, x, 1, cin)
    if xl is None:
        ctx.refuse(
            node,
            f"grouped convolution (group={group}): its groups of {cin} input channels do not "
            "fall on whole blocks of one channel group",
        )
        return None
    ctx.tie(node, 0, 1, xl)
    out = blocks.rescale(xl, cin, cout)
    if transposed:
        ctx.tie(node, 1, 0, xl)
    elif cin > 1 and len(out) == 1 and out[0].root is not None and out[0].outer == 1:
        src = ctx.source(node, 1, 0, y, 1)
        assert src[0].root is not None and xl[0].root is not None
        if not ctx.coarsen(src[0].root, out[0].inner):  # C_out = blocks * inner: cannot fail
            ctx.freeze(src + xl, f"{ctx.label(node)}: output channels cannot follow the groups")
            return src
        block = ctx.get(y, 1)
        assert block is not None and block[0].root is not None
        ctx.join(block[0].root, xl[0].root, f"{ctx.label(node)} groups")
        return block
    else:
        ctx.tie(node, 1, 0, out)
    ctx.set_layout(y, 1, out)
    return out


def _conv(ctx: Context, node: Node, transposed: bool = False) -> None:
    x, w, y = node.required(0), node.input(1), node.outputs[0]
    if w is None or w.const is None:
        ctx.refuse(node, "weights are not constant")
        return
    if node.attr("group", 1) > 1:
        out = _grouped(ctx, node, transposed)
    else:
        w_in, w_out = (0, 1) if transposed else (1, 0)
        xl = ctx.get(x, 1)
        if xl is not None:
            ctx.tie(node, 0, 1, xl)
            ctx.tie(node, 1, w_in, xl)
        out = ctx.source(node, 1, w_out, y, 1)
    if out is not None and node.input(2) is not None:
        ctx.tie(node, 2, 0, out)


def _conv_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    group = node.attr("group", 1)
    x = node.required(0)
    old, new = x.static_dim(1), (view.shape(x) or (None, None))[1]
    if group == 1 or old is None or not isinstance(new, int) or new == old:
        return None
    return NodeEdit(attrs={"group": new // (old // group)})


def _conv_macs(node: Node, transposed: bool = False) -> list[Term]:
    w = node.required(1)
    spatial = node.required(0) if transposed else node.outputs[0]
    # A computed weight (QDQ's DequantizeLinear, a graph input) costs the same as a constant one.
    w_rank = w.const.ndim if w.const is not None else w.rank
    if w_rank is None:
        return []
    rank = spatial.rank or 0
    dims = tuple((spatial, a) for a in range(rank) if a != 1)
    return [Term(1.0, (*dims, *((w, a) for a in range(w_rank))))]


def _norm(ctx: Context, node: Node) -> None:
    if len([o for o in node.outputs if o.uses]) > 1 or node.attr("training_mode", 0):
        ctx.refuse(node, "training-mode normalisation")
        return
    layout = ctx.get(node.required(0), 1)
    if layout is None:
        return
    ctx.tie(node, 0, 1, layout)
    ctx.set_layout(node.outputs[0], 1, layout)
    for i in range(1, len(node.inputs)):
        if node.inputs[i] is not None:
            ctx.tie(node, i, 0, layout)


def _conv_contracts(node: Node, transposed: bool = False) -> list[Contraction]:
    """Conv (ConvTranspose) with group 1 sums input channels against W axis 1 (axis 0); the
    repair rewrites use this."""
    w = node.input(1)
    if node.attr("group", 1) != 1 or w is None or w.const is None:
        return []
    return [Contraction(data=0, data_axis=1, weight=1, weight_axis=0 if transposed else 1)]


CONV = OpRule(_conv, rewrite=_conv_rewrite, macs=_conv_macs, contracts=_conv_contracts)
CONV_TRANSPOSE = OpRule(
    lambda ctx, node: _conv(ctx, node, transposed=True),
    rewrite=_conv_rewrite,
    macs=lambda node: _conv_macs(node, transposed=True),
    contracts=lambda node: _conv_contracts(node, transposed=True),
)
NORM = OpRule(_norm)
