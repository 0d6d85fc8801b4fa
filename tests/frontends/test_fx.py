"""The torch.fx frontend agrees with the ONNX export path (issue 5).

For every reference model and every plain-torch zoo model (all of them trace with torch.fx, see
``NOT_TRACEABLE``), against the ONNX file exported with BN kept explicit (``models/export.py``
style "explicit"; models without BN only have the "folded" style, which is the same graph):

- the lowered model computes what the torch module computes (onnxruntime, optimizations off,
  batch 3 while the lowering saw batch 1: the batch is symbolic);
- the analysis finds the same channel groups (sizes and frozen/prunable split);
- ``irprune.prune(module, example_inputs=..., target_flops=0.5)`` keeps the same widths as
  pruning the ONNX file, and the two pruned models give the same outputs.

The default run covers a representative subset (residual, depthwise, run-time shapes, chunk,
channel slices, hand-written LayerNorm, Resize to a run-time size); the full sweep is ``slow``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from irprune.api import prune  # noqa: E402
from irprune.emit.verify import random_inputs, session  # noqa: E402
from irprune.errors import UnsupportedModelError, UsageError  # noqa: E402
from irprune.frontends.fx import import_module, to_onnx  # noqa: E402
from irprune.frontends.fx_opaque import DOMAIN  # noqa: E402
from irprune.passes.analysis.channels import analyze  # noqa: E402
from tests.conftest import REFERENCE  # noqa: E402
from tests.frontends.compare import (  # noqa: E402
    groups,
    one_thread,  # noqa: F401 - the autouse fixture
    rel,
    torch_outputs,
    widths,
)

TOLERANCE = 1e-4
TARGET = 0.5
# Zoo models fx cannot trace, with the reason: none of the plain-torch ones. The transformers
# models are not traceable by torch.fx.symbolic_trace: it stops in the zoo's HFWrapper
# (forward(*args) iterates a Proxy) and, on the bare transformers models, at Python control flow
# on traced values (ResNet, ConvNeXt) or at optional-argument handling (ViT); they go through
# the torch.export path instead (tests/frontends/test_export.py).
NOT_TRACEABLE: dict[str, str] = {}
FAST = {
    "ref:mobilenet_v2",  # ReLU6 (Clip), depthwise, linear bottleneck add, Gemm head
    "ref:densenet_small",  # dense concat, BN after concat, AvgPool transitions
    "zoo:se_resnet",  # residual stages, view(b, c) from the run-time shape, Linear SE
    "zoo:shufflenet_v2",  # chunk -> Split, channel shuffle with run-time view/transpose
    "zoo:ghostnet",  # concat + channel slice, hardsigmoid SE, nn.Identity
    "zoo:convnext",  # LayerNorm by hand, parameter indexing, permute + Linear (MatMul)
    "zoo:fpn",  # F.interpolate(size=lat.shape[-2:]), three outputs
}


def _zoo_cnns() -> list[str]:
    from models.zoo import ZOO

    return [n for n, spec in ZOO.items() if spec.family == "torch" and n not in NOT_TRACEABLE]


def _cases() -> Iterator[Any]:
    try:
        names = [f"ref:{n}" for n in REFERENCE] + [f"zoo:{n}" for n in _zoo_cnns()]
    except ImportError:  # no torch: the module is skipped anyway
        names = sorted(FAST)
    for case in names:
        yield pytest.param(case, marks=() if case in FAST else pytest.mark.slow, id=case)


def _subject(
    case: str, reference_onnx: Callable[[str, str], Path], zoo_onnx: Callable[[str, str], Path]
) -> tuple[Any, tuple[Any, ...], onnx.ModelProto]:
    """(torch module, batch-1 example inputs, the ONNX export with BN kept explicit)."""
    kind, name = case.split(":")
    if kind == "ref":
        from models.reference import REFERENCE_MODELS, build_preset

        shape = REFERENCE_MODELS[name].input_shape("test", batch=1)
        gen = torch.Generator().manual_seed(0)
        example = (torch.randn(shape, generator=gen),)
        return build_preset(name), example, onnx.load(reference_onnx(name, "explicit"))
    from models.zoo import ZOO, build_zoo, sample_inputs

    style = "explicit" if ZOO[name].has_bn else "folded"
    return build_zoo(name), sample_inputs(name, batch=1), onnx.load(zoo_onnx(name, style))


@pytest.mark.parametrize("case", _cases())
def test_fx_matches_onnx_export(
    case: str,
    reference_onnx: Callable[[str, str], Path],
    zoo_onnx: Callable[[str, str], Path],
) -> None:
    module, example, exported = _subject(case, reference_onnx, zoo_onnx)
    in_names = [i.name for i in exported.graph.input]
    out_names = [o.name for o in exported.graph.output]
    lowered = to_onnx(module, example, in_names, out_names)
    onnx.checker.check_model(lowered, full_check=True)
    feeds = random_inputs(session(exported), batch=3, seed=1)

    # before pruning: the lowered model is the torch module (at another batch than traced)
    before = session(lowered).run(None, feeds)
    assert rel(torch_outputs(module, feeds, in_names), before) <= TOLERANCE

    # the same channel groups, the same widths at 0.5, the same pruned outputs
    assert groups(lowered) == groups(exported)
    fx_result = prune(module, example_inputs=example, target_flops=TARGET, measure_latency=False)
    onnx_result = prune(exported, target_flops=TARGET, measure_latency=False)
    assert widths(fx_result.report) == widths(onnx_result.report)
    assert fx_result.report["cost"]["ratio"]["macs"] <= TARGET
    fx_feeds = dict(zip([i.name for i in fx_result.model.graph.input], feeds.values(), strict=True))
    fx_pruned = session(fx_result.model).run(None, fx_feeds)
    onnx_pruned = session(onnx_result.model).run(None, feeds)
    assert rel(onnx_pruned, fx_pruned) <= TOLERANCE


def test_interface_is_named_and_typed_from_the_example() -> None:
    from torch import nn

    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 4)).eval()
    example = torch.randn(2, 3, 6, 6)
    model = to_onnx(module, example, ["image"], ["scores"])
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, inp.type.tensor_type.elem_type, dims) == ("image", 1, ["batch", 3, 6, 6])
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert (out.name, dims) == ("scores", ["batch", 4])
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Relu", "Flatten", "Gemm", "Identity"]
    weights = {i.name for i in model.graph.initializer}
    assert {"0.weight", "0.bias", "3.weight", "3.bias"} <= weights


def test_batchnorm_is_an_explicit_inference_node() -> None:
    from torch import nn

    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    module = nn.Sequential(nn.Conv2d(3, 4, 1), bn).eval()
    model = to_onnx(module, torch.randn(1, 3, 4, 4))
    (node,) = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(node.output) == 1
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(inits[node.input[3]], bn.running_mean.numpy())
    np.testing.assert_array_equal(inits[node.input[4]], bn.running_var.numpy())


class _WithUnknownLayer(torch.nn.Module):
    """conv -> PixelShuffle (no lowering: kept opaque) -> conv -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)
        self.c = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.d = torch.nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x: Any) -> Any:
        y = self.shuffle(self.b(torch.relu(self.a(x))))
        return self.d(torch.relu(self.c(y)))


def test_unknown_leaf_module_is_opaque_frozen_and_runs() -> None:
    torch.manual_seed(0)
    module = _WithUnknownLayer().eval()
    example = torch.randn(1, 3, 8, 8)
    model = to_onnx(module, example)
    opaque = [n for n in model.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in opaque] == ["PixelShuffle"]
    assert [f.name for f in model.functions] == ["PixelShuffle"]
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    got = session(model).run(None, {"x": x})
    assert rel(torch_outputs(module, {"x": x}, ["x"]), got) <= TOLERANCE
    groups = {g.size: g for g in analyze(import_module(module, example)).groups}
    assert any("PixelShuffle" in reason for reason in groups[32].frozen)  # b feeds the shuffle
    assert groups[16].prunable  # a's and c's channels are untouched by it
    result = prune(module, example_inputs=example, target_flops=0.8, measure_latency=False)
    kept = {(g["size"], g["kept"]) for g in result.report["groups"]}
    assert (32, 32) in kept and any(k < s for s, k in kept)


class _Cumulative(torch.nn.Module):
    """conv -> torch.cumsum over channels (no lowering: kept opaque) -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 1), torch.nn.Conv2d(16, 8, 1)

    def forward(self, x: Any) -> Any:
        return self.b(torch.cumsum(self.a(x), 1).roll(1, 2))


def test_unknown_function_and_method_are_opaque_and_run() -> None:
    torch.manual_seed(0)
    module = _Cumulative().eval()
    example = torch.randn(1, 3, 4, 4)
    model = to_onnx(module, example)
    assert [n.op_type for n in model.graph.node if n.domain == DOMAIN] == ["cumsum", "roll"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    got = session(model).run(None, {"x": x})
    assert rel(torch_outputs(module, {"x": x}, ["x"]), got) <= TOLERANCE
    (group,) = [g for g in analyze(import_module(module, example)).groups if g.size == 16]
    assert any("cumsum" in reason for reason in group.frozen)


def test_call_with_run_time_shape_arguments_fails_closed_naming_it() -> None:
    class Rolled(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.roll(x, x.size(1) // 2, 1)

    with pytest.raises(UnsupportedModelError, match="roll"):
        to_onnx(Rolled(), torch.randn(1, 4), tracer="fx")  # auto falls back to torch.export


def test_untraceable_module_names_the_fx_error() -> None:
    class Branchy(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match=r"torch\.fx cannot trace Branchy"):
        to_onnx(Branchy(), torch.randn(1, 4))


def test_prune_needs_example_inputs_for_a_module() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UsageError, match="example_inputs"):
        prune(module, target_flops=0.5)
    with pytest.raises(UsageError, match="example_inputs"):
        to_onnx(module, [1, 2])


def test_importing_irprune_does_not_import_torch() -> None:
    code = "import sys, irprune, irprune.api, irprune.frontends.fx; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Functional(torch.nn.Module):
    """Functions and methods outside the zoo: matmul, clamp, neg, abs, exp, leaky_relu, slices,
    casts, stack, expand_as."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 6)

    def forward(self, x: Any) -> Any:
        y = torch.matmul(self.proj(x), x.transpose(1, 2))  # (b, 5, 5)
        y = torch.clamp(-y, min=-1.0).abs() + torch.nn.functional.leaky_relu(y, 0.2)
        z = x[:, 1:4:2, ..., None].exp().squeeze(-1).flatten(1).to(torch.float64).float()
        w = torch.stack([z, z.clone().detach()], 1).flatten(1).type_as(x)
        s = w.mean(dim=1, keepdim=True).expand_as(w)
        return torch.cat([y.flatten(1), w + s], 1).mean(dim=1, keepdim=True)


def test_functions_and_methods_match_torch() -> None:
    torch.manual_seed(0)
    module = _Functional().eval()
    model = to_onnx(module, torch.randn(1, 5, 6))
    assert not model.functions  # everything lowered, nothing kept opaque
    assert {"Cast", "Expand", "MatMul", "Clip", "LeakyRelu"} <= {
        n.op_type for n in model.graph.node
    }
    x = np.random.default_rng(1).standard_normal((4, 5, 6)).astype(np.float32)
    got = session(model).run(None, {"x": x})
    assert rel(torch_outputs(module, {"x": x}, ["x"]), got) <= TOLERANCE


def test_integer_arithmetic_is_exact_or_refused() -> None:
    class Ids(torch.nn.Module):
        def forward(self, ids: Any) -> Any:
            return ids * 3 + 1

    model = to_onnx(Ids(), torch.ones(1, 4, dtype=torch.int64))
    ids = np.arange(8, dtype=np.int64).reshape(2, 4)
    np.testing.assert_array_equal(session(model).run(None, {"ids": ids})[0], ids * 3 + 1)

    class Halved(torch.nn.Module):
        def forward(self, ids: Any) -> Any:
            return ids / 2  # torch promotes to float; ONNX Div would truncate

    with pytest.raises(UnsupportedModelError, match="integer"):
        to_onnx(Halved(), torch.ones(1, 4, dtype=torch.int64))
