"""Block scores: a zeroed block ranks least important under every criterion; the data-driven
scores match values computed here from onnxruntime runs of edited ONNX protos."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from irprune.passes.importance.blocks import (
    BlockScore,
    influence,
    least_important,
    removal_error,
    weight_norm,
)
from tests.helpers import feeds_for, run
from tests.passes.analysis.test_blocks import (
    analysed,
    basic_net,
    bottleneck_net,
    inverted_net,
    transformer_net,
)
from tests.passes.rewrite.test_remove_blocks import skipped


def _exposing(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return out


def _scores(scores: tuple[BlockScore, ...]) -> dict[str, float]:
    assert all(s.score is not None for s in scores), [s.note for s in scores]
    return {s.block: float(s.score) for s in scores}  # type: ignore[arg-type]


CASES = {
    "basic": (lambda: basic_net(3, zero=(1,)), "b1.add"),
    "mlp": (lambda: transformer_net(2, zero_mlp=(1,)), "l1.mlp.add"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_zeroed_block_is_least_important(case: str) -> None:
    build, zeroed = CASES[case]
    model = build()
    graph, analysis = analysed(model)
    feeds = feeds_for(model, batch=4, seed=0)
    for scores in (
        influence(graph, analysis.blocks, feeds),
        removal_error(graph, analysis.blocks, feeds),
        weight_norm(graph, analysis.blocks),
    ):
        values = _scores(scores)
        assert least_important(scores, 1) == (zeroed,), (scores[0].criterion, values)
        assert values[zeroed] <= 1e-6, scores[0].criterion
        others = [v for k, v in values.items() if k != zeroed]
        assert min(others) > 1e-3, (scores[0].criterion, values)


def test_influence_matches_cosines_of_exposed_values() -> None:
    model = basic_net(2)
    graph, analysis = analysed(model)
    feeds = feeds_for(model, batch=2, seed=2)
    got = _scores(influence(graph, analysis.blocks, feeds))
    x, y = run(_exposing(model, ["b0.out", "b1.add"]), feeds)[1:]
    assert x.shape[0] == 2  # the model's static batch
    a, b = x.reshape(2, -1).astype(np.float64), y.reshape(2, -1).astype(np.float64)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert got["b1.add"] == pytest.approx(1.0 - cos.mean(), rel=1e-5)
    assert 0.0 < got["b0.add"] < 2.0


def test_removal_error_matches_the_skipped_original() -> None:
    model = transformer_net(2)
    graph, analysis = analysed(model)
    feeds = feeds_for(model, batch=2, seed=3)
    got = _scores(removal_error(graph, analysis.blocks, feeds))
    (reference,) = run(model, feeds)
    (without,) = run(skipped(model, {"l0.mlp.add": "l0.attn.add"}), feeds)
    expected = np.linalg.norm(without - reference) / np.linalg.norm(reference)
    assert got["l0.mlp.add"] == pytest.approx(expected, rel=1e-4)


def test_weight_norm_follows_the_last_weights_and_bn_scale() -> None:
    """Doubling the last BN's scale and shift doubles the proxy; the other block is unchanged."""
    model = bottleneck_net()
    graph, analysis = analysed(model)
    (before,) = _scores(weight_norm(graph, analysis.blocks)).values()
    for t in model.graph.initializer:
        if t.name in ("neck.bn2.scale", "neck.bn2.bias"):
            array = onnx.numpy_helper.to_array(t) * 2.0
            t.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), t.name))
    graph, analysis = analysed(model)
    (after,) = _scores(weight_norm(graph, analysis.blocks)).values()
    assert after == pytest.approx(2.0 * before, rel=1e-6)


def test_weight_norm_known_answer() -> None:
    """Conv then BN at the end of f, BN's k = gamma / sqrt(var + eps):
    sqrt(mean_c (k_c^2 ||W_c||^2 + (k_c (b_c - mu_c) + beta_c)^2))."""
    model = inverted_net()
    graph, analysis = analysed(model)
    (score,) = _scores(weight_norm(graph, analysis.blocks)).values()
    init = {
        t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer
    }
    w, b = init["ir.project.w"], init["ir.project.b"]
    k = init["ir.bn2.scale"] / np.sqrt(init["ir.bn2.var"] + 1e-5)
    shift = k * (b - init["ir.bn2.mean"]) + init["ir.bn2.bias"]
    rows = np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)
    assert score == pytest.approx(float(np.sqrt(np.mean((k * rows) ** 2 + shift**2))), rel=1e-9)


def test_weight_norm_scores_transformer_sub_blocks() -> None:
    graph, analysis = analysed(transformer_net(1))
    scores = weight_norm(graph, analysis.blocks)
    assert [s.criterion for s in scores] == ["weight_norm"] * 2
    assert all(s.score is not None and s.score > 0 for s in scores)


def test_unscorable_end_gets_a_note() -> None:
    """f ending in a Relu (no affine path to its weights) has no proxy, and says why."""
    model = basic_net(1)
    for node in model.graph.node:
        if node.name == "b0.add":
            node.input[1] = "b0.relu1"  # f = relu(conv1(x)); conv2 is left dead
    graph, analysis = analysed(model)
    (score,) = weight_norm(graph, [analysis.block("b0.add")])
    assert score.score is None and "Relu" in score.note
    assert least_important([score], 1) == ()
