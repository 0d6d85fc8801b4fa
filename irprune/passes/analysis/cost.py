"""Cost model: MACs, parameters and weight bytes as functions of every group's width.

The size of an axis under widths ``w`` is linear in ``w``: fixed segments count their span, a
segment of group g counts ``w[g] * inner * outer``. Each cost is a sum of terms
``coef * product of axis sizes``: a Conv's MACs are (output spatial size) * numel(W), where W's
axes 0 and 1 follow the output and input groups; a constant's parameter count is the product of
its axis sizes. Evaluating all terms at a width vector is a few numpy operations, so allocation can
ask what any choice of widths costs without touching the graph.

MACs count the ops with a ``macs`` rule (Conv, ConvTranspose, Gemm, MatMul) at batch 1: shapes
come from shape inference with the graph inputs' symbolic dims bound to 1, so dims computed at
run time from the batch are still known. A dim that stays unknown is counted as 1 and named in
``unknown`` (the report warns). Parameters count floating-point constants; bytes count all.
Nodes inside subgraphs (If branches, Loop and Scan bodies) are not analysed and not counted:
``subgraph_compute`` names the nodes whose subgraphs hold MAC ops, so a target the counted
MACs cannot meet can say where the rest is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import onnx

from irprune.ir import Graph, Opaque, Value
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.rules import RULES


@dataclass(frozen=True)
class Cost:
    macs: float
    params: float
    bytes: float

    def ratio(self, base: Cost) -> Cost:
        return Cost(
            self.macs / base.macs if base.macs else 1.0,
            self.params / base.params if base.params else 1.0,
            self.bytes / base.bytes if base.bytes else 1.0,
        )


@dataclass(frozen=True)
class _Terms:
    coef: np.ndarray  # (T,)
    factors: np.ndarray  # (T, K) indices into the factor table, -1 = 1

    def evaluate(self, values: np.ndarray) -> float:
        padded = np.append(values, 1.0)
        return float(np.sum(self.coef * np.prod(padded[self.factors], axis=1)))


@dataclass(frozen=True)
class CostModel:
    base_widths: np.ndarray
    f_const: np.ndarray
    f_rows: np.ndarray
    f_cols: np.ndarray
    f_coef: np.ndarray
    macs: _Terms
    params: _Terms
    bytes: _Terms
    unknown: tuple[str, ...] = ()  # values whose dims the MAC count could not see (counted as 1)
    # (value name, axis) -> row of ``factor_values``: the size of every axis with a layout
    axis_factor: Mapping[tuple[str, int], int] = field(default_factory=dict)
    # node -> {op type: count} of the MAC ops inside its subgraphs, which are not counted
    subgraph_macs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def axis_size(self, values: np.ndarray, value: Value, axis: int) -> float | None:
        """One axis's size under the factor ``values``; the static dim where it has no layout."""
        row = self.axis_factor.get((value.name, axis % max(value.rank or 1, 1)))
        return float(values[row]) if row is not None else value.sample_dim(axis)

    def factor_values(self, widths: np.ndarray) -> np.ndarray:
        contrib = self.f_coef * widths[self.f_cols]
        return self.f_const + np.bincount(self.f_rows, contrib, minlength=len(self.f_const))

    def evaluate(self, widths: np.ndarray | None = None) -> Cost:
        w = self.base_widths if widths is None else np.asarray(widths, dtype=np.float64)
        values = self.factor_values(w)
        return Cost(
            self.macs.evaluate(values), self.params.evaluate(values), self.bytes.evaluate(values)
        )

    def macs_at(self, widths: np.ndarray) -> float:
        return self.macs.evaluate(self.factor_values(widths))

    def params_at(self, widths: np.ndarray) -> float:
        return self.params.evaluate(self.factor_values(widths))

    def probe(self, metric: str, widths: np.ndarray) -> Probe:
        """A ``Probe`` of ``metric`` ("macs" or "params") starting at ``widths``."""
        return Probe(self, self.macs if metric == "macs" else self.params, widths)


class Probe:
    """One metric at one width vector, re-evaluated after changing ONE group's width in time
    proportional to the terms that group touches, not to the whole graph (allocation's greedy
    steps). Sums are taken in another order than a full evaluation: equal up to rounding."""

    def __init__(self, model: CostModel, terms: _Terms, widths: np.ndarray) -> None:
        self.model, self.terms = model, terms
        self.widths = np.asarray(widths, dtype=np.float64).copy()
        self.values = np.append(model.factor_values(self.widths), 1.0)  # [-1] is the 1 factor
        self.total = terms.evaluate(self.values[:-1])
        flat = terms.factors.ravel()
        read = flat >= 0
        rows = flat[read]
        order = np.argsort(rows, kind="stable")
        self._term_rows = rows[order]
        self._row_terms = (np.arange(flat.size) // max(terms.factors.shape[1], 1))[read][order]
        order = np.argsort(model.f_cols, kind="stable")
        self._group_cols = model.f_cols[order]
        self._group_entries = order
        self._touched: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _touch(self, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(factor rows of ``group``, their coefficient on its width, terms reading them)."""
        if group not in self._touched:
            lo, hi = np.searchsorted(self._group_cols, [group, group + 1])
            entries = self._group_entries[lo:hi]
            rows, inverse = np.unique(self.model.f_rows[entries], return_inverse=True)
            coefs = np.bincount(inverse, self.model.f_coef[entries], minlength=len(rows))
            starts = np.searchsorted(self._term_rows, rows)
            ends = np.searchsorted(self._term_rows, rows, side="right")
            parts = [self._row_terms[a:b] for a, b in zip(starts, ends, strict=True)]
            terms = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
            self._touched[group] = (rows, coefs, terms)
        return self._touched[group]

    def _partial(self, terms: np.ndarray) -> float:
        products = np.prod(self.values[self.terms.factors[terms]], axis=1)
        return float(np.sum(self.terms.coef[terms] * products))

    def _delta(self, group: int, width: float, keep: bool) -> float:
        rows, coefs, terms = self._touch(group)
        before = self._partial(terms)
        saved = self.values[rows]
        self.values[rows] = saved + coefs * (width - self.widths[group])
        after = self._partial(terms)
        if not keep:
            self.values[rows] = saved
        return after - before

    def with_width(self, group: int, width: float) -> float:
        """The metric if ``group`` had ``width`` (nothing changes)."""
        return self.total + self._delta(group, width, keep=False)

    def set_width(self, group: int, width: float) -> None:
        self.total += self._delta(group, width, keep=True)
        self.widths[group] = width


class _Builder:
    def __init__(self, analysis: ChannelAnalysis) -> None:
        self.analysis = analysis
        self.index: dict[tuple[str, int], int] = {}
        self.const: list[float] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.coef: list[float] = []
        self.unknown: set[str] = set()

    def factor(self, value: Value, axis: int) -> tuple[int, float]:
        """(factor index or -1, constant multiplier) for one axis of one value."""
        axis %= max(value.rank or 1, 1)
        layout = self.analysis.layout(value.name, axis)
        if layout is None:
            dim = value.sample_dim(axis)
            if dim is None:
                self.unknown.add(value.name)
            return -1, float(dim) if dim is not None else 1.0
        key = (value.name, axis)
        if key not in self.index:
            self.index[key] = len(self.const)
            fixed = 0.0
            for s in layout:
                if s.root is None:
                    fixed += s.span
                else:
                    self.rows.append(self.index[key])
                    self.cols.append(s.root)
                    self.coef.append(float(s.inner * s.outer))
            self.const.append(fixed)
        return self.index[key], 1.0

    def terms(self, items: list[tuple[float, list[tuple[Value, int]]]]) -> _Terms:
        width = max((len(f) for _, f in items), default=0)
        coef = np.zeros(len(items))
        idx = -np.ones((len(items), max(width, 1)), dtype=np.int64)
        for t, (c, factors) in enumerate(items):
            mult = c
            for k, (value, axis) in enumerate(factors):
                i, m = self.factor(value, axis)
                idx[t, k] = i
                mult *= m
            coef[t] = mult
        return _Terms(coef, idx)


def build_cost_model(graph: Graph, analysis: ChannelAnalysis) -> CostModel:
    b = _Builder(analysis)
    mac_items: list[tuple[float, list[tuple[Value, int]]]] = []
    for node in graph.nodes:
        rule = RULES.get(node.key)
        if rule is not None and rule.macs is not None:
            mac_items += [(t.coef, list(t.factors)) for t in rule.macs(node)]
    consts = [(v, v.const) for v in graph.constants() if v.uses and v.const is not None]
    axes_of = [[(v, a) for a in range(data.ndim)] for v, data in consts]
    is_float = [float(np.issubdtype(data.dtype, np.floating)) for _, data in consts]
    itemsize = [float(data.dtype.itemsize) for _, data in consts]
    macs = b.terms(mac_items)
    params = b.terms([(f, axes) for f, axes in zip(is_float, axes_of, strict=True)])
    nbytes = b.terms([(s, axes) for s, axes in zip(itemsize, axes_of, strict=True)])
    widths = np.asarray([g.size for g in analysis.groups], dtype=np.float64)
    return CostModel(
        base_widths=widths,
        f_const=np.asarray(b.const, dtype=np.float64),
        f_rows=np.asarray(b.rows, dtype=np.int64),
        f_cols=np.asarray(b.cols, dtype=np.int64),
        f_coef=np.asarray(b.coef, dtype=np.float64),
        macs=macs,
        params=params,
        bytes=nbytes,
        unknown=tuple(sorted(b.unknown)),
        axis_factor=MappingProxyType(dict(b.index)),
        subgraph_macs=MappingProxyType(subgraph_compute(graph)),
    )


MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN")


def subgraph_compute(graph: Graph) -> dict[str, dict[str, int]]:
    """Node name -> {op type: count} of the MAC ops (``MAC_OPS``) anywhere inside its
    subgraphs (nested ones included); nodes without any are left out."""
    out: dict[str, dict[str, int]] = {}
    for index, node in enumerate(graph.nodes):
        ops: Counter[str] = Counter()
        for value in node.attrs.values():
            if isinstance(value, Opaque) and value.kind in ("GRAPH", "GRAPHS"):
                attr = onnx.AttributeProto.FromString(value.data)
                for sub in [attr.g] if value.kind == "GRAPH" else list(attr.graphs):
                    ops.update(_mac_ops(sub))
        if ops:
            out[node.name or f"{node.op_type}_{index}"] = dict(sorted(ops.items()))
    return out


def _mac_ops(graph: onnx.GraphProto) -> Counter[str]:
    ops: Counter[str] = Counter()
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in MAC_OPS:
            ops[node.op_type] += 1
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                ops.update(_mac_ops(sub))
    return ops
