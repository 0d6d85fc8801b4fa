"""Residual blocks that depth pruning can remove whole.

A residual block is an ``Add`` node ``y = x + f(x)`` (either input order) where

- the shortcut is an identity: the Add reads ``x`` directly, or through ops that are the identity
  at inference (``Identity``, ``Dropout`` not in training mode), each read by nothing else;
- ``f`` is the set of nodes the other input ``b = f(x)`` depends on, back to ``x``: every input
  of a node of ``f`` is ``x``, a constant, or an output of another node of ``f``, and ``f`` reads
  ``x`` at least once (no other graph input, so ``f``'s only varying input is ``x``);
- ``f`` is closed: its outputs feed only ``f`` and (``b`` alone) the Add, and none is a graph
  output; no node of ``f`` holds a subgraph (control flow);
- ``x``, ``b`` and ``y`` have one shape and dtype (no broadcasting);
- ``f`` holds a Conv, Gemm or MatMul (``x + x**3`` inside a GELU is not a layer).

Dead nodes (every output unread, in turn: a ``Shape`` whose reader constant folding replaced)
read nothing that matters: they do not make ``f`` open, and those reading ``f`` belong to it
(they are deleted with it).

Then ``f`` contributes ``y - x`` and nothing else in the graph depends on it, so removing the
block (``y`` -> ``x``, ``f`` and the Add deleted) changes the model by exactly replacing ``y``
with ``x``.

Search: for each Add with two varying inputs, and each of its two orientations, ``f`` is grown
backwards from ``b``'s producer in decreasing graph order (a heap of positions). A node popped
has every consumer already seen if and only if all of them belong to ``f`` (consumers come later
in topological order, so every member that reads it was popped first); the first node with a
consumer outside ``f``, or an input that is a graph input other than ``x``, ends the attempt with
that reason. So an attempt visits the nodes it accepts into ``f`` plus one: the work per Add is
the size of the region that feeds only into ``b``, and over the graph it is linear in its size
times the nesting depth of such regions (1 for plain stacks, 2 for a block inside a block),
times ``log`` of the heap. When both orientations fail, the reason reported is the one of the
attempt that accepted more nodes (the orientation that held the branch), refined to "projection
shortcut" when the offending consumer lies on the shortcut path.

MACs of ``f`` count the ops the cost model counts (``rules.RULES[..].macs``, the terms
``cost.build_cost_model`` sums), at the batch-1 sample shapes, i.e. the cost model at full
width; ``params`` are the elements of the floating-point constants only ``f`` reads (those the
removal frees). Nothing here changes the graph.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from irprune.ir import Graph, Node, Opaque, Value
from irprune.passes.analysis.cost import MAC_OPS
from irprune.passes.analysis.rules import RULES

log = logging.getLogger(__name__)

SHORTCUT_OPS = frozenset({"Identity", "Dropout"})
MAX_SHORTCUT_WALK = 8  # ops followed back from a shortcut input to name a projection


@dataclass(frozen=True)
class Block:
    """One removable residual block ``output = input + f(input)``.

    Nodes are named by their first output value (unique in a graph, unlike node names):
    ``nodes`` are f's nodes in graph order, ``shortcut`` the identity ops between ``input`` and
    the Add. ``add`` is the Add node's name (its output's name when unnamed), for display."""

    add: str
    input: str
    output: str
    branch: str
    nodes: tuple[str, ...]
    shortcut: tuple[str, ...]
    macs: float
    params: int
    kind: str


@dataclass(frozen=True)
class Rejected:
    """An Add of two varying inputs that is not a removable block, and why."""

    add: str
    output: str
    reason: str


@dataclass(frozen=True)
class BlockAnalysis:
    blocks: tuple[Block, ...]
    rejected: tuple[Rejected, ...]

    def block(self, output: str) -> Block:
        """The block whose Add produces ``output``."""
        for b in self.blocks:
            if b.output == output:
                return b
        raise KeyError(f"no removable block produces {output!r}")

    @property
    def macs(self) -> float:
        """MACs of all blocks' ``f`` (nested blocks counted once, inside their outer one)."""
        inner = {k for b in self.blocks for k in b.nodes}
        return sum(b.macs for b in self.blocks if b.output not in inner)


def node_key(node: Node) -> str:
    """A node's identity in a ``Block``: its first output's name."""
    return node.outputs[0].name


@dataclass(frozen=True)
class _Fail:
    """Why an attempt failed, and how many nodes it had accepted into f by then; ``value``: the
    output of f that something outside reads (to name a projection shortcut)."""

    reason: str
    accepted: int
    value: Value | None = None


@dataclass(frozen=True)
class GraphIndex:
    """Each node's position in ``graph.nodes`` and the dead nodes (every output unread, in
    turn: what constant folding leaves, e.g. a ``Shape`` whose reader was folded), by id."""

    position: Mapping[int, int]
    dead: frozenset[int]


def index_graph(graph: Graph) -> GraphIndex:
    dead: set[int] = set()
    for node in reversed(graph.nodes):
        if node.outputs and not any(
            graph.is_graph_output(o) or any(id(u) not in dead for u, _ in o.uses)
            for o in node.outputs
        ):
            dead.add(id(node))
    return GraphIndex({id(n): i for i, n in enumerate(graph.nodes)}, frozenset(dead))


def find_blocks(graph: Graph) -> BlockAnalysis:
    """Every removable residual block of ``graph``, and every rejected candidate with its reason."""
    index = index_graph(graph)
    blocks: list[Block] = []
    rejected: list[Rejected] = []
    for node in graph.nodes:
        if not _is_candidate(node):
            continue
        found = analyze_add(graph, node, index)
        if isinstance(found, Block):
            blocks.append(found)
        else:
            rejected.append(Rejected(_display(node), node.outputs[0].name, found))
    log.info("blocks: %d removable, %d rejected", len(blocks), len(rejected))
    return BlockAnalysis(tuple(blocks), tuple(rejected))


def _is_candidate(node: Node) -> bool:
    """An Add of exactly two inputs, both varying (an Add of a constant is a bias)."""
    if node.key != ("", "Add") or len(node.inputs) != 2 or len(node.outputs) != 1:
        return False
    return all(v is not None and not v.is_const for v in node.inputs)


def analyze_add(graph: Graph, add: Node, index: GraphIndex) -> Block | str:
    """The block ``add`` closes, or the reason it closes none (``index``: of this graph)."""
    if not _is_candidate(add):
        return "not an Add of two varying inputs"
    a, b = add.inputs
    assert a is not None and b is not None
    y = add.outputs[0]
    mismatch = _mismatch(a, b, y)
    if mismatch:
        return mismatch
    reader = next((n for n, i in y.uses if i < 0), None)
    if reader is not None:
        return f"control flow: {y.name!r} is read inside a subgraph of {_display(reader)}"
    attempts = [_trace(graph, add, s, br, index) for s, br in ((a, b), (b, a))]
    for attempt in attempts:
        if isinstance(attempt, Block):
            return attempt
    fails = [t for t in attempts if isinstance(t, _Fail)]
    return max(fails, key=lambda f: f.accepted).reason


def _mismatch(a: Value, b: Value, y: Value) -> str:
    """Why ``a + b = y`` is not an Add of equal shapes and dtypes ('' when it is one)."""
    for v in (a, b, y):
        shape = v.sample_shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            return f"shape of {v.name!r} unknown"
    if not (_same_shape(a, b) and _same_shape(a, y)):
        return f"broadcasting Add: {a.name!r} {a.shape} + {b.name!r} {b.shape} -> {y.shape}"
    if not a.dtype or a.dtype != b.dtype or a.dtype != y.dtype:
        return f"dtypes differ or unknown: {a.dtype}, {b.dtype} -> {y.dtype}"
    return ""


def _same_shape(u: Value, v: Value) -> bool:
    """Equal at the sample shape, and no dim fixed at 1 on one side and varying on the other
    (a batch-1 constant dim against the batch: broadcasting). Two symbolic dims of different
    names that agree at the sample shape count as equal (inference often names one dim twice)."""
    if u.sample_shape != v.sample_shape:
        return False
    if u.shape is None or v.shape is None or len(u.shape) != len(v.shape):
        return True
    return not any(
        (p == 1 and not isinstance(q, int)) or (q == 1 and not isinstance(p, int))
        for p, q in zip(u.shape, v.shape, strict=True)
    )


def _is_shortcut_op(graph: Graph, node: Node) -> bool:
    """Identity, or Dropout in inference mode whose mask nobody reads."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in SHORTCUT_OPS:
        return False
    if node.op_type == "Dropout":
        mode = node.input(2)
        if mode is not None and (mode.const is None or bool(np.any(mode.const))):
            return False
        if any(o.uses or graph.is_graph_output(o) for o in node.outputs[1:]):
            return False
    return True


def _strip_shortcut(graph: Graph, value: Value) -> tuple[Value, list[Node]]:
    """Walk back from ``value`` through identity ops read by nothing else: (x, those ops)."""
    ops: list[Node] = []
    while (
        value.producer is not None
        and _is_shortcut_op(graph, value.producer)
        and len(value.uses) == 1
        and not graph.is_graph_output(value)
    ):
        ops.append(value.producer)
        value = value.producer.required(0)
    return value, ops[::-1]


def _trace(
    graph: Graph, add: Node, short: Value, branch: Value, index: GraphIndex
) -> Block | _Fail:
    x, shortcut = _strip_shortcut(graph, short)
    if x is branch or branch is short:
        return _Fail("both inputs are the same value (x + x)", 0)
    if branch.producer is None:
        return _Fail(f"{branch.name!r} is a graph input, not a branch", 0)
    grown = _grow(graph, add, x, branch, index)
    if isinstance(grown, _Fail):
        return _refine(grown, short)
    nodes, reads_x = grown
    if not reads_x:
        return _Fail(f"{branch.name!r} does not depend on {x.name!r}", len(nodes))
    if not any(node_macs(n) for n in nodes):
        return _Fail("f holds no Conv/Gemm/MatMul (an elementwise expression)", len(nodes))
    return _block(graph, add, x, branch, nodes, shortcut)


def _grow(
    graph: Graph, add: Node, x: Value, branch: Value, index: GraphIndex
) -> tuple[list[Node], bool] | _Fail:
    """f's nodes in graph order (with the dead nodes reading them) and whether f reads x, or why
    f is not closed."""
    producer = branch.producer
    assert producer is not None
    position = index.position
    heap, queued = [-position[id(producer)]], {id(producer)}
    members: set[int] = set()
    nodes: list[Node] = []
    reads_x = False
    while heap:
        node = graph.nodes[-heapq.heappop(heap)]
        outside = _outside(graph, node, add, branch, members, index.dead)
        if outside is not None:
            return _Fail(outside[0], len(nodes), outside[1])
        members.add(id(node))
        nodes.append(node)
        nodes += _dead_readers(node, members, index.dead)
        for v in node.inputs:
            if v is None or v.is_const:
                continue
            if v is x:
                reads_x = True
            elif v.producer is None:
                return _Fail(f"f reads the graph input {v.name!r} besides x", len(nodes))
            elif id(v.producer) not in queued:
                queued.add(id(v.producer))
                heapq.heappush(heap, -position[id(v.producer)])
    return sorted(nodes, key=lambda n: position[id(n)]), reads_x


def _dead_readers(node: Node, members: set[int], dead: frozenset[int]) -> list[Node]:
    """The dead nodes downstream of ``node`` not yet in f (added to ``members``)."""
    found: list[Node] = []
    stack = [node]
    while stack:
        for out in stack.pop().outputs:
            for user, _ in out.uses:
                if id(user) in dead and id(user) not in members:
                    members.add(id(user))
                    found.append(user)
                    stack.append(user)
    return found


def _outside(
    graph: Graph,
    node: Node,
    add: Node,
    branch: Value,
    members: set[int],
    dead: frozenset[int],
) -> tuple[str, Value | None] | None:
    """Why ``node`` cannot join f (and its output read outside), or None when it can."""
    if node.implicit_inputs or any(
        isinstance(a, Opaque) and a.kind in ("GRAPH", "GRAPHS") for a in node.attrs.values()
    ):
        return f"control flow in f: {_display(node)} holds a subgraph", None
    for out in node.outputs:
        if graph.is_graph_output(out):
            return f"f's value {out.name!r} is a graph output", out
        for user, _ in out.uses:
            if user is add and out is branch:
                continue
            if id(user) not in members and id(user) not in dead:
                where = f"{out.name!r} of {_display(node)} is read by {_display(user)}"
                return f"f feeds elsewhere: {where} outside the block", out
    return None


def _refine(fail: _Fail, short: Value) -> _Fail:
    """Name a projection shortcut: the value f could not own feeds the shortcut path."""
    if fail.value is None:
        return fail
    ops: list[str] = []
    value: Value | None = short
    for _ in range(MAX_SHORTCUT_WALK):
        if value is fail.value:
            if not any(op in MAC_OPS for op in ops):
                return fail
            shown = "->".join(reversed(ops))
            return _Fail(
                f"projection shortcut ({shown} on the shortcut from {value.name!r})",
                fail.accepted,
            )
        if value is None or value.producer is None:
            break
        ops.append(value.producer.op_type)
        value = next((v for v in value.producer.inputs if v is not None and not v.is_const), None)
    return fail


def _block(
    graph: Graph, add: Node, x: Value, branch: Value, nodes: list[Node], shortcut: list[Node]
) -> Block:
    return Block(
        add=_display(add, quote=False),
        input=x.name,
        output=add.outputs[0].name,
        branch=branch.name,
        nodes=tuple(node_key(n) for n in nodes),
        shortcut=tuple(node_key(n) for n in shortcut),
        macs=float(sum(node_macs(n) for n in nodes)),
        params=_own_params(nodes),
        kind=block_kind(nodes),
    )


def node_macs(node: Node) -> float:
    """One node's MACs by the cost model's terms, at the sample (batch 1) shapes."""
    rule = RULES.get(node.key)
    if rule is None or rule.macs is None:
        return 0.0
    total = 0.0
    for term in rule.macs(node):
        product = term.coef
        for value, axis in term.factors:
            dim = value.sample_dim(axis)
            product *= dim if dim is not None else 1
        total += product
    return total


def _own_params(nodes: list[Node]) -> int:
    """Elements of the floating-point constants read by ``nodes`` and nothing else."""
    ids = {id(n) for n in nodes}
    seen: dict[int, Value] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.const is not None and id(v) not in seen:
                seen[id(v)] = v
    return sum(
        int(v.const.size)
        for v in seen.values()
        if v.const is not None
        and np.issubdtype(v.const.dtype, np.floating)
        and all(id(u) in ids for u, _ in v.uses)
    )


def block_kind(nodes: list[Node]) -> str:
    """A label for reports: attention, mlp, inverted residual, basic, bottleneck, other."""
    ops = [n.op_type for n in nodes]
    if "Softmax" in ops or any(op.endswith("Attention") for op in ops):
        return "attention"
    convs = [n for n in nodes if n.op_type == "Conv"]
    linear = sum(op in ("MatMul", "Gemm") for op in ops)
    if any(_depthwise(n) for n in convs):
        return "inverted residual"
    if len(convs) == 2 and not linear:
        return "basic"
    if len(convs) == 3 and not linear:
        return "bottleneck"
    if linear and not convs:
        return "mlp"
    return f"other ({len(convs)} conv, {linear} linear)"


def _depthwise(conv: Node) -> bool:
    w = conv.input(1)
    group = int(conv.attr("group", 1))
    return group > 1 and w is not None and w.static_dim(1) == 1


def _display(node: Node, quote: bool = True) -> str:
    name = node.name or node.outputs[0].name
    return f"{node.op_type} {name!r}" if quote else name
