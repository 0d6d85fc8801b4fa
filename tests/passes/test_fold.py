"""Constant folding before analysis."""

from __future__ import annotations

import numpy as np
from onnx import helper

from irprune.api import prune
from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.fold import fold_constants
from tests.helpers import make_model

RNG = np.random.default_rng(0)


def test_identity_of_a_shared_bias_folds_and_the_group_prunes() -> None:
    """Two BN biases deduplicated by the exporter into one initializer + Identity."""
    c = 8
    bn = {
        "g": RNG.uniform(0.5, 1.5, c),
        "m": np.zeros(c),
        "v": np.ones(c),
        "bias": RNG.normal(size=c),
    }
    inits = {k: v.astype(np.float32) for k, v in bn.items()}
    inits |= {
        "w1": RNG.standard_normal((c, 3, 1, 1)).astype(np.float32),
        "w2": RNG.standard_normal((c, 3, 1, 1)).astype(np.float32),
        "w3": RNG.standard_normal((2, c, 1, 1)).astype(np.float32),
    }
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], "c1"),
            helper.make_node("BatchNormalization", ["a", "g", "bias", "m", "v"], ["na"]),
            helper.make_node("Identity", ["bias"], ["bias2"]),
            helper.make_node("Conv", ["x", "w2"], ["b"], "c2"),
            helper.make_node("BatchNormalization", ["b", "g", "bias2", "m", "v"], ["nb"]),
            helper.make_node("Add", ["na", "nb"], ["s"]),
            helper.make_node("Conv", ["s", "w3"], ["out"], "c3"),
        ],
        [("x", ["N", 3, 4, 4])],
        [("out", ["N", 2, 4, 4])],
        inits,
    )
    graph = import_model(model)
    assert fold_constants(graph) == 1
    assert next(g for g in analyze(graph).groups if g.sources[0].node == "c1").prunable
    result = prune(model, target_flops=0.75, round_to=1, measure_latency=False)
    assert result.report["cost"]["ratio"]["macs"] == 0.75  # one channel costs 1/8 here


def test_shape_picks_of_static_dims_fold_but_the_batch_stays_dynamic() -> None:
    model = make_model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
            helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
            helper.make_node("Div", ["c", "two"], ["half"]),
            helper.make_node("Concat", ["n", "half", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["out"]),
        ],
        [("x", ["N", 4, 3])],
        [("out", ["N", 2, 6])],
        {
            "i1": np.array([1], np.int64),
            "i0": np.array([0], np.int64),
            "two": np.array([2], np.int64),
            "minus1": np.array([-1], np.int64),
        },
    )
    graph = import_model(model)
    fold_constants(graph)
    assert graph.values["half"].is_const and graph.values["half"].const.tolist() == [2]
    assert not graph.values["n"].is_const and not graph.values["target"].is_const
    assert [n.op_type for n in graph.nodes] == ["Shape", "Gather", "Concat", "Reshape"]


def test_float_arithmetic_is_not_folded() -> None:
    model = make_model(
        [
            helper.make_node("Mul", ["w", "k"], ["wk"]),
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wk"], ["y"]),
            helper.make_node("MatMul", ["y", "wt"], ["out"]),
        ],
        [("x", ["N", 3])],
        [("out", ["N", 3])],
        {"w": RNG.standard_normal((3, 3)).astype(np.float32), "k": np.array(0.5, np.float32)},
    )
    graph = import_model(model)
    assert fold_constants(graph) == 1
    assert graph.values["wt"].is_const and not graph.values["wk"].is_const


def test_fp16_weights_behind_a_cast_are_written_back_fp16() -> None:
    """Regression (tests/test_hostile.py): folding Cast(fp16 weight) wrote the pruned weight as
    float32, doubling the file of a model stored in half precision."""
    from onnx import TensorProto, numpy_helper

    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float16)
    w2 = RNG.standard_normal((4, 8, 1, 1)).astype(np.float16)
    nodes = [
        helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w2_16"], ["w2"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    model = make_model(
        nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])], {"w16": w, "w2_16": w2}
    )
    result = prune(model, target_flops=0.5, round_to=1, rewrite="drop", measure_latency=False)
    inits = {t.name: t for t in result.model.graph.initializer}
    assert {t.data_type for t in inits.values()} == {TensorProto.FLOAT16}
    casts = [n for n in result.model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 and all(n.input[0] in inits for n in casts)
    kept = inits[casts[0].input[0]]
    assert kept.dims[0] < 8  # sliced, and the values are the original fp16 ones
    assert np.isin(numpy_helper.to_array(kept), w).all()
