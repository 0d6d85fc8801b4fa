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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from irprune.ir import Graph
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup, Source

_EPS = 1e-12


@dataclass(frozen=True)
class Scores:
    """Per-channel importance of each prunable group (higher = keep)."""

    criterion: str
    by_group: Mapping[int, np.ndarray]


def _energy(weight: np.ndarray, axis: int, p: int) -> np.ndarray:
    """Per-slice sum of |w| (p=1) or w^2 (p=2) along ``axis``, in float64 without a float64 copy."""
    others = tuple(a for a in range(weight.ndim) if a != axis)
    if p == 1:
        return np.abs(weight).sum(axis=others, dtype=np.float64)
    return np.square(weight).sum(axis=others, dtype=np.float64)


def _bn_scale(graph: Graph, src: Source) -> np.ndarray | None:
    out = graph.values.get(src.output)
    if out is None:
        return None
    for node in graph.consumers(out):
        if node.op_type == "BatchNormalization" and node.required(0) is out:
            gamma, var = node.input(1), node.input(4)
            if gamma is None or var is None or gamma.const is None or var.const is None:
                return None
            eps = node.attr("epsilon", 1e-5)
            return np.abs(gamma.const.astype(np.float64)) / np.sqrt(var.const + eps)
    return None


def _magnitude(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, p: int) -> np.ndarray:
    """Each source's per-channel norm (a channel may be a block of positions), normalised."""
    total = np.zeros(group.size)
    for src in group.sources:
        weight = graph.values[src.weight].const
        layout = analysis.layout(src.weight, src.axis)
        assert weight is not None and layout is not None
        energy = _energy(weight, src.axis, p)
        scale = _bn_scale(graph, src)
        if scale is not None and scale.shape == energy.shape:
            energy = energy * (scale if p == 1 else scale * scale)
        chans = np.zeros(group.size)
        for pos in lay.channel_positions(layout, group.id):
            chans += energy[pos].sum(axis=(0, 2))
        norms = chans if p == 1 else np.sqrt(chans)
        total += norms / (norms.mean() + _EPS)
    return total / max(len(group.sources), 1)


def _random(seed: int) -> Callable[[Graph, ChannelGroup], np.ndarray]:
    def scores(graph: Graph, group: ChannelGroup) -> np.ndarray:
        return np.random.default_rng([seed, group.id]).random(group.size)

    return scores


CRITERIA = ("l1", "l2", "random")


def score(
    graph: Graph, analysis: ChannelAnalysis, criterion: str = "l1", *, seed: int = 0
) -> Scores:
    """Score every channel of every prunable group; never mutates the graph."""
    fns: dict[str, Callable[[Graph, ChannelGroup], np.ndarray]] = {
        "l1": lambda g, grp: _magnitude(g, analysis, grp, 1),
        "l2": lambda g, grp: _magnitude(g, analysis, grp, 2),
        "random": _random(seed),
    }
    if criterion not in fns:
        raise ValueError(f"unknown criterion {criterion!r}")
    fn = fns[criterion]
    by_group = {g.id: fn(graph, g) for g in analysis.prunable}
    return Scores(criterion, MappingProxyType(by_group))
