"""Shared by the fx and torch.export frontend tests: channel groups and kept widths of a model,
the worst relative difference of two output lists, a pruned module checked against the masked
original and its own ``to_torch()``, and a torch module's outputs on numpy feeds.
Import only from tests that already skip without torch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.fold import fold_constants


def groups(model: onnx.ModelProto, prunable_only: bool = False) -> list[tuple[int, bool]]:
    """(width, prunable) of every channel group, as prune analyses the model."""
    graph = import_model(model)
    fold_constants(graph)
    found = sorted((g.size, not g.frozen) for g in analyze(graph).groups)
    return [g for g in found if g[1]] if prunable_only else found


def widths(
    report: dict[str, Any], ignored: tuple[str, ...] = (), prunable_only: bool = False
) -> list[tuple[int, int]]:
    """(width, kept) of the report's groups; without the frozen ones if ``prunable_only``, and
    without any whose sources include an ``ignored`` node (groups only one frontend sees)."""
    return sorted(
        (g["size"], g["kept"])
        for g in report["groups"]
        if not (prunable_only and g["frozen"]) and not set(g["sources"]) & set(ignored)
    )


def rel(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 0.0
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        worst = max(worst, float(np.max(np.abs(e - g))) / max(float(np.max(np.abs(e))), 1e-12))
    return worst


def assert_masked_and_torch_agree(
    lowered: onnx.ModelProto, result: Any, batch: int, tolerance: float = 1e-4
) -> None:
    """The pruned model equals the independently masked original (``tests.reference_mask``) at
    ``batch``, and ``to_torch()`` equals onnxruntime within ``tolerance``."""
    from tests.helpers import feeds_for, rel_diff, run
    from tests.reference_mask import masked_reference

    assert result.analysis is not None and result.plan is not None
    feeds = feeds_for(lowered, batch=batch, seed=1)
    expected = run(masked_reference(lowered, result.analysis, result.plan), feeds)
    got = run(result.model, feeds)
    assert max(rel_diff(e, g) for e, g in zip(expected, got, strict=True)) <= 1e-5
    with torch.no_grad():
        mine = result.to_torch().eval()(torch.from_numpy(feeds["x"]))
    assert rel([got[0]], [mine.numpy()]) <= tolerance


def torch_outputs(module: Any, feeds: dict[str, np.ndarray], names: list[str]) -> list[Any]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[n]) for n in names))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """torch on one thread: the machines are shared, and small convs run faster this way
    (autouse in every module that imports it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
