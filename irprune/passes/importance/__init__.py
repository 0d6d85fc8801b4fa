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

from irprune.errors import MissingDependencyError, UnsupportedOpError, UsageError
from irprune.ir import Graph
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup
from irprune.passes.importance import activation, filters, gradient, magnitude

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
DATA_DRIVEN = ("apoz", "activation", *gradient.GRADIENT)
# ``auto``: ``taylor`` when the user gives calibration data and the torch backend runs the
# graph, else ``l1`` (measured on pretrained third-party models, docs/real_models.md)
AUTO = "auto"
CRITERIA = (AUTO, *DATA_FREE, *DATA_DRIVEN)


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
    labels: gradient.Labels | None = None,
) -> Scores:
    """Score every channel of every prunable group; never mutates the graph.

    Data-driven criteria need ``calib``; a group they cannot measure (no compute node reads it,
    no parameter produces it) falls back to L1, logged. ``labels`` (rows aligned with ``calib``;
    one array for the first output, or arrays keyed by output name) are used by the gradient
    criteria only; without them those use the distillation loss against the graph's outputs.
    """
    if criterion == AUTO:
        return _auto(graph, analysis, seed=seed, calib=calib, labels=labels)
    if labels is not None and criterion not in gradient.GRADIENT:
        raise UsageError(f"labels are used by the gradient criteria only, not {criterion!r}")
    if criterion in DATA_DRIVEN:
        if calib is None:
            raise UsageError(
                f"criterion {criterion!r} needs calibration data "
                "(--calib FILE.npz, or --calib synthetic)"
            )
        measure = _measurer(graph, analysis, criterion, calib, labels, seed)
        by_group = {}
        for g in analysis.prunable:
            measured = measure(g)
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


def _auto(
    graph: Graph,
    analysis: ChannelAnalysis,
    *,
    seed: int,
    calib: Mapping[str, np.ndarray] | None,
    labels: gradient.Labels | None,
) -> Scores:
    """``taylor`` on the calibration data (distillation against the original's outputs, or
    ``labels``) where torch can run the graph; ``l1`` without data or torch, or when the torch
    backend lacks one of the graph's ops (logged)."""
    if calib is not None:
        try:
            return score(graph, analysis, "taylor", seed=seed, calib=calib, labels=labels)
        except (UnsupportedOpError, MissingDependencyError) as exc:
            log.info("criterion auto: taylor not available (%s); using l1", exc)
    if labels is not None:
        raise UsageError("labels are used by the gradient criteria, which need --calib")
    return score(graph, analysis, "l1", seed=seed)


def _measurer(
    graph: Graph,
    analysis: ChannelAnalysis,
    criterion: str,
    calib: Mapping[str, np.ndarray],
    labels: gradient.Labels | None,
    seed: int,
) -> Callable[[ChannelGroup], np.ndarray | None]:
    """Measure on the calibration data once; return the per-group lookup (None: not measured)."""
    if criterion in gradient.GRADIENT:
        grads = gradient.scores(graph, analysis, calib, criterion, labels=labels, seed=seed)
        return lambda g: grads.get(g.id)
    stats = activation.collect(graph, analysis, calib)
    return lambda g: activation.scores(analysis, stats, g, criterion)


__all__ = ["AUTO", "CRITERIA", "DATA_FREE", "Scores", "score"]
