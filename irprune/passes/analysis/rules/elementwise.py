"""Elementwise ops: channels pass through unchanged.

Unary ops (Relu, Sigmoid, Clip, Cast, Identity, Dropout, ...): y[..., c, ...] = f(x[..., c, ...]),
so every axis of the output carries the input's layout, on every output of the same rank (a
Dropout mask too). Scalar side inputs (Clip's min/max, Dropout's ratio) carry none.

Broadcasting ops (Add, Sub, Mul, Div, Pow, PRelu, Max, Min, Sum, Mean, Where): inputs are aligned
to the output from the right (numpy broadcasting). For each output axis, every input axis aligned
with it whose size is not a broadcast 1 is tied to one layout: residual adds join their groups, a
per-channel constant (shape [C,1,1], [1,C,1,1]) is sliced along with them, and a non-constant
input with fixed channels freezes the group.

Softmax-like ops normalise over one axis (opset >= 13; before 13, over the flattened axes from
``axis`` on): a channel removed there would change every other value, so those axes are not mapped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.layout import Layout
from irprune.passes.analysis.rules.base import OpRule

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def _unary(ctx: Context, node: Node) -> None:
    x = node.required(0)
    for axis, layout in ctx.axes(x).items():
        ctx.tie(node, 0, axis, layout)
        for out in node.outputs:
            if out.rank == x.rank:
                ctx.set_layout(out, axis, layout)


def _broadcast(ctx: Context, node: Node) -> None:
    out = node.outputs[0]
    if out.rank is None:
        ctx.refuse(node, "output shape unknown")
        return
    for k in range(out.rank):
        broadcast_axis(ctx, node, k, range(len(node.inputs)), ctx.tie)


Tie = Callable[[Node, int, int, Layout], None]


def broadcast_axis(ctx: Context, node: Node, k: int, inputs: Iterable[int], tie: Tie) -> None:
    """Output axis ``k`` of a broadcasting op: the inputs' axes aligned with it from the right
    (not a broadcast 1) share the first layout found among them; ``tie`` binds each."""
    out = node.outputs[0]
    assert out.rank is not None
    aligned = []
    for i in inputs:
        v = node.input(i)
        if v is None or v.rank is None:
            continue
        a = k - (out.rank - v.rank)
        if a < 0 or (v.static_dim(a) == 1 and out.static_dim(k) != 1):
            continue
        aligned.append((i, a, ctx.get(v, a)))
    layout = next((lt for _, _, lt in aligned if lt is not None), None)
    if layout is None:
        return
    ctx.set_layout(out, k, layout)
    for i, a, _ in aligned:
        tie(node, i, a, layout)


def _softmax(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None:
        return
    axis = node.attr("axis", -1 if ctx.opset >= 13 else 1) % x.rank
    mixed = {axis} if ctx.opset >= 13 else set(range(axis, x.rank))
    for a, layout in ctx.axes(x).items():
        if a not in mixed:
            ctx.tie(node, 0, a, layout)
            ctx.set_layout(node.outputs[0], a, layout)
    if any(a in mixed for a in ctx.axes(x)):
        ctx.refuse(node, "normalises over the channel axis")


UNARY = OpRule(_unary)
BROADCAST = OpRule(_broadcast)
SOFTMAX = OpRule(_softmax)

UNARY_OPS = [
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Mish",
    "Gelu",
    "Erf",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "ThresholdedRelu",
    "Identity",
    "Dropout",
    "Cast",
    "Not",
    "IsNaN",
    "IsInf",
]
BROADCAST_OPS = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "PRelu",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "And",
    "Or",
    "Equal",
    "Less",
    "Greater",
]
SOFTMAX_OPS = ["Softmax", "LogSoftmax", "Hardmax"]
