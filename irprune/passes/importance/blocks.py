"""Importance of whole residual blocks (``analysis.blocks``), for depth pruning. Higher = keep.

- ``influence`` (ShortGPT's block influence): run the original in onnxruntime with every block's
  input ``x`` and output ``y`` exposed, and take, over the calibration samples ``i``,
  ``BI = 1 - mean_i cos(x_i, y_i)``, each sample flattened. A block whose ``f`` adds nothing
  has ``y = x`` and ``BI = 0``.
- ``removal_error``: the measured cost of removing the block alone. The model without the block
  (``rewrite.remove_blocks``) is run on the same inputs as the original; the score is the
  relative L2 error of all floating-point outputs together,
  ``sqrt(sum_o ||o' - o||^2 / sum_o ||o||^2)``.
- ``weight_norm`` (data free): the output energy of ``f``'s last layer for a zero-mean,
  unit-variance input. Walking back from ``f(x)`` through per-channel affine ops (BN, a constant
  Mul/Div/Add/Sub such as a layer scale, data movement), ``f(x)_c = s_c * (W h)_c + t_c`` with
  ``W`` the last Conv/Gemm/MatMul weight (row ``c`` = output channel ``c``, its bias folded into
  ``t``), so ``E[f_c^2] = s_c^2 ||W_c||^2 + t_c^2`` and the score is
  ``sqrt(mean_c (s_c^2 ||W_c||^2 + t_c^2))``. When ``f`` ends in a LayerNormalization instead
  (its output has unit second moment per element), ``||W_c||`` is replaced by ``|gamma_c|`` and
  its beta joins ``t``. Blocks whose end is none of these get no score (``None``, with a note).
  The input's own scale is not known without data, so this compares blocks only roughly; a
  block with zeroed last weights (and bias) scores 0.

Every function returns one ``BlockScore`` per block, in the order given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from irprune.emit import to_model
from irprune.emit.verify import run_batched, session
from irprune.ir import Graph, Node, Value
from irprune.ir.copy import copy_structure
from irprune.passes.analysis.blocks import Block, node_key
from irprune.passes.rewrite.remove_blocks import remove_blocks

log = logging.getLogger(__name__)

MAX_WALK = 16  # ops followed back from f(x) to its last weights
MOVEMENT = frozenset(
    {"Identity", "Dropout", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
)


@dataclass(frozen=True)
class BlockScore:
    """``block``: the block's output (``Block.output``); ``score``: higher = more important,
    None when the criterion cannot score it (``note`` says why)."""

    block: str
    criterion: str
    score: float | None
    note: str = ""


def least_important(scores: Sequence[BlockScore], k: int) -> tuple[str, ...]:
    """The ``k`` scored blocks with the lowest scores (ties in the given order)."""
    scored = [s for s in scores if s.score is not None]
    ranked = sorted(range(len(scored)), key=lambda i: (scored[i].score, i))
    return tuple(scored[i].block for i in ranked[:k])


# --- block influence ----------------------------------------------------------------------------
def influence(
    graph: Graph, blocks: Sequence[Block], feeds: Mapping[str, np.ndarray]
) -> tuple[BlockScore, ...]:
    """``1 - mean cos(x_i, y_i)`` over the samples of ``feeds`` (batch on axis 0)."""
    values = _probe(graph, [name for b in blocks for name in (b.input, b.output)], feeds)
    return tuple(
        BlockScore(b.output, "influence", 1.0 - _mean_cosine(values[b.input], values[b.output]))
        for b in blocks
    )


def _probe(
    graph: Graph, names: list[str], feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The values ``names`` on ``feeds``: graph inputs from the feeds, the rest from one run of
    the model with them exposed as outputs."""
    inputs = {v.name for v in graph.inputs}
    wanted = [n for n in dict.fromkeys(names) if n not in inputs]
    model = to_model(graph)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in present)
    got = run_batched(session(model, prepack=False), wanted, feeds) if wanted else []
    out: dict[str, np.ndarray] = {n: np.asarray(feeds[n]) for n in names if n in inputs}
    out.update(zip(wanted, got, strict=True))
    return out


def _mean_cosine(x: np.ndarray, y: np.ndarray) -> float:
    a = np.asarray(x, dtype=np.float64).reshape(x.shape[0] if x.ndim else 1, -1)
    b = np.asarray(y, dtype=np.float64).reshape(a.shape)
    dot = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.all(a == b, axis=1)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
    return float(np.mean(np.clip(cos, -1.0, 1.0)))


# --- measured removal error ---------------------------------------------------------------------
def removal_error(
    graph: Graph, blocks: Sequence[Block], feeds: Mapping[str, np.ndarray]
) -> tuple[BlockScore, ...]:
    """Relative L2 error of the model outputs with each block removed alone."""
    reference = _run(graph, feeds)
    out = []
    for block in blocks:
        copy = copy_structure(graph)
        remove_blocks(copy, [block])
        error = _relative_l2(reference, _run(copy, feeds))
        out.append(BlockScore(block.output, "removal_error", error))
    return tuple(out)


def _run(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return run_batched(session(to_model(graph), prepack=False), None, feeds)


def _relative_l2(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    num = den = 0.0
    for r, g in zip(reference, got, strict=True):
        if not np.issubdtype(np.asarray(r).dtype, np.floating):
            continue
        r64, g64 = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
        num += float(np.sum((g64 - r64) ** 2))
        den += float(np.sum(r64**2))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return float(np.sqrt(num / den))


# --- data-free proxy ----------------------------------------------------------------------------
class _NoProxy(Exception):
    """f's end is not a weight op behind per-channel affine ops (the message says what)."""


def weight_norm(graph: Graph, blocks: Sequence[Block]) -> tuple[BlockScore, ...]:
    """The RMS output of each block's last layer, scaled by what follows it (see module doc)."""
    out = []
    for block in blocks:
        try:
            score, note = _proxy(graph, block), ""
        except _NoProxy as exc:
            score, note = None, str(exc)
        out.append(BlockScore(block.output, "weight_norm", score, note))
    return tuple(out)


def _proxy(graph: Graph, block: Block) -> float:
    members = set(block.nodes)
    value = graph.values[block.branch]
    scale, shift = np.ones(1), np.zeros(1)
    for _ in range(MAX_WALK):
        node = value.producer
        if node is None or node_key(node) not in members:
            raise _NoProxy(f"no weight op found behind {block.branch!r}")
        end = _weight_end(node)
        if end is not None:
            gains, bias = end
            return _energy(scale, shift, gains, bias)
        value, scale, shift = _step(node, scale, shift)
    raise _NoProxy(f"more than {MAX_WALK} ops between the last weights and the Add")


def _energy(scale: np.ndarray, shift: np.ndarray, gains: np.ndarray, bias: np.ndarray) -> float:
    """``sqrt(mean_c ((s_c g_c)^2 + (t_c + s_c b_c)^2))``, channel vectors broadcast."""
    try:
        g = scale * gains
        t = shift + scale * bias
        return float(np.sqrt(np.mean(np.broadcast_to(g**2, np.broadcast(g, t).shape) + t**2)))
    except ValueError as exc:
        raise _NoProxy(f"per-channel constants do not match the weights: {exc}") from exc


def _vector(value: Value | None, what: str) -> np.ndarray:
    """A constant as a per-channel vector (size-1 dims dropped), float64."""
    if value is None or value.const is None:
        raise _NoProxy(f"{what} is not a constant")
    data = np.asarray(value.const, dtype=np.float64)
    squeezed = data.reshape(-1) if data.size == 1 else np.squeeze(data)
    if squeezed.ndim > 1:
        raise _NoProxy(f"{what} {value.name!r} is not per channel (shape {data.shape})")
    return squeezed.reshape(-1)


def _weight_end(node: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-output-channel gain, bias) when ``node`` is f's last weight op or LayerNorm."""
    op, w = node.op_type, node.input(1)
    if op == "LayerNormalization":
        gamma = _vector(w, "LayerNorm scale")
        beta = _vector(node.input(2), "LayerNorm bias") if node.input(2) else np.zeros(1)
        return np.abs(gamma), beta
    if op not in ("Conv", "Gemm", "MatMul") or w is None or w.const is None:
        return None
    weight = np.asarray(w.const, dtype=np.float64)
    bias_value = node.input(2)
    if op == "Conv":
        rows = weight.reshape(weight.shape[0], -1)
    elif op == "MatMul":
        if weight.ndim != 2:
            raise _NoProxy("the last MatMul's weight is not 2-D")
        rows = weight.T
    else:
        rows = weight if node.attr("transB", 0) else weight.T
        rows = rows * float(node.attr("alpha", 1.0))
    bias = np.zeros(1)
    if bias_value is not None:
        bias = _vector(bias_value, f"{op} bias")
        if op == "Gemm":
            bias = bias * float(node.attr("beta", 1.0))
    return np.linalg.norm(rows, axis=1), bias


def _step(node: Node, scale: np.ndarray, shift: np.ndarray) -> tuple[Value, np.ndarray, np.ndarray]:
    """One op back: (its varying input, s', t') with ``final = s' * input + t'``."""
    op = node.op_type
    if op in MOVEMENT:
        return node.required(0), scale, shift
    if op == "BatchNormalization":
        gamma, beta, mean, var = (_vector(node.input(i), "BN parameter") for i in (1, 2, 3, 4))
        k = gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
        return node.required(0), scale * k, shift + scale * (beta - mean * k)
    varying = [v for v in node.inputs if v is not None and not v.is_const]
    consts = [v for v in node.inputs if v is not None and v.is_const]
    if op not in ("Mul", "Div", "Add", "Sub") or len(varying) != 1 or len(consts) != 1:
        raise _NoProxy(f"{op} {node.name!r} between the last weights and the Add")
    c, first = _vector(consts[0], f"{op} constant"), node.inputs[0] is consts[0]
    if op == "Mul":
        return varying[0], scale * c, shift
    if op == "Add":
        return varying[0], scale, shift + scale * c
    if op == "Sub":
        return (
            (varying[0], -scale, shift + scale * c)
            if first
            else (varying[0], scale, shift - scale * c)
        )
    if first:
        raise _NoProxy(f"Div {node.name!r} divides by the activation")
    return varying[0], scale / c, shift
