"""The ``drop`` rewrite: physically remove the channels a plan does not keep.

One transaction. First, with the graph untouched, compute everything: for every value axis whose
layout holds a shrinking group, the surviving positions (``layout.positions``); the sliced data of
every such constant (weights, biases, BN parameters, per-channel constants, Gemm columns); the new
shape of every such activation; and each node's own edits from its rule (a depthwise conv's
``group``, a Reshape's target shape). Then apply them all. A constant input edited for one node
but read by others is cloned rather than changed under them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from irprune.ir import Graph, Node, Shape, Value
from irprune.ir.mapped import release
from irprune.passes.allocation import Plan
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.rules import RULES, NodeEdit
from irprune.passes.analysis.rules.base import RewriteView

log = logging.getLogger(__name__)


_INT64 = 7  # ONNX TensorProto.INT64: the only dtype rewrite hooks add (shape-like inputs)


def _onnx_dtype(data: np.ndarray) -> int:
    if data.dtype != np.int64:
        raise ValueError(f"rewrite hooks add int64 inputs only, got {data.dtype}")
    return _INT64


@dataclass(frozen=True)
class DropSummary:
    constants_sliced: int
    shapes_changed: int
    nodes_edited: int


def drop(graph: Graph, analysis: ChannelAnalysis, plan: Plan) -> DropSummary:
    kept = dict(plan.kept)
    new_const: dict[Value, np.ndarray] = {}
    new_shape: dict[Value, Shape] = {}
    for name, axes in analysis.layouts.items():
        touched = [(a, lt) for a, lt in axes.items() if lay.roots(lt) & kept.keys()]
        if not touched:
            continue
        value = graph.values[name]
        if value.const is not None:
            data = value.const
            for axis, layout in touched:
                data = np.take(data, lay.positions(layout, kept), axis=axis)
            new_const[value] = data
            release(value.const)  # a mapped weight: only the sliced copy stays resident
        else:
            dims = list(value.shape or ())
            for axis, layout in touched:
                dims[axis] = len(lay.positions(layout, kept))
            new_shape[value] = tuple(dims)

    def shape_of(v: Value) -> Shape | None:
        if v in new_const:
            return tuple(new_const[v].shape)
        return new_shape.get(v, v.shape)

    view = RewriteView(
        shape=shape_of,
        layout=lambda v, axis: analysis.layout(v.name, axis),
        positions=lambda layout: lay.positions(layout, kept),
    )
    edits: list[tuple[Node, NodeEdit]] = []
    for node in graph.nodes:
        rule = RULES.get(node.key)
        if rule is not None and rule.rewrite is not None:
            edit = rule.rewrite(node, view)
            if edit is not None:
                edits.append((node, edit))
    _apply(graph, new_const, new_shape, edits)
    summary = DropSummary(len(new_const), len(new_shape), len(edits))
    log.info("drop: %s", summary)
    return summary


def _apply(
    graph: Graph,
    new_const: dict[Value, np.ndarray],
    new_shape: dict[Value, Shape],
    edits: list[tuple[Node, NodeEdit]],
) -> None:
    for value, data in new_const.items():
        value.const = data
        value.shape = tuple(data.shape)
    for value, shape in new_shape.items():
        value.shape = shape
    for node, edit in edits:
        node.attrs.update(edit.attrs)
        for name in edit.drop_attrs:
            node.attrs.pop(name, None)
        for i, data in sorted(edit.const_inputs.items()):
            old = node.input(i)
            if old is None:
                base = f"{node.name or node.op_type}_input{i}"
                added = Value(graph.unique_name(base), _onnx_dtype(data), data.shape, const=data)
                graph.add_value(added)
                graph.set_input(node, i, added)
            elif len(old.uses) == 1 and not graph.is_graph_output(old):
                old.const, old.shape = data, tuple(data.shape)
            else:
                clone = Value(
                    graph.unique_name(old.name),
                    old.dtype,
                    tuple(data.shape),
                    const=data,
                    storage=old.storage,
                )
                graph.add_value(clone)
                graph.set_input(node, i, clone)
