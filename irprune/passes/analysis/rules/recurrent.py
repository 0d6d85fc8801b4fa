"""LSTM, GRU and RNN: input features contracted with W, and the hidden size as a group.

For each time step t and direction d (ONNX, ``layout`` 0: X is [seq, batch, input_size]; 1:
[batch, seq, input_size]), every gate g computes

    g_t = f(X_t W_g^T + H_{t-1} R_g^T + Wb_g + Rb_g)   (LSTM: i, o, f, c; GRU: z, r, h; RNN: one)

with W [num_directions, gates * hidden, input_size], R [num_directions, gates * hidden, hidden],
B [num_directions, 2 * gates * hidden] (Wb then Rb), LSTM's peepholes P [num_directions,
3 * hidden], initial states [num_directions, batch, hidden].

- **Input features.** X's feature axis (2) is summed against W's axis 2 and nowhere else, so
  removing input feature k is exact when W[:, :, k] goes with it: X's axis 2 and W's axis 2 share
  one layout (W a constant, possibly through a Cast/Identity/Transpose chain). A layout on X's
  time or batch axis is refused.
- **Hidden units** are a new group (its sources W and R, rows in gate blocks). Unit k is row k
  of every gate block of W, R, Wb, Rb and P (a layout with ``outer`` = gates, 2 * gates, 3), the
  k-th column of R (the recurrence reads H_{t-1}), entry k of the initial states and of Y, Y_h,
  Y_c's last axis (in either ``layout``). Removing all of them removes unit k: the other units
  then compute what they computed with h_k held at 0, the state that the masked original has.
  Both directions keep the same units (``hidden_size`` is one attribute), which the rewrite
  sets to the new width. Initial states must be constants (sliced) or absent; the constant-fold
  pass drops all-zero ones computed at run time (zero is the default state, so that is exact).

MACs per time step, direction and sample: gates * hidden * (input_size + hidden), counted from
W's and R's dims (the elementwise gate arithmetic is not counted, as for activations elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis.layout import Segment
from irprune.passes.analysis.rules import const_chain
from irprune.passes.analysis.rules.base import (
    Contraction,
    NodeEdit,
    OpRule,
    RewriteView,
    Term,
)

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _recurrent(ctx: Context, node: Node) -> None:
    _input_features(ctx, node)
    _hidden_units(ctx, node)


def _input_features(ctx: Context, node: Node) -> None:
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


def _hidden_units(ctx: Context, node: Node) -> None:
    """The hidden size as a group; without constant W and R it stays fixed (Y carries no
    layout, so nothing downstream can be tied to it)."""
    w, r = node.required(1), node.required(2)
    if w.const is None or r.const is None or w.const.ndim != 3 or r.const.ndim != 3:
        return
    gates = GATES[node.op_type]
    hidden = int(r.const.shape[2])
    if w.const.shape[1] != gates * hidden or r.const.shape[1] != gates * hidden:
        return  # not a valid node; onnxruntime will say so
    layout = ctx.source(node, 1, 1, None, 0, outer=gates)
    root = layout[0].root
    assert root is not None
    ctx.add_source(root, node, 2, 1, node.outputs[0])
    ctx.tie(node, 2, 1, (Segment(root, hidden, outer=gates),))
    ctx.tie(node, 2, 2, layout)
    blocks = {3: 2 * gates, 5: 1, 6: 1, 7: 3}  # B, initial_h, initial_c, P: entries per unit
    for index, outer in blocks.items():
        if node.input(index) is not None:
            axis = 2 if index in (5, 6) else 1
            ctx.tie(node, index, axis, (Segment(root, hidden, outer=outer),))
    for out in node.outputs[:3]:  # an unread output of unknown shape constrains nothing
        if out.rank is not None or out.uses or ctx.graph.is_graph_output(out):
            ctx.set_layout(out, -1, layout)


def _hidden_size(node: Node, view: RewriteView) -> NodeEdit | None:
    shape = view.shape(node.required(2))
    if not shape or not isinstance(shape[2], int) or shape[2] == node.attr("hidden_size"):
        return None
    return NodeEdit(attrs={"hidden_size": shape[2]})


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


RECURRENT = OpRule(
    _recurrent, rewrite=_hidden_size, macs=_recurrent_macs, contracts=_recurrent_contracts
)
