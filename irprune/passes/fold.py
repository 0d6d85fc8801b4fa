"""Constant folding before analysis: weights behind Identity/Cast/Transpose, shape arithmetic.

Exporters leave computations on constants in the graph: a deduplicated initializer read through
``Identity`` (two BN biases that trained to the same values), a ``Transpose`` or ``Cast`` of a
weight, and shape arithmetic (``Shape -> Gather -> Div -> Concat``) whose result is fixed once the
shapes are. Folding them turns the results into constants that the channel rules can slice or
rewrite like any other, instead of freezing the groups they touch.

A node is folded when every input is a constant and it is
- a data-movement op (Identity, Cast, Transpose, Reshape, ...): exact in every dtype;
- arithmetic or comparison whose inputs and outputs are all integer or boolean (shape math):
  float arithmetic is never folded, so no float result changes by a rounding step;
- ``Shape``, or a ``Gather``/``Slice`` of a ``Shape``, reading only dims that are static: a
  symbolic dim (the batch) is never folded, so dynamic dims stay dynamic.
Nodes producing graph outputs, with subgraphs, outside the default domain, or whose result would
exceed ``MAX_ELEMENTS`` stay. Values are computed by onnx's reference implementation.

Then the initial states of LSTM, GRU and RNN nodes that are all zeros (a zero constant, or a
``ConstantOfShape`` of zero, as exporters build them from the run-time batch size) are dropped,
with the nodes that only computed them: a missing initial state is zero by the operators'
definition, so this is exact, and it leaves the hidden size free of run-time shape arithmetic.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from irprune.ir import Graph, Node, Opaque, Value
from irprune.passes.analysis.rules.recurrent import RECURRENT_OPS

log = logging.getLogger(__name__)

MAX_ELEMENTS = 1 << 26

MOVEMENT = frozenset(
    [
        "Identity",
        "Cast",
        "CastLike",
        "Transpose",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Concat",
        "Gather",
        "Slice",
        "Split",
        "Expand",
        "Tile",
        "ConstantOfShape",
        "Range",
        "Size",
    ]
)
INTEGER_MATH = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Mod",
        "Neg",
        "Abs",
        "Max",
        "Min",
        "Sign",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Where",
        "Not",
        "And",
        "Or",
        "Xor",
        "ReduceProd",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
    ]
)


def fold_constants(graph: Graph) -> int:
    """Fold every foldable node in topological order; returns how many were folded."""
    opset = graph.opset_imports.get("", 17)
    narrowed: list[tuple[Value, int]] = []

    def evaluate(node: Node) -> list[np.ndarray] | None:
        arrays = _evaluate(graph, node, opset)
        if arrays is not None:
            narrowed.append((node.outputs[0], _narrow_storage(node)))
        return arrays

    folded = graph.fold_nodes(evaluate)
    for value, storage in narrowed:
        value.storage = storage
    if folded:
        log.info("folded %d constant nodes", folded)
    dropped = drop_zero_states(graph)
    if dropped:
        log.info("dropped %d all-zero recurrent initial states", dropped)
    return folded


_STATES = (5, 6)  # initial_h, initial_c (LSTM)


def drop_zero_states(graph: Graph) -> int:
    """Unset every recurrent node's initial state that is all zeros; returns how many."""
    dropped, producers = 0, []
    for node in graph.nodes:
        if node.op_type not in RECURRENT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for index in _STATES:
            state = node.input(index)
            if state is None or not _all_zero(state):
                continue
            graph.set_input(node, index, None)
            dropped += 1
            if state.producer is not None:
                producers.append(state.producer)
    graph.remove_dead_nodes(producers)
    graph.remove_unused_constants()
    return dropped


def _all_zero(value: Value) -> bool:
    if value.const is not None:
        return not np.any(value.const)
    node = value.producer
    if node is None or node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return False
    fill = node.attr("value")
    if fill is None:
        return True  # the default fill is a float 0
    if not isinstance(fill, Opaque):
        return False
    tensor = onnx.AttributeProto.FromString(fill.data).t
    return not np.any(numpy_helper.to_array(tensor))


_NARROW_FLOATS = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_WIDE_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _narrow_storage(node: Node) -> int:
    """The dtype to keep storing a folded ``Cast`` result in: weights kept as fp16/bf16 and
    cast to float at run time stay that small in the written model (0: no narrower storage)."""
    if node.op_type != "Cast" or not node.inputs or node.inputs[0] is None:
        return 0
    src, out = node.inputs[0], node.outputs[0]
    stored = src.storage or src.dtype
    return stored if stored in _NARROW_FLOATS and out.dtype in _WIDE_FLOATS else 0


def _evaluate(graph: Graph, node: Node, opset: int) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.implicit_inputs:
        return None
    if any(graph.is_graph_output(o) for o in node.outputs):
        return None
    if node.op_type == "Shape":
        return _shape(node)
    picked = _from_shape(node, opset)
    if picked is not None:
        return picked
    inputs = [v for v in node.inputs if v is not None]
    if not all(v.const is not None for v in inputs):
        return None
    if node.op_type in MOVEMENT:
        pass
    elif node.op_type in INTEGER_MATH:
        if not all(_integral(v.const) for v in inputs):
            return None
    else:
        return None
    return _run(node, opset)


def _integral(array: np.ndarray | None) -> bool:
    return array is not None and (np.issubdtype(array.dtype, np.integer) or array.dtype == bool)


def _shape_vector(node: Node) -> list[int | None] | None:
    """The entries of a Shape node's output, None for dims that are not static."""
    x = node.required(0)
    if x.shape is None:
        return None
    dims = [d if isinstance(d, int) else None for d in x.shape]
    rank = len(dims)
    start = node.attr("start", 0)
    end = node.attr("end", rank)
    return dims[start % rank if start < 0 else min(start, rank) : end % rank if end < 0 else end]


def _shape(node: Node) -> list[np.ndarray] | None:
    vector = _shape_vector(node)
    if vector is None or any(d is None for d in vector):
        return None
    return [np.asarray(vector, dtype=np.int64)]


def _from_shape(node: Node, opset: int) -> list[np.ndarray] | None:
    """Gather / Slice of a Shape that picks only static dims."""
    data = node.input(0)
    if node.op_type not in ("Gather", "Slice") or data is None or data.producer is None:
        return None
    if data.producer.op_type != "Shape" or data.producer.domain not in ("", "ai.onnx"):
        return None
    vector = _shape_vector(data.producer)
    rest = node.inputs[1:]
    if vector is None or not all(v is None or v.const is not None for v in rest):
        return None
    marker = np.asarray([-1 if d is None else d for d in vector], dtype=np.int64)
    known = np.asarray([d is not None for d in vector])
    index = np.arange(len(vector), dtype=np.int64)
    picked = _evaluate_op(node, [index, *[v.const if v is not None else None for v in rest]], opset)
    if picked is None or not known[picked[0].astype(np.int64)].all():
        return None
    return [marker[picked[0].astype(np.int64)]]


def _run(node: Node, opset: int) -> list[np.ndarray] | None:
    return _evaluate_op(node, [v.const if v is not None else None for v in node.inputs], opset)


def _evaluate_op(
    node: Node, consts: list[np.ndarray | None], opset: int
) -> list[np.ndarray] | None:
    """Run one node on constant inputs with onnx's reference implementation."""
    names = [f"i{k}" if c is not None else "" for k, c in enumerate(consts)]
    outs = [f"o{k}" for k in range(len(node.outputs))]
    proto = helper.make_node(node.op_type, names, outs)
    for key, value in node.attrs.items():
        if isinstance(value, Opaque):
            proto.attribute.append(onnx.AttributeProto.FromString(value.data))
        else:
            proto.attribute.append(helper.make_attribute(key, value))
    inits = [
        numpy_helper.from_array(np.asarray(c), n)
        for c, n in zip(consts, names, strict=True)
        if c is not None
    ]
    graph = helper.make_graph(
        [proto], "fold", [], [helper.make_empty_tensor_value_info(o) for o in outs], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    # imported here: onnx.reference takes 30 ms to import, and most models fold no node with it
    from onnx.reference import ReferenceEvaluator

    try:
        arrays = ReferenceEvaluator(model).run(None, {})
    except Exception as exc:  # the reference implementation raises many kinds; fold nothing then
        log.debug("not folding %s: %s", node, exc)
        return None
    if any(np.asarray(a).size > MAX_ELEMENTS for a in arrays):
        return None
    return [np.asarray(a) for a in arrays]
