"""Repairs after dropping channels that need only calibration data, no weight search.

Bias compensation: a dropped input channel c of a consumer contributed, on average,
``sum_k W[o, c, k] * E[x_c]`` to output o (E over calibration data and positions; the border
effect of zero padding is ignored). That expected contribution is added to the consumer's bias,
so the next layer's input keeps its mean (the statistics shift that sends an uncompensated pruned
network to chance).

BN re-estimation: explicit BatchNormalization nodes get the mean and variance of their input as
it is in the pruned model, measured on calibration data level by level (``calibration.levels``),
so every BN sees the statistics already fixed upstream (what re-running BN in training mode over
the data does in a framework); the graph is run once in all, a slice per level (``sweep``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from irprune.ir import Graph, Node
from irprune.passes.allocation import Plan
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.calibration import levels, run_exposed
from irprune.passes.rewrite import bnstats
from irprune.passes.rewrite.refit import kept_outputs, refit_targets, shift_output
from irprune.passes.sweep import Sweep

log = logging.getLogger(__name__)


class _Moments:
    def __init__(self) -> None:
        self.sum: dict[str, np.ndarray] = {}
        self.sq: dict[str, np.ndarray] = {}
        self.n: dict[str, int] = {}

    def __call__(self, name: str, array: np.ndarray) -> None:
        x = np.moveaxis(array, 1, 0).reshape(array.shape[1], -1).astype(np.float64)
        self.sum[name] = self.sum.get(name, 0) + x.sum(axis=1)
        self.sq[name] = self.sq.get(name, 0) + (x * x).sum(axis=1)
        self.n[name] = self.n.get(name, 0) + x.shape[1]

    def mean(self, name: str) -> np.ndarray:
        return self.sum[name] / self.n[name]

    def var(self, name: str) -> np.ndarray:
        return np.maximum(self.sq[name] / self.n[name] - self.mean(name) ** 2, 0.0)


def reestimate_bn(graph: Graph, calib: Mapping[str, np.ndarray]) -> int:
    """Set every explicit BatchNormalization's mean/var from calibration data; returns count."""
    bns = [
        n
        for n in graph.nodes
        if n.op_type == "BatchNormalization"
        and all(v is not None and v.const is not None and len(v.uses) == 1 for v in n.inputs[3:5])
    ]
    with Sweep(graph, calib) as sweep:
        for chunk in levels(graph, bns):
            _reestimate_level(sweep, chunk)
    log.info("re-estimated %d BatchNormalization nodes", len(bns))
    return len(bns)


def _reestimate_level(sweep: Sweep, chunk: list[Node]) -> None:
    moments = _Moments()
    for arrays in sweep.run([n.required(0).name for n in chunk]):
        for name, array in arrays.items():
            moments(name, array)
    for node in chunk:
        name = node.required(0).name
        if name not in moments.n:
            continue
        mean, var = node.required(3), node.required(4)
        assert mean.const is not None and var.const is not None
        mean.const = moments.mean(name).astype(mean.const.dtype)
        var.const = moments.var(name).astype(var.const.dtype)


def compensate_bias(
    pruned: Graph,
    original: Graph,
    analysis: ChannelAnalysis,
    plan: Plan,
    calib: Mapping[str, np.ndarray],
    *,
    new_params: bool = True,
) -> int:
    """Fold the dropped channels' expected contribution into each consumer's bias (without
    ``new_params``, only where a bias or a BatchNormalization can take it)."""
    pairs = [(p, o) for p, o in refit_targets(pruned, original) if p.op_type in ("Conv", "Gemm")]
    moments = _Moments()
    run_exposed(
        original, [o.required(0).name for _, o in pairs], calib, _channel_axis(moments, pairs)
    )
    done = 0
    for p_node, o_node in pairs:
        delta = _expected_contribution(o_node, analysis, plan, moments)
        if delta is None:
            continue
        shift_output(pruned, p_node, delta, new_params=new_params)
        done += 1
    log.info("bias-compensated %d consumers", done)
    return done


def _channel_axis(moments: _Moments, pairs: list[tuple[Node, Node]]):
    """Reducer that moves Gemm inputs' K axis to position 1 before taking moments."""
    gemm_inputs = {o.required(0).name: o for _, o in pairs if o.op_type == "Gemm"}

    def reduce(name: str, array: np.ndarray) -> None:
        node = gemm_inputs.get(name)
        if node is not None and node.attr("transA", 0):
            array = array.T
        moments(name, array)

    return reduce


def _dropped(node: Node, analysis: ChannelAnalysis, plan: Plan) -> tuple[np.ndarray, ...] | None:
    """(weights summed over the kernel [O_kept, C_dropped], squared likewise, dropped positions)."""
    w = node.required(1)
    if w.const is None:
        return None
    axis = 1 if node.op_type == "Conv" or node.attr("transB", 0) else 0
    layout = analysis.layout(w.name, axis)
    outputs = kept_outputs(node, analysis, plan)
    if layout is None or outputs is None:
        return None
    kept = lay.positions(layout, plan.kept)
    dropped = np.setdiff1d(np.arange(w.const.shape[axis]), kept)
    if not len(dropped):
        return None
    # only the kept outputs x dropped inputs block is read (a classifier weight can be GBs)
    block = np.moveaxis(w.const, axis, 1) if axis == 1 else np.moveaxis(w.const, 0, 1)
    part = block[outputs][:, dropped].astype(np.float64)
    part = part.reshape(len(outputs), len(dropped), -1)
    return part.sum(axis=2), (part * part).sum(axis=2), dropped


def _expected_contribution(
    node: Node, analysis: ChannelAnalysis, plan: Plan, moments: _Moments
) -> np.ndarray | None:
    x = node.required(0)
    parts = _dropped(node, analysis, plan)
    if x.name not in moments.n or parts is None:
        return None
    rows, _, dropped = parts
    return rows @ moments.mean(x.name)[dropped]


Shift = tuple[Node, np.ndarray, np.ndarray | None]


def plan_bn_compensation(graph: Graph, analysis: ChannelAnalysis, plan: Plan) -> list[Shift]:
    """Data-free compensation from explicit BN statistics (``bnstats``), computed on the graph
    before dropping: per consumer, the dropped channels' expected contribution to each kept
    output, and the variance they contributed (independent channels assumed)."""
    shifts: list[Shift] = []
    for node in graph.nodes:
        if node.op_type not in ("Conv", "Gemm") or node.attr("group", 1) != 1:
            continue
        parts = _dropped(node, analysis, plan)
        stats = bnstats.moments(node.required(0))
        if parts is None or stats is None or not len(parts[2]):
            continue
        rows, squares, dropped = parts
        mean, var = stats
        if len(mean) <= int(dropped.max()):
            continue
        lost = squares @ var[dropped] if var is not None else None
        shifts.append((node, rows @ mean[dropped], lost))
    return shifts


def apply_bn_compensation(graph: Graph, shifts: list[Shift], *, new_params: bool = True) -> int:
    """Apply ``plan_bn_compensation``'s shifts to the dropped graph (its nodes survive drop)."""
    for node, delta, lost in shifts:
        shift_output(graph, node, delta, new_params=new_params)
        if lost is not None:
            _shrink_next_bn_var(graph, node, lost)
    log.info("bias-compensated %d consumers from BN statistics", len(shifts))
    return len(shifts)


def _shrink_next_bn_var(graph: Graph, node: Node, lost: np.ndarray) -> None:
    out = node.outputs[0]
    for reader in graph.consumers(out):
        if reader.op_type == "BatchNormalization" and reader.inputs[0] is out:
            var = reader.input(4)
            if (
                var is None
                or var.const is None
                or len(var.uses) != 1
                or var.const.shape != lost.shape
            ):
                return
            var.const = np.maximum(var.const - lost, 0.1 * var.const).astype(var.const.dtype)
            return
