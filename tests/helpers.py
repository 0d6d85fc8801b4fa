"""Shared test helpers: running models, tiny graph builders, figures read off written models,
the layout-based masked original."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from irprune.emit.verify import random_inputs, session
from irprune.passes.allocation import Plan
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis

IR_VERSION = 10


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime with graph optimizations disabled."""
    return list(session(model).run(None, dict(feeds)))


def feeds_for(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    return random_inputs(session(model), batch=batch, seed=seed)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, list]],
    outputs: list[tuple[str, list]],
    inits: Mapping[str, np.ndarray],
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def written_widths(model: onnx.ModelProto, analysis: ChannelAnalysis) -> dict[int, int]:
    """Each prunable group's width as ``model`` stores it, never as a report or plan says: the
    length of its source weights along the source axis, looked up by the source node's name (a
    group's sources must agree). ``analysis`` (of the original) only says which node, weight and
    axis create each group. Counts tensor channels (a group of blocks counts their channels)
    and assumes each source weight axis creates one group (no Split of a source)."""
    nodes = {n.name: n for n in model.graph.node}
    inits = _initializers(model)
    out = {}
    for g in analysis.prunable:
        widths = set()
        for src in g.sources:
            assert src.weight in nodes[src.node].input, f"{src.node} no longer reads {src.weight}"
            widths.add(int(inits[src.weight].dims[src.axis]))
        assert len(widths) == 1, f"group {g.id}: its sources disagree on the width: {widths}"
        out[g.id] = widths.pop()
    return out


def node_weight(model: onnx.ModelProto, node: str, index: int = 1) -> np.ndarray:
    """The initializer read as input ``index`` of the node named ``node``."""
    (found,) = [n for n in model.graph.node if n.name == node]
    return numpy_helper.to_array(_initializers(model)[found.input[index]])


def kept_channels(
    original: onnx.ModelProto, pruned: onnx.ModelProto, producer: str, consumer: str
) -> list[int]:
    """The original output channels of the node ``producer`` that ``pruned`` keeps, read off the
    weights themselves: each kept channel is the original channel whose producer filter (axis 0)
    and consumer weight slice (axis 1: Conv, or Gemm with transB) both equal the pruned ones
    bitwise. For the drop rewrite, with the producer's own inputs unpruned."""
    w_p, w_c = node_weight(original, producer), node_weight(original, consumer)
    p_p, p_c = node_weight(pruned, producer), node_weight(pruned, consumer)
    assert p_p.shape[0] == p_c.shape[1], f"{producer} and {consumer} disagree on the width"
    kept = []
    for j in range(p_p.shape[0]):
        found = [
            i
            for i in range(w_p.shape[0])
            if np.array_equal(w_p[i], p_p[j]) and np.array_equal(w_c[:, i], p_c[:, j])
        ]
        assert len(found) == 1, f"kept channel {j} of {producer} matches original {found}"
        kept.append(found[0])
    assert len(set(kept)) == len(kept), f"a channel of {producer} is kept twice: {kept}"
    return sorted(kept)


_CONTRACTING = {"Conv": 1, "ConvTranspose": 1, "Gemm": None, "MatMul": -1}


def masked_original(
    model: onnx.ModelProto, analysis: ChannelAnalysis, plan: Plan
) -> onnx.ModelProto:
    """The original model with removed channels zeroed at the inputs of every contracting consumer.

    DESIGN.md section 4: the pruned model must compute exactly this. A consumer is a node that sums
    over the channel axis of its data input: Conv and ConvTranspose (group 1), Gemm (K), MatMul
    (last axis).

    Not independent: the masks are placed with the pruner's own layouts (``analysis.layout``,
    ``layout.positions``), so a position bug moves this oracle along with the pruned model. The
    tests use ``tests.reference_mask.masked_reference``; this stays for ``benchmarks/zoo.py`` and
    for ``tests/test_reference_mask.py``, which shows a planted position bug that it misses.
    """
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    shapes = _ranks(model)
    kept = dict(plan.kept)
    new_nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(masked.graph.node):
        axis = _contracted_axis(node, shapes)
        name = node.input[0] if node.input else ""
        layout = analysis.layout(name, axis) if axis is not None else None
        if layout is not None and lay.roots(layout) & kept.keys():
            rank = shapes[name]
            keep = lay.positions(layout, kept)
            mask = np.zeros(lay.span(layout), dtype=np.float32)
            mask[keep] = 1.0
            shape = [1] * rank
            shape[axis] = mask.size
            mname = f"__mask{k}"
            masked.graph.initializer.append(numpy_helper.from_array(mask.reshape(shape), mname))
            new_nodes.append(helper.make_node("Mul", [name, mname], [f"{mname}_out"]))
            node.input[0] = f"{mname}_out"
        new_nodes.append(node)
    del masked.graph.node[:]
    masked.graph.node.extend(new_nodes)
    return masked


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        out[vi.name] = len(vi.type.tensor_type.shape.dim)
    return out


def _contracted_axis(node: onnx.NodeProto, ranks: Mapping[str, int]) -> int | None:
    if node.op_type not in _CONTRACTING or not node.input or node.input[0] not in ranks:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = ranks[node.input[0]]
    if node.op_type in ("Conv", "ConvTranspose"):
        return None if attrs.get("group", 1) != 1 else 1
    if node.op_type == "Gemm":
        return 0 if attrs.get("transA", 0) else 1
    return rank - 1


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(a))), 1e-12)
    return float(np.max(np.abs(a - b))) / scale


def stored_as(model: onnx.ModelProto, dtype: int) -> onnx.ModelProto:
    """Every float initializer stored as ``dtype`` (e.g. FLOAT16, BFLOAT16) and Cast to float
    where it is read."""
    casts, stored = [], []
    for t in model.graph.initializer:
        array = numpy_helper.to_array(t)
        if array.dtype == np.float32:
            array = array.astype(helper.tensor_dtype_to_np_dtype(dtype))
            casts.append(helper.make_node("Cast", [f"{t.name}_q"], [t.name], to=TensorProto.FLOAT))
            stored.append(numpy_helper.from_array(array, f"{t.name}_q"))
        else:
            stored.append(t)
    del model.graph.initializer[:]
    model.graph.initializer.extend(stored)
    nodes = [*casts, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
