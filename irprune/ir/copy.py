"""A structural copy of a graph (torch-free; the torch backend and the training transforms use
it)."""

from __future__ import annotations

from irprune.ir.graph import Graph, Node, Value


def copy_structure(graph: Graph) -> Graph:
    """A copy of the graph's structure (values, nodes, links) that shares the constant arrays
    (never mutated in place: ``update_graph`` assigns new ones) and the emitter's metadata."""
    new = Graph(name=graph.name, opset_imports=dict(graph.opset_imports), meta=dict(graph.meta))
    twin: dict[int, Value] = {}
    for v in graph.values.values():
        copy = Value(v.name, v.dtype, v.shape, const=v.const, sample=v.sample, storage=v.storage)
        twin[id(v)] = new.add_value(copy)
    new.inputs = [twin[id(v)] for v in graph.inputs]
    for n in graph.nodes:
        node = Node(
            op_type=n.op_type,
            domain=n.domain,
            name=n.name,
            attrs=dict(n.attrs),
            inputs=tuple(twin[id(v)] if v is not None else None for v in n.inputs),
            outputs=tuple(twin[id(v)] for v in n.outputs),
            implicit_inputs=tuple(twin[id(v)] for v in n.implicit_inputs),
            doc_string=n.doc_string,
        )
        new.add_node(node)
    new.outputs = [twin[id(v)] for v in graph.outputs]
    return new
