"""Pooling and reductions.

Pooling (MaxPool, AveragePool, LpPool and their Global forms) works per channel:
    y[n, c, ...] = pool over a window of x[n, c, ...]
so y's batch and channel axes carry x's layouts; spatial axes are not mapped. MaxPool's Indices
output encodes flat positions that include the channel, so a used Indices output is refused.

Reductions (ReduceMean, ReduceSum, ReduceMax, ...) over ``axes``: every axis not reduced carries
its layout to the output (shifted left past removed axes when keepdims=0). Reducing over an axis
that carries channels mixes them, so that axis is not mapped (its groups freeze).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.rules.base import OpRule, axes_arg

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _pool(ctx: Context, node: Node) -> None:
    if len(node.outputs) > 1 and node.outputs[1].uses:
        ctx.refuse(node, "MaxPool Indices output is used")
        return
    for axis, layout in ctx.axes(node.required(0)).items():
        if axis in (0, 1):
            ctx.tie(node, 0, axis, layout)
            ctx.set_layout(node.outputs[0], axis, layout)


_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _reduce(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None:
        return
    since = _AXES_INPUT_SINCE.get(node.op_type, 18)
    axes = axes_arg(ctx.opset, node, since)
    if axes is None and ctx.opset >= since and node.input(1) is not None:
        ctx.refuse(node, "reduction axes are computed at run time")
        return
    if not axes:
        reduced = set() if node.attr("noop_with_empty_axes", 0) else set(range(x.rank))
    else:
        reduced = {a % x.rank for a in axes}
    keep = node.attr("keepdims", 1)
    for axis, layout in ctx.axes(x).items():
        if axis in reduced:
            ctx.refuse(node, "reduces over the channel axis")
            continue
        out_axis = axis if keep else axis - sum(1 for r in reduced if r < axis)
        ctx.tie(node, 0, axis, layout)
        ctx.set_layout(node.outputs[0], out_axis, layout)


POOL = OpRule(_pool)
REDUCE = OpRule(_reduce)

POOL_OPS = [
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
]
REDUCE_OPS = [
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ReduceLogSum",
]
