"""Calibrated repairs: bias compensation, least-squares refit, BN re-estimation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.api import prune
from irprune.errors import UsageError
from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.calibration import exposed
from tests.helpers import make_model, rel_diff, run

RNG = np.random.default_rng(0)


def _model(w1: np.ndarray, b1: np.ndarray, bn: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], "c1")]
    inits = {"w1": w1, "b1": b1, "w2": RNG.standard_normal((4, 8, 1, 1)).astype(np.float32)}
    act_in = "a"
    if bn:
        nodes.append(helper.make_node("BatchNormalization", ["a", "g", "be", "m", "v"], ["n"]))
        inits |= {
            "g": RNG.uniform(0.5, 1.5, 8).astype(np.float32),
            "be": RNG.normal(0, 0.1, 8).astype(np.float32),
            "m": np.zeros(8, np.float32),
            "v": np.ones(8, np.float32),
        }
        act_in = "n"
    nodes += [
        helper.make_node("Relu", [act_in], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["out"], "c2"),
    ]
    inits["b2"] = RNG.standard_normal(4).astype(np.float32)
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("out", ["N", 4, 6, 6])], inits)


def _one_channel_ratio(model: onnx.ModelProto) -> float:
    graph = import_model(model)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    w = cost.base_widths.copy()
    (g,) = analysis.prunable
    w[g.id] -= 1
    return cost.macs_at(w) / cost.macs_at(cost.base_widths) + 1e-9


def _calib(n: int = 64) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((n, 3, 6, 6)).astype(np.float32)}


def test_bias_compensation_restores_a_constant_channel_exactly() -> None:
    w1 = RNG.standard_normal((8, 3, 1, 1)).astype(np.float32)
    b1 = RNG.standard_normal(8).astype(np.float32)
    w1[5], b1[5] = 0.0, 2.0  # channel 5 is the constant 2.0 after ReLU
    model = _model(w1, b1)
    calib, test = _calib(), _calib(8)
    kw = dict(target_flops=_one_channel_ratio(model), round_to=1, measure_latency=False)
    comp = prune(model, rewrite="compensate", calib=calib, criterion="l1", **kw)
    assert comp.plan is not None and 5 not in comp.plan.kept[0]
    expected = run(model, test)[0]
    assert rel_diff(expected, run(comp.model, test)[0]) <= 1e-5
    dropped = prune(model, rewrite="drop", calib=calib, criterion="l1", **kw)
    assert rel_diff(expected, run(dropped.model, test)[0]) > 1e-2


def test_refit_reproduces_the_output_when_a_dropped_channel_is_redundant() -> None:
    w1 = RNG.standard_normal((8, 3, 1, 1)).astype(np.float32)
    b1 = RNG.standard_normal(8).astype(np.float32)
    w1[6], b1[6] = w1[2], b1[2]  # channel 6 duplicates channel 2; consumers differ
    model = _model(w1, b1)
    calib, test = _calib(), _calib(8)
    kw = dict(target_flops=_one_channel_ratio(model), round_to=1, measure_latency=False)
    refit = prune(model, rewrite="reconstruct", calib=calib, criterion="similarity", **kw)
    expected = run(model, test)[0]
    assert rel_diff(expected, run(refit.model, test)[0]) <= 1e-2
    dropped = prune(model, rewrite="drop", calib=calib, criterion="similarity", **kw)
    assert rel_diff(expected, run(dropped.model, test)[0]) > 5e-2


def test_bn_reestimation_normalises_on_calibration_data() -> None:
    w1 = RNG.standard_normal((8, 3, 1, 1)).astype(np.float32)
    model = _model(w1, RNG.standard_normal(8).astype(np.float32), bn=True)
    calib = _calib(128)
    result = prune(
        model,
        target_flops=0.875,
        rewrite="compensate",
        calib=calib,
        round_to=1,
        measure_latency=False,
    )
    graph = import_model(result.model)
    (bn,) = [n for n in graph.nodes if n.op_type == "BatchNormalization"]
    out = run(exposed(graph, [bn.outputs[0].name]), calib)[-1]
    gamma, beta = bn.required(1).const, bn.required(2).const
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), np.abs(gamma), rtol=1e-2)


def test_calibrated_rewrites_need_calibration() -> None:
    model = _model(RNG.standard_normal((8, 3, 1, 1)).astype(np.float32), np.zeros(8, np.float32))
    with pytest.raises(UsageError, match="needs calibration data"):
        prune(model, target_flops=0.8, rewrite="reconstruct")


def test_data_free_compensation_uses_bn_statistics() -> None:
    """Channel 5's BN output is the constant beta (gamma ~ 0): without any data, its expected
    contribution relu(beta) goes into the consumer's bias and the output is kept."""
    w1 = RNG.standard_normal((8, 3, 1, 1)).astype(np.float32)
    model = _model(w1, np.zeros(8, np.float32), bn=True)
    inits = {t.name: t for t in model.graph.initializer}
    from onnx import numpy_helper

    gamma = numpy_helper.to_array(inits["g"]).copy()
    beta = numpy_helper.to_array(inits["be"]).copy()
    gamma[5], beta[5] = 1e-4, 1.5
    inits["g"].CopyFrom(numpy_helper.from_array(gamma, "g"))
    inits["be"].CopyFrom(numpy_helper.from_array(beta, "be"))
    test = _calib(8)
    kw = dict(target_flops=_one_channel_ratio(model), round_to=1, measure_latency=False)
    comp = prune(model, rewrite="compensate", criterion="bn", **kw)
    assert comp.plan is not None and 5 not in comp.plan.kept[0]
    expected = run(model, test)[0]
    assert rel_diff(expected, run(comp.model, test)[0]) <= 1e-3
    dropped = prune(model, rewrite="drop", criterion="bn", **kw)
    assert rel_diff(expected, run(dropped.model, test)[0]) > 1e-2


@pytest.mark.parametrize("rewrite", ["reconstruct", "compensate"])
def test_a_parameter_budget_gets_no_new_biases(rewrite: str) -> None:
    """Regression (benchmarks/fuzz.py): repairing a bias-less consumer added a bias, so a
    --target-params run ended a few parameters over its budget."""
    from tests.oracles import count_params

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1] * 4),  # no bias input
    ]
    inits = {
        "w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32),
        "b1": rng.standard_normal(16).astype(np.float32),
        "w2": rng.standard_normal((4, 16, 3, 3)).astype(np.float32),
    }
    model = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])], inits)
    calib = {"x": rng.standard_normal((16, 3, 8, 8)).astype(np.float32)}
    settings = dict(rewrite=rewrite, calib=calib, round_to=1, measure_latency=False)
    by_macs = prune(model, target_flops=0.5, **settings)  # type: ignore[arg-type]
    assert len(by_macs.model.graph.initializer) == 4  # the repair's bias is welcome here
    by_params = prune(model, target_params=0.5, **settings)  # type: ignore[arg-type]
    assert len(by_params.model.graph.initializer) == 3
    assert count_params(by_params.model) / count_params(model) <= 0.5
