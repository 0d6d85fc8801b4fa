"""LSTM, GRU and RNN: their input features are contracted with W; everything else is fixed.

For each time step t and direction d (ONNX, ``layout`` 0: X is [seq, batch, input_size]; 1:
[batch, seq, input_size]), every gate g computes

    g_t = f(X_t W_g^T + H_{t-1} R_g^T + Wb_g + Rb_g)   (LSTM: i, o, f, c; GRU: z, r, h; RNN: one)

with W [num_directions, gates * hidden, input_size] and R [num_directions, gates * hidden,
hidden]. X's feature axis (2) is summed against W's axis 2 and nowhere else, so removing input
feature k is exact when W[:, :, k] goes with it: X's axis 2 and W's axis 2 share one layout (W a
constant, possibly through a Cast/Identity/Transpose chain). The hidden size is not a channel
here: it is carried by R on both sides (a recurrence), by the gate blocks of W, B and P, by the
initial and final states and by Y's last axis, so Y, Y_h and Y_c carry no layout and a layout on
X's time or batch axis is refused. Nothing is rewritten on the node itself (no attribute names
the input size).

MACs per time step, direction and sample: gates * hidden * (input_size + hidden), counted from
W's and R's dims (the elementwise gate arithmetic is not counted, as for activations elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.rules import const_chain
from irprune.passes.analysis.rules.base import Contraction, OpRule, Term

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def _recurrent(ctx: Context, node: Node) -> None:
    x, w = node.required(0), node.required(1)
    axes = ctx.axes(x)
    if not axes:
        return
    if set(axes) - {2} or x.rank != 3:
        ctx.refuse(node, f"{node.op_type} with channels on its time or batch axis")
        return
    if not const_chain.is_const(w) or w.rank != 3:
        ctx.refuse(node, f"{node.op_type} whose W is not a constant [directions, gates, input]")
        return
    layout = axes[2]
    ctx.tie(node, 0, 2, layout)
    const_chain.tie(ctx, node, 1, 2, layout)


def _recurrent_macs(node: Node) -> list[Term]:
    x, w, r = node.required(0), node.required(1), node.required(2)
    if x.rank != 3 or w.rank != 3 or r.rank != 3:
        return []
    steps = ((x, 0), (x, 1))  # seq x batch, in either layout
    return [
        Term(1.0, (*steps, (w, 0), (w, 1), (w, 2))),
        Term(1.0, (*steps, (r, 0), (r, 1), (r, 2))),
    ]


def _recurrent_contracts(node: Node) -> list[Contraction]:
    w = node.input(1)
    if w is None or w.const is None or w.const.ndim != 3:
        return []
    return [Contraction(data=0, data_axis=2, weight=1, weight_axis=2)]


RECURRENT = OpRule(_recurrent, macs=_recurrent_macs, contracts=_recurrent_contracts)
