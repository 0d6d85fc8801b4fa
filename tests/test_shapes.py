"""The deployment shape (irprune/shapes.py): given shapes, calibration shapes, the batch rule,
shared symbolic names, and errors that name the dims."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from irprune.shapes import InputShapeError, declared_inputs, parse_input_shape, resolve
from tests.helpers import IR_VERSION


def test_given_shape_is_taken_as_given() -> None:
    shapes = resolve({"x": ("N", 3, "H", "W")}, given={"x": (1, 3, 48, 320)})
    assert shapes.sample == {"x": (1, 3, 48, 320)}
    assert shapes.batch_axes == {"x": (0,)} and shapes.symbolic_axes == {"x": (2, 3)}
    assert shapes.source == {"x": "given"}


def test_calibration_shapes_count_without_their_batch() -> None:
    shapes = resolve({"x": ("N", 3, "H", "W")}, calibration={"x": (32, 3, 64, 96)})
    assert shapes.sample == {"x": (1, 3, 64, 96)} and shapes.source == {"x": "calibration"}


def test_a_fixed_batch_stays_fixed_with_calibration_data() -> None:
    shapes = resolve({"x": (1, 3, "H", "W")}, calibration={"x": (1, 3, 64, 96)})
    assert shapes.sample == {"x": (1, 3, 64, 96)} and shapes.batch_axes == {"x": ()}


def test_only_the_batch_symbolic_counts_one() -> None:
    shapes = resolve({"x": ("batch", 3, 224, 224)})
    assert shapes.sample == {"x": (1, 3, 224, 224)} and shapes.source == {"x": "batch"}


def test_a_name_binds_every_input_that_uses_it() -> None:
    """silero-vad: input [batch, sequence], state [2, batch, 128]; the batch name in the state
    is a batch axis too, and a given sequence length binds wherever 'sequence' appears."""
    declared = {"input": ("batch", "sequence"), "state": (2, "batch", 128), "sr": ()}
    shapes = resolve(declared, given={"input": (1, 512)})
    assert shapes.sample == {"input": (1, 512), "state": (2, 1, 128), "sr": ()}
    assert shapes.batch_axes["state"] == (1,)
    assert shapes.feed_shapes(4) == {"input": (4, 512), "state": (2, 4, 128), "sr": ()}
    tokens = resolve({"ids": ("B", "T"), "mask": ("B", "T")}, given={"ids": (1, 8)})
    assert tokens.sample == {"ids": (1, 8), "mask": (1, 8)}


def test_symbolic_non_batch_dims_without_a_shape_are_an_error_naming_them() -> None:
    with pytest.raises(InputShapeError) as err:
        resolve({"x": ("p2o.DynamicDimension.0", 3, None, "p2o.DynamicDimension.1")})
    text = str(err.value)
    assert "'x' dim 2" in text and "'x' dim 3 ('p2o.DynamicDimension.1')" in text
    assert "--input-shape x:1,3,?,?" in text and "input_shapes=" in text
    assert InputShapeError.exit_code == 2


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"y": (1, 3, 8, 8)}, "not inputs of the model"),
        ({"x": (1, 3, 8)}, "3 dims given"),
        ({"x": (1, 4, 8, 8)}, "dim 1 is 3 in the model, 4 given"),
    ],
)
def test_given_shapes_that_contradict_the_model_are_refused(given: dict, says: str) -> None:
    with pytest.raises(InputShapeError, match=says):
        resolve({"x": ("N", 3, "H", "W")}, given=given)


def test_one_name_two_sizes_is_refused() -> None:
    with pytest.raises(InputShapeError, match="'T' is 8 in one input and 9"):
        resolve({"a": (1, "T"), "b": (1, "T")}, given={"a": (1, 8), "b": (1, 9)})


def test_second_shape_grows_every_symbolic_dim_keeping_its_strides() -> None:
    shapes = resolve({"x": ("N", 3, "H", "W"), "m": ("N", "W")}, given={"x": (1, 3, 48, 320)})
    assert shapes.second() == {"x": (2, 3, 64, 384), "m": (2, 384)}
    assert resolve({"x": (1, 3, 224, 224)}).second() is None
    assert resolve({"x": ("N", 10)}).second() == {"x": (2, 10)}


def test_declared_inputs_read_anonymous_and_negative_dims_as_unknown() -> None:
    """paddle2onnx writes ``[-1, 3, '?', '?']``: -1 and '?' name no size, so H and W are not
    forced equal, and both must be given."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    x.type.tensor_type.shape.dim[0].Clear()
    x.type.tensor_type.shape.dim[0].dim_value = -1
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([], "g", [x, w], [], [helper.make_tensor("w", 1, [2, 3], [0.0] * 6)])
    model = helper.make_model(graph, ir_version=IR_VERSION)
    assert declared_inputs(model) == {"x": (None, 3, None, None)}
    shapes = resolve(declared_inputs(model), given={"x": (1, 3, 48, 192)})
    assert shapes.sample == {"x": (1, 3, 48, 192)} and shapes.second() == {"x": (2, 3, 64, 256)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("x:1,3,48,320", ("x", (1, 3, 48, 320))), ("a:b:1x8", ("a:b", (1, 8))), ("sr:", ("sr", ()))],
)
def test_parse_input_shape(text: str, expected: tuple) -> None:
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", ":1,2", "x:1,a", "x:0,3"])
def test_parse_input_shape_refuses_malformed(text: str) -> None:
    with pytest.raises(Exception, match="--input-shape"):
        parse_input_shape(text)
