"""An independent reference for masked equivalence (DESIGN.md section 4).

``masked_reference(model, analysis, plan)`` returns the original ONNX model in which every channel
the plan removes is zeroed wherever a contraction (Conv, ConvTranspose, Gemm, MatMul) reads it.
The pruned model (``rewrite="drop"``) must compute exactly this.

Where the removed channels sit in each tensor is *not* taken from the pruner's layouts: it is
computed by the original graph itself. Next to every value ``v`` that can hold a removed channel
the model gets a *taint* tensor ``t_v`` (float32 0/1, the shape of ``v``): 1 where ``v``'s
position belongs to a removed channel. Taints start on the source weights and are carried by
each op's ONNX semantics, in onnxruntime, on the same tensors the model computes:

- positional ops (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Gather,
  Tile, Expand, Resize) are applied to the taint as they are to the data (same shape, index and
  axis inputs), so concat offsets, split ranges, flatten -> linear blocks, channel shuffles and
  run-time reshapes come out of the op itself; Pad pads the taint one axis at a time, a padded
  entry being removed when its whole row along that axis is (the border of a removed channel's
  map; entries padded onto a channel axis are new, kept channels);
- elementwise ops (unary, broadcasting, BatchNormalization): a position is removed when it is
  removed in any input it is computed from (the broadcast maximum of the inputs' taints);
- reductions, pools, softmax-like and the statistics of Layer/Instance/GroupNormalization:
  an output position is removed when *all* of the input positions it reads are removed (a
  global pool of a removed channel is removed; a mean over channels of which some are kept is
  not, and then the pruned model cannot match: such a group must have been frozen);
- contractions: every tainted input is masked (multiplied by 1 - taint) before the op, which is
  what "a pruned channel is zero" means. An output position is removed when the weight slice that
  creates it is removed (Conv/Gemm/MatMul output channels of a source weight) or when all of
  the input positions it reads are removed (a depthwise or grouped conv carries its input's
  removed channels, computed by running the conv on the taint with an all-ones kernel; a MatMul
  carries removed rows of A and removed columns of B). LSTM / GRU / RNN contract X's features
  and carry nothing; a plan that removes hidden units (a removed row on W or R) is refused here,
  and tests/passes/analysis/test_rules_recurrent.py checks those against its own oracle (the
  units' gate rows zeroed, so their states stay 0).

An op that reads a tainted value without a rule here raises ``ReferenceUnsupported`` (fail
closed), as does a tainted value read inside a subgraph.

What is read from the pruner: ``plan.kept`` (group -> kept indices), each group's ``sources``
(which weight and which axis create its channels) and the layout of that *source weight axis*
only, which defines what index k of a group means on the weight (an unrefined group: filter k; a
group refined by a Split into pieces: an offset; heads or conv groups: a block of channels). The
positions are computed here from that definition; nothing downstream of the source weights,
and no function of ``irprune.passes``, is used. Consequently a bug that slices the right
weights but maps kept channels to the wrong positions anywhere (including on the source weights
themselves) makes the pruned model differ from this reference.

Not covered: ``rewrite="merge"`` (lossless clustering adds removed channels' weights into the
kept ones, which is not a zeroing of anything); those tests use the lossless-merge oracle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ReferenceUnsupported", "masked_reference", "removed_on_sources"]


class ReferenceUnsupported(NotImplementedError):
    """A removed channel reaches an op this reference has no taint rule for."""


CONTRACTIONS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"}
UNARY = {
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Identity",
    "Dropout", "Cast", "Not", "IsNaN", "IsInf", "Shrink",
}  # fmt: skip
BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min", "Sum", "Mean", "Where", "And",
    "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Mod",
}  # fmt: skip
# op -> indices of the inputs that are data (moved around); the others are shapes/indices/axes
POSITIONAL: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,), "Flatten": (0,), "Transpose": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
    "Split": (0,), "Slice": (0,), "Gather": (0,), "Tile": (0,), "Expand": (0,), "Pad": (0,),
    "Resize": (0,), "Upsample": (0,), "Concat": None,  # None: every input
}  # fmt: skip
WINDOW_POOLS = {"MaxPool", "AveragePool", "LpPool"}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCE = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum",
}  # fmt: skip
SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}
SHAPE_ONLY = {"Shape", "Size"}  # read the shape, never the values


# What is read from the pruner's objects (ChannelAnalysis, Plan), by attribute only.
class _Segment(Protocol):
    @property
    def root(self) -> int | None: ...
    @property
    def size(self) -> int: ...
    @property
    def inner(self) -> int: ...
    @property
    def outer(self) -> int: ...


class _Source(Protocol):
    @property
    def weight(self) -> str: ...
    @property
    def axis(self) -> int: ...


class _Group(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def sources(self) -> Sequence[_Source]: ...


class _Analysis(Protocol):
    @property
    def groups(self) -> Sequence[_Group]: ...
    def layout(self, value: str, axis: int) -> Sequence[_Segment] | None: ...


class _Plan(Protocol):
    @property
    def kept(self) -> Mapping[int, np.ndarray]: ...


def removed_on_sources(analysis: _Analysis, plan: _Plan) -> dict[tuple[str, int], np.ndarray]:
    """(source weight, axis) -> bool vector over that axis: True where the plan removes.

    The layout of the source weight axis says what the group indices mean there: segment by
    segment (in order, each ``outer * size * inner`` long), channel c of group r covers
    ``offset + o * size * inner + c * inner + i``.
    """
    by_id = {g.id: g for g in analysis.groups}
    out: dict[tuple[str, int], np.ndarray] = {}
    for gid in plan.kept:
        group = by_id[gid]
        if not group.sources:
            raise ReferenceUnsupported(f"group {gid} has no source weight")
        for src in group.sources:
            key = (src.weight, src.axis)
            if key in out:
                continue
            layout = analysis.layout(src.weight, src.axis)
            if layout is None:
                raise ReferenceUnsupported(f"no layout on source weight {key}")
            out[key] = _removed(layout, plan.kept)
    return out


def _removed(layout: Sequence[_Segment], kept: Mapping[int, np.ndarray]) -> np.ndarray:
    pieces = []
    for seg in layout:
        block = np.zeros((seg.outer, seg.size, seg.inner), dtype=bool)
        if seg.root is not None and seg.root in kept:
            gone = np.ones(seg.size, dtype=bool)
            gone[np.asarray(kept[seg.root], dtype=np.int64)] = False
            block[:, gone, :] = True
        pieces.append(block.ravel())
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=bool)


def masked_reference(model: onnx.ModelProto, analysis: _Analysis, plan: _Plan) -> onnx.ModelProto:
    """The original model with the plan's removed channels zeroed at every contraction's inputs,
    their positions carried by the original ops (see the module docstring)."""
    return _Builder(model, removed_on_sources(analysis, plan)).build()


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names read inside ``node``'s subgraphs (recursively)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(i for i in inner.input if i)
                names |= _subgraph_reads(inner)
    return names


class _Builder:
    def __init__(self, model: onnx.ModelProto, removed: Mapping[tuple[str, int], np.ndarray]):
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.removed = removed
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.taint: dict[str, str] = {}
        self.seeded: set[str] = set()
        self.count = 0
        self.ranks: dict[str, int] = {}
        self.dtypes: dict[str, int] = {}
        self.consts: dict[str, np.ndarray] = {}
        self._read_types()

    # --- graph facts --------------------------------------------------------------------------
    def _read_types(self) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
        except Exception:
            inferred = self.model
        g = inferred.graph
        for vi in (*g.value_info, *g.input, *g.output):
            t = vi.type.tensor_type
            if t.elem_type:
                self.dtypes[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.ranks[vi.name] = len(t.shape.dim)
        for init in self.model.graph.initializer:
            self.dtypes[init.name] = init.data_type
            self.ranks[init.name] = len(init.dims)
            self.consts[init.name] = numpy_helper.to_array(init)
        for node in self.model.graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    array = numpy_helper.to_array(value.t)
                    self.consts[node.output[0]] = array
                    self.ranks[node.output[0]] = array.ndim
                    self.dtypes[node.output[0]] = value.t.data_type

    def rank(self, name: str) -> int:
        if name not in self.ranks:
            raise ReferenceUnsupported(f"rank of {name!r} unknown (shape inference)")
        return self.ranks[name]

    # --- emitting -----------------------------------------------------------------------------
    def fresh(self) -> str:
        self.count += 1
        return f"__ref{self.count}"

    def emit(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.fresh() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, **attrs))
        return outs

    def one(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.emit(op, inputs, **attrs)[0]

    def const(self, array: np.ndarray | np.generic) -> str:
        name = self.fresh()
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def complement(self, t: str) -> str:
        return self.one("Sub", [self.const(np.float32(1.0)), t])

    def expand_to(self, t: str, like: str) -> str:
        if self.opset < 8:  # no Expand: broadcast by adding zeros of the shape
            return self.one("Add", [t, self.filled_like(like, 0.0)])
        return self.one("Expand", [t, self.one("Shape", [like])])

    def filled_like(self, like: str, value: float) -> str:
        """A float32 tensor of ``like``'s shape holding ``value``."""
        shape = self.one("Shape", [like])
        if self.opset < 9:  # no ConstantOfShape: tile a [1, ..., 1] constant
            unit = np.full([1] * self.rank(like), value, dtype=np.float32)
            return self.one("Tile", [self.const(unit), shape])
        fill = helper.make_tensor("value", TensorProto.FLOAT, [1], [value])
        return self.one("ConstantOfShape", [shape], value=fill)

    def zeros_like(self, like: str) -> str:
        return self.filled_like(like, 0.0)

    def ones_like(self, like: str) -> str:
        return self.filled_like(like, 1.0)

    def any_of(self, taints: Sequence[str]) -> str:
        if len(taints) == 1:
            return taints[0]
        if self.opset >= 8:
            return self.one("Max", list(taints))
        out = taints[0]
        for t in taints[1:]:  # a or b = a + b - a * b (Max broadcasts only from opset 8)
            both = self.one("Mul", [out, t])
            out = self.one("Sub", [self.one("Add", [out, t]), both])
        return out

    def reduce_all(self, t: str, axes: Sequence[int] | None, keepdims: int) -> str:
        """1 where every reduced position is 1: ReduceMin, in the model's opset's form."""
        if axes is None:
            return self.one("ReduceMin", [t], keepdims=keepdims)
        if self.opset >= 18:
            return self.one(
                "ReduceMin", [t, self.const(np.array(axes, np.int64))], keepdims=keepdims
            )
        return self.one("ReduceMin", [t], axes=list(axes), keepdims=keepdims)

    def to_float(self, x: str) -> str:
        return self.one("Cast", [x], to=TensorProto.FLOAT)

    def mask(self, x: str, t: str) -> str:
        """``x`` with its tainted positions zeroed."""
        dtype = self.dtypes.get(x)
        keep = self.complement(t)
        if dtype is not None:
            keep = keep if dtype == TensorProto.FLOAT else self.one("Cast", [keep], to=dtype)
        elif self.opset >= 15:
            keep = self.one("CastLike", [keep, x])
        else:
            raise ReferenceUnsupported(f"element type of {x!r} unknown")
        return self.one("Mul", [x, keep])

    # --- seeds --------------------------------------------------------------------------------
    def seed(self, name: str) -> None:
        """Add the plan's removed positions of source weight ``name`` to its taint."""
        self.seeded.add(name)
        for (weight, axis), gone in self.removed.items():
            if weight != name or not gone.any():
                continue
            rank = self.rank(name)
            shape = [1] * rank
            shape[axis] = gone.size
            vec = self.const(gone.astype(np.float32).reshape(shape))
            t = self.expand_to(vec, name)
            self.taint[name] = self.any_of([self.taint[name], t]) if name in self.taint else t

    # --- the walk -----------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        graph = self.model.graph
        sources = {w for w, _ in self.removed}
        for name in [*(i.name for i in graph.input), *(t.name for t in graph.initializer)]:
            if name in sources:
                self.seed(name)
        for node in graph.node:
            tainted = _subgraph_reads(node) & self.taint.keys()
            if tainted:
                raise ReferenceUnsupported(
                    f"{node.op_type} {node.name!r} reads removed channels of {sorted(tainted)} "
                    "inside a subgraph"
                )
            if node.op_type in CONTRACTIONS and node.domain in ("", "ai.onnx"):
                self.contraction(node)
            else:
                self.nodes.append(node)
                if any(i in self.taint for i in node.input if i):
                    self.propagate(node)
            for out in node.output:
                if out in sources:
                    self.seed(out)
        unseeded = sources - self.seeded
        if unseeded:
            raise ReferenceUnsupported(f"source weights not in the model: {sorted(unseeded)}")
        masked = onnx.ModelProto()
        masked.CopyFrom(self.model)
        del masked.graph.node[:]
        masked.graph.node.extend(self.nodes)
        masked.graph.initializer.extend(self.inits)
        return masked

    def taints(self, node: onnx.NodeProto, indices: Iterable[int] | None = None) -> list[str]:
        idx = range(len(node.input)) if indices is None else indices
        return [self.taint[node.input[i]] for i in idx if node.input[i] in self.taint]

    def set(self, name: str, t: str | None) -> None:
        if name and t is not None:
            self.taint[name] = t

    def propagate(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise ReferenceUnsupported(f"{node.domain}::{op} reads a removed channel")
        if op in SHAPE_ONLY:
            return
        if op in UNARY and len(self.taints(node)) == 1 and node.input[0] in self.taint:
            for out in node.output:
                self.set(out, self.taint[node.input[0]])
        elif op in UNARY or op in BROADCAST:
            t = self.any_of(self.taints(node))
            for out in node.output:
                if out:
                    self.set(out, self.expand_to(t, out))
        elif op in POSITIONAL:
            self.positional(node)
        elif op in WINDOW_POOLS or op in GLOBAL_POOLS:
            self.pool(node)
        elif op in REDUCE:
            self.reduce(node)
        elif op in SOFTMAX:
            self.softmax(node)
        elif op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization",
                    "RMSNormalization", "GroupNormalization"):  # fmt: skip
            self.norm(node)
        else:
            raise ReferenceUnsupported(f"no reference rule for {op} ({node.name!r})")

    def only_data(self, node: onnx.NodeProto, data: Iterable[int]) -> None:
        extra = set(range(len(node.input))) - set(data)
        if any(node.input[i] in self.taint for i in extra):
            raise ReferenceUnsupported(f"{node.op_type} {node.name!r}: a removed channel in a "
                                       "shape, index or parameter input")  # fmt: skip

    def positional(self, node: onnx.NodeProto) -> None:
        data = POSITIONAL[node.op_type]
        data = tuple(range(len(node.input))) if data is None else data
        self.only_data(node, data)
        if node.op_type == "Pad":
            self.set(node.output[0], self.pad(node))
            return
        inputs = list(node.input)
        for i in data:
            if i < len(inputs) and inputs[i]:
                name = inputs[i]
                inputs[i] = self.taint[name] if name in self.taint else self.zeros_like(name)
        outs = self.emit(node.op_type, inputs, len(node.output), **_attrs(node))
        for out, t in zip(node.output, outs, strict=True):
            if not out:
                continue
            if node.op_type in ("Resize", "Upsample"):  # interpolation of 0/1: a blend
                t = self.to_float(self.one("Greater", [t, self.const(np.float32(0.5))]))
            self.set(out, t)

    def pad(self, node: onnx.NodeProto) -> str:
        """Pad (any mode), one padded axis at a time: a position padded on axis a belongs to a
        removed channel when its whole row along a is removed (the border of a removed channel's
        map); new entries along an axis that carries channels (some kept) are kept."""
        x = node.input[0]
        rank, t = self.rank(x), self.taint[x]
        if self.opset < 11:
            pads = [int(p) for p in _attrs(node)["pads"]]
            for axis in range(rank):
                if pads[axis] or pads[axis + rank]:
                    one_axis = [p if i % rank == axis else 0 for i, p in enumerate(pads)]
                    padded = self.one("Pad", [t], pads=one_axis)
                    t = self.any_of([padded, self.reduce_all(t, [axis], 1)])
            return t
        axes_in = node.input[3] if len(node.input) > 3 else ""
        axes = [int(a) % rank for a in self.const_input(node, 3)] if axes_in else list(range(rank))
        n = len(axes)
        pads = self.consts.get(node.input[1])
        known = [int(p) for p in pads.ravel()] if pads is not None else None
        for k, axis in enumerate(axes):
            if known is not None and known[k] == known[k + n] == 0:
                continue
            onehot = np.zeros(2 * n, np.int64)
            onehot[[k, k + n]] = 1  # this axis' (begin, end) of the pads, run-time or not
            one_axis = self.one("Mul", [node.input[1], self.const(onehot)])
            padded = self.one("Pad", [t, one_axis, "", axes_in] if axes_in else [t, one_axis])
            t = self.any_of([padded, self.reduce_all(t, [axis], 1)])
        return t

    def const_input(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        name = node.input[index]
        if name not in self.consts:
            raise ReferenceUnsupported(f"{node.op_type} {node.name!r}: input {index} not constant")
        return self.consts[name].ravel()

    def pool(self, node: onnx.NodeProto) -> None:
        self.only_data(node, (0,))
        if len(node.output) > 1 and node.output[1]:
            raise ReferenceUnsupported(f"{node.op_type} Indices output")
        free = self.complement(self.taint[node.input[0]])
        if node.op_type in GLOBAL_POOLS:
            anyfree = self.one("GlobalMaxPool", [free])
        else:
            attrs = {
                k: v
                for k, v in _attrs(node).items()
                if k in ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")
            }
            anyfree = self.one("MaxPool", [free], **attrs)
        self.set(node.output[0], self.complement(anyfree))

    def reduce(self, node: onnx.NodeProto) -> None:
        attrs = _attrs(node)
        since = 13 if node.op_type == "ReduceSum" else 18
        if self.opset >= since:
            self.only_data(node, (0,))
            axes_name = node.input[1] if len(node.input) > 1 else ""
            if axes_name and axes_name not in self.consts:
                raise ReferenceUnsupported(f"{node.op_type}: axes computed at run time")
            axes = [int(a) for a in self.consts[axes_name].ravel()] if axes_name else []
        else:
            axes = [int(a) for a in attrs.get("axes", [])]
        if not axes and attrs.get("noop_with_empty_axes", 0):
            self.set(node.output[0], self.taint[node.input[0]])
            return
        keep = int(attrs.get("keepdims", 1))
        t = self.reduce_all(self.taint[node.input[0]], axes or None, keep)
        self.set(node.output[0], t)

    def along(self, x: str, axes: Sequence[int]) -> str:
        """The taint of x, 1 only where every position along ``axes`` is removed, broadcast back."""
        return self.expand_to(self.reduce_all(self.taint[x], list(axes), 1), x)

    def softmax(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        rank = self.rank(x)
        axis = int(_attrs(node).get("axis", -1 if self.opset >= 13 else 1)) % rank
        axes = [axis] if self.opset >= 13 else list(range(axis, rank))
        self.set(node.output[0], self.along(x, axes))

    def norm(self, node: onnx.NodeProto) -> None:
        self.only_data(node, (0,))
        x, op = node.input[0], node.op_type
        t = self.taint[x]
        if op == "BatchNormalization":
            if len([o for o in node.output if o]) > 1:
                raise ReferenceUnsupported("training-mode BatchNormalization")
            self.set(node.output[0], t)
        elif op == "InstanceNormalization":
            self.set(node.output[0], self.along(x, range(2, self.rank(x))))
        elif op == "GroupNormalization":
            groups = int(_attrs(node)["num_groups"])
            shape = self.const(np.array([0, groups, -1], np.int64))
            per_group = self.one("Reshape", [t, shape])
            both = self.expand_to(self.reduce_all(per_group, [2], 1), per_group)
            self.set(node.output[0], self.one("Reshape", [both, self.one("Shape", [x])]))
        else:  # LayerNormalization, RMSNormalization
            rank = self.rank(x)
            axis = int(_attrs(node).get("axis", -1)) % rank
            stats = self.reduce_all(t, list(range(axis, rank)), 1)
            self.set(node.output[0], self.expand_to(stats, x))
            for out in node.output[1:]:
                self.set(out, stats)

    # --- contractions -------------------------------------------------------------------------
    def contraction(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        t = {i: self.taint[name] for i, name in enumerate(node.input) if name in self.taint}
        if not t:
            self.nodes.append(node)
            return
        bias = 2  # Conv's B, Gemm's C: added, not contracted
        masked = onnx.NodeProto()
        masked.CopyFrom(node)
        for i in t:
            if i != bias:
                masked.input[i] = self.mask(node.input[i], t[i])
        self.nodes.append(masked)
        parts = getattr(self, f"_carried_{op.lower()}")(node, t)
        if bias in t and op in ("Conv", "ConvTranspose"):
            parts.append(self._per_channel(t[bias], node, channels_axis=1))
        if parts:
            y = node.output[0]
            self.set(y, self.expand_to(self.any_of(parts), y))

    def _per_channel(self, vec_taint: str, node: onnx.NodeProto, channels_axis: int) -> str:
        """A per-output-channel taint [C] reshaped to broadcast against the output."""
        rank = self.rank(node.output[0])
        if rank == 0:
            raise ReferenceUnsupported(f"{node.op_type}: scalar output")
        shape = [1] * rank
        shape[channels_axis] = -1
        return self.one("Reshape", [vec_taint, self.const(np.array(shape, np.int64))])

    def _carried_conv(self, node: onnx.NodeProto, t: Mapping[int, str]) -> list[str]:
        return self._carried_conv_like(node, t, transposed=False)

    def _carried_convtranspose(self, node: onnx.NodeProto, t: Mapping[int, str]) -> list[str]:
        return self._carried_conv_like(node, t, transposed=True)

    def _carried_conv_like(
        self, node: onnx.NodeProto, t: Mapping[int, str], transposed: bool
    ) -> list[str]:
        attrs = _attrs(node)
        group = int(attrs.get("group", 1))
        parts = []
        if 0 in t and group > 1:
            # depthwise / grouped: an output reads one block of input channels; it is removed
            # when every position it reads is (no untainted input under an all-ones kernel)
            ones = self.ones_like(node.input[1])
            free = self.one(node.op_type, [self.complement(t[0]), ones], **attrs)
            half = self.const(np.float32(0.5))
            parts.append(self.to_float(self.one("Less", [free, half])))
        if 1 in t:
            w = node.input[1]
            out_axis = 1 if transposed else 0
            if transposed and group > 1:
                raise ReferenceUnsupported("removed channels on a grouped ConvTranspose weight")
            axes = [a for a in range(self.rank(w)) if a != out_axis]
            rows = self.reduce_all(t[1], axes, 0)  # [C_out]
            parts.append(self._per_channel(rows, node, channels_axis=1))
        return parts

    def _carried_gemm(self, node: onnx.NodeProto, t: Mapping[int, str]) -> list[str]:
        attrs = _attrs(node)
        parts = []
        if 0 in t:  # rows of A' (A or A^T) that are removed entirely
            a = self.one("Transpose", [t[0]]) if attrs.get("transA", 0) else t[0]
            parts.append(self.reduce_all(a, [1], 1))
        if 1 in t:  # columns of B' (B or B^T)
            b = self.one("Transpose", [t[1]]) if attrs.get("transB", 0) else t[1]
            parts.append(self.reduce_all(b, [0], 1))
        if 2 in t:
            parts.append(t[2])
        return parts

    def _carried_lstm(self, node: onnx.NodeProto, t: Mapping[int, str]) -> list[str]:
        """LSTM / GRU / RNN contract X's features (axis 2) with W; nothing is carried to Y, Y_h,
        Y_c. Removed positions anywhere but X (hidden units): refused (see the module doc)."""
        if set(t) != {0}:
            raise ReferenceUnsupported(f"{node.op_type}: removed channels outside X")
        return []

    _carried_gru = _carried_rnn = _carried_lstm

    def _carried_matmul(self, node: onnx.NodeProto, t: Mapping[int, str]) -> list[str]:
        ra, rb = self.rank(node.input[0]), self.rank(node.input[1])
        parts = []
        if 0 in t and ra >= 2:  # rows of A: [..., M, 1], or [..., M] when B is a vector
            parts.append(self.reduce_all(t[0], [-1], 1 if rb >= 2 else 0))
        if 1 in t and rb >= 2:  # columns of B: [..., 1, N], or [..., N] when A is a vector
            parts.append(self.reduce_all(t[1], [-2], 1 if ra >= 2 else 0))
        return parts
