"""The least-squares refit's choice of regularisation on held-out calibration samples."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from irprune.api import prune
from irprune.passes.rewrite.refit import HOLDOUT, _held_out, _Normal
from tests.helpers import make_model, rel_diff, run

RNG = np.random.default_rng(3)


def test_held_out_error_is_the_residual_norm() -> None:
    a = RNG.standard_normal((50, 6))
    y = RNG.standard_normal((50, 3))
    w = RNG.standard_normal((6, 3))
    normal = _Normal.add(_Normal.add(None, a[:20], y[:20]), a[20:], y[20:])
    assert np.isclose(normal.error(w), float(np.sum((y - a @ w) ** 2)))


def test_every_fourth_sample_is_held_out_whole() -> None:
    # 3 samples of 10 output rows each, starting at calibration sample 2: sample 3 is held out
    held = _held_out(None, 30, 3, 2)
    assert held.tolist() == [False] * 10 + [True] * 10 + [False] * 10
    rows = np.array([0, 9, 10, 19, 20, 29])  # a sample of the rows keeps each row's sample
    assert _held_out(rows, 30, 3, 2).tolist() == [False, False, True, True, False, False]
    assert HOLDOUT == 4


def _mlp() -> onnx.ModelProto:
    """x[64] -> Gemm 32 -> Relu -> Gemm 10, where hidden channel 0 is tiny and unused."""
    w1 = RNG.standard_normal((32, 64)).astype(np.float32)
    w1[0] *= 0.01
    w2 = RNG.standard_normal((10, 32)).astype(np.float32)
    w2[:, 0] = 0.0
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], "g1", transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["out"], "g2", transB=1),
    ]
    inits = {"w1": w1, "b1": np.zeros(32, np.float32), "w2": w2, "b2": np.ones(10, np.float32)}
    return make_model(nodes, [("x", ["N", 64])], [("out", ["N", 10])], inits)


def test_a_channel_that_contributes_nothing_leaves_the_consumer_as_it_was() -> None:
    """16 calibration rows for 32 unknowns: a least-squares fit would move every weight of the
    consumer, while the weights as pruned are exact; the held-out samples say so."""
    model = _mlp()
    calib = {"x": RNG.standard_normal((16, 64)).astype(np.float32)}
    result = prune(
        model, target_flops=0.975, criterion="l1", rewrite="reconstruct", calib=calib,
        round_to=1, measure_latency=False,
    )  # fmt: skip
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    w2 = numpy_helper.to_array(model.graph.initializer[2])
    (pruned_w2,) = [w for w in weights.values() if w.shape == (10, 31)]
    np.testing.assert_array_equal(pruned_w2, w2[:, 1:])
    x = {"x": RNG.standard_normal((8, 64)).astype(np.float32)}
    assert rel_diff(run(result.model, x)[0], run(model, x)[0]) < 1e-5
