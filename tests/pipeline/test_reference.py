"""The reference run's second shape: it keeps the scalar inputs the user gave, and a reference
run that already differs from the deployment shape is the second shape."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from irprune.emit.verify import session, verify
from irprune.errors import VerificationError
from irprune.pipeline.reference import second_shape
from irprune.shapes import declared_inputs, resolve


def test_the_second_shape_keeps_a_given_scalar_rate() -> None:
    """``y = x * (sr == 16000)`` with symbolic H and W: random values for ``sr`` at the second
    shape would run another branch of the model; the given rate is kept there."""
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("Cast", ["is16k"], ["k"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "k"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor(name="rate", data_type=TensorProto.INT64, dims=[], vals=[16000])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shapes = resolve(declared_inputs(model), {"x": (1, 3, 8, 8)})
    sess = session(model.SerializeToString())
    given = {"x": np.ones((1, 3, 8, 8), np.float32), "sr": np.array(16000, np.int64)}
    second = second_shape(sess, shapes, 0, given)
    assert second is not None
    assert int(second.feeds["sr"]) == 16000
    assert second.feeds["x"].shape != (1, 3, 8, 8)  # a dim grown
    assert np.array_equal(
        sess.run(None, dict(second.feeds))[0], second.feeds["x"]
    )  # the 16 kHz path: y = x


def _batch_model(reshape_to: list[int] | None = None) -> onnx.ModelProto:
    """``y = relu(x)`` on ``x: [N, 3, 4, 4]``, then a Reshape to ``[N, 48]`` (or a target that
    bakes in a batch)."""
    target = reshape_to if reshape_to is not None else [0, -1]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "t"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor("t", TensorProto.INT64, [2], target)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_reference_run_off_the_deployment_batch_is_the_second_shape() -> None:
    """Only the batch is symbolic and the reference run has 4 samples (deployment: 1): that run
    already differs from the deployment shape where the second shape would, so it is used as
    the second shape (no further run), with the original's output shapes there."""
    model = _batch_model()
    shapes = resolve(declared_inputs(model), None)
    sess = session(model.SerializeToString())
    feeds = {"x": np.ones((4, 3, 4, 4), np.float32)}
    outputs = sess.run(None, feeds)
    second = second_shape(sess, shapes, 0, feeds, outputs)
    assert second is not None and second.ran_as(dict(feeds))
    assert second.output_shapes == ((4, 48),)
    # at the deployment batch the run is no second shape: one is made at batch 2
    one = {"x": np.ones((1, 3, 4, 4), np.float32)}
    again = second_shape(sess, shapes, 0, one, sess.run(None, one))
    assert again is not None and not again.ran_as(one)
    assert again.feeds["x"].shape == (2, 3, 4, 4) and again.output_shapes == ((2, 48),)


def test_a_baked_batch_fails_verification_at_the_main_run_as_second_shape() -> None:
    """The reused run still checks: a rewritten model whose Reshape bakes in batch 1 (``[1, -1]``)
    gives ``[1, 192]`` at 4 samples where the original gives ``[4, 48]``."""
    original = _batch_model()
    shapes = resolve(declared_inputs(original), None)
    sess = session(original.SerializeToString())
    feeds = {"x": np.ones((4, 3, 4, 4), np.float32)}
    second = second_shape(sess, shapes, 0, feeds, sess.run(None, feeds))
    assert second is not None
    verify(original, feeds, second=second)
    with pytest.raises(VerificationError, match="the original's"):
        verify(_batch_model([1, -1]), feeds, second=second)
