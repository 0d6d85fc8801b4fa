"""Gradient criteria: first-order Taylor (Molchanov et al. 2019) and an OBD-style Hessian diagonal.

The graph runs as a torch module (``irprune.backends.torch``, the torch extra) on the
calibration batches. A channel's parameters are, for each source of its group, the ones that
produce it (the same sources and layouts the magnitude criteria read): the scale and bias of a
BatchNormalization that directly follows the source, or else the source's weight slice and its
bias (Conv/ConvTranspose/Gemm bias input, or the per-channel Add after a MatMul). Because the
output of such an affine map is homogeneous of degree one in these parameters,
``sum(w * dL/dw)`` over them equals ``sum(y * dL/dy)`` over the channel's output ``y``: the
first-order change of the loss when the channel is removed, and the same number whether BN was
folded into the conv or kept explicit (``taylor``; a diagonal Hessian depends on the
parameterisation, so ``hessian`` differs between the two export styles).

- ``taylor``: per batch, ``|sum over the group's slices of w * g|`` per channel (all sources of a
  residual-coupled group together: they are removed together), summed over batches.
- ``hessian``: per batch, ``sum over the slices of 0.5 * g^2 * w^2`` (the diagonal of the
  Fisher approximation of the Hessian, as in Optimal Brain Damage), summed over batches.

The loss: with labels, cross-entropy for classifier-shaped outputs ([N, K], K > 1, integer
labels) and mean squared error otherwise. Without labels, the distillation loss against the
original model's own outputs (KL on the softmax for classifier outputs, MSE otherwise). The graph
being scored *is* the original, so that loss sits at its minimum with zero gradient; its
curvature there is its Fisher information, which is sampled the standard way: targets are drawn
from the original's output distribution (a class from its softmax; its output plus Gaussian
noise of the output's own scale), and the gradients are taken of the loss against those targets.
Their per-batch covariance is the Hessian of the distillation loss, so ``hessian`` estimates
OBD's saliency and ``taylor`` the square root of the channel's (full-block) second-order term.
Draws are seeded.

Scores are divided by their group's mean, like every criterion, so one global ranking is fair.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from irprune.errors import CalibrationError, UsageError
from irprune.ir import Graph
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup, Source
from irprune.passes.calibration import batches, limit_batch
from irprune.passes.importance.magnitude import following_bn

if TYPE_CHECKING:
    import torch

    from irprune.backends.torch import GraphModule

log = logging.getLogger(__name__)

GRADIENT = ("taylor", "hessian")
BATCH = 16
_EPS = 1e-12
_BIASED = ("Conv", "ConvTranspose", "Gemm")

Labels = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Slice:
    """The positions of a group's channels along one axis of one constant."""

    value: str
    axis: int
    positions: tuple[np.ndarray, ...]  # lay.channel_positions: one [outer, size, inner] per segment


def producing_constants(graph: Graph, src: Source) -> list[tuple[str, int | None]]:
    """(constant, axis or None for "every axis carrying the group") producing a source's
    channels: the following BN's scale and bias, else the weight and its bias."""
    bn = following_bn(graph, src)
    if bn is not None:
        params = [bn.input(1), bn.input(2)]
        return [(v.name, None) for v in params if v is not None and v.const is not None]
    out: list[tuple[str, int | None]] = [(src.weight, src.axis)]
    output = graph.values.get(src.output)
    node = output.producer if output is not None else None
    if node is None:
        return out
    bias = node.input(2) if node.op_type in _BIASED else None
    if bias is not None and bias.const is not None:
        out.append((bias.name, None))
    elif node.op_type == "MatMul" and output is not None:
        for user in graph.consumers(output):
            if user.op_type == "Add":
                out += [(v.name, None) for v in user.inputs if v is not None and v.is_const]
    return out


def group_slices(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> list[Slice]:
    """The slices of every constant producing ``group``'s channels (see the module docstring)."""
    found: dict[tuple[str, int], Slice] = {}
    for src in group.sources:
        for name, axis in producing_constants(graph, src):
            axes = analysis.layouts.get(name, {})
            for ax, layout in axes.items():
                if (axis is None or ax == axis) and group.id in lay.roots(layout):
                    positions = tuple(lay.channel_positions(layout, group.id))
                    found.setdefault((name, ax), Slice(name, ax, positions))
    return list(found.values())


def scores(
    graph: Graph,
    analysis: ChannelAnalysis,
    calib: Mapping[str, np.ndarray],
    criterion: str,
    *,
    labels: Labels | None = None,
    seed: int = 0,
    batch: int = BATCH,
) -> dict[int, np.ndarray]:
    """Scores of every prunable group that has producing parameters; never mutates ``graph``."""
    if criterion not in GRADIENT:
        raise UsageError(f"unknown gradient criterion {criterion!r}")
    torch, module = _module(graph, criterion)
    batch = limit_batch(graph, batch)
    slices = {g.id: group_slices(graph, analysis, g) for g in analysis.prunable}
    weights = dict(module.named_weights())
    wanted = {s.value for group in slices.values() for s in group}
    for name, param in weights.items():
        param.requires_grad_(name in wanted)
    slices = {
        gid: [s for s in group if s.value in weights] for gid, group in slices.items() if group
    }
    totals = {g.id: np.zeros(g.size) for g in analysis.prunable if g.id in slices}
    gen = torch.Generator().manual_seed(seed)
    for chunk, chunk_labels in _chunks(calib, labels, batch):
        module.zero_grad(set_to_none=True)
        outs = module.run(chunk)
        loss = _loss(torch, module, outs, chunk_labels, gen)
        if not loss.requires_grad:  # no scored parameter reaches the outputs: all gradients 0
            continue
        loss.backward()
        reduced: dict[tuple[str, int], np.ndarray] = {}
        for gid, group in slices.items():
            per_batch = np.zeros_like(totals[gid])
            for s in group:
                per_batch += _channel_sums(s, weights[s.value], criterion, reduced)
            totals[gid] += np.abs(per_batch) if criterion == "taylor" else per_batch
    return {gid: total / (total.mean() + _EPS) for gid, total in totals.items()}


def _module(graph: Graph, criterion: str) -> tuple[Any, GraphModule]:
    try:
        import torch

        from irprune.backends.torch import from_graph
    except ImportError as exc:
        from irprune.backends import missing_torch

        raise missing_torch(f"criterion {criterion!r}", exc) from exc
    return torch, from_graph(graph)


def _chunks(
    calib: Mapping[str, np.ndarray], labels: Labels | None, size: int
) -> list[tuple[dict[str, np.ndarray], dict[int | str, np.ndarray]]]:
    total = len(next(iter(calib.values())))
    named: dict[int | str, np.ndarray] = {}
    if isinstance(labels, Mapping):
        named.update(labels)
    elif labels is not None:
        named[0] = np.asarray(labels)
    for key, array in named.items():
        if len(array) != total:
            raise CalibrationError(
                f"labels {key!r} have {len(array)} rows, the calibration data {total}"
            )
    out = []
    for start, chunk in zip(range(0, total, size), batches(calib, size), strict=True):
        out.append((chunk, {k: v[start : start + size] for k, v in named.items()}))
    return out


def is_classifier(output: torch.Tensor) -> bool:
    """A [N, K] float output with K > 1: treated as class logits."""
    return output.dim() == 2 and output.shape[1] > 1 and output.is_floating_point()


def task_loss(out: torch.Tensor, given: np.ndarray) -> torch.Tensor:
    """Cross-entropy for integer labels of a classifier output, else MSE to the given values."""
    import torch
    from torch.nn import functional as F

    target = torch.from_numpy(np.asarray(given))
    if is_classifier(out) and not target.is_floating_point():
        return F.cross_entropy(out, target.long())
    return F.mse_loss(out, target.to(out.dtype).reshape(out.shape))


def _loss(
    torch: Any,
    module: GraphModule,
    outs: list[torch.Tensor],
    labels: Mapping[int | str, np.ndarray],
    gen: torch.Generator,
) -> torch.Tensor:
    F = torch.nn.functional
    total = torch.zeros(())
    for i, (name, out) in enumerate(zip(module.output_names, outs, strict=True)):
        if not out.is_floating_point() or not out.requires_grad:
            continue
        given = labels.get(name, labels.get(i))
        teacher = out.detach()
        if given is not None:
            total = total + task_loss(out, given)
        elif is_classifier(out):
            drawn = torch.multinomial(F.softmax(teacher, dim=1), 1, generator=gen).squeeze(1)
            total = total + F.cross_entropy(out, drawn)
        else:
            scale = teacher.std() + _EPS
            noise = torch.randn(teacher.shape, generator=gen, dtype=teacher.dtype)
            total = total + 0.5 * (((out - teacher) / scale - noise) ** 2).sum() / len(out)
    return total


def _channel_sums(
    s: Slice, param: torch.Tensor, criterion: str, reduced: dict[tuple[str, int], np.ndarray]
) -> np.ndarray:
    """Per channel of the group, the sum over this slice of w*g (taylor) or 0.5*(g*w)^2."""
    key = (s.value, s.axis)
    per_pos = reduced.get(key)
    if per_pos is None:
        grad = param.grad
        if grad is None:
            per_pos = np.zeros(param.shape[s.axis])
        else:
            prod = (param.detach() * grad).double()
            if criterion == "hessian":
                prod = 0.5 * prod * prod
            others = [a for a in range(prod.dim()) if a != s.axis]
            per_pos = (prod.sum(dim=others) if others else prod).numpy()
        reduced[key] = per_pos
    size = s.positions[0].shape[1]
    chans = np.zeros(size)
    for pos in s.positions:
        chans += per_pos[pos].sum(axis=(0, 2))
    return chans
