"""Filter-based criteria: BN scale, geometric median (FPGM) and similarity.

A channel's *filter* is the concatenation, over every source of its group, of the weight slices
that create it (a block of slices where the group prunes whole blocks), each source scaled to unit
RMS so no layer dominates, with a following BatchNormalization's scale folded in.

- ``bn`` (Network Slimming, Liu et al. 2017): |gamma| of the BatchNormalization after each source,
  normalised per source and averaged over the group's sources. A source with no explicit BN
  (folded exports) falls back to its L1 filter norm, which for a folded conv already carries
  gamma / sqrt(var + eps).
- ``fpgm`` (He et al. 2019): filters near the geometric median of the group are the most
  replaceable by the others: score_c = sum_j ||F_c - F_j||; the lowest go first.
- ``similarity`` (data-free redundancy, Srinivas & Babu 2015): repeatedly take the two closest
  remaining filters and give the one with the smaller norm the score "their distance"; it goes
  first, the other stays in the pool. Near-duplicates lose one member, never both.

Wide filters are compared after a seeded Gaussian random projection to at most 1024 dims
(distances kept within a few percent, Johnson-Lindenstrauss), so cost stays O(C^2 * 1024).
"""

from __future__ import annotations

import numpy as np

from irprune.ir import Graph
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup, Source
from irprune.passes.importance.magnitude import bn_scale, following_bn, magnitude

_MAX_DIMS = 1024
_EPS = 1e-12


def source_rows(
    graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, src: Source
) -> np.ndarray:
    """[C, D] filter rows of one source for the group's channels (blocks flattened)."""
    weight = graph.values[src.weight].const
    layout = analysis.layout(src.weight, src.axis)
    assert weight is not None and layout is not None
    scale = bn_scale(graph, src)
    if scale is not None and scale.shape[0] != weight.shape[src.axis]:
        scale = None
    rows = []
    for pos in lay.channel_positions(layout, group.id):  # [outer, size, inner]
        part = lay.channel_slices(weight, src.axis, pos).astype(np.float32)
        if scale is not None:  # scale the picked rows only, never a copy of the whole weight
            factor = scale[np.transpose(pos, (1, 0, 2))].astype(np.float32)
            part = part * factor.reshape(*factor.shape, *([1] * (part.ndim - 3)))
        rows.append(part.reshape(group.size, -1))
    return np.concatenate(rows, axis=1)


def group_filters(
    graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, seed: int = 0
) -> np.ndarray:
    """[C, D] features of the group's channels over all its sources, each source at unit RMS."""
    parts = []
    for src in group.sources:
        rows = source_rows(graph, analysis, group, src).astype(np.float64)
        rms = np.sqrt(np.mean(rows * rows)) + _EPS
        parts.append(rows / rms)
    feats = np.concatenate(parts, axis=1)
    if feats.shape[1] > _MAX_DIMS:
        rng = np.random.default_rng([seed, group.id])
        proj = rng.standard_normal((feats.shape[1], _MAX_DIMS)) / np.sqrt(_MAX_DIMS)
        feats = feats @ proj
    return feats


def _distances(feats: np.ndarray) -> np.ndarray:
    sq = np.sum(feats * feats, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T, 0.0)
    return np.sqrt(d2)


def fpgm(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, seed: int) -> np.ndarray:
    scores = _distances(group_filters(graph, analysis, group, seed)).sum(axis=1)
    return scores / (scores.mean() + _EPS)


def similarity(
    graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, seed: int
) -> np.ndarray:
    feats = group_filters(graph, analysis, group, seed)
    dist = _distances(feats)
    np.fill_diagonal(dist, np.inf)
    norms = np.linalg.norm(feats, axis=1)
    active = np.ones(len(feats), dtype=bool)
    scores = np.zeros(len(feats))
    nearest = dist.argmin(axis=1)
    for _ in range(len(feats) - 1):
        idx = np.flatnonzero(active)
        i = idx[np.argmin(dist[idx, nearest[idx]])]
        j = nearest[i]
        loser = i if norms[i] <= norms[j] else j
        scores[loser] = dist[i, j]
        active[loser] = False
        dist[:, loser] = np.inf
        stale = idx[(nearest[idx] == loser) & active[idx]]
        if len(stale):
            nearest[stale] = dist[stale].argmin(axis=1)
    finite = scores[~active]
    scores[active] = (finite.max() if len(finite) else 1.0) * 2 + 1.0
    return scores / (scores.mean() + _EPS)


def bn(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, seed: int) -> np.ndarray:
    total = np.zeros(group.size)
    for src in group.sources:
        out = graph.values.get(src.output)
        gamma = _following_gamma(graph, src)
        layout = analysis.layout(src.output, 1) if out is not None else None
        if gamma is None or layout is None:
            part = magnitude(graph, analysis, group, 1, sources=(src,))
        else:
            chans = np.zeros(group.size)
            for pos in lay.channel_positions(layout, group.id):
                chans += np.abs(gamma[pos]).sum(axis=(0, 2))
            part = chans / (chans.mean() + _EPS)
        total += part
    return total / max(len(group.sources), 1)


def _following_gamma(graph: Graph, src: Source) -> np.ndarray | None:
    node = following_bn(graph, src)
    gamma = node.input(1) if node is not None else None
    return None if gamma is None or gamma.const is None else gamma.const
