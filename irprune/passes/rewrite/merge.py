"""The ``merge`` rewrite: C-SGD cluster merging (Ding et al. 2019), then ``drop``.

Each shrinking group's channels are clustered into as many clusters as the plan keeps (k-means
on the channel's parameters: every constant of the group except the consumers' weights, i.e. the
producers' filters, biases, BN parameters, depthwise filters, each scaled to unit RMS). Coupled
layers share one group, so a residual stage is clustered once, as C-SGD does. In every cluster the
lowest-index channel is kept:

- its producer and per-channel parameters become the cluster mean;
- every consumer (a weight the op sums against the group's channels, per its rule's
  ``contracts``) adds the other members' input weights into the kept channel's:
      W[:, keep] += sum over j in cluster, j != keep, of W[:, j]

If the members are identical (duplicated filters, or after centripetal training) their
activations are identical, so the consumers compute exactly what they did: the merge is lossless.
The other members are then removed by ``drop``. One transaction: every new array is computed
from the untouched graph, then all are applied, then drop runs.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from irprune.ir import Graph
from irprune.passes.allocation import Plan
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis, Space
from irprune.passes.analysis.rules import RULES
from irprune.passes.rewrite.drop import DropSummary, drop

log = logging.getLogger(__name__)

_MAX_DIMS = 1024


def consumer_spaces(graph: Graph) -> set[Space]:
    """(weight, axis) pairs that some op sums against an activation's channels."""
    out: set[Space] = set()
    for node in graph.nodes:
        rule = RULES.get(node.key)
        if rule is None or rule.contracts is None:
            continue
        for c in rule.contracts(node):
            w = node.input(c.weight)
            if w is not None and w.const is not None:
                out.add(Space(w.name, c.weight_axis % w.const.ndim))
    return out


def _features(graph: Graph, members: list[tuple[Space, np.ndarray]], size: int) -> np.ndarray:
    parts = []
    for space, pos in members:
        data = graph.values[space.value].const
        assert data is not None
        rows = lay.channel_slices(data, space.axis, pos).astype(np.float64).reshape(size, -1)
        parts.append(rows / (np.sqrt(np.mean(rows * rows)) + 1e-12))
    return np.concatenate(parts, axis=1) if parts else np.zeros((size, 1))


def kmeans(feats: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Labels in [0, k): k-means++ seeding, then Lloyd iterations (seeded, deterministic)."""
    n = len(feats)
    if k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if feats.shape[1] > _MAX_DIMS:
        feats = feats @ (rng.standard_normal((feats.shape[1], _MAX_DIMS)) / np.sqrt(_MAX_DIMS))
    centers = [int(rng.integers(n))]
    d2 = np.sum((feats - feats[centers[0]]) ** 2, axis=1)
    for _ in range(1, k):
        nxt = int(rng.choice(n, p=d2 / d2.sum())) if d2.sum() > 0 else int(np.argmax(d2))
        centers.append(nxt)
        d2 = np.minimum(d2, np.sum((feats - feats[nxt]) ** 2, axis=1))
    c = feats[centers]
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        dist = np.sum(feats**2, 1)[:, None] - 2 * feats @ c.T + np.sum(c**2, 1)[None, :]
        new = dist.argmin(axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            if np.any(labels == j):
                c[j] = feats[labels == j].mean(axis=0)
    return np.unique(labels, return_inverse=True)[1]


def _exactly(k: int, clusters: list[np.ndarray]) -> list[np.ndarray]:
    """Split singletons off the largest clusters until there are k (fewer distinct channels
    than k: keeping an extra copy is exact)."""
    clusters = sorted(clusters, key=len)
    while len(clusters) < k:
        big = clusters.pop()
        clusters = sorted([*clusters, big[:-1], big[-1:]], key=len)
    return clusters


def _group_members(analysis: ChannelAnalysis, gid: int) -> list[tuple[Space, np.ndarray]]:
    out = []
    for space in analysis.groups[gid].members:
        layout = analysis.layout(space.value, space.axis)
        assert layout is not None
        out += [(space, pos) for pos in lay.channel_positions(layout, gid)]
    return out


def group_members(
    graph: Graph, analysis: ChannelAnalysis, gid: int
) -> list[tuple[Space, np.ndarray]]:
    """(space, positions) of every constant member of group ``gid``; positions are
    ``[outer, size, inner]`` indices into the space's axis (see ``layout.channel_positions``)."""
    return [(s, p) for s, p in _group_members(analysis, gid) if graph.values[s.value].is_const]


def cluster_groups(
    graph: Graph, analysis: ChannelAnalysis, plan: Plan, *, seed: int = 0
) -> dict[int, list[np.ndarray]]:
    """For every shrinking group, as many channel clusters as the plan keeps (k-means on the
    producers' side of the group: every member that is not a consumer's input axis)."""
    consumers = consumer_spaces(graph)
    out: dict[int, list[np.ndarray]] = {}
    for gid, chosen in plan.kept.items():
        size = analysis.groups[gid].size
        followers = [(s, p) for s, p in group_members(graph, analysis, gid) if s not in consumers]
        labels = kmeans(_features(graph, followers, size), len(chosen), seed)
        out[gid] = _exactly(
            len(chosen), [np.flatnonzero(labels == j) for j in range(labels.max() + 1)]
        )
    return out


def merge(
    graph: Graph,
    analysis: ChannelAnalysis,
    plan: Plan,
    *,
    seed: int = 0,
    clusters: dict[int, list[np.ndarray]] | None = None,
) -> DropSummary:
    """Merge each cluster into its lowest-index channel, then drop the rest (``clusters``: as
    :func:`cluster_groups` returns, e.g. the ones C-SGD trained with)."""
    consumers = consumer_spaces(graph)
    if clusters is None:
        clusters = cluster_groups(graph, analysis, plan, seed=seed)
    new: dict[str, np.ndarray] = {}
    kept: dict[int, np.ndarray] = {}
    for gid, group_clusters in clusters.items():
        kept[gid] = np.sort([c[0] for c in group_clusters])
        for space, pos in group_members(graph, analysis, gid):
            data = new.get(space.value)
            if data is None:
                data = np.array(graph.values[space.value].const, copy=True)
            combine = np.sum if space in consumers else np.mean
            moved = np.moveaxis(data, space.axis, 0)  # a view into data
            for c in group_clusters:
                block = np.transpose(pos[:, c, :], (1, 0, 2))  # [members, outer, inner]
                moved[block[0]] = combine(moved[block], axis=0)
            new[space.value] = data
    for name, data in new.items():
        graph.values[name].const = data
    log.info("merge: %d groups clustered, %d tensors updated", len(kept), len(new))
    return drop(graph, analysis, replace(plan, kept=kept))
