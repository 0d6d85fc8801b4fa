"""Block removal against an independent oracle: the original ONNX model with the block's Add
replaced by ``Identity(x)`` (a proto edit that shares no code with the pass), run in
onnxruntime with graph optimizations off."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.emit import to_model
from irprune.emit.verify import verify
from irprune.passes.analysis.blocks import find_blocks
from irprune.passes.rewrite.remove_blocks import BlockRemovalError, remove_blocks
from tests.helpers import feeds_for, rel_diff, run
from tests.passes.analysis.test_blocks import (
    Net,
    analysed,
    basic_net,
    bottleneck_net,
    inverted_net,
    nested_net,
    output_net,
    shortcut_ops_net,
    transformer_net,
)


def skipped(model: onnx.ModelProto, adds: Mapping[str, str]) -> onnx.ModelProto:
    """``model`` with each Add named in ``adds`` replaced by ``Identity(adds[name])``: the
    block's output replaced by its input. The rest of f stays (dead) in the graph."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = set()
    for node in out.graph.node:
        if node.op_type == "Add" and node.name in adds:
            identity = helper.make_node(
                "Identity", [adds[node.name]], list(node.output), name=node.name
            )
            node.CopyFrom(identity)
            found.add(node.name)
    assert found == set(adds), f"no Add named {set(adds) - found}"
    return out


def removed(model: onnx.ModelProto, outputs: list[str] | None = None) -> onnx.ModelProto:
    """The model with the blocks producing ``outputs`` (all blocks when None) removed, verified
    (onnx.checker full check, shape inference, an onnxruntime run)."""
    graph, analysis = analysed(model)
    blocks = analysis.blocks if outputs is None else [analysis.block(o) for o in outputs]
    remove_blocks(graph, blocks)
    written = to_model(graph)
    onnx.checker.check_model(written, full_check=True)
    verify(written)
    return written


def _close(expected: list[np.ndarray], got: list[np.ndarray], tol: float) -> None:
    assert [e.shape for e in expected] == [g.shape for g in got]
    err = max(rel_diff(e, g) for e, g in zip(expected, got, strict=True))
    assert err <= tol, f"outputs differ from the oracle: {err:.3g}"


KINDS: dict[str, tuple[Callable[[], onnx.ModelProto], dict[str, str]]] = {
    "basic": (lambda: basic_net(2), {"b0.add": "stem", "b1.add": "b0.out"}),
    "bottleneck": (bottleneck_net, {"neck.add": "stem"}),
    "inverted": (inverted_net, {"ir.add": "stem"}),
    "transformer": (
        lambda: transformer_net(2),
        {"l0.attn.add": "embed", "l0.mlp.add": "l0.attn.add", "l1.attn.add": "l0.mlp.add"},
    ),
    "shortcut_ops": (shortcut_ops_net, {"b0.add": "stem"}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_block_equals_its_output_replaced_by_its_input(kind: str) -> None:
    build, adds = KINDS[kind]
    model = build()
    feeds = feeds_for(model, batch=2, seed=3)
    original = run(model, feeds)
    for add, x in adds.items():
        got = run(removed(model, [add]), feeds)
        _close(run(skipped(model, {add: x}), feeds), got, 1e-5)
        assert max(rel_diff(o, g) for o, g in zip(original, got, strict=True)) > 1e-3, (
            f"removing {add} changed nothing: the oracle comparison proves nothing"
        )


def test_zeroed_block_removal_is_exact() -> None:
    model = basic_net(3, zero=(1,))
    feeds = feeds_for(model, batch=2, seed=1)
    _close(run(model, feeds), run(removed(model, ["b1.add"]), feeds), 1e-6)


def test_zeroed_mlp_removal_is_exact() -> None:
    model = transformer_net(2, zero_mlp=(0,))
    feeds = feeds_for(model, batch=2, seed=1)
    _close(run(model, feeds), run(removed(model, ["l0.mlp.add"]), feeds), 1e-6)


def test_adjacent_blocks_removed_together() -> None:
    """b1's x is b0's y: both at once equal both Adds replaced in the original."""
    model = basic_net(3)
    feeds = feeds_for(model, batch=2, seed=2)
    got = run(removed(model, ["b0.add", "b1.add"]), feeds)
    _close(run(skipped(model, {"b0.add": "stem", "b1.add": "b0.out"}), feeds), got, 1e-5)


def test_all_transformer_sub_blocks_removed() -> None:
    model = transformer_net(2)
    feeds = feeds_for(model, batch=2, seed=2)
    adds = {"l0.attn.add": "embed", "l0.mlp.add": "l0.attn.add"}
    adds |= {"l1.attn.add": "l0.mlp.add", "l1.mlp.add": "l1.attn.add"}
    written = removed(model)
    assert {n.op_type for n in written.graph.node} == {"Identity", "LayerNormalization"}
    _close(run(skipped(model, adds), feeds), run(written, feeds), 1e-5)


def test_nested_blocks_outer_subsumes_inner() -> None:
    model = nested_net()
    graph, analysis = analysed(model)
    summary = remove_blocks(graph, [analysis.block("inner.add"), analysis.block("outer.add")])
    assert summary.removed == ("outer.add",) and summary.subsumed == ("inner.add",)
    feeds = feeds_for(model, batch=2, seed=4)
    _close(run(skipped(model, {"outer.add": "stem"}), feeds), run(to_model(graph), feeds), 1e-5)


def test_inner_block_alone() -> None:
    model = nested_net()
    feeds = feeds_for(model, batch=2, seed=4)
    got = run(removed(model, ["inner.add"]), feeds)
    _close(run(skipped(model, {"inner.add": "outer.relu1"}), feeds), got, 1e-5)


def test_graph_output_y_keeps_its_name() -> None:
    model = output_net()
    feeds = feeds_for(model, batch=2, seed=5)
    written = removed(model, ["b0.add", "b1.add"])
    assert [o.name for o in written.graph.output] == [o.name for o in model.graph.output]
    expected = run(skipped(model, {"b0.add": "stem", "b1.add": "b0.out"}), feeds)
    got = run(written, feeds)
    _close(expected, got, 1e-5)
    stem = run(skipped(model, {"b0.add": "stem"}), feeds)[1]
    np.testing.assert_array_equal(got[1], stem)  # the kept output is x itself


def test_block_from_graph_input_to_graph_output() -> None:
    """x is the graph input and y the graph output: the model becomes Identity."""
    net = Net()
    h = net.op("Relu", "b.relu", net.conv("b.conv1", "input", 3, 3))
    net.op("Add", "y", "input", net.conv("b.conv2", h, 3, 3))
    model = net.model([("input", [2, 3, 6, 6])], [("y", [2, 3, 6, 6])])
    written = removed(model)
    assert [n.op_type for n in written.graph.node] == ["Identity"]
    assert [o.name for o in written.graph.output] == ["y"] and not written.graph.initializer
    feeds = feeds_for(model, batch=2)
    np.testing.assert_array_equal(run(written, feeds)[0], feeds["input"])


def test_weights_of_removed_blocks_are_gone() -> None:
    model = basic_net(2)
    written = removed(model, ["b0.add"])
    names = {t.name for t in written.graph.initializer}
    assert not any(n.startswith("b0.") for n in names)
    assert {"b1.conv1.w", "b1.conv2.w", "stem.conv.w"} <= names
    gone = {"b0.conv1", "b0.relu1", "b0.conv2", "b0.add"}
    assert not gone & {n.name for n in written.graph.node}
    assert sum(n.op_type == "Add" for n in written.graph.node) == 1


def test_shared_weight_outside_the_block_is_kept() -> None:
    """A weight f shares with a node outside it stays; f's own goes."""
    model = basic_net(2)
    for node in model.graph.node:
        if node.name == "b1.conv1":
            node.input[1] = "b0.conv1.w"  # tied to b0's first conv
    graph, analysis = analysed(model)
    remove_blocks(graph, [analysis.block("b0.add")])
    names = {t.name for t in to_model(graph).graph.initializer}
    assert "b0.conv1.w" in names and "b0.conv2.w" not in names


def test_stale_or_bogus_blocks_refused_before_any_change() -> None:
    graph, analysis = analysed(basic_net(2))
    b0, b1 = analysis.blocks
    before = to_model(graph).SerializeToString()
    with pytest.raises(BlockRemovalError, match="does not match"):
        remove_blocks(graph, [b0, replace(b1, nodes=b1.nodes[:1])])
    with pytest.raises(BlockRemovalError, match="not removable"):
        remove_blocks(graph, [b0, replace(b1, output="pool")])
    with pytest.raises(BlockRemovalError, match="twice"):
        remove_blocks(graph, [b0, b0])
    graph.verify()
    assert to_model(graph).SerializeToString() == before  # b0 was not removed either
    remove_blocks(graph, [b1])
    with pytest.raises(BlockRemovalError, match="no node produces"):
        remove_blocks(graph, [b1])


def test_every_zoo_style_block_set_verifies() -> None:
    """All blocks of every small graph at once: checker, shape inference and a run pass."""
    for build, _ in KINDS.values():
        model = build()
        graph = analysed(model)[0]
        remove_blocks(graph, find_blocks(graph).blocks)
        verify(to_model(graph))
