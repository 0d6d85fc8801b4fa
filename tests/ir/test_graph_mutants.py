"""Gaps in the IR tests that mutation testing found (docs/mutation.md): folding single nodes,
name allocation, repeated consumers, error messages, and what a structural copy keeps."""

from __future__ import annotations

import numpy as np
import pytest

from irprune.errors import IRError
from irprune.ir import Graph, Node, Value
from irprune.ir.copy import copy_structure

FLOAT = 1


def _chain() -> tuple[Graph, list[Node]]:
    """x -> Relu(r) -> a -> Neg(n) -> b -> Abs(s) -> y (output); Sqrt(q) on x -> z (output)."""
    g = Graph(name="chain", opset_imports={"": 17})
    x = g.add_value(Value("x", FLOAT, ("N", 3)))
    g.inputs.append(x)
    a, b, y, z = (g.add_value(Value(k, FLOAT, ("N", 3))) for k in "abyz")
    nodes = [
        g.add_node(Node("Relu", name="r", inputs=(x,), outputs=(a,))),
        g.add_node(Node("Neg", name="n", inputs=(a,), outputs=(b,))),
        g.add_node(Node("Abs", name="s", inputs=(b,), outputs=(y,))),
        g.add_node(Node("Sqrt", name="q", inputs=(x,), outputs=(z,))),
    ]
    g.outputs += [y, z]
    g.verify()
    return g, nodes


def test_repr_names_the_kind_of_value() -> None:
    assert repr(Value("w", FLOAT, (2,), const=np.zeros(2))) == "<const 'w' (2,)>"
    assert repr(Value("x", FLOAT, ("N", 2))) == "<value 'x' ('N', 2)>"


def test_fold_node_turns_its_outputs_into_constants_readers_kept() -> None:
    g, (relu, neg, _, _) = _chain()
    g.fold_node(relu, [np.ones((2, 3), np.float32)])
    a = g.values["a"]
    assert relu not in g.nodes and a.producer is None and a.is_const
    assert a.shape == a.sample == (2, 3) and a.uses == [(neg, 0)]
    assert g.values["x"].uses == [(g.nodes[2], 0)]  # only Sqrt still reads x
    g.verify()


def test_fold_node_checks_before_changing_anything() -> None:
    g, (relu, _, abs_, _) = _chain()
    with pytest.raises(IRError, match=r"has 1 outputs, got 2 arrays"):
        g.fold_node(relu, [np.ones(3), np.ones(3)])
    with pytest.raises(IRError, match=r"cannot fold .*: it produces a graph output"):
        g.fold_node(abs_, [np.ones(3)])
    stray = Node("Relu", name="stray", inputs=(g.values["x"],), outputs=())
    with pytest.raises(IRError, match=r"<node Relu 'stray'> is not in the graph"):
        g.fold_node(stray, [])
    assert [n.name for n in g.nodes] == ["r", "n", "s", "q"] and not g.values["a"].is_const
    g.verify()


def test_fold_nodes_folds_every_evaluated_node_and_refuses_graph_outputs() -> None:
    g, _ = _chain()
    # the first node is not evaluated: the ones after it still are
    count = g.fold_nodes(lambda n: [np.zeros(3)] if n.name == "n" else None)
    assert count == 1 and [n.name for n in g.nodes] == ["r", "s", "q"]
    assert g.values["b"].is_const
    with pytest.raises(IRError, match="graph output"):
        g.fold_nodes(lambda n: [np.zeros(3)] if n.name == "q" else None)


def test_remove_dead_nodes_counts_what_went() -> None:
    g, (_, _, abs_, _) = _chain()
    g.outputs = [g.values["z"]]
    assert g.remove_dead_nodes([abs_]) == 3  # Abs, then Neg and Relu left unread
    assert [n.name for n in g.nodes] == ["q"]
    assert g.remove_dead_nodes([g.nodes[0]]) == 0  # a graph output's producer stays


def test_unique_name_takes_the_first_free_suffix() -> None:
    g = Graph()
    assert g.unique_name("a") == "a"
    g.add_value(Value("a"))
    assert g.unique_name("a") == "a_1"
    g.add_value(Value("a_1"))
    g.add_value(Value("a_2"))
    assert g.unique_name("a") == "a_3"
    assert g.unique_name("a") == "a_3"  # nothing was added
    for k in (3, 4, 5):
        assert g.unique_name("a") == f"a_{k}"
        g.add_value(Value(f"a_{k}"))
    assert g.unique_name("b") == "b"


def test_consumers_lists_a_node_reading_a_value_twice_once() -> None:
    g = Graph()
    x = g.add_value(Value("x", FLOAT, (2,)))
    g.inputs.append(x)
    y, z = g.add_value(Value("y", FLOAT, (2,))), g.add_value(Value("z", FLOAT, (2,)))
    mul = g.add_node(Node("Mul", name="m", inputs=(x, x), outputs=(y,)))
    add = g.add_node(Node("Add", name="a", inputs=(x, y), outputs=(z,)))
    assert list(g.consumers(x)) == [mul, add]


def test_rewiring_errors_name_the_culprit() -> None:
    g, (relu, *_) = _chain()
    stranger = Value("stranger", FLOAT, (3,))
    with pytest.raises(IRError, match=r"'stranger' is not a value of this graph"):
        g.set_input(relu, 0, stranger)
    with pytest.raises(IRError, match=r"<node Relu 'r'> has no input 5"):
        g.set_input(relu, 5, g.values["x"])
    with pytest.raises(IRError, match=r"'stranger' is not a value of this graph"):
        g.replace_all_uses(g.values["a"], stranger)


def test_replace_all_uses_rewires_only_that_graph_output() -> None:
    g, _ = _chain()
    y, z = g.values["y"], g.values["z"]
    w = g.add_value(Value("w", FLOAT, (3,), const=np.zeros(3, np.float32)))
    g.replace_all_uses(y, w)
    assert g.outputs == [w, z]


def test_copy_structure_keeps_everything_but_the_arrays() -> None:
    g = Graph(name="orig", opset_imports={"": 17, "com.microsoft": 1}, meta={"k": 1})
    x = g.add_value(Value("x", FLOAT, ("N", 3), sample=(1, 3)))
    w = g.add_value(Value("w", FLOAT, (3,), const=np.ones(3, np.float32), storage=10))  # fp16
    y = g.add_value(Value("y", FLOAT, ("N", 3), sample=(1, 3)))
    g.inputs.append(x)
    node = Node(
        "FusedThing",
        domain="com.microsoft",
        name="f",
        attrs={"alpha": 0.5},
        inputs=(x, None, w),
        outputs=(y,),
        implicit_inputs=(w,),
        doc_string="why",
    )
    g.add_node(node)
    g.outputs.append(y)
    new = copy_structure(g)
    new.verify()
    assert (new.name, new.opset_imports, new.meta) == (g.name, g.opset_imports, g.meta)
    assert new.meta is not g.meta and new.opset_imports is not g.opset_imports
    for name, v in g.values.items():
        twin = new.values[name]
        assert twin is not v and twin.dtype == v.dtype
        assert (twin.shape, twin.sample, twin.storage) == (v.shape, v.sample, v.storage)
        assert twin.const is v.const
    (copied,) = new.nodes
    assert (copied.op_type, copied.domain, copied.name, copied.doc_string) == (
        "FusedThing",
        "com.microsoft",
        "f",
        "why",
    )
    assert copied.attrs == {"alpha": 0.5} and copied.attrs is not node.attrs
    assert copied.inputs[1] is None
    assert [v.name for v in copied.inputs if v is not None] == ["x", "w"]
    assert copied.implicit_inputs == (new.values["w"],)
    assert new.inputs == [new.values["x"]] and new.outputs == [new.values["y"]]


def test_dims_inside_the_rank_only_and_only_integers() -> None:
    v = Value("v", FLOAT, ("N", 3, 5), sample=(1, 3, 5))
    for dim in (v.static_dim, v.sample_dim):
        assert dim(-2) == 3 and dim(2) == 5
        assert dim(3) is None and dim(-4) is None
    assert v.static_dim(-3) is None  # symbolic
    assert v.sample_dim(-3) == 1  # bound to 1 in the sample shape
    shapeless = Value("u", FLOAT)
    assert shapeless.static_dim(0) is None and shapeless.sample_dim(0) is None
    assert Value("s", FLOAT, ("N", 2)).sample_dim(-2) is None  # symbolic and no sample


def test_a_missing_required_input_is_named() -> None:
    node = Node("Gemm", name="g", inputs=(Value("a"), None))
    assert node.required(0).name == "a"
    with pytest.raises(Exception, match=r"<node Gemm 'g'> lacks its required input 1"):
        node.required(1)
    with pytest.raises(Exception, match=r"lacks its required input 2"):
        node.required(2)


@pytest.mark.parametrize("many", [False, True])
def test_a_node_cannot_redefine_a_graph_input_or_a_constant(many: bool) -> None:
    g, _ = _chain()
    add = g.add_nodes if many else (lambda nodes: g.add_node(nodes[0]))
    x, w = g.values["x"], g.add_value(Value("w", FLOAT, (3,), const=np.zeros(3)))
    for out in (x, w):
        node = Node("Relu", name="again", inputs=(g.values["a"],), outputs=(out,))
        with pytest.raises(IRError, match=r"is already defined \(constant or graph input\)"):
            add([node])
    fresh = g.add_value(Value("fresh", FLOAT, ("N", 3)))
    twice = Node("Split", name="s2", inputs=(x,), outputs=(fresh, fresh))
    with pytest.raises(IRError, match="lists the same output twice"):
        add([twice])
    assert [n.name for n in g.nodes] == ["r", "n", "s", "q"] and not fresh.uses
    g.verify()


def test_implicit_reads_are_use_minus_one() -> None:
    g, _ = _chain()
    x, out = g.values["x"], g.add_value(Value("o", FLOAT, ()))
    loop = g.add_node(Node("Loop", name="l", inputs=(None,), outputs=(out,), implicit_inputs=(x,)))
    assert (loop, -1) in x.uses
    g.verify()


def test_remove_dead_nodes_keeps_subgraph_holders_and_skips_stale_roots() -> None:
    g, (relu, neg, abs_, _) = _chain()
    g.outputs = [g.values["z"]]
    holder_out = g.add_value(Value("h", FLOAT, ()))
    holder = g.add_node(
        Node(
            "If",
            name="h",
            inputs=(g.values["x"],),
            outputs=(holder_out,),
            implicit_inputs=(neg.outputs[0],),
        )
    )
    stale = Node("Relu", name="stale")
    assert g.remove_dead_nodes([abs_, holder, stale]) == 1  # only Abs: the If reads b
    assert holder in g.nodes and neg in g.nodes and relu in g.nodes


def test_remove_dead_nodes_follows_producers_past_absent_inputs() -> None:
    g = Graph()
    x = g.add_value(Value("x", FLOAT, (3,)))
    g.inputs.append(x)
    a, b, y = (g.add_value(Value(k, FLOAT, (3,))) for k in "aby")
    relu = g.add_node(Node("Relu", name="r", inputs=(x,), outputs=(a,)))
    clip = g.add_node(Node("Clip", name="c", inputs=(a, None), outputs=(b,)))
    g.add_node(Node("Neg", name="n", inputs=(x,), outputs=(y,)))
    g.outputs.append(y)
    assert g.remove_dead_nodes([clip]) == 2
    assert relu not in g.nodes and [n.name for n in g.nodes] == ["n"]


def test_remove_unused_constants_keeps_the_graph_boundary() -> None:
    g, _ = _chain()
    kept = g.add_value(Value("k", FLOAT, (3,), const=np.zeros(3)))
    fed = g.add_value(Value("f", FLOAT, (3,), const=np.zeros(3)))
    g.add_value(Value("dead1", FLOAT, (3,), const=np.zeros(3)))
    g.add_value(Value("dead2", FLOAT, (3,), const=np.zeros(3)))
    g.outputs.append(kept)
    g.inputs.append(fed)
    assert g.remove_unused_constants() == 2
    assert "k" in g.values and "f" in g.values and "dead1" not in g.values
