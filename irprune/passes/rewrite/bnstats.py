"""Data-free activation statistics from explicit BatchNormalization nodes.

A trained network's BN running statistics describe its activations: the output of
``BatchNormalization`` is distributed with mean beta and variance gamma^2 per channel. From there
the per-channel mean and variance of what a consumer reads are propagated through the ops between
(assuming a Gaussian BN output and independent channels):

- Relu: rectified Gaussian, with s = mu / sigma, E = mu Phi(s) + sigma phi(s),
  E[x^2] = (mu^2 + sigma^2) Phi(s) + mu sigma phi(s);
- Clip(0, 6) (ReLU6): clip(z) = relu(z) - relu(z - 6), so
  E = E[relu z] - E[relu(z - 6)], E[x^2] = E[relu^2 z] - E[relu^2 (z - 6)] - 12 E[relu(z - 6)];
- Add of two such tensors (residual): means and variances add;
- Concat: the inputs' statistics one after another; Identity, Dropout: unchanged;
- global average pooling / Flatten of [N, C, 1, 1]: mean unchanged, variance unknown.
Anything else (folded BN, unknown ops) gives no statistics, and nothing is compensated there.
"""

from __future__ import annotations

import math

import numpy as np

from irprune.ir import Node, Value

_SQRT2 = math.sqrt(2.0)
_erf = np.vectorize(math.erf)


def _phi(s: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * s * s) / math.sqrt(2 * math.pi)


def _cdf(s: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(s / _SQRT2))


def _relu_moments(mu: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[relu z], E[relu(z)^2] for z ~ N(mu, var)."""
    sigma = np.sqrt(np.maximum(var, 1e-12))
    s = mu / sigma
    first = mu * _cdf(s) + sigma * _phi(s)
    second = (mu * mu + sigma * sigma) * _cdf(s) + mu * sigma * _phi(s)
    return first, second


def _clip6(mu: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e1, e2 = _relu_moments(mu, var)
    f1, f2 = _relu_moments(mu - 6.0, var)
    return e1 - f1, e2 - f2 - 12.0 * f1


def moments(value: Value, depth: int = 0) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Per-channel (mean, variance or None) of ``value``'s axis 1, from BN statistics."""
    node = value.producer
    if node is None or depth > 16:
        return None
    op = node.op_type
    if op == "BatchNormalization" and len(node.outputs) == 1:
        gamma, beta = node.input(1), node.input(2)
        if gamma is None or beta is None or gamma.const is None or beta.const is None:
            return None
        return beta.const.astype(np.float64), gamma.const.astype(np.float64) ** 2
    if op in ("Identity", "Dropout"):
        return moments(node.required(0), depth + 1)
    if op in ("Relu", "Clip"):
        return _activation(node, depth)
    if op == "Add":
        return _add(node, depth)
    if op == "Concat" and node.attr("axis") in (1, -3):
        return _concat(node, depth)
    if op in ("GlobalAveragePool", "Flatten"):
        inner = moments(node.required(0), depth + 1)
        return None if inner is None else (inner[0], None)
    return None


Stats = tuple[np.ndarray, np.ndarray | None]


def _activation(node: Node, depth: int) -> Stats | None:
    inner = moments(node.required(0), depth + 1)
    if inner is None:
        return None
    mu, var = inner
    if var is None:
        return None
    if node.op_type == "Relu":
        first, second = _relu_moments(mu, var)
    else:
        lo, hi = (node.input(k) for k in (1, 2))
        bounds = [None if b is None or b.const is None else float(b.const) for b in (lo, hi)]
        if bounds != [0.0, 6.0]:
            return None
        first, second = _clip6(mu, var)
    return first, np.maximum(second - first * first, 0.0)


def _add(node: Node, depth: int) -> Stats | None:
    a, b = (moments(v, depth + 1) if v is not None else None for v in node.inputs[:2])
    if a is None or b is None:
        return None
    (m1, v1), (m2, v2) = a, b
    if m1.shape != m2.shape:
        return None
    return m1 + m2, None if v1 is None or v2 is None else v1 + v2


def _concat(node: Node, depth: int) -> Stats | None:
    parts = [moments(v, depth + 1) for v in node.inputs if v is not None]
    means, variances = [], []
    for part in parts:
        if part is None:
            return None
        means.append(part[0])
        variances.append(part[1])
    if any(v is None for v in variances):
        return np.concatenate(means), None
    return np.concatenate(means), np.concatenate([v for v in variances if v is not None])
