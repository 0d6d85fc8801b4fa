"""The least-squares refit of a recurrent node's input projection (LSTM, GRU, RNN).

A recurrent node is not linear in its input, but its gates' input part is: per direction d,
``P_d = X W_d^T + Wb_d`` ([rows, gates * hidden], one row per time step and sample), and
everything else the node computes (R H_{t-1}, the gate functions, the state) reads X only
through P. When input features are dropped, refitting W' and Wb' so that the pruned X
reproduces the original's P (its rows of the kept hidden units, when those are pruned too) is
the same problem as refitting a linear layer (``refit``), with the original P as the target:
it is computed from the original node's input and weights, since P is no value of the graph.
All directions read the same X, so they are solved together as one consumer whose outputs are
the D * gates * hidden gate rows.

Rows are taken batch-major (``layout`` 0 gives X as [seq, batch, input]; it is moved to
[batch, seq, input]) so that a sample's rows are contiguous, as the held-out split expects.
The bias lives in B's first half (Wb; Rb, the second half, is left as it is); a node without B
gets one (Rb zero) only when new parameters are allowed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from irprune.ir import Graph, Node, Value
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.layout import Layout
from irprune.passes.analysis.rules.recurrent import RECURRENT_OPS


def is_recurrent(node: Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in RECURRENT_OPS


def batch_major(node: Node, x: np.ndarray) -> np.ndarray:
    """X as [batch, seq, input]."""
    return x if node.attr("layout", 0) == 1 else np.moveaxis(x, 1, 0)


def _weights(node: Node) -> np.ndarray:
    w = node.required(1).const
    assert w is not None
    return w.astype(np.float64)  # [D, G * H, I]


def _input_bias(node: Node) -> np.ndarray:
    """Wb as [D * G * H] (zeros without B)."""
    w = _weights(node)
    b = node.input(3)
    rows = w.shape[0] * w.shape[1]
    if b is None or b.const is None:
        return np.zeros(rows)
    return b.const[:, : w.shape[1]].astype(np.float64).reshape(rows)


def gate_inputs(original: Node, x: np.ndarray) -> np.ndarray:
    """The original's P for its input ``x`` (as the graph gives it): [rows, D * G * H]."""
    w = _weights(original)
    rows = batch_major(original, x).reshape(-1, w.shape[2]).astype(np.float64)
    return rows @ w.reshape(-1, w.shape[2]).T + _input_bias(original)


def kept_rows(original: Node, layout: Layout | None, kept: Mapping[int, np.ndarray]) -> np.ndarray:
    """Which of the original's D * G * H gate rows survive: the rows of its kept hidden units
    (``layout``: W's axis 1, gates x hidden; None when the hidden size is not pruned)."""
    w = original.required(1).const
    assert w is not None  # refit_targets keeps constant weights only
    directions, rows = int(w.shape[0]), int(w.shape[1])
    per_direction = lay.positions(layout, kept) if layout is not None else np.arange(rows)
    return (np.arange(directions)[:, None] * rows + per_direction[None]).ravel()


def design(node: Node, x: np.ndarray) -> np.ndarray:
    return batch_major(node, x).reshape(-1, x.shape[-1])


def unknowns(node: Node, bias: bool) -> int:
    return int(_weights(node).shape[2]) + int(bias)


def current(node: Node, bias: bool) -> np.ndarray:
    """The weights as pruned in a solution's layout: [I (+1), D * G * H]."""
    w = _weights(node)
    coef = w.reshape(-1, w.shape[2]).T
    return np.concatenate([coef, _input_bias(node)[None]], axis=0) if bias else coef


def can_take_bias(node: Node, new_params: bool) -> bool:
    b = node.input(3)
    return new_params or (b is not None and b.const is not None and len(b.uses) == 1)


def write(node: Node, graph: Graph, sol: np.ndarray, has_bias: bool) -> None:
    w = node.required(1)
    assert w.const is not None
    d, rows, _ = w.const.shape
    coef = sol[:-1] if has_bias else sol
    w.const = coef.T.reshape(d, rows, -1).astype(w.const.dtype)
    if not has_bias:
        return
    bias = sol[-1].reshape(d, rows)
    b = node.input(3)
    if b is not None and b.const is not None and len(b.uses) == 1:
        full = b.const.copy()
        full[:, :rows] = bias
        b.const = full.astype(b.const.dtype)
        return
    base = b.const if b is not None and b.const is not None else np.zeros((d, 2 * rows))
    full = np.array(base, dtype=w.const.dtype)
    full[:, :rows] = bias
    name = graph.unique_name(f"{node.name or node.op_type}_B")
    value = graph.add_value(Value(name, w.dtype, full.shape, const=full))
    graph.set_input(node, 3, value)
