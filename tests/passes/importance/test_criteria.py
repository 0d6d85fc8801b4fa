"""Each criterion on a graph where the right answer is known."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.importance import CRITERIA, DATA_DRIVEN, score
from tests.helpers import make_model

RNG = np.random.default_rng(0)


def _conv_model(w1: np.ndarray, bn_gamma: np.ndarray | None = None) -> onnx.ModelProto:
    c = w1.shape[0]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], "c1")]
    inits: dict[str, np.ndarray] = {
        "w1": w1,
        "w2": RNG.standard_normal((2, c, 1, 1)).astype(np.float32),
    }
    src = "a"
    if bn_gamma is not None:
        nodes.append(helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["n"]))
        inits |= {
            "g": bn_gamma.astype(np.float32),
            "b": np.zeros(c, np.float32),
            "m": np.zeros(c, np.float32),
            "v": np.ones(c, np.float32),
        }
        src = "n"
    nodes += [
        helper.make_node("Relu", [src], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["out"], "c2"),
    ]
    return make_model(nodes, [("x", ["N", 3, 4, 4])], [("out", ["N", 2, 4, 4])], inits)


def _scores(model: onnx.ModelProto, criterion: str) -> np.ndarray:
    graph = import_model(model)
    analysis = analyze(graph)
    (group,) = [g for g in analysis.prunable if g.sources[0].node == "c1"]
    return np.asarray(score(graph, analysis, criterion).by_group[group.id])


def test_fpgm_removes_the_filter_nearest_the_median() -> None:
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 3
    w[5] = np.median(w[np.arange(8) != 5], axis=0)  # the geometric-median-like filter
    s = _scores(_conv_model(w), "fpgm")
    assert s.argmin() == 5


def test_similarity_removes_one_of_a_near_duplicate_pair() -> None:
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w[6] = w[2] * 0.99 + 0.001  # near-duplicate of 2, slightly smaller
    s = _scores(_conv_model(w), "similarity")
    assert s.argmin() in (2, 6)
    assert np.sort(s)[1] > s.min() * 5, "both members of the pair were ranked last"


def test_bn_scale_criterion_uses_gamma_and_falls_back_on_folded() -> None:
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    gamma = np.linspace(1.0, 2.0, 8)
    gamma[3] = 0.01
    assert _scores(_conv_model(w, gamma), "bn").argmin() == 3
    w_small = w.copy()
    w_small[4] *= 0.01  # no BN: falls back to the L1 filter norm
    assert _scores(_conv_model(w_small), "bn").argmin() == 4


@pytest.mark.parametrize("criterion", [c for c in CRITERIA if c not in DATA_DRIVEN])
def test_every_criterion_scores_every_channel(criterion: str) -> None:
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    s = _scores(_conv_model(w, np.linspace(0.5, 1.5, 8)), criterion)
    assert s.shape == (8,) and np.all(np.isfinite(s))


def _relu_dead_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Channel 5 of c1 is always zero after ReLU (a large negative bias); channel 1 is tiny."""
    w = RNG.standard_normal((8, 3, 1, 1)).astype(np.float32)
    b = np.zeros(8, np.float32)
    b[5] = -100.0
    w[1] *= 0.05
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["a"], "c1"),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["out"], "c2"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        {"w1": w, "b1": b, "w2": RNG.standard_normal((2, 8, 1, 1)).astype(np.float32)},
    )
    calib = {"x": RNG.standard_normal((16, 3, 4, 4)).astype(np.float32)}
    return model, calib


def _scores_with(model: onnx.ModelProto, criterion: str, calib: dict) -> np.ndarray:
    graph = import_model(model)
    analysis = analyze(graph)
    (group,) = [g for g in analysis.prunable if g.sources[0].node == "c1"]
    return np.asarray(score(graph, analysis, criterion, calib=calib).by_group[group.id])


def test_apoz_removes_the_channel_that_is_always_zero_after_relu() -> None:
    model, calib = _relu_dead_model()
    s = _scores_with(model, "apoz", calib)
    assert s.argmin() == 5 and s[5] == 0.0
    # l1 would have picked the tiny-weight channel, not the dead one
    assert _scores_with(model, "l1", calib).argmin() == 1


def test_mean_activation_ranks_dead_then_tiny() -> None:
    model, calib = _relu_dead_model()
    order = np.argsort(_scores_with(model, "activation", calib))
    assert list(order[:2]) == [5, 1]


def test_data_criteria_need_calibration() -> None:
    from irprune.errors import UsageError

    model, _ = _relu_dead_model()
    with pytest.raises(UsageError, match="needs calibration data"):
        _scores_with(model, "apoz", None)  # type: ignore[arg-type]
