"""The torch backend on the model zoo: equal to onnxruntime, trainable, and back to ONNX.

The default run checks one model per distinct structure; ``-m slow`` sweeps every zoo model in
both export styles.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.helpers import feeds_for, rel_diff, run

torch = pytest.importorskip("torch")

from irprune.backends.torch import (  # noqa: E402 - after the skip check
    GraphModule,
    from_onnx,
    outputs_numpy,
    save,
    to_onnx,
)

TOLERANCE = 1e-4

# one case per structure the op table has to get right
FAST = [
    ("resnet50", "explicit"),  # Conv, BN (inference form), residual Add, Gemm
    ("squeezenet", "folded"),  # ceil-mode MaxPool, fire concat
    ("mobilenet_v3_small", "folded"),  # HardSwish, HardSigmoid, depthwise
    ("shufflenet_v2", "folded"),  # Split, run-time Shape/Gather/Div/Reshape, Transpose
    ("style_transfer", "folded"),  # reflect Pad, nearest Resize, InstanceNorm, ConvTranspose
    ("deeplab_aspp", "explicit"),  # dilated conv, bilinear Resize to a run-time size
    ("tcn_1d", "explicit"),  # Conv1d, BatchNorm1d, Slice, ReduceMean
    ("convnext", "folded"),  # LayerNormalization, Pow/Sqrt by hand, Erf GELU, MatMul
    ("hf_gpt2", "folded"),  # attention mask input, Range, Where, LessOrEqual, Split
    ("hf_swin", "folded"),  # window Pad, Mod, GreaterOrEqual, relative position bias
    ("hf_roberta", "folded"),  # CumSum, GatherElements, Not
]


def _all_cases() -> list[tuple[str, str]]:
    try:
        from models.zoo import ZOO
    except ImportError:  # no torch: every case skips anyway
        return []
    return [(name, style) for name, spec in ZOO.items() for style in spec.styles]


def _check_equal(path: Path) -> GraphModule:
    model = onnx.load(path)
    module = from_onnx(model)
    feeds = feeds_for(model, batch=2, seed=1)
    expected = run(model, feeds)
    got = outputs_numpy(module, feeds)
    assert [g.shape for g in got] == [e.shape for e in expected]
    err = max(rel_diff(e, g) for e, g in zip(expected, got, strict=True))
    assert err <= TOLERANCE, f"{path.name}: torch differs from onnxruntime by {err:.3g}"
    return module


@pytest.mark.parametrize(("name", "style"), FAST, ids=[f"{n}-{s}" for n, s in FAST])
def test_matches_onnxruntime(zoo_onnx, name: str, style: str) -> None:
    _check_equal(zoo_onnx(name, style))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "style"), _all_cases())
def test_matches_onnxruntime_whole_zoo(zoo_onnx, name: str, style: str) -> None:
    _check_equal(zoo_onnx(name, style))


def _loss(module: GraphModule, feeds: dict[str, np.ndarray]) -> torch.Tensor:
    outs = module.run(feeds)
    return sum((o.float() ** 2).mean() for o in outs if o.is_floating_point())


@pytest.mark.parametrize(
    ("name", "style"), [("resnet50", "explicit"), ("hf_bert", "folded"), ("unet", "folded")]
)
def test_gradients_reach_every_weight(zoo_onnx, name: str, style: str) -> None:
    model = onnx.load(zoo_onnx(name, style))
    module = from_onnx(model)
    weights = dict(module.named_weights())
    assert weights, "no trainable weights"
    _loss(module, feeds_for(model, batch=2, seed=3)).backward()
    dead = [n for n, p in weights.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"no gradient reaches {dead[:5]} ({len(dead)} of {len(weights)})"
    assert all(torch.isfinite(p.grad).all() for p in weights.values())


def test_weights_are_parameters_and_shapes_buffers(zoo_onnx) -> None:
    module = from_onnx(onnx.load(zoo_onnx("resnet18", "explicit")))
    graph = module.to_graph()
    weights = dict(module.named_weights())
    for node in graph.nodes:
        if node.op_type == "Conv":
            assert node.inputs[1].name in weights  # type: ignore[union-attr]
        if node.op_type == "BatchNormalization":
            scale, bias, mean, var = (v.name for v in node.inputs[1:5])  # type: ignore[union-attr]
            assert scale in weights and bias in weights
            assert mean not in weights and var not in weights  # running statistics: buffers
            assert not module.tensor(mean).requires_grad


def test_train_step_changes_output_and_exports(zoo_onnx, tmp_path: Path) -> None:
    model = onnx.load(zoo_onnx("mobilenet_v2", "explicit"))
    module = from_onnx(model)
    feeds = feeds_for(model, batch=4, seed=5)
    before = outputs_numpy(module, feeds)
    optim = torch.optim.SGD(module.parameters(), lr=0.05)
    optim.zero_grad()
    _loss(module, feeds).backward()
    optim.step()
    after = outputs_numpy(module, feeds)
    assert rel_diff(before[0], after[0]) > 1e-3, "a training step did not change the output"
    exported = to_onnx(module)
    assert rel_diff(after[0], run(exported, feeds)[0]) <= TOLERANCE
    written = save(module, tmp_path / "trained.onnx", feeds)
    assert rel_diff(after[0], run(onnx.load(written), feeds)[0]) <= TOLERANCE
    assert rel_diff(before[0], run(model, feeds)[0]) <= TOLERANCE, "the input model changed"


def test_pruned_model_round_trip(zoo_onnx, tmp_path: Path) -> None:
    from irprune.api import prune

    model = onnx.load(zoo_onnx("resnet50", "explicit"))
    result = prune(model, target_flops=0.5, rewrite="drop", measure_latency=False)
    module = result.to_torch()
    feeds = feeds_for(model, batch=2, seed=2)
    expected = run(result.model, feeds)
    assert rel_diff(expected[0], outputs_numpy(module, feeds)[0]) <= TOLERANCE
    optim = torch.optim.Adam(module.parameters(), lr=1e-3)
    _loss(module, feeds).backward()
    optim.step()
    trained = outputs_numpy(module, feeds)
    exported = save(module, tmp_path / "pruned-trained.onnx", feeds)
    again = onnx.load(exported)
    assert rel_diff(trained[0], run(again, feeds)[0]) <= TOLERANCE
    widths = {i.name: list(i.dims) for i in result.model.graph.initializer}
    assert {i.name: list(i.dims) for i in again.graph.initializer} == widths


def test_importing_irprune_does_not_import_torch() -> None:
    code = (
        "import sys, irprune, irprune.api, irprune.cli, irprune.backends;"
        "import irprune.passes.importance;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
