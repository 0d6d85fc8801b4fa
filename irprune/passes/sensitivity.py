"""Sensitivity analysis: each group's output error when it alone is pruned, on calibration data.

Dropping channels computes exactly what the original model computes with those channels zeroed
at the inputs of their consumers (the masked-equivalence oracle, DESIGN.md section 4). So one
copy of the model, with a Mul by a mask *graph input* in front of every consumer, evaluates any
plan in one onnxruntime run: no rewrite, no new session. For every prunable group and a few
fractions removed (its lowest-scored channels first), the relative L2 error of the first output
against the original is measured; the curves feed ``allocation`` (strategy ``sensitivity``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from irprune import progress
from irprune.emit import to_model
from irprune.emit.verify import run_batched, session
from irprune.ir import Graph, Node, Value
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.layout import Layout
from irprune.passes.analysis.rules import RULES
from irprune.passes.calibration import batches
from irprune.passes.importance import Scores

log = logging.getLogger(__name__)

FRACTIONS = (0.25, 0.5, 0.75, 0.9)
_FLOAT = 1  # ONNX TensorProto.FLOAT


@dataclass(frozen=True)
class Curves:
    """err[g][k]: relative output error with FRACTIONS[k] of group g removed (0 at 0)."""

    fractions: tuple[float, ...]
    err: Mapping[int, np.ndarray]


@dataclass(frozen=True)
class _Mask:
    name: str
    layout: Layout
    shape: tuple[int, ...]


def _insert_masks(graph: Graph, analysis: ChannelAnalysis) -> list[_Mask]:
    """Mutates ``graph`` (a private copy): a mask input in front of every consumer."""
    masks: list[_Mask] = []
    prunable = {g.id for g in analysis.prunable}
    for node in list(graph.nodes):
        rule = RULES.get(node.key)
        for c in rule.contracts(node) if rule is not None and rule.contracts else []:
            x = node.required(c.data)
            layout = analysis.layout(x.name, c.data_axis)
            if layout is None or not lay.roots(layout) & prunable or x.rank is None:
                continue
            masks.append(_add_mask(graph, node, c.data, c.data_axis, layout, len(masks)))
    return masks


def _add_mask(graph: Graph, node: Node, index: int, axis: int, layout: Layout, k: int) -> _Mask:
    x = node.required(index)
    assert x.rank is not None
    shape = [1] * x.rank
    shape[axis % x.rank] = lay.span(layout)
    mask = graph.add_value(Value(graph.unique_name(f"__irprune_mask{k}"), _FLOAT, tuple(shape)))
    graph.inputs.append(mask)
    out = graph.add_value(Value(graph.unique_name(f"{x.name}__masked{k}"), x.dtype, x.shape))
    graph.add_node(Node("Mul", inputs=(x, mask), outputs=(out,)), index=graph.nodes.index(node))
    graph.set_input(node, index, out)
    return _Mask(mask.name, layout, tuple(shape))


def measure(
    graph: Graph,
    analysis: ChannelAnalysis,
    scores: Scores,
    calib: Mapping[str, np.ndarray],
    *,
    samples: int = 32,
    fractions: tuple[float, ...] = FRACTIONS,
    callback: progress.Callback | None = None,
) -> Curves:
    """Error curves of every scored group. ``graph`` is consumed (masks are inserted into it).
    Progress (one unit per group) goes to ``callback`` and any display the caller enabled."""
    masks = _insert_masks(graph, analysis)
    sess = session(to_model(graph), threads=2)
    feeds = next(iter(batches(calib, samples)))

    def run(kept: Mapping[int, np.ndarray]) -> np.ndarray:
        mask_feeds = {}
        for m in masks:
            values = np.zeros(lay.span(m.layout), dtype=np.float32)
            values[lay.positions(m.layout, kept)] = 1.0
            mask_feeds[m.name] = values.reshape(m.shape)
        return np.asarray(run_batched(sess, None, {**feeds, **mask_feeds})[0], dtype=np.float64)

    reference = run({})
    norm = float(np.linalg.norm(reference)) or 1.0
    err: dict[int, np.ndarray] = {}
    groups = scores.by_group.items()
    for gid, s in progress.track(groups, "sensitivity", callback=callback):
        order = np.argsort(-np.asarray(s), kind="stable")
        curve = []
        for f in fractions:
            keep = max(1, round(len(order) * (1 - f)))
            curve.append(np.linalg.norm(run({gid: np.sort(order[:keep])}) - reference) / norm)
        err[gid] = np.asarray(curve)
    log.info("sensitivity: %d groups x %d fractions measured", len(err), len(fractions))
    return Curves(tuple(fractions), err)


def predicted(curves: Curves, gid: int, removed_fraction: float) -> float:
    """Error of group ``gid`` with this fraction removed, interpolated (0 at 0)."""
    xs = np.concatenate([[0.0], curves.fractions, [1.0]])
    ys = curves.err[gid]
    ys = np.concatenate([[0.0], ys, [ys[-1] * 2 + 1.0]])
    return float(np.interp(removed_fraction, xs, ys))
