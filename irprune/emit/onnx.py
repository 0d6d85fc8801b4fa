"""IR graph -> ``onnx.ModelProto``.

The model template saved by the frontend supplies everything outside the main graph, graph inputs
and outputs are written from their original ValueInfoProto (names, dtypes, symbolic dims, doc
strings kept) unless a pass changed their shape, and every other value's shape goes into
value_info so downstream tools need not re-infer it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from irprune.ir import Graph, Node, Opaque, Value

DEFAULT_IR_VERSION = 10  # onnxruntime 1.31 loads IR versions up to 13; onnx 1.23 stamps 14


TensorFactory = Callable[[np.ndarray, str], onnx.TensorProto]


def to_model(graph: Graph, *, tensor: TensorFactory = numpy_helper.from_array) -> onnx.ModelProto:
    """The model; ``tensor(array, name)`` makes each initializer (the streaming emitter passes
    one that writes the data to a file and returns an external reference)."""
    model = _model_shell(graph)
    model.graph.CopyFrom(_graph_proto(graph, tensor))
    return model


def slice_model(
    graph: Graph, nodes: list[Node], inputs: list[Value], outputs: list[Value]
) -> onnx.ModelProto:
    """``nodes`` (in graph order) alone as a model: ``inputs`` are its graph inputs, the constants
    the nodes read its initializers, ``outputs`` its graph outputs. For running part of a graph."""
    model = _model_shell(graph)
    consts: dict[int, Value] = {}
    for node in nodes:
        for v in (*node.inputs, *node.implicit_inputs):
            if v is not None and v.is_const:
                consts[id(v)] = v
    inits, casts = _initializers(graph, consts.values(), set(), numpy_helper.from_array)
    model.graph.CopyFrom(
        helper.make_graph(
            nodes=[*casts, *(_node_proto(n) for n in nodes)],
            name=f"{graph.name}_slice",
            inputs=[_value_info(v) for v in inputs],
            outputs=[_value_info(v) for v in outputs],
            initializer=inits,
        )
    )
    return model


def _model_shell(graph: Graph) -> onnx.ModelProto:
    """The model template (opsets, functions, metadata) without a graph."""
    model = onnx.ModelProto()
    template = graph.meta.get("template")
    if template:
        model.ParseFromString(template)
    else:
        model.ir_version = DEFAULT_IR_VERSION
        for domain, version in graph.opset_imports.items():
            model.opset_import.append(helper.make_opsetid(domain, version))
    return model


def _initializers(
    graph: Graph, constants: Iterable[Value], inputs: set[int], tensor: TensorFactory
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Initializers for ``constants``, and the widening Casts behind narrow-stored ones."""
    inits: list[onnx.TensorProto] = []
    casts: list[onnx.NodeProto] = []
    for v in constants:
        if v.storage and v.storage != v.dtype and id(v) not in inputs:
            stored = _stored_name(graph, v.name)
            dtype = helper.tensor_dtype_to_np_dtype(v.storage)
            inits.append(tensor(np.asarray(v.const).astype(dtype), stored))
            casts.append(helper.make_node("Cast", [stored], [v.name], to=v.dtype))
        else:
            inits.append(tensor(np.asarray(v.const), v.name))
    return inits, casts


def _graph_proto(graph: Graph, tensor: TensorFactory) -> onnx.GraphProto:
    io: dict[str, bytes] = graph.meta.get("io", {})
    boundary = {id(v) for v in (*graph.inputs, *graph.outputs)}
    inputs = {id(v) for v in graph.inputs}
    used = (v for v in graph.constants() if v.uses or id(v) in boundary)
    inits, casts = _initializers(graph, used, inputs, tensor)
    value_info = [
        _value_info(v)
        for v in graph.values.values()
        if not v.is_const and id(v) not in boundary and v.shape is not None and v.dtype
    ]
    proto = helper.make_graph(
        nodes=[*casts, *(_node_proto(n) for n in graph.nodes)],
        name=graph.name,
        inputs=[_boundary_info(v, io) for v in graph.inputs],
        outputs=[_boundary_info(v, io) for v in graph.outputs],
        initializer=inits,
        doc_string=graph.meta.get("graph_doc") or None,
        value_info=value_info,
    )
    return proto


def _stored_name(graph: Graph, name: str) -> str:
    """A fresh name for the narrow-dtype initializer behind a widening Cast."""
    stored, k = f"{name}_stored", 0
    while stored in graph.values:
        k += 1
        stored = f"{name}_stored{k}"
    return stored


def _value_info(v: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        v.name, v.dtype, list(v.shape) if v.shape is not None else None
    )


def _boundary_info(v: Value, io: dict[str, bytes]) -> onnx.ValueInfoProto:
    original = io.get(v.name)
    if original is not None:
        vi = onnx.ValueInfoProto.FromString(original)
        if v.const is None or _declared_shape(vi) == tuple(v.const.shape):
            return vi
    if v.const is not None:
        return helper.make_tensor_value_info(v.name, v.dtype, list(v.const.shape))
    if v.shape is None:
        raise ValueError(f"graph boundary value {v.name!r} has no known type")
    return _value_info(v)


def _declared_shape(vi: onnx.ValueInfoProto) -> tuple[Any, ...]:
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)


def _node_proto(node: Node) -> onnx.NodeProto:
    proto = helper.make_node(
        node.op_type,
        inputs=[v.name if v is not None else "" for v in node.inputs],
        outputs=[v.name for v in node.outputs],
        name=node.name or None,
        domain=node.domain or None,
        doc_string=node.doc_string or None,
    )
    for key, value in node.attrs.items():
        proto.attribute.append(_attr_proto(key, value))
    return proto


def _attr_proto(key: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, Opaque):
        return onnx.AttributeProto.FromString(value.data)
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    return helper.make_attribute(key, value)
