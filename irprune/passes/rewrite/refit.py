"""Least-squares refit of consumers on calibration data (ThiNet, Luo et al. 2017; He et al. 2017).

After channels are dropped, a consumer (a node that sums an input axis against a weight, per its
rule's ``contracts``: Conv with group 1, Gemm, MatMul) sees fewer input channels. Its weight W'
(and bias, where the op has one) is re-solved to reproduce the ORIGINAL model's output of that
node from the PRUNED model's input to it:

    min ||Y_orig - X_pruned W'||^2 + lambda ||W'||^2,  lambda = ridge * mean(diag(X^T X))

Conv inputs are unfolded (im2col) so a conv is a matrix product. The normal equations X^T X and
X^T Y are accumulated batch by batch, so memory is bounded by one batch and one d x d matrix per
consumer (d = input channels x kernel size + 1). A conv yields one row per output position per
image, far more than d unknowns need: each batch contributes a seeded uniform sample of its rows,
sized so the whole calibration set gives about ``ROWS_PER_UNKNOWN * d`` rows (at least
``MIN_ROWS``), which bounds the work at O(rows x d^2) whatever the image size.
Consumers are refit level by level (``calibration.levels``): each level is measured on the
pruned graph with every consumer upstream of it already refit, so a layer fits to what it will
really see (measuring two dependent layers in one pass sends a residual network to chance).
Each graph is run once in all, a slice per level (``sweep.Sweep``), not once per level.

How hard to regularise is chosen per consumer on held-out data, because a fit that reproduces the
calibration set can still generalise worse than no refit at all (a classifier's last Gemm sees one
row per image: 128 rows for a few hundred unknowns). Every ``HOLDOUT``-th calibration sample is
held out; the regulariser pulls toward the weights as pruned (the original's, kept inputs only):

    W'(lambda) = argmin ||Y - X W'||^2 + lambda ||W' - W_pruned||^2

for lambda in ``RIDGES`` (times the mean of diag(X^T X)) and W_pruned itself (lambda infinite)
are scored by their error on the held-out rows, computed from that part's own normal equations
(||Y - X W||^2 = Y.Y - 2 <W, X^T Y> + <W, X^T X W>); the winner's lambda is then solved on all
rows. With fewer than ``HOLDOUT`` samples the fixed ``ridge`` is used instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from irprune.ir import Graph, Node, Value
from irprune.passes.allocation import Plan
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.rules import RULES
from irprune.passes.calibration import levels
from irprune.passes.rewrite import refit_recurrent as rnn
from irprune.passes.sweep import Sweep

log = logging.getLogger(__name__)

MAX_DIM = 6000  # skip consumers whose normal equations would exceed ~290 MB (float64)
ROWS_PER_UNKNOWN = 64
MIN_ROWS = 16384
HOLDOUT = 4  # every 4th calibration sample is held out to choose the regularisation
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class _Target:
    pruned: Node
    original: Node
    outputs: np.ndarray
    bias: bool = True  # solve for a bias column
    fit: _Normal | None = None  # normal equations of the fitting rows
    held: _Normal | None = None  # and of the held-out rows


@dataclass
class _Normal:
    """Normal equations of a set of rows: X^T X, X^T Y and Y.Y."""

    ata: np.ndarray
    aty: np.ndarray
    yty: float

    @staticmethod
    def add(normal: _Normal | None, a: np.ndarray, b: np.ndarray) -> _Normal:
        """``normal`` (None: empty) with the rows ``a`` -> ``b`` added."""
        if normal is None:
            d, m = a.shape[1], b.shape[1]
            normal = _Normal(np.zeros((d, d)), np.zeros((d, m)), 0.0)
        normal.ata += a.T @ a
        normal.aty += a.T @ b
        normal.yty += float(np.sum(b * b))
        return normal

    def error(self, w: np.ndarray) -> float:
        """||Y - X W||^2 over these rows."""
        return self.yty - 2 * float(np.sum(w * self.aty)) + float(np.sum(w * (self.ata @ w)))


def kept_outputs(node: Node, analysis: ChannelAnalysis, plan: Plan) -> np.ndarray | None:
    """Positions of the (original) node's output channels that survive the plan."""
    y = node.outputs[0]
    if y.rank is None:
        return None
    axis = 1 if node.op_type in ("Conv", "Gemm") else y.rank - 1
    layout = analysis.layout(y.name, axis)
    size = y.static_dim(axis)
    if layout is None:
        return np.arange(size) if size is not None else None
    return lay.positions(layout, plan.kept)


def refit_targets(pruned: Graph, original: Graph) -> list[tuple[Node, Node]]:
    """(pruned node, original node) pairs whose contracted input axis shrank."""
    pairs = []
    for p_node, o_node in zip(pruned.nodes, original.nodes, strict=True):
        rule = RULES.get(p_node.key)
        if rule is None or rule.contracts is None:
            continue
        for c in rule.contracts(p_node):
            new_w, old_w = p_node.input(c.weight), o_node.input(c.weight)
            if new_w is None or old_w is None or new_w.const is None or old_w.const is None:
                continue
            if new_w.const.shape[c.weight_axis] < old_w.const.shape[c.weight_axis]:
                pairs.append((p_node, o_node))
    return pairs


def _conv_cols(
    node: Node, x: np.ndarray, kernel: tuple[int, ...], rows: np.ndarray | None
) -> np.ndarray | None:
    """im2col: [rows, C * prod(kernel)] in W's (C, k...) order; only the given rows (flat
    (image, output position) indices; None = all), gathered from a strided view."""
    if node.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    nd = len(kernel)
    strides = node.attr("strides") or [1] * nd
    dil = node.attr("dilations") or [1] * nd
    pads = node.attr("pads") or [0] * (2 * nd)
    xp = np.pad(x, [(0, 0), (0, 0), *[(pads[i], pads[i + nd]) for i in range(nd)]])
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + nd)))
    by_stride: tuple[Any, ...] = (
        slice(None),
        slice(None),
        *[slice(None, None, s) for s in strides],
    )
    by_dilation: tuple[Any, ...] = (Ellipsis, *[slice(None, None, d) for d in dil])
    win = win[by_stride][by_dilation]
    # [N, C, *out, *k] -> [N, *out, C, *k]
    order = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    cols = np.transpose(win, order)
    lead = cols.shape[: 1 + nd]
    gathered = cols[np.unravel_index(rows, lead)] if rows is not None else cols
    return gathered.reshape(-1, x.shape[1] * int(np.prod(kernel)))


def _design(node: Node, x: np.ndarray, rows: np.ndarray | None, bias: bool) -> np.ndarray:
    """The matrix X such that the node's output (channels last, flattened: ``_target``) is
    X @ W' (+ bias column), on the given rows of that output (None = all). Empty: unsupported."""
    w = node.required(1).const
    assert w is not None
    cols: np.ndarray | None = None
    if node.op_type == "Conv":
        cols = _conv_cols(node, x, tuple(w.shape[2:]), rows)
    elif node.op_type == "Gemm":
        plain = (
            not node.attr("transA", 0) and node.attr("alpha", 1.0) == node.attr("beta", 1.0) == 1.0
        )
        cols = _take(x, rows) if plain else None
    elif node.op_type == "MatMul":
        cols = _take(x.reshape(-1, x.shape[-1]), rows)
    elif rnn.is_recurrent(node):
        cols = _take(rnn.design(node, x), rows)
    if cols is None:
        return np.zeros((0, 0))
    if bias:
        cols = np.concatenate([cols, np.ones((len(cols), 1), cols.dtype)], axis=1)
    return cols.astype(np.float64)


def _take(a: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return a if rows is None else a[rows]


def _unknowns(node: Node, bias: bool) -> int | None:
    """Columns of the design matrix: the weight's input side (+ 1 bias column if solved)."""
    w = node.required(1).const
    if w is None:
        return None
    if rnn.is_recurrent(node):
        return rnn.unknowns(node, bias)
    if node.op_type == "Conv":
        return int(np.prod(w.shape[1:])) + int(bias)
    if node.op_type == "Gemm":
        return int(w.shape[1] if node.attr("transB", 0) else w.shape[0]) + int(bias)
    if node.op_type == "MatMul" and w.ndim == 2:
        return int(w.shape[0])
    return None


def _wanted(original: Node) -> str:
    """The original graph's value a target is made from: the node's output, or for a recurrent
    node its input (``refit_recurrent``: the target is its gates' input part)."""
    return original.required(0).name if rnn.is_recurrent(original) else original.outputs[0].name


def _samples(node: Node, x: np.ndarray) -> int:
    """How many calibration samples an input batch ``x`` of ``node`` holds."""
    return len(rnn.batch_major(node, x)) if rnn.is_recurrent(node) else len(x)


def _target(node: Node, y: np.ndarray) -> np.ndarray:
    """The original node's output with channels last, flattened over everything else (for a
    recurrent node, ``y`` is its input and the target its gates' input part)."""
    if rnn.is_recurrent(node):
        return rnn.gate_inputs(node, y)
    if node.op_type == "Conv":
        y = np.moveaxis(y, 1, -1)
    return y.reshape(-1, y.shape[-1]).astype(np.float64)


def _write(node: Node, graph: Graph, sol: np.ndarray, has_bias: bool) -> None:
    if rnn.is_recurrent(node):
        rnn.write(node, graph, sol, has_bias)
        return
    w = node.required(1)
    assert w.const is not None
    coef, bias = (sol[:-1], sol[-1]) if has_bias else (sol, None)
    if node.op_type == "Conv":
        new_w = coef.T.reshape(w.const.shape)
    elif node.op_type == "Gemm" and node.attr("transB", 0):
        new_w = coef.T
    else:
        new_w = coef
    w.const = new_w.astype(w.const.dtype)
    if bias is not None:
        old = node.input(2)
        current = old.const if old is not None and old.const is not None else 0.0
        shift_output(graph, node, bias.astype(np.float64) - current)


def shift_output(graph: Graph, node: Node, delta: np.ndarray, *, new_params: bool = True) -> None:
    """Add ``delta`` to the node's output channels without adding parameters where possible:
    into its bias; else into the running mean of a BatchNormalization that alone reads the
    output (BN(y + d) with mean m is BN(y) with mean m - d); else as a new bias input, unless
    ``new_params`` is False (a parameter budget: the shift is then left out)."""
    old = node.input(2)
    own_bias = old is not None and old.const is not None and len(old.uses) == 1
    if own_bias and old is not None and old.const is not None and old.const.shape == delta.shape:
        old.const = (old.const + delta).astype(old.const.dtype)
        return
    mean = _absorbing_mean(graph, node)
    if mean is not None and mean.const is not None:
        mean.const = (mean.const - delta).astype(mean.const.dtype)
        return
    if not new_params:
        log.info("%s: output shift left out (it would add a bias over the parameter budget)", node)
        return
    base = old.const if old is not None and old.const is not None else 0.0
    log.info("%s gets a new bias input", node)
    _new_bias(graph, node, np.asarray(base + delta, dtype=np.float32))


def _absorbing_mean(graph: Graph, node: Node) -> Value | None:
    """The running mean of a BatchNormalization that alone reads a bias-less node's output."""
    readers = list(graph.consumers(node.outputs[0]))
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization" or node.input(2):
        return None
    mean = readers[0].input(3)
    ok = mean is not None and mean.const is not None and len(mean.uses) == 1
    return mean if ok else None


def shifts_without_new_params(graph: Graph, node: Node) -> bool:
    """Whether ``shift_output`` can move this node's outputs without adding a parameter."""
    old = node.input(2)
    own = old is not None and old.const is not None and len(old.uses) == 1
    return own or _absorbing_mean(graph, node) is not None


def _new_bias(graph: Graph, node: Node, bias: np.ndarray) -> None:
    dtype = node.required(1).dtype
    name = graph.unique_name(f"{node.name or node.op_type}_bias")
    value = Value(name, dtype, bias.shape, const=bias)
    graph.add_value(value)
    graph.set_input(node, 2, value)


def refit(
    pruned: Graph,
    original: Graph,
    calib: Mapping[str, np.ndarray],
    analysis: ChannelAnalysis,
    plan: Plan,
    *,
    ridge: float = 1e-3,
    new_params: bool = True,
) -> int:
    """Refit every shrunk consumer in place; returns how many were refit. Without
    ``new_params``, a consumer with nowhere to keep a bias is refit without one."""
    pairs = []
    for p, o in refit_targets(pruned, original):
        if rnn.is_recurrent(p):  # every kept gate row is a target (see refit_recurrent)
            layout = analysis.layout(o.required(1).name, 1)
            rows = rnn.kept_rows(o, layout, plan.kept)
            pairs.append(_Target(p, o, rows, rnn.can_take_bias(p, new_params)))
            continue
        outputs = kept_outputs(o, analysis, plan)
        if p.op_type in ("Conv", "Gemm", "MatMul") and outputs is not None:
            bias = p.op_type != "MatMul" and (new_params or shifts_without_new_params(pruned, p))
            pairs.append(_Target(p, o, outputs, bias))
    by_node = {id(t.pruned): t for t in pairs}
    done = 0
    with Sweep(pruned, calib) as seen, Sweep(original, calib) as wanted:
        for level in levels(pruned, [t.pruned for t in pairs]):
            chunk = [by_node[id(n)] for n in level]
            done += _refit_chunk(seen, wanted, chunk, len(next(iter(calib.values()))), ridge)
    log.info("refit %d of %d consumers", done, len(pairs))
    return done


def _pick(n: int, share: float, d: int, rng: np.random.Generator) -> np.ndarray | None:
    """This batch's share of the row budget (see the module doc) out of its ``n`` rows, without
    replacement; None keeps every row."""
    keep = int(np.ceil(max(MIN_ROWS, ROWS_PER_UNKNOWN * d) * share))
    return None if keep >= n else np.sort(rng.choice(n, size=keep, replace=False))


def _refit_chunk(seen: Sweep, wanted: Sweep, chunk: list[_Target], total: int, ridge: float) -> int:
    """Refit one level: its inputs as the pruned graph ``seen`` gives them (every level before
    already refit), its outputs as the original graph ``wanted`` gives them."""
    x_names = [t.pruned.required(0).name for t in chunk]
    y_names = [_wanted(t.original) for t in chunk]
    skipped: set[int] = set()
    rng = np.random.default_rng(0)
    start = 0  # index of the batch's first sample in the calibration set
    for xs, ys in zip(seen.run(x_names), wanted.run(y_names), strict=True):
        n = _samples(chunk[0].pruned, xs[x_names[0]])
        for k, t in enumerate(chunk):
            x = xs[x_names[k]]
            d = _unknowns(t.pruned, t.bias)
            if d is None or d > MAX_DIM:
                skipped.add(k)
                continue
            b = _target(t.original, ys[y_names[k]])
            full = len(b)
            rows = _pick(full, n / total, d, rng)
            a = _design(t.pruned, x, rows, t.bias)
            if not a.size:
                skipped.add(k)
                continue
            b = _take(b, rows)[:, t.outputs]
            _accumulate(t, a, b, _held_out(rows, full, n, start))
        start += n
    done = 0
    for k, t in enumerate(chunk):
        if k in skipped or t.fit is None:
            log.info("not refit (unsupported or too wide): %s", t.pruned)
            continue
        sol = _solve(t, ridge)
        if sol is None:
            log.info("not refit (the held-out error is lowest as pruned): %s", t.pruned)
            continue
        _write(t.pruned, seen.graph, sol, t.bias)
        done += 1
    return done


def _held_out(rows: np.ndarray | None, full: int, n: int, start: int) -> np.ndarray:
    """Which of a batch's design rows (``rows`` of its ``full`` output rows, None = all) belong
    to a held-out sample: every ``HOLDOUT``-th calibration sample, counting from the batch's
    ``start``. The output rows are ``n`` samples' worth, sample-major."""
    index = np.arange(full) if rows is None else rows
    return (start + index // max(full // n, 1)) % HOLDOUT == HOLDOUT - 1


def _accumulate(t: _Target, a: np.ndarray, b: np.ndarray, held: np.ndarray) -> None:
    t.fit = _Normal.add(t.fit, a[~held], b[~held])
    if held.any():
        t.held = _Normal.add(t.held, a[held], b[held])


def _current(node: Node, bias: bool) -> np.ndarray:
    """The node's weights as pruned, in the layout of a solution (design columns x outputs)."""
    if rnn.is_recurrent(node):
        return rnn.current(node, bias)
    w = node.required(1).const
    assert w is not None
    w = w.astype(np.float64)
    if node.op_type == "Conv":
        coef = w.reshape(w.shape[0], -1).T
    elif node.op_type == "Gemm" and node.attr("transB", 0):
        coef = w.T
    else:
        coef = w
    if not bias:
        return coef
    old = node.input(2)
    b = old.const if old is not None and old.const is not None else np.zeros(coef.shape[1])
    return np.concatenate([coef, np.asarray(b, np.float64).reshape(1, -1)], axis=0)


def _ridge_solve(ata: np.ndarray, aty: np.ndarray, prior: np.ndarray, scale: float) -> np.ndarray:
    lam = scale * float(np.mean(np.diag(ata))) + 1e-12
    return np.linalg.solve(ata + lam * np.eye(len(ata)), aty + lam * prior)


def _solve(t: _Target, ridge: float) -> np.ndarray | None:
    """The refit solution (see the module doc), or None when the weights as pruned predict the
    held-out rows best."""
    fit = t.fit
    assert fit is not None
    prior = _current(t.pruned, t.bias)
    if t.held is None:  # too few samples to hold any out
        return _ridge_solve(fit.ata, fit.aty, prior, ridge)
    errors = {s: t.held.error(_ridge_solve(fit.ata, fit.aty, prior, s)) for s in RIDGES}
    best = min(errors, key=errors.__getitem__)
    if t.held.error(prior) <= errors[best]:
        return None
    log.debug("%s: ridge %g (held-out error %.4g)", t.pruned, best, errors[best])
    return _ridge_solve(fit.ata + t.held.ata, fit.aty + t.held.aty, prior, best)
