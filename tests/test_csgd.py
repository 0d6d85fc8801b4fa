"""C-SGD training: centripetal steps make each cluster's members identical, so the merge that
follows is lossless on the trained model; BN folding keeps the function; the API path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import irprune
from irprune import csgd
from irprune.demo import build_demo_model
from irprune.emit import to_model
from irprune.emit.verify import random_inputs, session
from irprune.errors import TrainingError, UsageError
from irprune.frontends.onnx import import_model
from irprune.ir import Graph
from irprune.passes.allocation import Target, allocate
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.fold import fold_constants
from irprune.passes.importance import score
from irprune.passes.rewrite.merge import cluster_groups, merge
from tests.helpers import rel_diff, written_widths
from tests.oracles import count_macs


def _run(graph: Graph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session(to_model(graph).SerializeToString()).run(None, feeds)[0]


def _setup(seed: int = 0) -> tuple[Any, ...]:
    graph = import_model(build_demo_model(seed))
    fold_constants(graph)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    plan = allocate(analysis, cost, score(graph, analysis, "l1"), Target("macs", 0.5), round_to=1)
    data = random_inputs(session(to_model(graph).SerializeToString()), batch=96, seed=seed)
    return graph, analysis, plan, data


def test_centripetal_training_makes_the_merge_lossless() -> None:
    graph, analysis, plan, data = _setup()
    clusters = cluster_groups(graph, analysis, plan)
    assert any(len(c) > 1 for cs in clusters.values() for c in cs)
    result = csgd.train(graph, analysis, clusters, data, epochs=40, lr=0.01, epsilon=0.1, batch=32)
    assert result.spread < 1e-5
    trained = _run(graph, data)
    merge(graph, analysis, plan, clusters=clusters)
    graph.verify()
    assert rel_diff(_run(graph, data), trained) <= 1e-4


def test_without_training_the_merge_is_lossy() -> None:
    graph, analysis, plan, data = _setup()
    before = _run(graph, data)
    merge(graph, analysis, plan)
    assert rel_diff(_run(graph, data), before) > 1e-2


def test_api_trains_then_merges() -> None:
    _, _, _, data = _setup()
    model = build_demo_model()
    result = irprune.prune(
        model, target_flops=0.5, rewrite="merge", csgd_epochs=2, data=data,
        measure_latency=False,
    )  # fmt: skip
    info = result.report["csgd"]
    assert info["epochs"] == 2 and info["steps"] == 4 and not info["labels"]
    # widths and MACs from the written model and the independent counter
    full, kept = (
        written_widths(model, result.analysis),
        written_widths(result.model, result.analysis),
    )
    assert any(kept[g] < full[g] for g in full)
    assert 0.48 <= count_macs(result.model) / count_macs(model) <= 0.5


def test_api_refuses_csgd_without_merge_or_data() -> None:
    with pytest.raises(UsageError):
        irprune.prune(build_demo_model(), target_flops=0.5, csgd_epochs=2)
    with pytest.raises(UsageError):
        irprune.prune(build_demo_model(), target_flops=0.5, rewrite="merge", csgd_epochs=2)


def test_divergence_is_a_clear_error() -> None:
    graph, analysis, plan, data = _setup()
    clusters = cluster_groups(graph, analysis, plan)
    with pytest.raises(TrainingError, match="diverged"):
        csgd.train(graph, analysis, clusters, data, epochs=3, lr=1e6)
