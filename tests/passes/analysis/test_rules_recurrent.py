"""Recurrent nodes (LSTM, GRU, RNN): the features feeding them prune with W's input axis, the
hidden size is a group of its own (zero initial states dropped first); their MACs are counted
like the independent oracle counts them; the calibrated refit re-solves their input projection."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from irprune.api import prune
from irprune.emit import to_model, verify
from irprune.frontends.onnx import import_model
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.fold import fold_constants
from irprune.passes.rewrite.drop import drop
from irprune.passes.rewrite.refit import refit
from tests.helpers import make_model, node_weight, rel_diff, run
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


# --- the hidden size as a group ------------------------------------------------------------------
def _zero_state(name: str, d: int, x: str) -> list[onnx.NodeProto]:
    """``ConstantOfShape(Concat([d], Shape(x)[1:2], [H]))``: a zero state of the run-time batch,
    as torch's exporter writes ``h0 = torch.zeros(d, x.size(1), H)``."""
    return [
        helper.make_node("Shape", [x], [f"{name}_s"], start=1, end=2),
        helper.make_node("Concat", ["d_vec", f"{name}_s", "h_vec"], [f"{name}_shape"], axis=0),
        helper.make_node("ConstantOfShape", [f"{name}_shape"], [name]),
    ]


def _crnn_head(op: str, states: str = "zeros") -> onnx.ModelProto:
    """ddddocr's head: features [T, N, 8] -> bidirectional recurrent node with zero initial
    states of the run-time batch -> Y [T, 2, N, H] -> Transpose [T, N, 2, H] -> Reshape
    [T, N, 2H] -> Reshape to [T * N, 2H] computed at run time (Shape, Gather, Mul) -> Gemm."""
    g, hidden_inputs = GATES[op], ["", ""]
    nodes = [helper.make_node("MatMul", ["x", "wm"], ["f"])]
    if states == "zeros":
        nodes += _zero_state("h0", 2, "f") + (_zero_state("c0", 2, "f") if op == "LSTM" else [])
        hidden_inputs = ["h0", "c0" if op == "LSTM" else ""]
    elif states == "input":
        hidden_inputs = ["h0", ""]
    ins = ["f", "W", "R", "B", "", *hidden_inputs]
    while ins[-1] == "":
        ins.pop()
    nodes += [
        helper.make_node(op, ins, ["y"], "rnn", hidden_size=H, direction="bidirectional"),
        helper.make_node("Transpose", ["y"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "merge"], ["m"]),
        helper.make_node("Shape", ["m"], ["ms"]),
        helper.make_node("Gather", ["ms", "i0"], ["t_len"], axis=0),
        helper.make_node("Gather", ["ms", "i1"], ["n"], axis=0),
        helper.make_node("Gather", ["ms", "i2"], ["c"], axis=0),
        helper.make_node("Mul", ["t_len", "n"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "zero"], ["rows_v"]),
        helper.make_node("Unsqueeze", ["c", "zero"], ["c_v"]),
        helper.make_node("Concat", ["rows_v", "c_v"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["m", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["out"], "head", transB=1),
    ]
    inits = {
        "wm": w(12, 8),
        "W": w(2, g * H, 8),
        "R": w(2, g * H, H),
        "B": w(2, 2 * g * H),
        "merge": np.array([0, 0, -1], np.int64),
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
        "i2": np.array(2, np.int64),
        "zero": np.array([0], np.int64),
        "wg": w(7, 2 * H),
        "bg": w(7),
        "d_vec": np.array([2], np.int64),
        "h_vec": np.array([H], np.int64),
    }
    inputs = [("x", [6, "N", 12])] + ([("h0", [2, "N", H])] if states == "input" else [])
    return make_model(nodes, inputs, [("out", ["M", 7])], inits)


def _masked_units(model: onnx.ModelProto, removed: np.ndarray) -> onnx.ModelProto:
    """The original with hidden units ``removed`` zeroed in every gate row of W, R and B (both
    directions): such a unit starts at 0 and stays 0 (LSTM: i = f = o = 1/2 and a candidate of
    tanh(0) = 0 keep c = 0, so h = 0; GRU: h = z h_prev = 0; RNN: tanh(0) = 0), which is what
    removing it leaves the other units. Written from the operators' definition, not the pruner."""
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    for init in masked.graph.initializer:
        if init.name not in ("W", "R", "B"):
            continue
        array = numpy_helper.to_array(init).copy()
        blocks = array.shape[1] // H  # gates (W, R) or 2 * gates (B)
        for k in removed:
            array[:, [b * H + k for b in range(blocks)]] = 0
        init.CopyFrom(numpy_helper.from_array(array, init.name))
    return masked


@pytest.mark.parametrize("op", list(GATES))
def test_the_hidden_size_prunes_with_zero_initial_states(op: str) -> None:
    model = _crnn_head(op)
    graph = import_model(model, {"x": (6, 2, 12)})
    fold_constants(graph)
    (rnn,) = [n for n in graph.nodes if n.op_type == op]
    assert all(rnn.input(i) is None for i in (5, 6)), "zero states are dropped as the default"
    assert not [n for n in graph.nodes if n.op_type == "ConstantOfShape"]
    analysis = analyze(graph)
    hidden = [g for g in analysis.prunable if g.size == H]
    assert len(hidden) == 1
    assert {(s.weight, s.axis) for s in hidden[0].sources} == {("W", 1), ("R", 1)}
    kept = np.array([0, 2, 3])
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    widths[hidden[0].id] = len(kept)
    drop(graph, analysis, Plan(widths, {hidden[0].id: kept}, 0.0))
    graph.verify()
    pruned = to_model(graph)
    feeds = {"x": RNG.standard_normal((6, 2, 12)).astype(np.float32)}
    verify(pruned, feeds)
    (attr,) = [
        a
        for n in pruned.graph.node
        if n.op_type == op
        for a in n.attribute
        if a.name == "hidden_size"
    ]
    assert attr.i == len(kept)
    assert node_weight(pruned, "rnn", 2).shape == (2, GATES[op] * len(kept), len(kept))
    removed = np.setdiff1d(np.arange(H), kept)
    expected = run(_masked_units(model, removed), feeds)[0]
    assert rel_diff(run(pruned, feeds)[0], expected) <= 1e-5
    assert rel_diff(run(model, feeds)[0], expected) > 1e-3  # the removed units mattered
    other = {"x": RNG.standard_normal((6, 5, 12)).astype(np.float32)}  # another batch
    assert rel_diff(run(pruned, other)[0], run(_masked_units(model, removed), other)[0]) <= 1e-5


def test_an_initial_state_fed_by_the_user_freezes_the_hidden_size() -> None:
    graph = import_model(_crnn_head("GRU", states="input"), {"x": (6, 2, 12), "h0": (2, 2, H)})
    fold_constants(graph)
    analysis = analyze(graph)
    assert not [g for g in analysis.prunable if g.size == H]
    (hidden,) = [g for g in analysis.groups if g.size == H]
    assert any("'h0' (a graph input)" in r for r in hidden.frozen), hidden.frozen


def test_a_nonzero_initial_state_is_kept_and_freezes_the_hidden_size() -> None:
    model = _crnn_head("RNN")
    (fill,) = [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    fill.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.ones(1, "f"))))
    graph = import_model(model, {"x": (6, 2, 12)})
    fold_constants(graph)
    (rnn,) = [n for n in graph.nodes if n.op_type == "RNN"]
    assert rnn.input(5) is not None
    assert not [g for g in analyze(graph).prunable if g.size == H]


@pytest.mark.parametrize("op", list(GATES))
def test_pruned_recurrent_macs_match_the_oracle(op: str) -> None:
    """The cost model at the pruned widths and the oracle on the written model agree (the
    recurrent term is quadratic in the hidden size)."""
    model, shapes = _crnn_head(op), {"x": (6, 1, 12)}
    graph = import_model(model, shapes)
    fold_constants(graph)
    analysis = analyze(graph)
    (hidden,) = [g for g in analysis.prunable if g.size == H]
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    widths[hidden.id] = 2
    cost = build_cost_model(graph, analysis)
    predicted = cost.macs_at(widths)
    drop(graph, analysis, Plan(widths, {hidden.id: np.array([1, 4])}, 0.0))
    assert predicted == count_macs(to_model(graph), shapes) < count_macs(model, shapes)


def test_refit_targets_the_gate_rows_of_the_kept_hidden_units() -> None:
    """Features and hidden units pruned together: feature 7 is 0.01 x feature 0, so refitting
    the kept units' gate rows from the pruned input is exact; W' must be those rows (units 0,
    1, 3, 4 of each gate) with feature 7's weights folded into feature 0's."""
    wm = w(12, 8)
    wm[:, 7] = 0.01 * wm[:, 0]
    nodes = [
        helper.make_node("MatMul", ["x", "wm"], ["f"]),
        helper.make_node("Transpose", ["f"], ["t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["t", "W", "R", "B"], ["y"], "rnn", hidden_size=H),
        helper.make_node("Squeeze", ["y", "one"], ["s"]),
        helper.make_node("MatMul", ["s", "wo"], ["out"]),
    ]
    inits = {
        "wm": wm,
        "W": w(1, 4 * H, 8),
        "R": w(1, 4 * H, H),
        "B": w(1, 8 * H),
        "one": np.array([1], np.int64),
        "wo": w(H, 3),
    }
    model = make_model(nodes, [("x", ["N", 6, 12])], [("out", [6, "N", 3])], inits)
    graph, original = (import_model(model, {"x": (4, 6, 12)}) for _ in range(2))
    analysis = analyze(graph)
    features = next(g for g in analysis.prunable if g.size == 8)
    hidden = next(g for g in analysis.prunable if g.size == H and g.id != features.id)
    units = np.array([0, 1, 3, 4])
    widths = np.array([g.size for g in analysis.groups], dtype=float)
    widths[features.id], widths[hidden.id] = 7, len(units)
    plan = Plan(widths, {features.id: np.arange(7), hidden.id: units}, 0.0)
    drop(graph, analysis, plan)
    calib = {"x": RNG.standard_normal((64, 6, 12)).astype(np.float32)}
    assert refit(graph, original, calib, analysis, plan) >= 1
    rows = np.concatenate([gate * H + units for gate in range(4)])
    want = inits["W"][:, rows, :7].copy()
    want[:, :, 0] += 0.01 * inits["W"][:, rows, 7]
    got = next(v.const for v in graph.values.values() if v.name.startswith("W") and v.is_const)
    assert got.shape == want.shape
    assert rel_diff(got, want) < 1e-3
