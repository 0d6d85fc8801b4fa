"""A small framework-neutral graph IR.

Values carry a name, an element type (the ONNX TensorProto code, a plain int), a shape (ints for
static dims, strings for symbolic dims, None for unknown ones) and, for constants, their data as a
numpy array. Nodes carry an op type, a domain, attributes and ordered input/output values.

Use-def links live in exactly one place: ``Value.uses`` and ``Value.producer`` are only changed by
the ``Graph`` methods below. Node inputs are a tuple so they cannot be edited behind the graph's
back. Removal checks everything before changing anything.

This module imports neither onnx nor torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irprune.errors import InvalidModelError, IRError

Dim = int | str | None
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class Opaque:
    """An attribute value the IR does not interpret (subgraphs, sparse tensors, type protos).

    ``kind`` names the attribute type; ``data`` is whatever the frontend needs to emit it again.
    """

    kind: str
    data: Any


@dataclass(eq=False)
class Value:
    """One tensor: a graph input, an initializer (``const`` set), or a node output."""

    name: str
    dtype: int = 0
    shape: Shape | None = None
    const: np.ndarray | None = None
    producer: Node | None = field(default=None, repr=False)
    uses: list[tuple[Node, int]] = field(default_factory=list, repr=False)
    sample: Shape | None = field(default=None, repr=False)  # shape at batch 1, for costs
    # For a constant: the narrower dtype the model stored it in before a folded widening Cast
    # (fp16/bf16 weights cast to float); the emitter stores it so again. 0: stored as ``dtype``.
    storage: int = 0

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def sample_shape(self) -> Shape | None:
        """The shape with symbolic graph-input dims bound to 1 (per-sample costs), where known."""
        return self.sample if self.sample is not None else self.shape

    def sample_dim(self, axis: int) -> int | None:
        shape = self.sample_shape
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        dim = shape[axis]
        return dim if isinstance(dim, int) else None

    def static_dim(self, axis: int) -> int | None:
        """The size of ``axis`` when it is a known integer."""
        if self.shape is None or not -len(self.shape) <= axis < len(self.shape):
            return None
        dim = self.shape[axis]
        return dim if isinstance(dim, int) else None

    def __repr__(self) -> str:
        kind = "const" if self.is_const else "value"
        return f"<{kind} {self.name!r} {self.shape}>"


@dataclass(eq=False)
class Node:
    """One operator application. ``implicit_inputs`` are outer-scope values read by subgraphs."""

    op_type: str
    domain: str = ""
    name: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[Value | None, ...] = ()
    outputs: tuple[Value, ...] = ()
    implicit_inputs: tuple[Value, ...] = ()
    doc_string: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """The (domain, op type) key of the op rule table; the default domain is ''."""
        return ("" if self.domain == "ai.onnx" else self.domain, self.op_type)

    def input(self, i: int) -> Value | None:
        """Optional input ``i`` (None when absent)."""
        return self.inputs[i] if i < len(self.inputs) else None

    def required(self, i: int) -> Value:
        """Input ``i``, which the operator requires."""
        value = self.input(i)
        if value is None:
            raise InvalidModelError(f"{self!r} lacks its required input {i}")
        return value

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def __repr__(self) -> str:
        return f"<node {self.op_type} {self.name!r}>"


@dataclass
class Graph:
    """Nodes in topological order, graph inputs/outputs, and every value by name."""

    name: str = "graph"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    opset_imports: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # unique_name: for each base, how many suffixed names base_1.. base_k were found taken (valid
    # while no value is removed), so k clones of one value cost O(k), not O(k^2)
    _taken: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    # --- construction -------------------------------------------------------------------------
    def add_value(self, value: Value) -> Value:
        if value.name in self.values:
            raise IRError(f"duplicate value name {value.name!r}")
        self.values[value.name] = value
        return value

    def add_node(self, node: Node, *, index: int | None = None) -> Node:
        """Append (or insert at ``index``) a node whose inputs and outputs are already values."""
        self._check_new(node, lambda v: any(v is i for i in self.inputs))
        self._insert(node, index)
        return node

    def add_nodes(self, nodes: Iterable[Node]) -> None:
        """``add_node`` each node in order, appending. The graph inputs are indexed once, so n
        nodes cost O(n + inputs), not O(n * inputs) (old exports list every weight as an input).
        The graph inputs must not change while ``nodes`` is consumed."""
        inputs = {id(v) for v in self.inputs}
        for node in nodes:
            self._check_new(node, lambda v: id(v) in inputs)
            self._insert(node, None)

    def _check_new(self, node: Node, is_input: Callable[[Value], bool]) -> None:
        if len({id(o) for o in node.outputs}) != len(node.outputs):
            raise IRError(f"{node!r} lists the same output twice")
        for out in node.outputs:
            if out.producer is not None:
                raise IRError(f"value {out.name!r} already produced by {out.producer!r}")
            if out.is_const or is_input(out):
                raise IRError(f"value {out.name!r} is already defined (constant or graph input)")
            if self.values.get(out.name) is not out:
                raise IRError(f"output {out.name!r} is not a value of this graph")
        for v in (*node.inputs, *node.implicit_inputs):
            if v is not None and self.values.get(v.name) is not v:
                raise IRError(f"input {v.name!r} of {node!r} is not a value of this graph")

    def _insert(self, node: Node, index: int | None) -> None:
        for out in node.outputs:
            out.producer = node
        self._link(node)
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)

    # --- the one place where use-def links change ---------------------------------------------
    def _link(self, node: Node) -> None:
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses.append((node, i))
        for v in node.implicit_inputs:
            v.uses.append((node, -1))

    def _unlink(self, node: Node) -> None:
        for v in {
            id(v): v for v in (*node.inputs, *node.implicit_inputs) if v is not None
        }.values():
            v.uses = [(n, i) for n, i in v.uses if n is not node]

    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        """Rewire input ``index`` of ``node`` to ``value`` (index == len(inputs) appends)."""
        if value is not None and self.values.get(value.name) is not value:
            raise IRError(f"{value.name!r} is not a value of this graph")
        if not 0 <= index <= len(node.inputs):
            raise IRError(f"{node!r} has no input {index}")
        if index == len(node.inputs):
            node.inputs = (*node.inputs, None)
        old = node.inputs[index]
        if old is not None:
            old.uses.remove((node, index))
        node.inputs = (*node.inputs[:index], value, *node.inputs[index + 1 :])
        if value is not None:
            value.uses.append((node, index))

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Every reader of ``old`` (nodes and graph outputs) reads ``new`` instead."""
        if self.values.get(new.name) is not new:
            raise IRError(f"{new.name!r} is not a value of this graph")
        implicit = [node for node, i in old.uses if i < 0]
        if implicit:
            raise IRError(f"{old.name!r} is read implicitly by a subgraph of {implicit[0]!r}")
        for node, i in list(old.uses):
            self.set_input(node, i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused; checks everything before changing anything."""
        if node not in self.nodes:
            raise IRError(f"{node!r} is not in the graph")
        for out in node.outputs:
            if out.uses:
                raise IRError(f"cannot remove {node!r}: {out.name!r} is still used")
            if out in self.outputs:
                raise IRError(f"cannot remove {node!r}: {out.name!r} is a graph output")
        self._unlink(node)
        self.nodes.remove(node)
        self._taken.clear()
        for out in node.outputs:
            out.producer = None
            del self.values[out.name]

    def fold_node(self, node: Node, arrays: list[np.ndarray]) -> None:
        """Replace ``node`` by constants: its outputs keep their names and readers.

        Checks everything before changing anything: the node is in the graph, one array per
        output, no output is a graph output.
        """
        if node not in self.nodes:
            raise IRError(f"{node!r} is not in the graph")
        self._check_fold(node, arrays, {id(v) for v in self.outputs})
        self._unlink(node)
        self.nodes.remove(node)
        self._make_constants(node, arrays)

    def fold_nodes(self, evaluate: Callable[[Node], list[np.ndarray] | None]) -> int:
        """``fold_node`` every node, in order, for which ``evaluate`` returns arrays; a later
        node's evaluation sees the constants folded before it. The node list is rebuilt once, so
        folding k nodes costs O(n + k), not O(n * k). Returns how many nodes were folded."""
        folded: set[int] = set()
        outputs = {id(v) for v in self.outputs}
        try:
            for node in list(self.nodes):
                arrays = evaluate(node)
                if arrays is None:
                    continue
                self._check_fold(node, arrays, outputs)
                self._unlink(node)
                folded.add(id(node))
                self._make_constants(node, arrays)
        finally:
            if folded:
                self.nodes = [n for n in self.nodes if id(n) not in folded]
        return len(folded)

    @staticmethod
    def _check_fold(node: Node, arrays: list[np.ndarray], graph_outputs: set[int]) -> None:
        if len(arrays) != len(node.outputs):
            raise IRError(f"{node!r} has {len(node.outputs)} outputs, got {len(arrays)} arrays")
        if any(id(out) in graph_outputs for out in node.outputs):
            raise IRError(f"cannot fold {node!r}: it produces a graph output")

    @staticmethod
    def _make_constants(node: Node, arrays: list[np.ndarray]) -> None:
        for out, array in zip(node.outputs, arrays, strict=True):
            out.producer = None
            out.const = np.asarray(array)
            out.shape = out.sample = tuple(out.const.shape)

    def remove_dead_nodes(self, roots: Iterable[Node]) -> int:
        """Remove ``roots`` whose outputs nobody reads, then their producers left unread, in
        turn; returns how many nodes went. Nodes with subgraphs stay."""
        pending, removed = list(roots), 0
        while pending:
            node = pending.pop()
            if node not in self.nodes or node.implicit_inputs:
                continue
            if any(o.uses or self.is_graph_output(o) for o in node.outputs):
                continue
            producers = [v.producer for v in node.inputs if v is not None and v.producer]
            self.remove_node(node)
            removed += 1
            pending += producers
        return removed

    def remove_unused_constants(self) -> int:
        """Drop initializers nobody reads; returns how many were removed."""
        boundary = {id(v) for v in (*self.inputs, *self.outputs)}
        dead = [
            v for v in self.values.values() if v.is_const and not v.uses and id(v) not in boundary
        ]
        self._taken.clear()
        for v in dead:
            del self.values[v.name]
        return len(dead)

    # --- queries --------------------------------------------------------------------------------
    def constants(self) -> Iterator[Value]:
        return (v for v in self.values.values() if v.is_const and v.producer is None)

    def is_graph_output(self, value: Value) -> bool:
        return any(v is value for v in self.outputs)

    def unique_name(self, base: str) -> str:
        """The first of ``base``, ``base_1``, ``base_2``, ... that names no value."""
        if base not in self.values:
            return base
        k = self._taken.get(base, 0) + 1
        while f"{base}_{k}" in self.values:
            k += 1
        self._taken[base] = k - 1
        return f"{base}_{k}"

    def consumers(self, value: Value) -> Iterable[Node]:
        seen: set[int] = set()
        for node, _ in value.uses:
            if id(node) not in seen:
                seen.add(id(node))
                yield node

    # --- invariants -----------------------------------------------------------------------------
    def verify(self) -> None:
        """Check the IR invariants; raise IRError on the first violation."""
        defined: set[int] = {id(v) for v in self.inputs}
        defined |= {id(v) for v in self.values.values() if v.is_const}
        expected_uses: dict[int, list[tuple[int, int]]] = {}
        for pos, node in enumerate(self.nodes):
            for i, v in [*enumerate(node.inputs), *((-1, v) for v in node.implicit_inputs)]:
                if v is None:
                    continue
                if self.values.get(v.name) is not v:
                    raise IRError(f"{node!r} reads {v.name!r}, which is not in the graph")
                if id(v) not in defined:
                    raise IRError(
                        f"{node!r} reads {v.name!r} before it is defined (position {pos})"
                    )
                expected_uses.setdefault(id(v), []).append((id(node), i))
            for out in node.outputs:
                if self.values.get(out.name) is not out:
                    raise IRError(f"output {out.name!r} of {node!r} is not in the graph")
                if out.producer is not node:
                    raise IRError(f"{out.name!r} does not name {node!r} as its producer")
                if out.is_const:
                    raise IRError(f"{out.name!r} is produced by {node!r} but holds constant data")
                if id(out) in defined:
                    raise IRError(f"{out.name!r} is defined twice")
                defined.add(id(out))
        for v in self.values.values():
            got = sorted((id(n), i) for n, i in v.uses)
            if got != sorted(expected_uses.get(id(v), [])):
                raise IRError(f"use list of {v.name!r} is out of sync with node inputs")
            if v.const is not None and v.shape is not None and tuple(v.const.shape) != v.shape:
                raise IRError(f"constant {v.name!r} has shape {v.const.shape}, recorded {v.shape}")
        for v in self.outputs:
            if id(v) not in defined:
                raise IRError(f"graph output {v.name!r} is never defined")
