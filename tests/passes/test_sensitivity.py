"""Sensitivity-based allocation cuts where the measured output error is smallest."""

from __future__ import annotations

import numpy as np
from onnx import helper

from irprune.api import prune
from tests.helpers import make_model, node_weight, run
from tests.oracles import count_macs


def _rel_l2(expected: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def test_sensitivity_prunes_the_branch_that_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], "ca"),
            helper.make_node("Relu", ["a"], ["ra"]),
            helper.make_node("Conv", ["ra", "wa2"], ["oa"], "ca2"),
            helper.make_node("Conv", ["x", "wb"], ["b"], "cb"),
            helper.make_node("Relu", ["b"], ["rb"]),
            helper.make_node("Conv", ["rb", "wb2"], ["ob"], "cb2"),
            helper.make_node("Add", ["oa", "ob"], ["out"]),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 4, 4, 4])],
        {
            "wa": rng.standard_normal((16, 3, 1, 1)).astype(np.float32),
            "wa2": rng.standard_normal((4, 16, 1, 1)).astype(np.float32),
            "wb": rng.standard_normal((16, 3, 1, 1)).astype(np.float32),
            "wb2": (rng.standard_normal((4, 16, 1, 1)) * 1e-3).astype(np.float32),
        },
    )
    calib = {"x": rng.standard_normal((32, 3, 4, 4)).astype(np.float32)}
    kw = dict(target_flops=0.6, round_to=1, calib=calib, measure_latency=False)
    sens = prune(model, strategy="sensitivity", **kw)
    # widths, MACs and the error are read off the written models, on held-out inputs
    kept = {conv: node_weight(sens.model, conv).shape[0] for conv in ("ca", "cb")}
    assert kept["ca"] > kept["cb"] + 4
    assert 0.58 <= count_macs(sens.model) / count_macs(model) <= 0.6
    glob = prune(model, strategy="global", **kw)
    held_out = {"x": rng.standard_normal((64, 3, 4, 4)).astype(np.float32)}
    (expected,) = run(model, held_out)
    sens_err = _rel_l2(expected, run(sens.model, held_out)[0])
    glob_err = _rel_l2(expected, run(glob.model, held_out)[0])
    # measured: 3.3e-4 vs 5.4e-2 (the cut branch reads its channels with 1e-3 weights)
    assert sens_err < 1e-2 and sens_err < 0.1 * glob_err, (sens_err, glob_err)
