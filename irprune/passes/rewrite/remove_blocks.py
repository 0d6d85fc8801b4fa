"""Depth pruning: remove whole residual blocks ``y = x + f(x)`` in one transaction.

Removing a block computes ``y := x``: every reader of ``y`` reads ``x``; ``f``'s nodes, the
identity ops of the shortcut and the Add are deleted, then the constants nobody reads any more.
Because ``f`` is closed (``analysis.blocks``: it feeds only the Add) and the shortcut is an
identity, the result equals the original with the Add's output replaced by its input, exactly.

A ``y`` that is a graph output keeps its name: it is produced by ``Identity(x)``, so the graph's
outputs (names, order) do not change.

Several blocks go in one transaction. First, with the graph untouched, every block is checked
against the graph as it is now (``analysis.blocks.analyze_add`` must find the same block at its
Add: same ``x``, branch, f and shortcut), and the set is checked: a block nested in another's
``f`` is subsumed by it (removed with it), two blocks sharing nodes otherwise are refused.
Then the blocks are removed in graph order. Adjacent blocks compose: when block 2's ``x`` is
block 1's ``y``, block 2 reads block 1's ``x`` once block 1 is gone (the rewiring goes through
the nodes themselves, not through names). Finally ``graph.verify()``.

In two steps (``bypass_blocks`` then ``finish_removal``, what the apply stage does so the
calibrated repair runs after the removal): the first rewires every node reading ``y`` to ``x``
and leaves ``f`` and the Add in place, unread (a ``y`` that is a graph output stays the Add's
until the second step), so the graph keeps the original's nodes in the original's order (the
repair pairs pruned and original nodes by position) while computing the model without the
blocks; the second deletes them as ``remove_blocks`` does. Between the two, a width rewrite
may slice the unread nodes like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from irprune.errors import IRError
from irprune.ir import Graph, Node, Value
from irprune.passes.analysis.blocks import Block, GraphIndex, analyze_add, index_graph, node_key

log = logging.getLogger(__name__)


class BlockRemovalError(IRError):
    """A block set that does not match the graph (stale, not a block, overlapping)."""


@dataclass(frozen=True)
class RemovalSummary:
    """``removed``: outputs (``y``) of the blocks removed; ``subsumed``: those nested in one of
    them; ``identities``: graph outputs now produced by ``Identity(x)``."""

    removed: tuple[str, ...]
    subsumed: tuple[str, ...]
    nodes_removed: int
    constants_removed: int
    identities: tuple[str, ...]


@dataclass(frozen=True)
class _Planned:
    block: Block
    add: Node
    nodes: tuple[Node, ...]  # f, then the shortcut ops, in graph order


def remove_blocks(graph: Graph, blocks: Iterable[Block]) -> RemovalSummary:
    """Remove ``blocks`` from ``graph`` (checked first, then applied together)."""
    planned, subsumed = _plan(graph, list(blocks))
    before = len(graph.nodes)
    identities = [name for p in planned if (name := _remove(graph, p))]
    constants = graph.remove_unused_constants()
    graph.verify()
    summary = RemovalSummary(
        removed=tuple(p.block.output for p in planned),
        subsumed=tuple(subsumed),
        nodes_removed=before - len(graph.nodes),
        constants_removed=constants,
        identities=tuple(identities),
    )
    log.info(
        "remove_blocks: %d blocks (%d subsumed), %d nodes, %d constants",
        len(summary.removed),
        len(summary.subsumed),
        summary.nodes_removed,
        summary.constants_removed,
    )
    return summary


def bypass_blocks(graph: Graph, blocks: Iterable[Block]) -> tuple[_Planned, ...]:
    """Rewire every node reading a block's ``y`` to its ``x`` (checked first, as
    ``remove_blocks``); ``f`` and the Add stay, unread. ``finish_removal`` deletes them."""
    planned, _ = _plan(graph, list(blocks))
    for p in planned:
        y, x = p.add.outputs[0], _current_input(p)
        if any(slot < 0 for _, slot in y.uses):
            raise BlockRemovalError(f"block {p.block.add!r}: {y.name!r} is read by a subgraph")
        for node, slot in list(y.uses):
            graph.set_input(node, slot, x)
    return tuple(planned)


def finish_removal(graph: Graph, planned: Iterable[_Planned]) -> RemovalSummary:
    """Delete the bypassed blocks (``bypass_blocks``), then the constants nobody reads."""
    planned = list(planned)
    before = len(graph.nodes)
    identities = [name for p in planned if (name := _remove(graph, p))]
    constants = graph.remove_unused_constants()
    graph.verify()
    return RemovalSummary(
        removed=tuple(p.block.output for p in planned),
        subsumed=(),
        nodes_removed=before - len(graph.nodes),
        constants_removed=constants,
        identities=tuple(identities),
    )


def _plan(graph: Graph, blocks: list[Block]) -> tuple[list[_Planned], list[str]]:
    """Every block checked against the graph, nested ones set aside; nothing changes."""
    outputs = [b.output for b in blocks]
    if len(set(outputs)) != len(outputs):
        raise BlockRemovalError("a block is listed twice")
    index = index_graph(graph)
    by_key = {node_key(n): n for n in graph.nodes}
    planned = [_check(graph, b, index, by_key) for b in blocks]
    inside = {key for b in blocks for key in b.nodes}
    subsumed = [b.output for b in blocks if b.output in inside]
    kept = [p for p in planned if p.block.output not in inside]
    _check_disjoint(kept)
    kept.sort(key=lambda p: index.position[id(p.add)])
    return kept, subsumed


def _check(graph: Graph, block: Block, index: GraphIndex, by_key: dict[str, Node]) -> _Planned:
    y = graph.values.get(block.output)
    add = y.producer if y is not None else None
    if add is None:
        raise BlockRemovalError(f"block {block.add!r}: no node produces {block.output!r}")
    found = analyze_add(graph, add, index)
    if not isinstance(found, Block):
        raise BlockRemovalError(f"block {block.add!r} is not removable here: {found}")
    same = (found.input, found.branch, found.nodes, found.shortcut)
    if same != (block.input, block.branch, block.nodes, block.shortcut):
        raise BlockRemovalError(f"block {block.add!r} does not match the graph (stale analysis)")
    nodes = tuple(by_key[k] for k in (*block.nodes, *block.shortcut))
    return _Planned(block, add, nodes)


def _check_disjoint(planned: list[_Planned]) -> None:
    seen: dict[str, str] = {}
    for p in planned:
        for key in (*p.block.nodes, *p.block.shortcut, p.block.output):
            other = seen.setdefault(key, p.block.output)
            if other != p.block.output:
                raise BlockRemovalError(
                    f"blocks {other!r} and {p.block.output!r} overlap at {key!r}"
                )


def _remove(graph: Graph, planned: _Planned) -> str | None:
    """Remove one block; returns ``y``'s name when it stays as a graph output (Identity)."""
    add = planned.add
    y = add.outputs[0]
    x = _current_input(planned)
    slots = [i for i, v in enumerate(graph.outputs) if v is y]
    graph.replace_all_uses(y, x)  # graph outputs too: restored under y's name below
    for node in (add, *reversed(planned.nodes)):
        graph.remove_node(node)
    if not slots:
        return None
    kept = graph.add_value(Value(y.name, y.dtype, y.shape, sample=y.sample))
    identity = Node("Identity", name=add.name, inputs=(x,), outputs=(kept,))
    at = graph.nodes.index(x.producer) + 1 if x.producer is not None else 0
    graph.add_node(identity, index=at)
    for i in slots:
        graph.outputs[i] = kept
    return y.name


def _current_input(planned: _Planned) -> Value:
    """The value the shortcut reads now (an earlier removal may have rewired it)."""
    block, add = planned.block, planned.add
    if block.shortcut:
        return planned.nodes[len(block.nodes)].required(0)
    a, b = add.required(0), add.required(1)
    return b if a.name == block.branch else a
