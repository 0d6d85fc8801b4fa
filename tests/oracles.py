"""Independent cost oracles for tests: MAC and parameter counts straight from the ONNX op specs.

This module deliberately shares no code with irprune (it must not import it), so tests can check
the cost model used for allocation against a second, separately written counter.

Counting rules (multiply-accumulates, bias additions and elementwise ops not counted):

- Conv: prod(output spatial) * C_out * (C_in / group) * prod(kernel). The weight has shape
  [C_out, C_in / group, k1, k2, ...], so this is prod(out spatial) * prod(W.shape).
- ConvTranspose: every input pixel scatters a kernel for C_out / group output channels:
  prod(input spatial) * C_in * (C_out / group) * prod(kernel) = prod(in spatial) * prod(W.shape).
- Gemm: M * N * K, where A is [M, K] (or [K, M] with transA) and B is [K, N] (or [N, K] with
  transB).
- MatMul: prod(output dims except the last) * N * K = prod(output dims) * K, with K the last dim
  of A (numpy matmul semantics, rank-1 operands included).
- LSTM / GRU / RNN: per time step, sample and direction, each of the G gates (4, 3, 1) multiplies
  the input (input_size) and the previous hidden state (hidden_size) by its weights:
  seq * batch * directions * G * hidden_size * (input_size + hidden_size), with hidden_size and
  direction from the attributes and seq, batch, input_size from X's shape.

Graph inputs take the shapes a test gives (the deployment shape): what inference then leaves
symbolic around a MAC node is read off an onnxruntime run at that shape; otherwise batch and
symbolic dims count as 1. Weight shapes come from the initializers; every other shape
from ``onnx.shape_inference.infer_shapes`` run on a copy of the model without its value_info (so
shapes recorded by whoever wrote the file are not trusted). A shape the oracle needs but cannot
know (e.g. downstream of an op without a schema) raises ValueError rather than being guessed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

_Shape = tuple[int | str | None, ...]


def _dims(type_proto: onnx.TypeProto) -> _Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _known_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, _Shape]:
    """name -> shape for every main-graph value shape inference or the initializers can give."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    bare.graph.ClearField("value_info")
    for vi in bare.graph.input:
        if input_shapes and vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) != len(input_shapes[vi.name]):
                raise ValueError(f"input {vi.name!r}: rank {len(dims)}, shape given differs")
            for d, size in zip(dims, input_shapes[vi.name], strict=True):
                d.Clear()
                d.dim_value = int(size)
    for vi in bare.graph.output:  # paddle2onnx's -1: "any size", which strict inference refuses
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.Clear()
    inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=True, data_prop=True)
    shapes: dict[str, _Shape] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = _dims(vi.type)
        if dims is not None:
            shapes[vi.name] = dims
    for init in model.graph.initializer:  # initializer shapes are the ground truth
        shapes[init.name] = tuple(int(d) for d in init.dims)
    if input_shapes:
        shapes.update(_run_shapes(bare, shapes, input_shapes))
    return shapes


def _run_shapes(
    model: onnx.ModelProto, shapes: dict[str, _Shape], input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, _Shape]:
    """Shapes inference left symbolic around MAC nodes (run-time Reshape targets), read off one
    onnxruntime run at ``input_shapes`` with those values exposed as outputs."""
    import onnxruntime as ort

    names = [
        name
        for node in model.graph.node
        if node.domain in ("", "ai.onnx") and node.op_type in _MACS
        for name in (*node.input[:2], node.output[0])
        if name and not all(isinstance(d, int) for d in shapes.get(name, (None,)))
    ]
    if not names:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in outputs]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        dtype = np.float32 if inp.type == "tensor(float)" else np.int64
        feeds[inp.name] = rng.random(tuple(input_shapes[inp.name])).astype(dtype)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return {n: tuple(int(d) for d in got[n].shape) for n in names}


def _size(dims: Sequence[int | str | None]) -> int:
    """Product of dims, counting symbolic or unknown ones as 1."""
    return math.prod(d if isinstance(d, int) else 1 for d in dims)


def _shape(shapes: dict[str, _Shape], name: str, node: onnx.NodeProto) -> _Shape:
    if name not in shapes:
        raise ValueError(f"{node.op_type} {node.name!r}: no shape known for {name!r}")
    return shapes[name]


def _static(dim: int | str | None, what: str, node: onnx.NodeProto) -> int:
    if not isinstance(dim, int):
        raise ValueError(f"{node.op_type} {node.name!r}: {what} is not static ({dim!r})")
    return dim


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def _conv_macs(node: onnx.NodeProto, shapes: dict[str, _Shape]) -> int:
    w = _shape(shapes, node.input[1], node)
    y = _shape(shapes, node.output[0], node)
    c_out = _static(w[0], "C_out", node)
    c_in_per_group = _static(w[1], "C_in / group", node)
    kernel = [_static(k, "kernel size", node) for k in w[2:]]
    out_spatial = y[2:]
    return _size(out_spatial) * c_out * c_in_per_group * math.prod(kernel)


def _conv_transpose_macs(node: onnx.NodeProto, shapes: dict[str, _Shape]) -> int:
    x = _shape(shapes, node.input[0], node)
    w = _shape(shapes, node.input[1], node)
    c_in = _static(w[0], "C_in", node)
    c_out_per_group = _static(w[1], "C_out / group", node)
    kernel = [_static(k, "kernel size", node) for k in w[2:]]
    in_spatial = x[2:]
    return _size(in_spatial) * c_in * c_out_per_group * math.prod(kernel)


def _gemm_macs(node: onnx.NodeProto, shapes: dict[str, _Shape]) -> int:
    a = _shape(shapes, node.input[0], node)
    b = _shape(shapes, node.input[1], node)
    m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
    k_b, n = (b[1], b[0]) if _attr(node, "transB", 0) else (b[0], b[1])
    if isinstance(k, int) and isinstance(k_b, int) and k != k_b:
        raise ValueError(f"Gemm {node.name!r}: inner dims differ ({k} vs {k_b})")
    k = k if isinstance(k, int) else k_b
    return _size([m, n, k])


def _matmul_macs(node: onnx.NodeProto, shapes: dict[str, _Shape]) -> int:
    a = _shape(shapes, node.input[0], node)
    y = _shape(shapes, node.output[0], node)
    k = a[-1]
    if not isinstance(k, int):  # fall back to B's reduction dim
        b = _shape(shapes, node.input[1], node)
        k = b[0] if len(b) == 1 else b[-2]
    # numpy semantics: a rank-1 B drops the last output dim, so the output holds every M*N pair
    return _size(y) * _static(k, "K", node)


_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _recurrent_macs(node: onnx.NodeProto, shapes: dict[str, _Shape]) -> int:
    x = _shape(shapes, node.input[0], node)
    hidden = _attr(node, "hidden_size", 0)
    direction = next((a.s for a in node.attribute if a.name == "direction"), b"forward")
    directions = 2 if direction == b"bidirectional" else 1
    inputs = _static(x[2], "input_size", node)
    return _size(x[:2]) * directions * _GATES[node.op_type] * hidden * (inputs + hidden)


_MACS = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
    **dict.fromkeys(_GATES, _recurrent_macs),
}


def count_macs(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul and recurrent nodes of the main
    graph, with the graph inputs at ``input_shapes`` where given (else symbolic dims count 1)."""
    shapes = _known_shapes(model, input_shapes)
    total = 0
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in _MACS:
            total += _MACS[node.op_type](node, shapes)
    return total


def _node_inputs(graph: onnx.GraphProto) -> Iterator[str]:
    """Every name a node reads, subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        yield from (name for name in node.input if name)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _node_inputs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _node_inputs(g)


_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the floating-point initializers that some node reads."""
    used = set(_node_inputs(model.graph))
    return sum(
        int(np.prod(init.dims, dtype=np.int64))
        for init in model.graph.initializer
        if init.data_type in _FLOAT_TYPES and init.name in used
    )
