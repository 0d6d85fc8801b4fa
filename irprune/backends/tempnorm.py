"""Temporary normalisation for training BN-free graphs (exports with BN folded into the convs).

A folded export has no normalisation left: fine-tuning or C-SGD training on it is badly
conditioned (after a drop its activations are badly scaled, and SGD diverges or stalls). So for
training, every Conv/Gemm whose output is not read by a normalisation gets a per-channel
``BatchNormalization`` after it, in a training copy of the graph:

- **insertion** (``insert``, IR only): the BN is added with placeholder values that make it the
  exact identity in inference form (mean 0, var 1, ``gamma = sqrt(1 + eps)``, beta 0);
  ``backends.torch_norm`` then measures the statistics of each producer's output on the
  training data and sets ``gamma = sqrt(var + eps)``, ``beta = mean``, running statistics
  ``(mean, var)``: still the identity in inference form (up to float rounding), and in
  training (batch statistics) close to it at the start;
- **training** runs on the copy (BN on batch statistics); the inserted ``gamma``/``beta`` are
  ordinary parameters (C-SGD ties them to the producer's output channels);
- **fold-back** (``Normalised.fold_into``, after the running statistics were re-estimated with
  the trained weights): each inserted BN is folded into its producer (``W' = a W`` along the
  output channels, ``b' = a b + beta - a mean``, ``a = gamma / sqrt(var + eps)``) and the
  trained constants go back into the original graph. The result has exactly the original
  nodes; a producer without a bias gets one (an initializer, no node) unless ``new_params``
  is False, in which case such producers get no temporary BN.

Candidates: Conv (any groups) and Gemm (2-D output; ``B`` constant; ``C`` absent or one value
per output channel; ``beta != 0``) with float32 constant weights read by no other node, whose
output is not a graph output and not read by a normalisation node. ConvTranspose and MatMul
are left as they are.

This module imports neither torch nor onnx.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from irprune.ir import Graph, Node, Value
from irprune.ir.copy import copy_structure

log = logging.getLogger(__name__)

EPSILON = 1e-5
NORMALISATIONS = frozenset(
    {"BatchNormalization", "InstanceNormalization", "GroupNormalization", "LayerNormalization"}
)
_FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class TempNorm:
    """One inserted BN: its producer (by output value name) and the names of its constants."""

    output: str  # the producer's output value (in the original graph and the copy)
    weight: str  # the producer's weight constant
    axis: int  # output-channel axis of the weight
    bias: str | None  # the producer's bias constant (None: it has none yet)
    scale: str
    shift: str
    mean: str
    var: str


@dataclass
class Normalised:
    """A training copy of a graph with temporary BNs (see the module docstring)."""

    graph: Graph
    norms: tuple[TempNorm, ...]

    def fold_into(self, original: Graph) -> None:
        """Fold the inserted BNs of the (trained, re-estimated) copy into their producers and
        write every trained constant into ``original`` (same names; a new bias where a
        producer had none). ``original`` keeps its nodes."""
        for value in original.constants():
            trained = self.graph.values[value.name].const
            assert trained is not None and value.const is not None
            value.const = np.array(trained, dtype=value.const.dtype, copy=True)
        for norm in self.norms:
            _fold(original, self.graph, norm)
        log.info("folded %d temporary BatchNormalization nodes back", len(self.norms))


def candidates(graph: Graph, *, new_params: bool = True) -> list[tuple[Node, int]]:
    """(producer, output-channel axis of its weight) for every Conv/Gemm to normalise."""
    out = []
    for node in graph.nodes:
        axis = _weight_axis(node)
        if axis is None or not _foldable(graph, node, new_params):
            continue
        out.append((node, axis))
    return out


def _weight_axis(node: Node) -> int | None:
    if node.key == ("", "Conv"):
        return 0
    if node.key == ("", "Gemm"):
        return 0 if node.attr("transB", 0) else 1
    return None


def _foldable(graph: Graph, node: Node, new_params: bool) -> bool:
    weight, bias, out = node.input(1), node.input(2), node.outputs[0]
    if weight is None or weight.const is None or weight.dtype != _FLOAT or len(weight.uses) != 1:
        return False
    if out.dtype != _FLOAT or graph.is_graph_output(out) or not out.uses:
        return False
    if any(i < 0 or n.op_type in NORMALISATIONS for n, i in out.uses):
        return False
    if node.op_type == "Gemm" and (weight.const.ndim != 2 or float(node.attr("beta", 1.0)) == 0):
        return False
    channels = weight.const.shape[_weight_axis(node) or 0]
    if bias is None:
        return new_params
    return bias.const is not None and len(bias.uses) == 1 and bias.const.size == channels


def insert(graph: Graph, *, new_params: bool = True) -> Normalised | None:
    """A training copy of ``graph`` with a temporary BN after every candidate, each the exact
    identity in inference form (placeholder statistics); None when there is no candidate."""
    found = candidates(graph, new_params=new_params)
    if not found:
        return None
    copy = copy_structure(graph)
    norms = tuple(_insert_one(copy, node, axis) for node, axis in found)
    log.info(
        "training with %d temporary BatchNormalization nodes (no normalisation after %s); "
        "they are folded back into the weights afterwards",
        len(norms), ", ".join(sorted({n.op_type for n, _ in found})),
    )  # fmt: skip
    return Normalised(copy, norms)


def _insert_one(copy: Graph, node: Node, axis: int) -> TempNorm:
    out = copy.values[node.outputs[0].name]
    producer = out.producer
    assert producer is not None
    base = out.name + ".tnorm"
    n = node.required(1).const.shape[axis]  # type: ignore[union-attr]
    zeros, ones = np.zeros(n, np.float32), np.ones(n, np.float32)
    gamma = np.sqrt(ones + np.float32(EPSILON))  # float32, as the BN computes sqrt(var + eps)
    consts = {}
    for role, array in (("scale", gamma), ("shift", zeros), ("mean", zeros), ("var", ones)):
        name = copy.unique_name(f"{base}_{role}")
        shape = tuple(array.shape)
        consts[role] = copy.add_value(Value(name, _FLOAT, shape, const=array.copy(), sample=shape))
    normed = copy.add_value(Value(copy.unique_name(base), out.dtype, out.shape, sample=out.sample))
    copy.replace_all_uses(out, normed)
    bn = Node(
        "BatchNormalization",
        name=copy.unique_name(base + "_node"),
        attrs={"epsilon": EPSILON, "momentum": 0.9},
        inputs=(out, consts["scale"], consts["shift"], consts["mean"], consts["var"]),
        outputs=(normed,),
    )
    copy.add_node(bn, index=copy.nodes.index(producer) + 1)
    weight, bias = node.required(1), node.input(2)
    return TempNorm(
        out.name, weight.name, axis, bias.name if bias is not None else None,
        *(consts[r].name for r in ("scale", "shift", "mean", "var")),
    )  # fmt: skip


def _fold(original: Graph, trained: Graph, norm: TempNorm) -> None:
    """Fold one trained temporary BN into its producer in ``original``."""

    def const(name: str) -> np.ndarray:
        array = trained.values[name].const
        assert array is not None
        return array.astype(np.float64)

    var = const(norm.var)
    a = const(norm.scale) / np.sqrt(var + np.float32(EPSILON).astype(np.float64))
    shift = const(norm.shift) - a * const(norm.mean)
    weight = original.values[norm.weight]
    assert weight.const is not None
    shape = [1] * weight.const.ndim
    shape[norm.axis] = -1
    weight.const = (weight.const.astype(np.float64) * a.reshape(shape)).astype(np.float32)
    producer = original.values[norm.output].producer
    assert producer is not None
    beta = float(producer.attr("beta", 1.0)) if producer.op_type == "Gemm" else 1.0
    if norm.bias is None:
        name = original.unique_name(norm.output + ".bias")
        value = original.add_value(
            Value(
                name, _FLOAT, (len(a),), const=(shift / beta).astype(np.float32), sample=(len(a),)
            )
        )
        original.set_input(producer, 2, value)
        return
    bias = original.values[norm.bias]
    assert bias.const is not None
    folded = a * bias.const.reshape(-1).astype(np.float64) + shift / beta
    bias.const = folded.reshape(bias.const.shape).astype(np.float32)
