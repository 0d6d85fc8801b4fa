"""Temporary normalisation for training BN-free graphs: the inserted BN is the identity at
insertion, the fold-back reproduces the trained module, C-SGD keeps clusters identical through
the fold (the merge stays exact), and the written model has the original nodes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

pytest.importorskip("torch")

import torch

from irprune import csgd, finetune
from irprune.backends import tempnorm, torch_norm
from irprune.backends.torch import import_graph, outputs_numpy
from irprune.demo import build_demo_model
from irprune.emit import to_model
from irprune.passes.allocation import Target, allocate
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.importance import score
from irprune.passes.rewrite.merge import cluster_groups, merge
from tests.helpers import make_model, rel_diff, run

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models: one torch thread (two threads on a loaded machine cost 10x the time)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


X = RNG.standard_normal((64, 3, 8, 8)).astype(np.float32)
Y = RNG.integers(0, 4, 64)


def _folded(bias: bool = True) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> GAP -> Flatten -> Gemm -> Relu -> Gemm, no BN; the
    convs' outputs are far from zero-mean / unit-variance."""
    rng = np.random.default_rng(1)
    inits = {
        "w1": rng.normal(0, 2.0, (6, 3, 3, 3)).astype(np.float32),
        "w2": rng.normal(0, 0.5, (8, 6, 3, 3)).astype(np.float32),
        "fc1": rng.normal(0, 0.5, (5, 8)).astype(np.float32),
        "fc1_b": rng.normal(1, 0.5, 5).astype(np.float32),
        "fc2": rng.normal(0, 0.5, (4, 5)).astype(np.float32),
    }
    c1, c2 = ["x", "w1"], ["r1", "w2"]
    if bias:
        inits["b1"] = rng.normal(3, 1, 6).astype(np.float32)
        inits["b2"] = rng.normal(0, 1, 8).astype(np.float32)
        c1.append("b1")
        c2.append("b2")
    nodes = [
        helper.make_node("Conv", c1, ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", c2, ["c2"], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc1", "fc1_b"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "fc2"], ["logits"], transB=1),
    ]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("logits", ["N", 4])], inits)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_candidates_skip_normalised_and_output_producers() -> None:
    graph = import_graph(_folded())
    assert [n.outputs[0].name for n, _ in tempnorm.candidates(graph)] == ["c1", "c2", "h"]
    bias_less = import_graph(_folded(bias=False))
    assert [n.outputs[0].name for n, _ in tempnorm.candidates(bias_less)] == ["c1", "c2", "h"]
    assert [n.outputs[0].name for n, _ in tempnorm.candidates(bias_less, new_params=False)] == ["h"]
    explicit = import_graph(build_demo_model(0, explicit_bn=True))
    assert tempnorm.candidates(explicit) == []  # every conv feeds a BN, the Gemm is the output


def test_the_inserted_bn_is_the_identity() -> None:
    graph = import_graph(_folded())
    module, normalised = torch_norm.prepare(graph, {"x": X})
    assert normalised is not None and len(normalised.norms) == 3
    ops = Counter(n.op_type for n in normalised.graph.nodes)
    assert ops["BatchNormalization"] == 3
    reference = run(_folded(), {"x": X})[0]
    assert rel_diff(outputs_numpy(module.eval(), {"x": X})[0], reference) <= 1e-6
    # training form on the data it was measured on: batch statistics = the measured ones
    module.train().train_batch_norm(True)
    with torch.no_grad():
        batch_out = module.run({"x": X})[0].numpy()
    assert rel_diff(batch_out, reference) <= 1e-5
    # the measured statistics are those of the producer's output (c1 is far from N(0, 1))
    c1 = next(n for n in normalised.norms if n.output == "c1")
    mean = module.tensor(c1.mean).numpy()
    assert np.abs(mean).max() > 1.0


def _perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("bias", [True, False])
def test_fold_back_reproduces_the_trained_module(bias: bool) -> None:
    model = _folded(bias)
    graph = import_graph(model)
    module, normalised = torch_norm.prepare(graph, {"x": X})
    assert normalised is not None
    _perturb(module, 0)  # stands for training: every weight, scale and shift moves
    torch_norm.finish(graph, module, normalised, {"x": X})
    trained = outputs_numpy(module.eval(), {"x": X})[0]
    folded = to_model(graph)
    assert rel_diff(run(folded, {"x": X})[0], trained) <= 1e-5
    assert rel_diff(trained, run(model, {"x": X})[0]) > 1e-2  # it did change
    assert _ops(folded) == _ops(model)
    assert len(folded.graph.node[0].input) == 3  # the bias-less conv got a bias


def test_csgd_on_a_folded_model_keeps_clusters_identical_through_the_fold() -> None:
    model = _folded()
    graph = import_graph(model)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    plan = allocate(analysis, cost, score(graph, analysis, "l1"), Target("macs", 0.5), round_to=1)
    clusters = cluster_groups(graph, analysis, plan)
    assert sum(len(c) > 1 for cs in clusters.values() for c in cs) >= 3
    data = {"x": X}
    report = csgd.train(graph, analysis, clusters, data, epochs=50, lr=0.01, epsilon=0.1, batch=16)
    assert report.temporary_norms == 3
    assert report.spread < 1e-6
    trained = to_model(graph)
    assert _ops(trained) == _ops(model)
    before = run(trained, data)[0]
    assert rel_diff(before, run(model, data)[0]) > 1e-3  # training changed the model
    merge(graph, analysis, plan, clusters=clusters)
    graph.verify()
    assert rel_diff(run(to_model(graph), data)[0], before) <= 1e-4


def test_finetune_writes_the_original_ops_and_can_skip_the_temporary_bn() -> None:
    model = _folded(bias=False)
    result = finetune(model, {"x": X}, labels=Y, epochs=1, batch=16, lr=0.01, optimizer="sgd")
    assert _ops(result.model) == _ops(model)
    assert len(result.model.graph.node[0].input) == 3
    onnx.checker.check_model(result.model, full_check=True)
    plain = finetune(
        model, {"x": X}, labels=Y, epochs=1, batch=16, lr=0.01, optimizer="sgd",
        temporary_bn=False,
    )  # fmt: skip
    assert len(plain.model.graph.node[0].input) == 2
    assert rel_diff(run(plain.model, {"x": X})[0], run(result.model, {"x": X})[0]) > 1e-3


def test_a_tiny_trailing_batch_joins_the_last_one() -> None:
    from irprune.finetune import batch_bounds

    assert batch_bounds(1347, 64)[-2:] == [(1216, 1280), (1280, 1347)]  # 3 left over: joined
    assert batch_bounds(96, 64) == [(0, 64), (64, 96)]  # half a batch: its own
    assert batch_bounds(10, 64) == [(0, 10)]


def test_cli_says_so_and_can_turn_it_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from irprune.cli import main

    model, data, out = tmp_path / "m.onnx", tmp_path / "train.npz", tmp_path / "out.onnx"
    onnx.save(_folded(), model)
    np.savez(data, x=X, y=Y)
    args = ["finetune", str(model), "--data", str(data), "--labels", "y", "-o", str(out)]
    assert main(args) == 0
    assert "trained with 3 temporary BatchNormalization nodes" in capsys.readouterr().out
    assert _ops(onnx.load(out)) == _ops(_folded())
    assert main([*args, "--no-temporary-bn"]) == 0
    assert "temporary" not in capsys.readouterr().out
