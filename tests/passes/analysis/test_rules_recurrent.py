"""Recurrent nodes (LSTM, GRU, RNN): the features feeding them prune with W's input axis, the
hidden size stays; their MACs are counted like the independent oracle counts them; the
calibrated refit re-solves their input projection."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.api import prune
from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from tests.helpers import make_model, rel_diff, run
from tests.oracles import count_macs
from tests.passes.analysis.test_rules import drop_half_and_check

RNG = np.random.default_rng(5)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
H = 5


def w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _crnn(op: str, direction: str = "bidirectional") -> onnx.ModelProto:
    """The CRNN idiom (ddddocr, PP-OCR rec): Conv [N, 6, 4, W] -> Transpose [W, N, 6, 4] ->
    Reshape [W, N, 24] -> recurrent node over W -> its Y."""
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[3, 0, 1, 2]),
        helper.make_node("Reshape", ["t", "shape"], ["s"]),
        helper.make_node(
            op, ["s", "W", "R", "B"], ["y"], "rnn", hidden_size=H, direction=direction
        ),
    ]
    inits = {
        "wc": w(6, 3, 3, 3),
        "bc": w(6),
        "shape": np.array([0, 0, -1], np.int64),
        "W": w(d, g * H, 24),
        "R": w(d, g * H, H),
        "B": w(d, 2 * g * H),
    }
    return make_model(nodes, [("x", ["N", 3, 4, 10])], [("y", [10, d, "N", H])], inits)


@pytest.mark.parametrize("op", list(GATES))
def test_features_feeding_a_recurrent_node_prune_exactly(op: str) -> None:
    analysis = drop_half_and_check(_crnn(op))
    (group,) = analysis.prunable
    assert group.size == 6  # the conv's channels, through Transpose and Reshape into W


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("op", list(GATES))
def test_recurrent_macs_match_the_oracle(op: str, direction: str) -> None:
    model = _crnn(op, direction)
    graph = import_model(model, {"x": (1, 3, 4, 10)})
    cost = build_cost_model(graph, analyze(graph))
    assert cost.macs_at(cost.base_widths) == count_macs(model, {"x": (1, 3, 4, 10)})


def test_a_recurrent_node_with_channels_on_its_time_axis_is_refused() -> None:
    model = _crnn("LSTM")
    model.graph.node[2].attribute[0].ints[:] = [1, 3, 0, 2]  # [6, W, N, 4]: channels as time
    model.graph.initializer[2].CopyFrom(onnx.numpy_helper.from_array(np.array([0, 0, -1]), "shape"))
    model.graph.node[4].input[1] = "W2"
    model.graph.initializer.append(onnx.numpy_helper.from_array(w(2, 4 * H, 40), "W2"))
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 6
    graph = import_model(model, {"x": (1, 3, 4, 10)})
    analysis = analyze(graph)
    assert not analysis.prunable
    assert any("time or batch axis" in r for g in analysis.groups for r in g.frozen)


def test_refit_recovers_a_dropped_feature_that_the_kept_ones_carry() -> None:
    """Feature 7 is 0.01 x feature 0: the smallest, so it goes, and refitting W and Wb from the
    pruned input reproduces the original's gate inputs, hence its output, exactly."""
    wm = w(12, 8)
    wm[:, 7] = 0.01 * wm[:, 0]
    nodes = [
        helper.make_node("MatMul", ["x", "wm"], ["f"]),
        helper.make_node("Transpose", ["f"], ["t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["t", "W", "R", "B"], ["y"], "rnn", hidden_size=H),
    ]
    inits = {"wm": wm, "W": w(1, 4 * H, 8), "R": w(1, 4 * H, H), "B": w(1, 8 * H)}
    model = make_model(nodes, [("x", ["N", 6, 12])], [("y", [6, 1, "N", H])], inits)
    calib = {"x": RNG.standard_normal((64, 6, 12)).astype(np.float32)}
    feeds = {"x": RNG.standard_normal((3, 6, 12)).astype(np.float32)}
    kwargs = dict(target_flops=0.92, criterion="l1", calib=calib, round_to=1)
    dropped = prune(model, rewrite="drop", measure_latency=False, **kwargs)  # type: ignore[arg-type]
    refit = prune(model, rewrite="reconstruct", measure_latency=False, **kwargs)  # type: ignore[arg-type]
    widths = [t.dims for t in refit.model.graph.initializer if t.name.startswith("W")]
    assert [list(d) for d in widths] == [[1, 4 * H, 7]]
    assert rel_diff(run(dropped.model, feeds)[0], run(model, feeds)[0]) > 1e-3
    assert rel_diff(run(refit.model, feeds)[0], run(model, feeds)[0]) < 1e-4
