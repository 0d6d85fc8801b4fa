"""Sensitivity-based allocation cuts where the measured output error is smallest."""

from __future__ import annotations

import numpy as np
from onnx import helper

from irprune.api import prune
from tests.helpers import make_model


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
    kept = {g["sources"][0]: g["kept"] for g in sens.report["groups"]}
    assert kept["ca"] > kept["cb"] + 4
    assert 0.58 <= sens.report["cost"]["ratio"]["macs"] <= 0.6
    glob = prune(model, strategy="global", **kw)
    assert sens.report["fidelity"]["rel_l2"] < glob.report["fidelity"]["rel_l2"]
