"""The rewrite stage: the rewrites ``prune`` offers, their dispatch for one plan, and the C-SGD
training that may precede the merge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from irprune.errors import MissingDependencyError
from irprune.frontends.onnx import ModelSource
from irprune.ir import Graph
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.rewrite.drop import drop
from irprune.passes.rewrite.merge import cluster_groups, merge
from irprune.passes.rewrite.recalibrate import (
    apply_bn_compensation,
    compensate_bias,
    plan_bn_compensation,
    reestimate_bn,
)
from irprune.passes.rewrite.refit import refit
from irprune.pipeline.load import import_graph

REWRITES = ("drop", "merge", "compensate", "reconstruct")
REFERENCE_REWRITES = ("compensate", "reconstruct")  # compare against the original graph
CALIBRATED_REWRITES = ("reconstruct",)  # compensate without --calib uses BN statistics


@dataclass(frozen=True)
class CsgdOptions:
    """C-SGD training before the merge (``irprune.csgd``)."""

    epochs: int
    data: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    lr: float = 0.01
    epsilon: float = 0.05
    normalise: bool = True  # temporary BN after unnormalised producers (backends.tempnorm)


def train_csgd(
    graph: Graph, analysis: ChannelAnalysis, plan: Plan, options: CsgdOptions, seed: int
) -> tuple[dict[int, list[np.ndarray]], dict[str, Any]]:
    try:
        from irprune import csgd
    except ImportError as exc:
        raise MissingDependencyError(
            "C-SGD training needs torch: pip install 'irprune[torch]'"
        ) from exc
    clusters = cluster_groups(graph, analysis, plan, seed=seed)
    result = csgd.train(
        graph, analysis, clusters, options.data, labels=options.labels, epochs=options.epochs,
        lr=options.lr, epsilon=options.epsilon, seed=seed, normalise=options.normalise,
    )  # fmt: skip
    info = {**vars(result), "labels": options.labels is not None}
    return clusters, info


def apply_rewrite(
    graph: Graph,
    original: ModelSource,
    analysis: ChannelAnalysis,
    plan: Plan,
    rewrite: str,
    calib: dict[str, np.ndarray] | None,
    seed: int,
    csgd: CsgdOptions | None = None,
    new_params: bool = True,
) -> dict[str, Any]:
    """The chosen rewrite; the calibrated ones repair the dropped model against the original.
    Returns what the report should add (C-SGD training)."""
    if rewrite == "merge":
        extra: dict[str, Any] = {}
        clusters = None
        if csgd is not None:
            clusters, extra["csgd"] = train_csgd(graph, analysis, plan, csgd, seed)
        merge(graph, analysis, plan, seed=seed, clusters=clusters)
        return extra
    if rewrite == "compensate" and calib is None:
        shifts = plan_bn_compensation(graph, analysis, plan)
        drop(graph, analysis, plan)
        apply_bn_compensation(graph, shifts, new_params=new_params)
        return {}
    reference = import_graph(original) if rewrite in REFERENCE_REWRITES else None
    drop(graph, analysis, plan)
    if reference is None:
        return {}
    if rewrite == "compensate" and calib is not None:
        compensate_bias(graph, reference, analysis, plan, calib, new_params=new_params)
        reestimate_bn(graph, calib)
    elif calib is not None:
        # The refit reproduces each consumer's original (pre-BN) output, so the original BN
        # statistics stay right; re-estimating them would move the model away from the original.
        refit(graph, reference, calib, analysis, plan, new_params=new_params)
    return {}
