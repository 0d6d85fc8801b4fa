"""Normalisations whose statistics span several channels.

LayerNormalization (opset 17) and RMSNormalization (opset 23) over the axes ``axis`` and after
(N = x.shape[axis:]):
    y[i, j] = scale[j] * (x[i, j] - mean_j x[i, :]) / std_j x[i, :] + bias[j],  i < axis <= j
Every output of the normalised axes depends on every input of them, so removing a channel there
changes all the others: those axes are not mapped (their groups freeze, with the reason
"LayerNormalization normalises over the channel axis"); scale and bias span only the normalised
axes, so they follow them (frozen too). The axes before ``axis`` pass through 1:1 to y and to the
Mean / InvStdDev outputs (same rank, size 1 on the normalised axes).

GroupNormalization (opset 18 / 21) of x [N, C, ...] into G = num_groups groups of B = C / G
channels:
    y[n, c] = scale[.] * (x[n, c] - mean(x[n, group(c)])) / std(x[n, group(c)]) + bias[.]
Each group's statistics only read its own B channels, so whole groups can go: x's channel layout
is coarsened until every group of B positions lies inside one channel block (``blocks.align``),
y carries it 1:1, and scale/bias follow it per channel (opset >= 21, shape [C]) or per group
(opset 18, shape [G]: the layout with ``inner`` divided by B). ``num_groups`` becomes the new
C / B. When a group straddles two channel groups (or sizes do not divide) the node is refused.
The batch axis passes through; the spatial axes are normalised over, so they are not mapped.

The form torch exports for nn.GroupNorm (Reshape [N, C, H, W] -> [N, G, -1],
InstanceNormalization, Reshape back, per-channel Mul/Add) is handled by the Reshape rule
(``regroup.merge_split``) and the per-channel InstanceNormalization rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.rules import blocks
from irprune.passes.analysis.rules.base import NodeEdit, OpRule, RewriteView

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _layer_norm(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None:
        return
    first = node.attr("axis", -1) % max(x.rank, 1)
    for axis, layout in ctx.axes(x).items():
        if axis >= first:
            ctx.refuse(node, f"{node.op_type} normalises over the channel axis")
            continue
        ctx.tie(node, 0, axis, layout)
        for out in node.outputs:
            if out.rank == x.rank:
                ctx.set_layout(out, axis, layout)


def _group_size(node: Node) -> int | None:
    """Channels per group (B = C / num_groups), when the shapes say."""
    c, groups = node.required(0).static_dim(1), node.attr("num_groups")
    if c is None or not groups or c % groups:
        return None
    return c // groups


def _group_norm(ctx: Context, node: Node) -> None:
    x, y = node.required(0), node.outputs[0]
    for axis, layout in ctx.axes(x).items():
        if axis == 0:
            ctx.tie(node, 0, 0, layout)
            ctx.set_layout(y, 0, layout)
        elif axis > 1:
            ctx.refuse(node, "GroupNormalization normalises over the spatial axes")
    if ctx.get(x, 1) is None:
        return
    unit = _group_size(node)
    aligned = blocks.align(ctx, x, 1, unit) if unit is not None else None
    if unit is None or aligned is None:
        ctx.refuse(
            node,
            f"GroupNormalization: its groups of {unit or '?'} channels do not fall on whole "
            "blocks of one channel group",
        )
        return
    ctx.tie(node, 0, 1, aligned)
    ctx.set_layout(y, 1, aligned)
    per_group = ctx.opset < 21  # GroupNormalization-18: scale and bias per group
    params = blocks.rescale(aligned, unit, 1) if per_group else aligned
    for i in (1, 2):
        if node.input(i) is not None:
            ctx.tie(node, i, 0, params)


def _group_norm_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    x, unit = node.required(0), _group_size(node)
    new = (view.shape(x) or (None, None))[1]
    if unit is None or not isinstance(new, int) or new == x.static_dim(1):
        return None
    return NodeEdit(attrs={"num_groups": new // unit})


LAYER_NORM = OpRule(_layer_norm)
GROUP_NORM = OpRule(_group_norm, rewrite=_group_norm_rewrite)
