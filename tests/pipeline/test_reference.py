"""The reference run's second shape keeps the scalar inputs the user gave."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from irprune.emit.verify import session
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
