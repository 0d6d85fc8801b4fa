"""Convolution and its per-channel normalisation.

Conv, W of shape [C_out, C_in / group, k...]:
    y[n, o] = b[o] + sum over i in o's group and the kernel of W[o, i, ...] * x[n, i, ...]
- group == 1: W axis 1 is tied to x's channel axis (a consumer: sliced, not scored) and W axis 0
  is a new source of channels, shared by y's channel axis and the bias.
- depthwise (group == C_in == C_out): y channel o depends only on x channel o, so y carries x's
  layout 1:1, W axis 0 and the bias are sliced with it, and ``group`` becomes the new width.
- any other grouping is not handled yet: the input is left unmapped (its groups freeze) and the
  output channels are fixed.
MACs = (product of y's non-channel dims) * numel(W).

BatchNormalization / InstanceNormalization (inference form):
    y[n, c] = scale[c] * (x[n, c] - mean[c]) / sqrt(var[c] + eps) + B[c]
each channel is independent, so y carries x's channel layout and every parameter is sliced on
axis 0 with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.rules.base import (
    Contraction,
    NodeEdit,
    OpRule,
    RewriteView,
    Term,
    static_product,
)

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _is_depthwise(node: Node) -> bool:
    w = node.required(1)
    group = node.attr("group", 1)
    cin = node.required(0).static_dim(1)
    return (
        group > 1
        and w is not None
        and w.const is not None
        and (group == cin == w.const.shape[0] and w.const.shape[1] == 1)
    )


def _conv(ctx: Context, node: Node) -> None:
    x, w, y = node.required(0), node.input(1), node.outputs[0]
    if w is None or w.const is None:
        ctx.refuse(node, "weights are not constant")
        return
    group = node.attr("group", 1)
    xl = ctx.get(x, 1)
    if group == 1:
        if xl is not None:
            ctx.tie(node, 0, 1, xl)
            ctx.tie(node, 1, 1, xl)
        out = ctx.source(node, 1, 0, y, 1)
    elif _is_depthwise(node):
        if xl is None:
            return
        ctx.tie(node, 0, 1, xl)
        ctx.tie(node, 1, 0, xl)
        ctx.set_layout(y, 1, xl)
        out = xl
    else:
        ctx.refuse(node, f"grouped convolution (group={group}) is not supported yet")
        return
    if node.input(2) is not None:
        ctx.tie(node, 2, 0, out)


def _conv_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    if not _is_depthwise(node):
        return None
    shape = view.shape(node.required(0))
    assert shape is not None and isinstance(shape[1], int)
    return NodeEdit(attrs={"group": shape[1]})


def _conv_macs(node: Node) -> list[Term]:
    w, y = node.required(1), node.outputs[0]
    if w is None or w.const is None:
        return []
    coef = static_product(y.shape, skip={1})
    return [Term(float(coef), tuple((w, a) for a in range(w.const.ndim)))]


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


def _conv_contracts(node: Node) -> list[Contraction]:
    w = node.input(1)
    if node.attr("group", 1) != 1 or w is None or w.const is None:
        return []
    return [Contraction(data=0, data_axis=1, weight=1, weight_axis=1)]


CONV = OpRule(_conv, rewrite=_conv_rewrite, macs=_conv_macs, contracts=_conv_contracts)
NORM = OpRule(_norm)
