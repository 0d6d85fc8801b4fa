"""Importance criteria: one score per channel of each prunable group (higher = keep).

Every criterion is aggregated over all members of a group and normalised so that one global
ranking across groups is fair. The table below is the one place criteria are registered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from irprune.errors import UsageError
from irprune.ir import Graph
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup
from irprune.passes.importance import activation, filters, magnitude

log = logging.getLogger(__name__)

Criterion = Callable[[Graph, ChannelAnalysis, ChannelGroup, int], np.ndarray]

DATA_FREE: Mapping[str, Criterion] = MappingProxyType(
    {
        "l1": magnitude.l1,
        "l2": magnitude.l2,
        "bn": filters.bn,
        "fpgm": filters.fpgm,
        "similarity": filters.similarity,
        "random": magnitude.random,
    }
)
DATA_DRIVEN = ("apoz", "activation")
CRITERIA = (*DATA_FREE, *DATA_DRIVEN)


@dataclass(frozen=True)
class Scores:
    """Per-channel importance of each prunable group (higher = keep)."""

    criterion: str
    by_group: Mapping[int, np.ndarray]


def score(
    graph: Graph,
    analysis: ChannelAnalysis,
    criterion: str = "l1",
    *,
    seed: int = 0,
    calib: Mapping[str, np.ndarray] | None = None,
) -> Scores:
    """Score every channel of every prunable group; never mutates the graph.

    Data-driven criteria need ``calib``; a group they cannot measure (no compute node reads it)
    falls back to L1, logged.
    """
    if criterion in DATA_DRIVEN:
        if calib is None:
            raise UsageError(f"criterion {criterion!r} needs calibration data (--calib)")
        stats = activation.collect(graph, analysis, calib)
        by_group = {}
        for g in analysis.prunable:
            measured = activation.scores(analysis, stats, g, criterion)
            if measured is None:
                log.info("group %d is not measured by %s; using l1", g.id, criterion)
                measured = magnitude.l1(graph, analysis, g, seed)
            by_group[g.id] = measured
        return Scores(criterion, MappingProxyType(by_group))
    fn = DATA_FREE.get(criterion)
    if fn is None:
        raise UsageError(f"unknown criterion {criterion!r}")
    return Scores(
        criterion, MappingProxyType({g.id: fn(graph, analysis, g, seed) for g in analysis.prunable})
    )


__all__ = ["CRITERIA", "DATA_FREE", "Scores", "score"]
