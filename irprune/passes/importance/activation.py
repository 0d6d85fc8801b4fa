"""Data-driven criteria from calibration activations (Network Trimming, Hu et al. 2016).

For each group, the measured tensors are its members that a compute node (one with a MAC rule:
Conv, Gemm, MatMul) reads as data: what the next layers actually see. Per channel (a block of
positions where the group prunes blocks), over all calibration samples and other axes:

- ``apoz``: the average percentage of zeros. A channel that is always zero after its ReLU
  contributes nothing and goes first; score = 1 - APoZ.
- ``activation``: the mean |activation|, each measured tensor normalised by its mean.

Scores are averaged over the group's measured tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from irprune.ir import Graph
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup
from irprune.passes.analysis.rules import RULES
from irprune.passes.calibration import run_exposed

_EPS = 1e-12


def measured_spaces(graph: Graph, analysis: ChannelAnalysis) -> dict[str, list[int]]:
    """Value name -> axes carrying some group, for values a compute node reads as data."""
    spaces: dict[str, list[int]] = {}
    for node in graph.nodes:
        rule = RULES.get(node.key)
        x = node.input(0)
        if rule is None or rule.macs is None or x is None or x.const is not None:
            continue
        axes = [a for a in analysis.layouts.get(x.name, {}) if x.shape is not None]
        if axes:
            spaces[x.name] = axes
    return spaces


class _Stats:
    def __init__(self, spaces: Mapping[str, list[int]]) -> None:
        self.spaces = spaces
        self.zeros: dict[tuple[str, int], np.ndarray] = {}
        self.absum: dict[tuple[str, int], np.ndarray] = {}
        self.count: dict[tuple[str, int], int] = {}
        self._by_group: dict[int, list[tuple[str, int]]] | None = None

    def keys_of(self, analysis: ChannelAnalysis, group: int) -> list[tuple[str, int]]:
        """The measured (value, axis) keys whose layout holds ``group``, in measurement order;
        indexed once for all groups (a scan of every key per group is O(groups x keys))."""
        if self._by_group is None:
            self._by_group = {}
            for key in self.count:
                layout = analysis.layout(*key)
                for g in lay.roots(layout) if layout is not None else ():
                    self._by_group.setdefault(g, []).append(key)
        return self._by_group.get(group, [])

    def __call__(self, name: str, array: np.ndarray) -> None:
        for axis in self.spaces[name]:
            moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
            key = (name, axis)
            self.zeros[key] = self.zeros.get(key, 0) + (moved == 0).sum(axis=1)
            self.absum[key] = self.absum.get(key, 0) + np.abs(moved).sum(axis=1, dtype=np.float64)
            self.count[key] = self.count.get(key, 0) + moved.shape[1]


def collect(graph: Graph, analysis: ChannelAnalysis, feeds: Mapping[str, np.ndarray]) -> _Stats:
    spaces = measured_spaces(graph, analysis)
    stats = _Stats(spaces)
    run_exposed(graph, list(spaces), feeds, stats)
    return stats


def scores(
    analysis: ChannelAnalysis, stats: _Stats, group: ChannelGroup, criterion: str
) -> np.ndarray | None:
    total, n = np.zeros(group.size), 0
    for key in stats.keys_of(analysis, group.id):
        count = stats.count[key]
        layout = analysis.layout(*key)
        assert layout is not None
        if criterion == "apoz":
            per_pos = 1.0 - stats.zeros[key] / count
        else:
            mean = stats.absum[key] / count
            per_pos = mean / (mean.mean() + _EPS)
        chans = np.zeros(group.size)
        for pos in lay.channel_positions(layout, group.id):
            chans += per_pos[pos].mean(axis=(0, 2))
        total += chans
        n += 1
    return total / n if n else None
