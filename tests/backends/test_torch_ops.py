"""ONNX semantics of the torch op table on small graphs, against onnxruntime.

Each case is one op in one opset form (axes as an attribute or an input, legacy 2-D Softmax,
every Resize coordinate mode, negative Slice steps, Pad modes), checked on seeded inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from irprune.errors import UnsupportedOpError
from irprune.frontends.onnx import import_model
from tests.helpers import IR_VERSION, rel_diff, run

torch = pytest.importorskip("torch")

from irprune.backends.torch import from_onnx, outputs_numpy  # noqa: E402 - after the skip

X = np.random.default_rng(0).standard_normal((2, 6, 5, 4)).astype(np.float32)
I64 = TensorProto.INT64


def _model(node: onnx.NodeProto, opset: int, inits: dict[str, np.ndarray], n_out: int = 1):  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        [node],
        "op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X.shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output[:n_out]],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )


def _ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


N = helper.make_node
CASES = {
    "split-attr-11": (N("Split", ["x"], ["a", "b"], axis=1, split=[2, 4]), 11, {}, 2),
    "split-input-13": (N("Split", ["x", "s"], ["a", "b"], axis=1), 13, {"s": _ints(4, 2)}, 2),
    "split-num-18": (N("Split", ["x"], ["a", "b"], axis=2, num_outputs=2), 18, {}, 2),
    "squeeze-attr-11": (N("Squeeze", ["u"], ["y"], axes=[0]), 11, {}, 1),
    "unsqueeze-input-13": (N("Unsqueeze", ["x", "ax"], ["y"]), 13, {"ax": _ints(0, -1)}, 1),
    "reducemean-attr-17": (N("ReduceMean", ["x"], ["y"], axes=[1, 3], keepdims=0), 17, {}, 1),
    "reducemean-input-18": (N("ReduceMean", ["x", "ax"], ["y"]), 18, {"ax": _ints(-1)}, 1),
    "reducesum-noaxes-13": (N("ReduceSum", ["x"], ["y"], keepdims=0), 13, {}, 1),
    "softmax-2d-11": (N("Softmax", ["x"], ["y"], axis=1), 11, {}, 1),
    "softmax-13": (N("Softmax", ["x"], ["y"], axis=1), 13, {}, 1),
    "slice-negative-step": (
        N("Slice", ["x", "st", "en", "ax", "sp"], ["y"]),
        13,
        {"st": _ints(-1, 4), "en": _ints(-100, 0), "ax": _ints(1, 2), "sp": _ints(-2, -3)},
        1,
    ),
    "slice-attr-9": (N("Slice", ["x"], ["y"], starts=[1], ends=[1000], axes=[3]), 9, {}, 1),
    "pad-reflect": (
        N("Pad", ["x", "p"], ["y"], mode="reflect"),
        13,
        {"p": _ints(0, 0, 1, 2, 0, 0, 2, 1)},
        1,
    ),
    "pad-edge-axes-18": (
        N("Pad", ["x", "p", "", "ax"], ["y"], mode="edge"),
        18,
        {"p": _ints(1, 0, 0, 2), "ax": _ints(1, 3)},
        1,
    ),
    "pad-constant-10": (
        N("Pad", ["x"], ["y"], mode="constant", pads=[0, 0, 1, 0, 0, 0, 0, 3], value=1.5),
        10,
        {},
        1,
    ),
    "clip-attr-10": (N("Clip", ["x"], ["y"], min=-0.5, max=0.3), 10, {}, 1),
    "clip-input-13": (N("Clip", ["x", "", "hi"], ["y"]), 13, {"hi": _f(0.2)}, 1),
    "clip-both-13": (N("Clip", ["x", "lo", "hi"], ["y"]), 13, {"lo": _f(-0.1), "hi": _f(0.2)}, 1),
    # lo > hi: every value becomes hi (not the fused hardtanh form)
    "clip-crossed-13": (
        N("Clip", ["x", "lo", "hi"], ["y"]),
        13,
        {"lo": _f(0.3), "hi": _f(-0.2)},
        1,
    ),
    "maxpool-asym-ceil": (
        N(
            "MaxPool",
            ["x"],
            ["y"],
            kernel_shape=[3, 2],
            strides=[2, 2],
            pads=[0, 1, 1, 0],
            ceil_mode=1,
        ),
        13,
        {},
        1,
    ),
    "avgpool-asym-exclude": (
        N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 2, 1]),
        13,
        {},
        1,
    ),
    "avgpool-same-upper": (
        N("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], auto_pad="SAME_UPPER"),
        13,
        {},
        1,
    ),
    "conv-same-lower": (
        N("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 1], group=2),
        13,
        {"w": np.random.default_rng(1).standard_normal((4, 3, 2, 3)).astype(np.float32)},
        1,
    ),
    "convtranspose-pads": (
        N(
            "ConvTranspose",
            ["x", "w"],
            ["y"],
            strides=[2, 3],
            pads=[1, 0, 0, 2],
            output_padding=[1, 0],
        ),
        13,
        {"w": np.random.default_rng(2).standard_normal((6, 2, 3, 3)).astype(np.float32)},
        1,
    ),
    "cumsum-exclusive-reverse": (
        N("CumSum", ["x", "ax"], ["y"], exclusive=1, reverse=1),
        13,
        {"ax": _ints(2)},
        1,
    ),
    "layernorm-axis": (
        N("LayerNormalization", ["x", "g", "b"], ["y"], axis=-2, epsilon=1e-3),
        17,
        {"g": _f(*range(1, 21)).reshape(5, 4), "b": _f(0.5)},
        1,
    ),
    "groupnorm-21": (
        N("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=3),
        21,
        {"g": _f(1, 2, 3, 4, 5, 6), "b": _f(0, 1, 0, 1, 0, 1)},
        1,
    ),
    "gather-negative": (N("Gather", ["x", "i"], ["y"], axis=1), 13, {"i": _ints(-1, 0, 2)}, 1),
    "expand-bidirectional": (N("Expand", ["x", "s"], ["y"]), 13, {"s": _ints(3, 1, 1, 1, 1)}, 1),
    "flatten-negative": (N("Flatten", ["x"], ["y"], axis=-1), 13, {}, 1),
}

RESIZES = [
    ("nearest", "asymmetric", "floor", "scales"),
    ("nearest", "half_pixel", "round_prefer_floor", "sizes"),
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_ceil", "scales"),
    ("nearest", "align_corners", "ceil", "sizes"),
    ("linear", "half_pixel", "", "scales"),
    ("linear", "pytorch_half_pixel", "", "sizes"),
    ("linear", "align_corners", "", "sizes"),
    ("linear", "asymmetric", "", "scales"),
]


def _with_input(case: str):  # type: ignore[no-untyped-def]
    node, opset, inits, n_out = CASES[case]
    model = _model(node, opset, inits, n_out)
    if case.startswith("squeeze"):  # Squeeze needs a size-1 axis: add one in front
        unsq = N("Unsqueeze", ["x"], ["u"], axes=[0])
        model.graph.node.insert(0, unsq)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime(case: str) -> None:
    model = _with_input(case)
    expected = run(model, {"x": X})
    got = outputs_numpy(from_onnx(model), {"x": X})
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert rel_diff(e, g) <= 1e-5


@pytest.mark.parametrize(("mode", "coord", "nearest", "how"), RESIZES)
def test_resize_matches_onnxruntime(mode: str, coord: str, nearest: str, how: str) -> None:
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if nearest:
        attrs["nearest_mode"] = nearest
    if how == "scales":
        inits = {"r": _f(), "s": _f(1, 1, 1.7, 2.5)}
        node = N("Resize", ["x", "r", "s"], ["y"], **attrs)
    else:
        inits = {"r": _f(), "s": _f(), "z": _ints(2, 6, 9, 3)}
        node = N("Resize", ["x", "r", "s", "z"], ["y"], **attrs)
    model = _model(node, 13, inits)
    expected = run(model, {"x": X})[0]
    got = outputs_numpy(from_onnx(model), {"x": X})[0]
    assert got.shape == expected.shape
    assert rel_diff(expected, got) <= 1e-5


def test_op_without_entry_is_named() -> None:
    model = _model(N("Hardmax", ["x"], ["y"]), 13, {})
    with pytest.raises(UnsupportedOpError, match="Hardmax"):
        from_onnx(model)
    custom = _model(N("Fancy", ["x"], ["y"], domain="com.example"), 13, {})
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match=r"com\.example::Fancy"):
        from_onnx(import_model_skeleton(custom))


def test_unsupported_mode_is_named() -> None:
    inits = {"r": _f(), "s": _f(1, 1, 2, 2)}
    model = _model(N("Resize", ["x", "r", "s"], ["y"], mode="cubic"), 13, inits)
    with pytest.raises(UnsupportedOpError, match=r"Resize.*cubic"):
        outputs_numpy(from_onnx(model), {"x": X})


def import_model_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model with an op onnx cannot infer still imports (shapes unknown) and reaches the
    backend, which must name the op."""
    import_model(model)  # the frontend accepts it
    return model


@pytest.mark.parametrize("training", [False, True])
def test_instance_norm_of_a_single_spatial_element(training: bool) -> None:
    """ONNX gives the bias (zero variance); torch's instance_norm would refuse the input."""
    channels = X.shape[1]
    nodes = [
        N("GlobalAveragePool", ["x"], ["g"]),
        N("InstanceNormalization", ["g", "s", "b"], ["y"], epsilon=1e-5),
    ]
    inits = {"s": np.linspace(0.5, 2, channels, dtype=np.float32),
             "b": np.linspace(-1, 1, channels, dtype=np.float32)}  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, X.shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    module = from_onnx(model)
    module.train(training)
    (got,) = outputs_numpy(module, {"x": X})
    (expected,) = run(model, {"x": X})
    assert rel_diff(expected, got) <= 1e-5


@pytest.mark.parametrize(
    "shape",
    [(6, 1, 1), (4,), (1, 1, 4), (1,), (6, 5, 4), (5, 1)],
    ids=["per-channel-nchw", "last-axis", "last-axis-3d", "one-value", "full", "other-axis"],
)
def test_prelu_matches_onnxruntime_for_every_slope_layout(shape: tuple[int, ...]) -> None:
    """PRelu's slope broadcasts from x's trailing dims: one value per channel of axis 1, of the
    last axis, a single value, a full-size slope, one value per row of axis 2."""
    slope = np.random.default_rng(1).uniform(0.05, 0.5, size=shape).astype(np.float32)
    model = _model(N("PRelu", ["x", "s"], ["y"]), 16, {"s": slope})
    got = outputs_numpy(from_onnx(model), {"x": X})[0]
    assert rel_diff(got, run(model, {"x": X})[0]) < 1e-6
