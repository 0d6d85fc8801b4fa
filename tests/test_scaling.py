"""irprune's own work grows linearly with graph size (issue #6), checked by counting, not timing.

Each stage runs on synthetic graphs (``benchmarks/scaling.py``) of about N and 2N nodes while a
trace hook counts every call and every line executed in irprune's own Python code. A stage that
walks the whole graph once per group, or rewrites every layout per refinement, executes about 4x
the steps on the doubled graph; a linear stage about 2x. No clock is read. (Loops inside C, such
as ``list.remove``, are not seen; the benchmark's timings cover those.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import onnx
import pytest

import irprune
from irprune.emit import to_model
from irprune.emit.verify import random_inputs, session
from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Target, allocate
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.fold import fold_constants
from irprune.passes.importance import score
from irprune.passes.rewrite.drop import drop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scaling

PACKAGE = str(Path(irprune.__file__).parent)
SIZES = (400, 800)
MAX_GROWTH = 2.2  # steps at 2N / steps at N


def count_steps(fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """(result, number of calls and lines executed in irprune's own code while ``fn`` ran)."""
    steps = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal steps
        steps += 1
        return local

    def hook(frame: FrameType, event: str, arg: Any) -> Any:
        return local(frame, event, arg) if frame.f_code.co_filename.startswith(PACKAGE) else None

    sys.settrace(hook)
    try:
        result = fn(*args)
    finally:
        sys.settrace(None)
    return result, steps


def stage_calls(model: onnx.ModelProto) -> dict[str, int]:
    """Steps per stage of the pipeline (import to emit) on one model."""
    counts: dict[str, int] = {}
    graph, counts["import"] = count_steps(import_model, model)
    _, counts["fold"] = count_steps(fold_constants, graph)
    analysis, counts["analysis"] = count_steps(analyze, graph)
    cost, counts["cost"] = count_steps(build_cost_model, graph, analysis)
    scores, counts["importance"] = count_steps(score, graph, analysis, "l1")
    feeds = random_inputs(session(model), batch=2, seed=0)
    apoz = partial(score, calib=feeds)
    _, counts["importance_apoz"] = count_steps(apoz, graph, analysis, "apoz")
    target = Target("macs", 0.5)
    plan, counts["allocation"] = count_steps(allocate, analysis, cost, scores, target)
    _, counts["rewrite"] = count_steps(drop, graph, analysis, plan)
    _, counts["verify_ir"] = count_steps(graph.verify)
    _, counts["emit"] = count_steps(to_model, graph)
    return counts


@pytest.mark.parametrize("kind", [*scaling.KINDS, "resnet_old"])
def test_every_stage_takes_linearly_many_steps(kind: str) -> None:
    small, large = (scaling.build(kind, n) for n in SIZES)
    ratio_nodes = len(large.graph.node) / len(small.graph.node)
    assert 1.9 < ratio_nodes < 2.1
    before, after = stage_calls(small), stage_calls(large)
    growth = {stage: after[stage] / max(before[stage], 1) for stage in before}
    assert all(before[s] > 0 for s in ("import", "analysis", "cost", "allocation", "rewrite"))
    too_fast = {s: round(g, 2) for s, g in growth.items() if g > MAX_GROWTH}
    assert not too_fast, f"{kind}: steps grow faster than the graph: {too_fast} ({before})"
