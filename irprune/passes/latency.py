"""Latency model: onnxruntime CPU latency as a function of every group's width.

The heavy ops (Conv, Gemm, and MatMul with a constant weight) are timed alone, each in a one-node
model, at a grid of candidate widths of its output channels and its input channels per group
(widths the allocation can choose: multiples of the group's rounding step, ``rounding``, between
the group's floor and its full size). Between grid points the time is interpolated linearly in each
axis; the table is made non-decreasing in both axes (a narrower op is never predicted slower), so
the model stays monotone for the allocation's bisection. Everything else in the graph (activations,
pooling, normalisation, data movement, the session's own overhead) and what timing an op alone
misses (its weights streaming from memory instead of cache, layout reorders ORT removes inside a
graph) are fitted from two measurements of whole models: the original, and the same graph with
every prunable group cut to about half (``probe``, supplied by the caller). With ``S(w)`` the sum
of the tabled ops, the predicted latency at widths ``w`` is::

    S(w) = sum over tabled ops n of T_n(out_n(w), in_n(w))
    L(w) = a + b * S(w),   a, b through (S(full), L(full)) and (S(half), L(half))

If the two points do not give a positive slope (noise), ``L = L(full) * S(w) / S(full)``. The
caller still measures the pruned model and corrects the budget when the prediction is off.

Timings are cached on disk (``$IRPRUNE_CACHE`` or ``~/.cache/irprune/latency.json``), keyed by
the op's signature (op, attributes, input spatial shape, widths), the thread count, the
onnxruntime version and the CPU, so identical layers and repeated runs are timed once.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from irprune.emit.verify import session
from irprune.ir import Graph, Node, Value
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.cost import CostModel
from irprune.passes.rounding import group_step
from irprune.progress import Callback, track

log = logging.getLogger(__name__)

GRID_POINTS = 4  # candidate widths timed per axis (plus the full width)
RUNS = 15
WARMUP = 3


@dataclass(frozen=True)
class OpShape:
    """What a heavy op's time depends on, at the widths being timed."""

    op: str  # "Conv", "Gemm" or "MatMul"
    attrs: tuple[tuple[str, object], ...]  # conv attributes (group excluded), as a sorted tuple
    rows: int  # Conv: input spatial numel is in ``spatial``; Gemm/MatMul: rows of the input
    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    depthwise: bool
    group_width: int  # output channels per conv group (grouped conv prunes whole groups)

    def key(self, out_c: int, in_c: int, threads: int) -> str:
        return json.dumps([self.op, self.attrs, self.rows, self.spatial, self.kernel,
                           self.depthwise, self.group_width, out_c, in_c, threads])  # fmt: skip


@dataclass(frozen=True)
class OpTable:
    node: str
    out_factor: tuple[Value, int]  # the weight axis that follows the output channels
    in_factor: tuple[Value, int]  # the weight axis that follows the input channels (per group)
    out_grid: np.ndarray
    in_grid: np.ndarray
    ms: np.ndarray  # (len(out_grid), len(in_grid)), non-decreasing along both axes

    def at(self, out_c: float, in_c: float) -> float:
        rows = np.array([np.interp(in_c, self.in_grid, r) for r in self.ms])
        return float(np.interp(out_c, self.out_grid, rows))


@dataclass(frozen=True)
class LatencyModel:
    cost: CostModel
    tables: tuple[OpTable, ...]
    offset_ms: float  # a
    scale: float  # b
    base_ms: float  # measured latency of the whole original model
    threads: int

    def tabled(self, widths: np.ndarray) -> float:
        values = self.cost.factor_values(np.asarray(widths, dtype=np.float64))
        total = 0.0
        for t in self.tables:
            out_c = self.cost.axis_size(values, *t.out_factor) or 1.0
            in_c = self.cost.axis_size(values, *t.in_factor) or 1.0
            total += t.at(out_c, in_c)
        return total

    def at(self, widths: np.ndarray) -> float:
        return self.offset_ms + self.scale * self.tabled(widths)


class TimingCache:
    """Op timings on disk, keyed by op signature, threads, onnxruntime version and CPU."""

    def __init__(self, path: Path | None = None) -> None:
        root = Path(os.environ.get("IRPRUNE_CACHE", Path.home() / ".cache" / "irprune"))
        self.path = path or root / "latency.json"
        self.scope = f"ort{ort.__version__}|{platform.machine()}|{platform.processor()}"
        self.data: dict[str, float] = {}
        try:
            raw = json.loads(self.path.read_text())
            self.data = {k: float(v) for k, v in raw.get(self.scope, {}).items()}
        except (OSError, ValueError, AttributeError):
            self.data = {}

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                raw = json.loads(self.path.read_text())
            except (OSError, ValueError):
                raw = {}
            raw[self.scope] = self.data
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(raw))
            tmp.replace(self.path)
        except OSError as exc:  # a read-only home must not stop pruning
            log.info("latency cache not written: %s", exc)


def build_latency_model(
    graph: Graph,
    analysis: ChannelAnalysis,
    cost: CostModel,
    original: bytes | Path,
    feeds: Mapping[str, np.ndarray],
    *,
    round_to: int = 1,
    max_prune: float = 0.9,
    threads: int = 1,
    probe: Callable[[np.ndarray], bytes] | None = None,
    cache: TimingCache | None = None,
    callback: Callback | None = None,
) -> LatencyModel:
    """Time the heavy ops at candidate widths and fit the whole-model line (see the module
    doc); ``probe(widths)`` returns the graph pruned to ``widths`` (any channels) as ONNX."""
    cache = cache or TimingCache()
    base_ms = _median_ms(session(original, threads=threads, optimize=True), feeds)
    heavy = [(n, s) for n in graph.nodes if (s := _op_shape(n)) is not None]
    tables: list[OpTable] = []
    for node, shape in track(heavy, "latency table", callback=callback):
        table = _table(node, shape, analysis, cost, round_to, max_prune, threads, cache)
        if table is not None:
            tables.append(table)
    cache.save()
    model = LatencyModel(cost, tuple(tables), 0.0, 1.0, base_ms, threads)
    s_full = model.tabled(cost.base_widths)
    offset, scale = 0.0, base_ms / s_full if s_full > 0 else 0.0
    if s_full <= 0:
        offset = base_ms  # nothing prunable is timed: the latency cannot move
    elif probe is not None:
        half = _half_widths(analysis, cost, round_to)
        s_half = model.tabled(half)
        half_ms = _median_ms(session(probe(half), threads=threads, optimize=True), feeds)
        slope = (base_ms - half_ms) / (s_full - s_half) if s_full > s_half else 0.0
        if slope > 0:
            offset, scale = base_ms - slope * s_full, slope
        log.info("latency probe: full %.3f ms, half widths %.3f ms", base_ms, half_ms)
    log.info(
        "latency model: %d ops tabled, %.3f ms alone of %.3f ms; L = %.3f + %.3f S",
        len(tables), s_full, base_ms, offset, scale,
    )  # fmt: skip
    return LatencyModel(cost, tuple(tables), offset, scale, base_ms, threads)


def _half_widths(analysis: ChannelAnalysis, cost: CostModel, round_to: int) -> np.ndarray:
    widths = cost.base_widths.copy()
    for g in analysis.prunable:
        n = group_step(g.size, round_to)
        widths[g.id] = min(g.size, max(n, round(g.size / 2 / n) * n))
    return widths


def _op_shape(node: Node) -> OpShape | None:
    """The signature of a Conv / Gemm / constant-weight MatMul, or None for anything else."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or w.const is None or x.sample_shape is None:
        return None
    xs = x.sample_shape
    if not all(isinstance(d, int) and d > 0 for d in xs):
        return None
    dims = tuple(int(d) for d in xs)  # type: ignore[arg-type]
    if node.op_type == "Conv" and w.const.ndim >= 3 and len(dims) == w.const.ndim:
        group = int(node.attrs.get("group", 1))
        attrs = tuple(sorted((k, _plain(v)) for k, v in node.attrs.items() if k != "group"))
        cout = int(w.const.shape[0])
        return OpShape(
            "Conv", attrs, 1, dims[2:], tuple(w.const.shape[2:]),
            depthwise=group > 1 and w.const.shape[1] == 1 and group == dims[1],
            group_width=cout // group if group > 1 else 0,
        )  # fmt: skip
    if node.op_type == "Gemm" and w.const.ndim == 2 and len(dims) == 2:
        if node.attrs.get("transA", 0):
            return None
        attrs = (("transB", int(node.attrs.get("transB", 0))),)
        return OpShape("Gemm", attrs, dims[0], (), (), False, 0)
    if node.op_type == "MatMul" and w.const.ndim == 2 and len(dims) >= 2:
        return OpShape("MatMul", (), int(np.prod(dims[:-1])), (), (), False, 0)
    return None


def _plain(value: object) -> object:
    return list(value) if isinstance(value, (tuple, list)) else value


def _axes(node: Node, shape: OpShape) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of the weight."""
    if shape.op == "Gemm" and not dict(shape.attrs)["transB"]:
        return 1, 0
    if shape.op == "MatMul":
        return 1, 0
    return 0, 1


def _table(
    node: Node,
    shape: OpShape,
    analysis: ChannelAnalysis,
    cost: CostModel,
    round_to: int,
    max_prune: float,
    threads: int,
    cache: TimingCache,
) -> OpTable | None:
    w = node.inputs[1]
    assert w is not None and w.const is not None
    out_axis, in_axis = _axes(node, shape)
    out_full, in_full = int(w.const.shape[out_axis]), int(w.const.shape[in_axis])
    out_grid = _grid(out_full, _pruned(analysis, w, out_axis), round_to, max_prune)
    in_grid = _grid(in_full, _pruned(analysis, w, in_axis), round_to, max_prune)
    if shape.depthwise:
        in_grid = np.array([1.0])
    if len(out_grid) == 1 and len(in_grid) == 1:
        return None  # nothing about this op can change: it is part of the remainder
    ms = np.empty((len(out_grid), len(in_grid)))
    for a, out_c in enumerate(out_grid):
        for b, in_c in enumerate(in_grid):
            key = shape.key(int(out_c), int(in_c), threads)
            if key not in cache.data:
                cache.data[key] = _time_op(shape, int(out_c), int(in_c), threads)
            ms[a, b] = cache.data[key]
    ms = np.maximum.accumulate(np.maximum.accumulate(ms, axis=0), axis=1)
    return OpTable(node.name, (w, out_axis), (w, in_axis), out_grid, in_grid, ms)


def _pruned(analysis: ChannelAnalysis, value: Value, axis: int) -> bool:
    layout = analysis.layout(value.name, axis)
    if layout is None:
        return False
    prunable = {g.id for g in analysis.prunable}
    return any(s.root in prunable for s in layout)


def _grid(full: int, pruned: bool, round_to: int, max_prune: float) -> np.ndarray:
    """Candidate widths: the full width and GRID_POINTS widths spread down to the floor."""
    if not pruned or full <= 1:
        return np.array([float(full)])
    n = group_step(full, round_to)
    floor = min(-(-max(int(np.ceil(full * (1.0 - max_prune))), 1) // n) * n, full)
    raw = np.linspace(floor, full, GRID_POINTS + 1)
    snapped = {min(full, max(floor, round(v / n) * n)) for v in raw} | {full}
    return np.array(sorted(float(v) for v in snapped))


def _time_op(shape: OpShape, out_c: int, in_c: int, threads: int) -> float:
    model, feeds = _one_op_model(shape, out_c, in_c)
    return _median_ms(session(model.SerializeToString(), threads=threads, optimize=True), feeds)


def _one_op_model(
    shape: OpShape, out_c: int, in_c: int
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    attrs: dict[str, Any] = dict(shape.attrs)
    if shape.op == "Conv":
        group = (
            out_c
            if shape.depthwise
            else max(out_c // shape.group_width, 1)
            if shape.group_width
            else 1
        )
        cin = out_c if shape.depthwise else in_c * group
        x_shape = (1, cin, *shape.spatial)
        w_shape = (out_c, 1 if shape.depthwise else in_c, *shape.kernel)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, **attrs)
        inits = [_rand("w", w_shape, rng), _rand("b", (out_c,), rng)]
    else:
        transb = bool(attrs.get("transB", 0))
        x_shape = (shape.rows, in_c)
        w_shape = (out_c, in_c) if transb else (in_c, out_c)
        if shape.op == "Gemm":
            node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=int(transb))
            inits = [_rand("w", w_shape, rng), _rand("b", (out_c,), rng)]
        else:
            node = helper.make_node("MatMul", ["x", "w"], ["y"])
            inits = [_rand("w", w_shape, rng)]
    graph = helper.make_graph(
        [node],
        "op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(x_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, {"x": rng.standard_normal(x_shape).astype(np.float32)}


def _rand(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> TensorProto:
    data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    return onnx.numpy_helper.from_array(data, name)


def _median_ms(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> float:
    times = []
    for i in range(WARMUP + RUNS):
        t0 = time.perf_counter()
        sess.run(None, dict(feeds))
        if i >= WARMUP:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
