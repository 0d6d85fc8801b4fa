"""The IR graph: construction, use-def links, transactional removal and the invariant checker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from irprune.errors import IRError
from irprune.ir import Graph, Node, Value

FLOAT = 1  # TensorProto.FLOAT; the IR stores element types as plain ints


@dataclass
class Tiny:
    """x -> Relu(r) -> a -> Mul(m, a * w) -> b (graph output); plus Neg(d) on x -> dead."""

    g: Graph
    x: Value
    w: Value
    a: Value
    b: Value
    dead: Value
    relu: Node
    mul: Node
    neg: Node


def _tiny() -> Tiny:
    g = Graph(name="tiny", opset_imports={"": 17})
    x = g.add_value(Value("x", FLOAT, ("N", 4)))
    w = g.add_value(Value("w", FLOAT, (4,), const=np.arange(4, dtype=np.float32)))
    a = g.add_value(Value("a", FLOAT, ("N", 4)))
    b = g.add_value(Value("b", FLOAT, ("N", 4)))
    dead = g.add_value(Value("dead", FLOAT, ("N", 4)))
    g.inputs.append(x)
    relu = g.add_node(Node("Relu", name="r", inputs=(x,), outputs=(a,)))
    mul = g.add_node(Node("Mul", name="m", inputs=(a, w), outputs=(b,)))
    neg = g.add_node(Node("Neg", name="d", inputs=(x,), outputs=(dead,)))
    g.outputs.append(b)
    g.verify()
    return Tiny(g, x, w, a, b, dead, relu, mul, neg)


def _uses(v: Value) -> list[tuple[str, int]]:
    return sorted((n.name, i) for n, i in v.uses)


def _snapshot(g: Graph) -> dict[str, Any]:
    """Everything removal could touch, by identity, so 'unchanged' means unchanged."""
    return {
        "nodes": [id(n) for n in g.nodes],
        "values": {k: id(v) for k, v in g.values.items()},
        "uses": {k: sorted((id(n), i) for n, i in v.uses) for k, v in g.values.items()},
        "producers": {k: id(v.producer) for k, v in g.values.items()},
        "node_io": [
            (tuple(map(id, n.inputs)), tuple(map(id, n.outputs)), tuple(map(id, n.implicit_inputs)))
            for n in g.nodes
        ],
        "inputs": [id(v) for v in g.inputs],
        "outputs": [id(v) for v in g.outputs],
    }


# --- construction -------------------------------------------------------------------------------


def test_add_node_links_producers_and_uses() -> None:
    t = _tiny()
    assert t.a.producer is t.relu and t.b.producer is t.mul and t.dead.producer is t.neg
    assert t.x.producer is None and t.w.producer is None
    assert _uses(t.x) == [("d", 0), ("r", 0)]
    assert _uses(t.a) == [("m", 0)]
    assert _uses(t.w) == [("m", 1)]
    assert t.b.uses == [] and t.dead.uses == []
    assert [n.name for n in t.g.nodes] == ["r", "m", "d"]
    assert list(t.g.consumers(t.x)) == [t.relu, t.neg]


def test_add_node_at_index() -> None:
    t = _tiny()
    c = t.g.add_value(Value("c", FLOAT, ("N", 4)))
    node = t.g.add_node(Node("Abs", name="abs", inputs=(t.x,), outputs=(c,)), index=0)
    assert t.g.nodes[0] is node
    t.g.verify()


def test_add_value_refuses_duplicate_name() -> None:
    t = _tiny()
    with pytest.raises(IRError, match="duplicate"):
        t.g.add_value(Value("a", FLOAT))
    assert t.g.values["a"] is t.a


def test_add_node_refuses_foreign_values() -> None:
    t = _tiny()
    stranger = Value("stranger", FLOAT, (4,))
    out = t.g.add_value(Value("out", FLOAT, (4,)))
    before = _snapshot(t.g)
    with pytest.raises(IRError, match="not a value of this graph"):
        t.g.add_node(Node("Relu", inputs=(stranger,), outputs=(out,)))
    with pytest.raises(IRError, match="not a value of this graph"):
        t.g.add_node(Node("Relu", inputs=(t.x,), outputs=(stranger,)))
    with pytest.raises(IRError, match="already produced"):
        t.g.add_node(Node("Relu", inputs=(t.x,), outputs=(t.a,)))
    assert _snapshot(t.g) == before
    t.g.verify()


@pytest.mark.parametrize("case", ["graph input", "constant", "listed twice"])
def test_add_node_refuses_outputs_already_defined(case: str) -> None:
    t = _tiny()
    c = t.g.add_value(Value("c", FLOAT, ("N", 4)))
    outputs = {"graph input": (t.x,), "constant": (t.w,), "listed twice": (c, c)}[case]
    with pytest.raises(IRError):
        t.g.add_node(Node("Split", name="s", inputs=(t.a,), outputs=outputs))


# --- rewiring -------------------------------------------------------------------------------------


def test_set_input_moves_the_use() -> None:
    t = _tiny()
    t.g.set_input(t.mul, 0, t.x)
    assert t.mul.inputs == (t.x, t.w)
    assert _uses(t.x) == [("d", 0), ("m", 0), ("r", 0)]
    assert t.a.uses == []
    t.g.verify()


def test_set_input_to_none_and_back() -> None:
    t = _tiny()
    t.g.set_input(t.mul, 1, None)
    assert t.mul.inputs == (t.a, None) and t.w.uses == []
    t.g.verify()
    t.g.set_input(t.mul, 1, t.w)
    assert _uses(t.w) == [("m", 1)]
    t.g.verify()


def test_set_input_keeps_both_uses_of_a_value_read_twice() -> None:
    t = _tiny()
    t.g.set_input(t.mul, 1, t.a)  # Mul(a, a)
    assert _uses(t.a) == [("m", 0), ("m", 1)]
    t.g.set_input(t.mul, 0, t.x)  # Mul(x, a): only the use at slot 0 moves
    assert _uses(t.a) == [("m", 1)]
    t.g.verify()


def test_set_input_refuses_foreign_value() -> None:
    t = _tiny()
    before = _snapshot(t.g)
    with pytest.raises(IRError):
        t.g.set_input(t.mul, 0, Value("stranger", FLOAT))
    assert _snapshot(t.g) == before


def test_replace_all_uses_rewires_readers_and_graph_outputs() -> None:
    t = _tiny()
    t.g.replace_all_uses(t.x, t.a)  # nonsense for dataflow, but a pure use-list operation
    assert t.x.uses == []
    assert _uses(t.a) == [("d", 0), ("m", 0), ("r", 0)]
    assert t.relu.inputs == (t.a,) and t.neg.inputs == (t.a,)
    t.g.replace_all_uses(t.b, t.dead)
    assert t.g.outputs == [t.dead]
    assert t.b.uses == []


def test_replace_all_uses_then_remove_bypassed_node() -> None:
    t = _tiny()
    # bypass Relu: Mul reads x directly; Relu is now dead and can go
    t.g.replace_all_uses(t.a, t.x)
    t.g.remove_node(t.relu)
    assert "a" not in t.g.values and t.relu not in t.g.nodes
    assert _uses(t.x) == [("d", 0), ("m", 0)]
    t.g.verify()


def test_replace_all_uses_refusal_leaves_graph_unchanged() -> None:
    t = _tiny()
    c = t.g.add_value(Value("c", FLOAT, ()))
    # an If-like node reading ``a`` from its subgraph, added after Mul's explicit use of ``a``
    t.g.add_node(Node("If", name="if", inputs=(t.x,), outputs=(c,), implicit_inputs=(t.a,)))
    before = _snapshot(t.g)
    with pytest.raises(IRError, match="implicitly"):
        t.g.replace_all_uses(t.a, t.x)
    assert _snapshot(t.g) == before


# --- removal --------------------------------------------------------------------------------------


def test_remove_node_refuses_when_output_is_used() -> None:
    t = _tiny()
    before = _snapshot(t.g)
    with pytest.raises(IRError, match="still used"):
        t.g.remove_node(t.relu)
    assert _snapshot(t.g) == before
    assert t.a.producer is t.relu and _uses(t.x) == [("d", 0), ("r", 0)]
    t.g.verify()


def test_remove_node_refuses_when_output_is_graph_output() -> None:
    t = _tiny()
    before = _snapshot(t.g)
    with pytest.raises(IRError, match="graph output"):
        t.g.remove_node(t.mul)
    assert _snapshot(t.g) == before
    assert _uses(t.a) == [("m", 0)] and _uses(t.w) == [("m", 1)]
    t.g.verify()


def test_remove_node_refuses_when_any_output_is_used() -> None:
    # two outputs: the first is dead, the second is read; nothing may change
    t = _tiny()
    lo = t.g.add_value(Value("lo", FLOAT, ("N", 2)))
    hi = t.g.add_value(Value("hi", FLOAT, ("N", 2)))
    split = t.g.add_node(Node("Split", name="s", inputs=(t.a,), outputs=(lo, hi)))
    out = t.g.add_value(Value("o", FLOAT, ("N", 2)))
    t.g.add_node(Node("Relu", name="r2", inputs=(hi,), outputs=(out,)))
    t.g.verify()
    before = _snapshot(t.g)
    with pytest.raises(IRError, match="'hi' is still used"):
        t.g.remove_node(split)
    assert _snapshot(t.g) == before
    t.g.verify()


def test_remove_node_refuses_node_not_in_graph() -> None:
    t = _tiny()
    before = _snapshot(t.g)
    with pytest.raises(IRError, match="not in the graph"):
        t.g.remove_node(Node("Relu", name="r"))
    assert _snapshot(t.g) == before


def test_remove_dead_node() -> None:
    t = _tiny()
    t.g.remove_node(t.neg)
    assert [n.name for n in t.g.nodes] == ["r", "m"]
    assert "dead" not in t.g.values and t.dead.producer is None
    assert _uses(t.x) == [("r", 0)]
    t.g.verify()


def test_remove_dead_node_reading_a_value_twice() -> None:
    t = _tiny()
    sq = t.g.add_value(Value("sq", FLOAT, ("N", 4)))
    node = t.g.add_node(Node("Mul", name="sq", inputs=(t.a, t.a), outputs=(sq,)))
    assert _uses(t.a) == [("m", 0), ("sq", 0), ("sq", 1)]
    t.g.remove_node(node)
    assert _uses(t.a) == [("m", 0)]
    t.g.verify()


def test_remove_chain_back_to_front_then_constants() -> None:
    t = _tiny()
    t.g.outputs = [t.dead]  # b is no longer an output: r -> m is a dead chain
    t.g.remove_node(t.mul)
    t.g.remove_node(t.relu)
    assert [n.name for n in t.g.nodes] == ["d"]
    assert t.w.uses == []
    assert t.g.remove_unused_constants() == 1
    assert set(t.g.values) == {"x", "dead"}
    t.g.verify()


# --- verify -------------------------------------------------------------------------------------


def test_verify_passes_on_good_graph() -> None:
    t = _tiny()
    t.g.verify()
    t.g.verify()  # and does not change anything
    assert _uses(t.x) == [("d", 0), ("r", 0)]


def _corrupt_use_list_extra(t: Tiny) -> None:
    t.a.uses.append((t.neg, 0))


def _corrupt_use_list_missing(t: Tiny) -> None:
    t.w.uses.clear()


def _corrupt_inputs_behind_graph_back(t: Tiny) -> None:
    t.mul.inputs = (t.x, t.w)  # uses of x and a not updated


def _corrupt_order(t: Tiny) -> None:
    t.g.nodes[0], t.g.nodes[1] = t.g.nodes[1], t.g.nodes[0]  # Mul reads a before Relu defines it


def _corrupt_read_value_not_in_graph(t: Tiny) -> None:
    del t.g.values["a"]


def _corrupt_read_foreign_value(t: Tiny) -> None:
    other = Value("a", FLOAT, ("N", 4))  # same name, different object
    t.mul.inputs = (other, t.w)
    other.uses.append((t.mul, 0))


def _corrupt_const_shape(t: Tiny) -> None:
    t.w.const = np.zeros((2, 2), dtype=np.float32)  # recorded shape is (4,)


def _corrupt_duplicate_definition(t: Tiny) -> None:
    t.g.nodes.append(t.neg)  # Neg listed twice: 'dead' defined twice


def _corrupt_node_redefines_graph_input(t: Tiny) -> None:
    t.neg.outputs = (t.dead, t.x)
    t.x.producer = t.neg


def _corrupt_wrong_producer(t: Tiny) -> None:
    t.a.producer = t.mul


def _corrupt_produced_value_holds_data(t: Tiny) -> None:
    t.a.const = np.zeros((2, 4), dtype=np.float32)


def _corrupt_graph_output_undefined(t: Tiny) -> None:
    t.g.outputs.append(t.g.add_value(Value("ghost", FLOAT, (4,))))


def _corrupt_stale_use_of_removed_node(t: Tiny) -> None:
    t.g.nodes.remove(t.neg)  # removed behind the graph's back: x still lists a use by Neg
    del t.g.values["dead"]


CORRUPTIONS = {
    "use list has an extra entry": (_corrupt_use_list_extra, "use list of 'a'"),
    "use list misses an entry": (_corrupt_use_list_missing, "use list of 'w'"),
    "inputs edited behind the graph's back": (_corrupt_inputs_behind_graph_back, "use list"),
    "node reads a value defined later": (_corrupt_order, "before it is defined"),
    "read value not in graph.values": (_corrupt_read_value_not_in_graph, "not in the graph"),
    "read value is a same-named stranger": (_corrupt_read_foreign_value, "not in the graph"),
    "constant data shape differs": (_corrupt_const_shape, "constant 'w' has shape"),
    "node listed twice": (_corrupt_duplicate_definition, "defined twice"),
    "node redefines a graph input": (_corrupt_node_redefines_graph_input, "defined twice"),
    "wrong producer": (_corrupt_wrong_producer, "producer"),
    "produced value holds data": (_corrupt_produced_value_holds_data, "constant data"),
    "graph output never defined": (_corrupt_graph_output_undefined, "never defined"),
    "stale use of a removed node": (_corrupt_stale_use_of_removed_node, "use list of 'x'"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_verify_catches(case: str) -> None:
    corrupt, message = CORRUPTIONS[case]
    t = _tiny()
    corrupt(t)
    with pytest.raises(IRError, match=message):
        t.g.verify()


@pytest.mark.parametrize("name", ["b", "dead"])
def test_verify_catches_produced_value_missing_from_values(name: str) -> None:
    t = _tiny()
    del t.g.values[name]  # 'b' is the graph output, 'dead' is unread
    with pytest.raises(IRError):
        t.g.verify()
