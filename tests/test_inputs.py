"""Inputs given whole (a scalar ``sr`` that picks an If branch, a state whose axis 0 the model
fixes): calibration data holds them once, the same for every batch; without data an integer
scalar is refused, not guessed; a model whose compute is all inside If branches says so."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from irprune import inputs
from irprune.api import prune
from irprune.emit.verify import session
from irprune.errors import CalibrationError, TargetError
from irprune.frontends.onnx import import_model
from irprune.passes.calibration import batches
from irprune.shapes import declared_inputs, resolve
from tests.oracles import count_macs

RATE = 16000


def _branch(name: str, scale: float, source: str) -> onnx.GraphProto:
    """``z = source * scale``, ``source`` read from the enclosing graph."""
    k = helper.make_node(
        "Constant", [], [f"{name}_k"], value=numpy_helper.from_array(np.float32(scale))
    )
    mul = helper.make_node("Mul", [source, f"{name}_k"], [f"{name}_z"])
    out = helper.make_tensor_value_info(f"{name}_z", TensorProto.FLOAT, None)
    return helper.make_graph([k, mul], name, [], [out])


def _rate_model(conv_in_main: bool = True) -> onnx.ModelProto:
    """``x [N, 3, 8, 8]``, ``sr`` an int64 scalar: two Convs in the main graph (the first one's
    channels prunable), then ``If(sr == 16000)`` scaling by 1 or 2 (silero-vad's shape of
    graph). Without ``conv_in_main`` the branches read ``x`` itself and the main graph has no
    MACs (the compute is a Conv inside each branch)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(RATE, dtype=np.int64), "rate"),
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is16k"])]
    if conv_in_main:
        nodes += [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        ]
        then, other = _branch("then", 1.0, "c2"), _branch("else", 2.0, "c2")
    else:
        then, other = _branch("then", 1.0, "x"), _branch("else", 2.0, "x")
        for g in (then, other):
            weight = rng.standard_normal((8, 3, 1, 1)).astype(np.float32)
            g.node.insert(0, helper.make_node(
                "Constant", [], [f"{g.name}_w"], value=numpy_helper.from_array(weight)
            ))  # fmt: skip
            g.node.append(helper.make_node("Conv", [g.node[-1].output[0], f"{g.name}_w"], ["o"]))
            g.node[-1].output[0] = f"{g.name}_o"
            g.ClearField("output")
            g.output.append(helper.make_tensor_value_info(f"{g.name}_o", TensorProto.FLOAT, None))
    nodes.append(helper.make_node("If", ["is16k"], ["y"], then_branch=then, else_branch=other))
    graph = helper.make_graph(
        nodes,
        "rate",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _calib(n: int = 16, rate: int = RATE) -> dict[str, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32)
    return {"x": x, "sr": np.array(rate, dtype=np.int64)}


def test_scalar_is_given_whole_in_calibration_data() -> None:
    graph = import_model(_rate_model())
    inputs.check_inputs(_calib(), graph, "calib")  # no batch asked of the scalar
    with pytest.raises(CalibrationError, match="'sr' is int32"):
        inputs.check_inputs({**_calib(), "sr": np.array(RATE, np.int32)}, graph, "calib")
    with pytest.raises(CalibrationError, match=r"'sr' has shape \(16,\)"):  # per-sample: no
        inputs.check_inputs({**_calib(), "sr": np.full(16, RATE, np.int64)}, graph, "calib")


def test_state_with_fixed_axis_0_is_given_whole() -> None:
    """``state: [2, N, 128]`` has no batch on axis 0: its axis 0 is checked as a fixed dim,
    not as the batch; a batch mismatch names every array's axis 0."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "N", 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "state"], ["y"])], "g", [x, state], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = import_model(model)
    arrays = {"x": np.zeros((5, 4), np.float32), "state": np.zeros((2, 5, 4), np.float32)}
    inputs.check_inputs(arrays, graph, "calib")
    with pytest.raises(CalibrationError, match="axis 0: 'x' 5, 'state' 3"):
        inputs.check_inputs({**arrays, "state": np.zeros((3, 5, 4), np.float32)}, graph, "c")
    assert inputs.whole_inputs(arrays, graph) == {"state"}
    assert inputs.batch_size(arrays, graph) == 5


def test_fixed_batch_of_two_is_still_a_batch() -> None:
    """A model that fixes its batch at 2 on every input: its arrays are the batch (chunked by
    ``run_batched``), not inputs given whole."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = import_model(model)
    for n in (2, 8):
        arrays = {"x": np.zeros((n, 4), np.float32)}
        inputs.check_inputs(arrays, graph, "calib")
        assert inputs.whole_inputs(arrays, graph) == set()


def test_batch_mismatch_names_each_axis_0() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "z"], ["y"])], "g", [x, z], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    arrays = {"x": np.zeros((5, 4), np.float32), "z": np.zeros((6, 4), np.float32)}
    with pytest.raises(CalibrationError, match="axis 0: 'x' 5, 'z' 6"):
        inputs.check_inputs(arrays, import_model(model), "calib")


def test_only_whole_inputs_is_refused() -> None:
    graph = import_model(_rate_model())
    with pytest.raises(CalibrationError, match=r"arrays .* do not match"):
        inputs.check_inputs({"sr": np.array(RATE)}, graph, "calib")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    scalar = helper.make_model(
        helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(CalibrationError, match="only scalars given"):
        inputs.check_inputs({"x": np.float32(1)}, import_model(scalar), "calib")


def test_calibration_batches_keep_whole_inputs_whole() -> None:
    feeds = {**_calib(40), "state": np.ones((2, 3), np.float32)}
    chunks = list(batches(feeds, 16))
    assert [len(c["x"]) for c in chunks] == [16, 16, 8]
    assert all(c["sr"].shape == () and c["state"].shape == (2, 3) for c in chunks)


def test_training_data_counts_the_batch_not_a_scalar() -> None:
    graph = import_model(_rate_model())
    arrays, labels = inputs.training_data(graph, {**_calib(6), "labels": np.arange(6)})
    assert labels is not None and len(labels) == 6 and arrays["sr"].shape == ()
    with pytest.raises(CalibrationError, match="must be 6 integer class labels"):
        inputs.training_data(graph, {**_calib(6), "labels": np.arange(5)})


def test_random_feeds_refuse_an_integer_scalar() -> None:
    """Without data the reference run would feed ``sr`` a random 0..7: the model's other
    branch at best, an onnxruntime error at worst (silero-vad). It names the input instead."""
    model = _rate_model()
    shapes = resolve(declared_inputs(model))
    with pytest.raises(CalibrationError, match=r"'sr' \(int64\).*--calib"):
        inputs.run_feeds(session(model), None, 0, shapes)
    given = _calib(4)
    assert inputs.run_feeds(session(model), given, 0, shapes) is given


def test_prune_takes_the_rate_from_calibration_data(tmp_path) -> None:
    """The main graph's Convs are pruned; the reference, the repair and verification run with
    the given ``sr`` (16 kHz branch), and the written model still serves both branches."""
    model = _rate_model()
    result = prune(model, target_flops=0.75, calib=_calib(), measure_latency=False)
    ratio = count_macs(result.model) / count_macs(model)
    assert 0.73 <= ratio <= 0.75
    onnx.checker.check_model(result.model, full_check=True)
    out = tmp_path / "pruned.onnx"
    result.save(out)
    sess = session(onnx.load(str(out)))
    x = _calib(2)["x"]
    fast = sess.run(None, {"x": x, "sr": np.array(RATE)})[0]
    slow = sess.run(None, {"x": x, "sr": np.array(8000)})[0]
    np.testing.assert_allclose(slow, 2 * fast, rtol=1e-5)  # the If still picks by sr
    assert result.report["fidelity"]["cosine"] > 0.9


def test_prune_data_free_asks_for_the_scalar() -> None:
    with pytest.raises(CalibrationError, match="'sr'"):
        prune(_rate_model(), target_flops=0.7, measure_latency=False)


def test_compute_only_in_if_branches_is_reported_not_pruned() -> None:
    model = _rate_model(conv_in_main=False)
    with pytest.raises(TargetError, match=r"nothing to prune: .*If.* \(2 Conv\)"):
        prune(model, target_flops=0.7, calib=_calib(), measure_latency=False)
