"""Data-free magnitude criteria (Li et al. 2017) and a seeded random baseline.

For each source of a group (a weight axis that creates its channels) the per-channel norm of the
weight slice is taken, L1 (sum |w|) or L2 (sqrt(sum w^2)), and multiplied by the
|scale / sqrt(var + eps)| of a BatchNormalization that directly follows the source, so a filter's
effective magnitude is the same whether BN was folded into the conv or kept explicit (a channel
whose BN scale is zero is dead either way). A channel is a block of slices when the group prunes
whole blocks (attention heads), and a source split between groups gives each its own part. Each
source's norms are divided by their mean, and a group's score is the mean over its sources: every
group averages 1, so one global ranking is fair to small and large layers alike."""

from __future__ import annotations

import numpy as np

from irprune.ir import Graph, Node
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup, Source

_EPS = 1e-12


def _energy(weight: np.ndarray, axis: int, p: int) -> np.ndarray:
    """Per-slice sum of |w| (p=1) or w^2 (p=2) along ``axis``, in float64 without a float64 copy."""
    others = tuple(a for a in range(weight.ndim) if a != axis)
    if p == 1:
        return np.abs(weight).sum(axis=others, dtype=np.float64)
    return np.square(weight).sum(axis=others, dtype=np.float64)


def following_bn(graph: Graph, src: Source) -> Node | None:
    """The BatchNormalization that reads the source's output directly, if any."""
    out = graph.values.get(src.output)
    if out is None:
        return None
    return next(
        (
            n
            for n in graph.consumers(out)
            if n.op_type == "BatchNormalization" and n.inputs[0] is out
        ),
        None,
    )


def bn_scale(graph: Graph, src: Source) -> np.ndarray | None:
    """|scale / sqrt(var + eps)| of a BatchNormalization reading the source's output, if any."""
    node = following_bn(graph, src)
    if node is None:
        return None
    gamma, var = node.input(1), node.input(4)
    if gamma is None or var is None or gamma.const is None or var.const is None:
        return None
    return np.abs(gamma.const.astype(np.float64)) / np.sqrt(var.const + node.attr("epsilon", 1e-5))


def magnitude(
    graph: Graph,
    analysis: ChannelAnalysis,
    group: ChannelGroup,
    p: int,
    sources: tuple[Source, ...] | None = None,
) -> np.ndarray:
    """Each source's per-channel norm (a channel may be a block of positions), normalised."""
    srcs = group.sources if sources is None else sources
    total = np.zeros(group.size)
    for src in srcs:
        weight = graph.values[src.weight].const
        layout = analysis.layout(src.weight, src.axis)
        assert weight is not None and layout is not None
        energy = _energy(weight, src.axis, p)
        scale = bn_scale(graph, src)
        if scale is not None and scale.shape == energy.shape:
            energy = energy * (scale if p == 1 else scale * scale)
        chans = np.zeros(group.size)
        for pos in lay.channel_positions(layout, group.id):
            chans += energy[pos].sum(axis=(0, 2))
        norms = chans if p == 1 else np.sqrt(chans)
        total += norms / (norms.mean() + _EPS)
    return total / max(len(srcs), 1)


def l1(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, seed: int) -> np.ndarray:
    return magnitude(graph, analysis, group, 1)


def l2(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, seed: int) -> np.ndarray:
    return magnitude(graph, analysis, group, 2)


def random(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, group.id]).random(group.size)
