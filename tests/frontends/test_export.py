"""The torch.export path of the fx frontend agrees with the ONNX export path (issue 5).

For the ``transformers`` zoo models (torch.fx cannot trace any of them), against the ONNX file
the TorchScript exporter writes (BN kept explicit where there is BN):

- the lowered model computes what the torch module computes (onnxruntime, optimizations off,
  batch 3 while the export saw batch 1: the batch is symbolic);
- the analysis finds the same channel groups, except where the export path sees more (listed
  in ``MORE_PRUNABLE`` / ``FROZEN_SPLIT`` with the reason);
- ``irprune.prune(module, example_inputs=..., tracer="export", target_flops=0.5)`` keeps the
  same widths as pruning the ONNX file (the groups only the export path can prune are passed
  as ``ignore=``), and the two pruned models give the same outputs within 1e-4 relative.

Then small known-answer tests per lowering family, against torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from irprune.api import prune  # noqa: E402
from irprune.emit.verify import random_inputs, session  # noqa: E402
from irprune.errors import UnsupportedModelError, UsageError  # noqa: E402
from irprune.frontends.fx import import_module, to_onnx  # noqa: E402
from irprune.frontends.fx_opaque import DOMAIN  # noqa: E402
from irprune.passes.analysis.channels import analyze  # noqa: E402
from tests.frontends.compare import (  # noqa: E402
    groups,
    one_thread,  # noqa: F401 - the autouse fixture
    rel,
    torch_outputs,
    widths,
)

TOLERANCE = 1e-4
TARGET = 0.5
HF_MODELS = [
    "hf_bert", "hf_gpt2", "hf_distilbert", "hf_roberta", "hf_vit", "hf_deit", "hf_swin",
    "hf_convnext", "hf_resnet", "hf_segformer",
]  # fmt: skip
FAST = {"hf_convnext"}  # the others take 10-40 s each
# Groups the export path can prune and the ONNX path freezes (source nodes of the export path):
# the export carries every intermediate shape, the ONNX file loses some behind run-time shape
# arithmetic.
MORE_PRUNABLE: dict[str, tuple[str, ...]] = {
    # the attention mask is Expand(mask, [b, -1, 16, 16]): the TorchScript exporter computes
    # the -1 at run time (Where(Equal(shape, -1))), so the analysis cannot see that the mask
    # broadcasts over the heads, and the two head groups freeze; torch.export knows it is 1
    "hf_gpt2": ("addmm/Gemm", "addmm_4/Gemm"),
    # stage 0 v_proj (1 head of 32): in the ONNX file the Reshape after the attention merges
    # the head dim with a dim of unknown size; the export path knows the sequence length.
    # The decode head's two projections: in the ONNX file a Reshape with run-time dims freezes
    # them ("cannot tell where channel axis 1 goes"); the export path knows every shape, and
    # their Resize to the first stage's size (run-time sizes) passes channels since a057bde
    "hf_segformer": ("linear_2/MatMul", "linear_12/MatMul", "linear_13/MatMul"),
}
# Models whose frozen groups are split differently (the prunable groups are the same): the ONNX
# file's window-reverse Reshapes have run-time targets the analysis cannot read, which cuts the
# frozen residual stream into more groups than the export path's.
FROZEN_SPLIT = {"hf_swin"}
# The ONNX file of SegFormer cannot go below 0.501 of its MACs (5 prunable groups at their floor).
TARGETS = {"hf_segformer": 0.6}


def _cases() -> Iterator[Any]:
    for name in HF_MODELS:
        yield pytest.param(name, marks=() if name in FAST else pytest.mark.slow, id=name)


@pytest.mark.parametrize("name", _cases())
def test_export_matches_onnx_export(name: str, zoo_onnx: Callable[[str, str], Path]) -> None:
    from models.zoo import ZOO, build_zoo, sample_inputs

    exported = onnx.load(zoo_onnx(name, "explicit" if ZOO[name].has_bn else "folded"))
    module, example = build_zoo(name), sample_inputs(name, batch=1)
    in_names = [i.name for i in exported.graph.input]
    out_names = [o.name for o in exported.graph.output]
    lowered = to_onnx(module, example, in_names, out_names, tracer="export")
    onnx.checker.check_model(lowered, full_check=True)
    feeds = random_inputs(session(exported), batch=3, seed=1)
    before = session(lowered).run(None, feeds)
    assert rel(torch_outputs(module, feeds, in_names), before) <= TOLERANCE

    extra = MORE_PRUNABLE.get(name, ())
    ours, theirs = groups(lowered, prunable_only=name in FROZEN_SPLIT), groups(exported)
    if name in FROZEN_SPLIT:
        assert ours == [g for g in theirs if g[1]]
    elif not extra:
        assert ours == theirs
    else:  # the same groups, but ``extra`` are prunable here
        assert len(ours) == len(theirs) and sum(p for _, p in ours) == (
            sum(p for _, p in theirs) + len(extra)
        )

    target = TARGETS.get(name, TARGET)
    result = prune(
        module, example_inputs=example, target_flops=target, measure_latency=False,
        tracer="export", ignore=extra,
    )  # fmt: skip
    reference = prune(exported, target_flops=target, measure_latency=False)
    assert widths(result.report, extra, prunable_only=True) == widths(
        reference.report, prunable_only=True
    )
    assert result.report["cost"]["ratio"]["macs"] <= target
    ours_feeds = dict(zip([i.name for i in result.model.graph.input], feeds.values(), strict=True))
    pruned = session(result.model).run(None, ours_feeds)
    assert rel(session(reference.model).run(None, feeds), pruned) <= TOLERANCE


# Only the export path prunes these: forced (the other groups ignored), the drop rewrite must
# still compute the original with the removed channels zeroed (DESIGN.md section 4).
FORCED = {
    "hf_gpt2": (0.83, ("addmm_2/Gemm", "addmm_6/Gemm")),  # the heads, MLPs ignored
    "hf_segformer": (0.8, ()),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FORCED))
def test_groups_only_the_export_path_sees_are_pruned_exactly(name: str) -> None:
    from models.zoo import build_zoo, sample_inputs
    from tests.helpers import feeds_for, rel_diff, run
    from tests.reference_mask import masked_reference

    target, ignored = FORCED[name]
    lowered = to_onnx(build_zoo(name), sample_inputs(name, batch=1), tracer="export")
    result = prune(
        lowered, target_flops=target, rewrite="drop", measure_latency=False, ignore=ignored,
        round_to=1,
    )  # fmt: skip
    kept = {s: (g["size"], g["kept"]) for g in result.report["groups"] for s in g["sources"]}
    assert all(kept[s][1] < kept[s][0] for s in MORE_PRUNABLE[name])
    assert result.analysis is not None and result.plan is not None
    feeds = feeds_for(lowered, batch=2, seed=1)
    expected = run(masked_reference(lowered, result.analysis, result.plan), feeds)
    got = run(result.model, feeds)
    assert max(rel_diff(e, g) for e, g in zip(expected, got, strict=True)) <= 1e-5


# --------------------------------------------------------------------------- plain torch models
# The export path also covers every model the fx path does. ShuffleNetV2: the export's shapes
# carry the chunk sizes behind the run-time channel-shuffle reshapes, which the ONNX file (and the
# fx path) lose ("concatenated input has unknown size"), so it prunes 16 groups instead of 11.
SEES_MORE = {"zoo:shufflenet_v2"}
PLAIN_FAST = {"zoo:groupnorm_resnet", "zoo:style_transfer"}  # group / instance norm lowerings


def _plain_cases() -> Iterator[Any]:
    from models.zoo import ZOO
    from tests.conftest import REFERENCE

    names = [f"ref:{n}" for n in REFERENCE]
    names += [f"zoo:{n}" for n, spec in ZOO.items() if spec.family == "torch"]
    for case in names:
        marks = () if case in PLAIN_FAST else pytest.mark.slow
        yield pytest.param(case, marks=marks, id=case)


@pytest.mark.parametrize("case", _plain_cases())
def test_export_path_on_plain_torch_models(
    case: str,
    reference_onnx: Callable[[str, str], Path],
    zoo_onnx: Callable[[str, str], Path],
) -> None:
    from tests.helpers import feeds_for, rel_diff, run
    from tests.reference_mask import masked_reference

    kind, name = case.split(":")
    if kind == "ref":
        from models.reference import REFERENCE_MODELS, build_preset

        shape = REFERENCE_MODELS[name].input_shape("test", batch=1)
        example = (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)
        module, exported = build_preset(name), onnx.load(reference_onnx(name, "explicit"))
    else:
        from models.zoo import ZOO, build_zoo, sample_inputs

        style = "explicit" if ZOO[name].has_bn else "folded"
        module, example = build_zoo(name), sample_inputs(name, batch=1)
        exported = onnx.load(zoo_onnx(name, style))
    in_names = [i.name for i in exported.graph.input]
    out_names = [o.name for o in exported.graph.output]
    lowered = to_onnx(module, example, in_names, out_names, tracer="export")
    assert not lowered.functions  # nothing kept opaque
    feeds = random_inputs(session(exported), batch=3, seed=1)
    got = session(lowered).run(None, feeds)
    assert rel(torch_outputs(module, feeds, in_names), got) <= TOLERANCE
    if case not in SEES_MORE:
        assert groups(lowered) == groups(exported)
        return
    assert len(groups(lowered, True)) > len(groups(exported, True))
    result = prune(lowered, target_flops=TARGET, rewrite="drop", measure_latency=False)
    assert result.analysis is not None and result.plan is not None
    small = feeds_for(lowered, batch=2, seed=1)
    expected = run(masked_reference(lowered, result.analysis, result.plan), small)
    pruned = run(result.model, small)
    assert max(rel_diff(e, g) for e, g in zip(expected, pruned, strict=True)) <= 1e-5


# --------------------------------------------------------------------------- known answers


def _check(module: Any, example: tuple[Any, ...], batch: int = 3) -> onnx.ModelProto:
    """Lower with torch.export, check the model, and compare with torch at another batch."""
    module = module.eval()
    model = to_onnx(module, example, tracer="export")
    onnx.checker.check_model(model, full_check=True)
    gen = torch.Generator().manual_seed(1)
    feeds = {}
    for spec, x in zip(model.graph.input, example, strict=True):
        shape = (batch, *x.shape[1:])
        if x.dtype.is_floating_point:
            feeds[spec.name] = torch.randn(shape, generator=gen).numpy()
        else:
            feeds[spec.name] = torch.randint(0, 8, shape, generator=gen).to(x.dtype).numpy()
    got = session(model).run(None, feeds)
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    expected = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    assert rel([e.astype(np.float64) for e in expected], [g.astype(np.float64) for g in got]) <= (
        TOLERANCE
    )
    return model


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


class _Linear(torch.nn.Module):
    """linear (2-D: Gemm, 3-D: MatMul + Add), addmm, bmm, embedding, gather, 2-index index."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(8, 6)
        self.a, self.b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 4)
        self.w, self.bias = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.ones(4))

    def forward(self, ids: Any) -> Any:
        x = self.a(self.emb(ids))  # (b, 5, 6)
        y = torch.bmm(x, x.transpose(1, 2))  # (b, 5, 5)
        flat = torch.addmm(self.bias, x[:, 0], self.w, beta=0.5, alpha=2.0)  # (b, 4)
        picked = torch.gather(y, 2, ids[:, :, None].clamp(max=4))  # (b, 5, 1)
        rows = torch.arange(ids.shape[0])[:, None]
        cols = torch.arange(3)[None, :]
        corner = y[rows, cols]  # (b, 3, 5): two index tensors
        return self.b(x[:, 0]) + flat, picked, corner.float()


def test_linear_family() -> None:
    torch.manual_seed(0)
    model = _check(_Linear(), (torch.randint(0, 8, (1, 5)),))
    assert {"Gemm", "MatMul", "Gather", "GatherElements", "GatherND", "Range"} <= _ops(model)


class _Vision(torch.nn.Module):
    """conv (groups, dilation, 'same'), BN, pools, upsample, pad, conv transpose, roll."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding="same", dilation=2)
        self.dw = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.bn = torch.nn.BatchNorm2d(8)
        self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: Any) -> Any:
        y = torch.relu(self.bn(self.dw(self.conv(x))))  # (b, 8, 4, 4)
        pooled = torch.nn.functional.max_pool2d(y, 2) + torch.nn.functional.avg_pool2d(y, 2)
        big = torch.nn.functional.interpolate(pooled, scale_factor=2.0, mode="bilinear")
        padded = torch.nn.functional.pad(big, (1, 1, 0, 2))
        rolled = torch.roll(self.up(y), shifts=(1, -2), dims=(2, 3))
        gap = torch.nn.functional.adaptive_avg_pool2d(padded, 1).flatten(1)
        return rolled, gap


def test_vision_family() -> None:
    torch.manual_seed(0)
    model = _check(_Vision(), (torch.randn(1, 3, 8, 8),))
    expected = {"Conv", "BatchNormalization", "MaxPool", "AveragePool", "Resize", "Pad"}
    assert expected | {"ConvTranspose", "GlobalAveragePool", "Concat"} <= _ops(model)


class _Attention(torch.nn.Module):
    """SDPA (bool mask, float mask, causal, explicit scale), LayerNorm, both GELUs, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x: Any, keep: Any) -> Any:
        b, s, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, s, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        mask = (keep > 0)[:, None, None, :]  # (b, 1, 1, s) bool
        sdpa = torch.nn.functional.scaled_dot_product_attention
        a = sdpa(q, k, v, attn_mask=mask | torch.eye(s, dtype=torch.bool))
        c = sdpa(q, k, v, is_causal=True, scale=0.3)
        f = sdpa(q, k, v, attn_mask=torch.where(mask, 0.0, -1e4))
        gelu = torch.nn.functional.gelu
        out = (a + c + f).transpose(1, 2).reshape(b, s, 16)
        return gelu(out) + gelu(out, approximate="tanh") + out.softmax(-1)


def test_attention_family() -> None:
    torch.manual_seed(0)
    example = (torch.randn(2, 6, 16), torch.randint(0, 2, (2, 6)))
    model = _check(_Attention(), example)
    assert {"LayerNormalization", "Softmax", "Where", "Erf", "Tanh"} <= _ops(model)


class _Shapes(torch.nn.Module):
    """Run-time sizes: view from batch arithmetic, expand with -1, slices and selects with
    run-time bounds, zeros/ones of a run-time size, cumsum of int32, masked_fill, empty cat."""

    def forward(self, x: Any, ids: Any) -> Any:
        b = x.shape[0]
        windows = x.view(b * 2, 3, 4)  # (2b, 3, 4) from (b, 6, 4)
        grid = windows.view(b, 2, 3, 4).expand(-1, -1, -1, 4).sum(1)
        head = windows[:b, 1:5:2].select(1, 0)  # run-time bound on the batch axis
        cum = torch.cumsum(ids.int(), 1).to(torch.int32)
        filled = x.masked_fill(x > 0.5, -1.0) + torch.zeros(b, 6, 4) + torch.ones_like(x)
        merged = torch.cat([torch.empty(0), filled.flatten(1)], 0)
        return grid, head, cum.long() * 2, merged


def test_run_time_shapes() -> None:
    model = _check(_Shapes(), (torch.randn(2, 6, 4), torch.randint(0, 5, (2, 7))))
    assert {"Shape", "CumSum", "ConstantOfShape", "Expand"} <= _ops(model)


class _ShapeBranch(torch.nn.Module):
    """Python control flow on a size and a loop: torch.fx cannot trace it, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(2))
        self.stem, self.head = torch.nn.Conv2d(3, 16, 1), torch.nn.Conv2d(16, 4, 1)

    def forward(self, x: Any) -> Any:
        y = torch.relu(self.stem(x))
        for conv in self.convs:
            y = y + torch.relu(conv(y)) if y.shape[-1] > 4 else torch.relu(conv(y))
        return self.head(y)


def test_auto_falls_back_to_export_and_prunes() -> None:
    torch.manual_seed(0)
    module, example = _ShapeBranch().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedModelError, match=r"torch\.fx cannot trace"):
        to_onnx(module, example, tracer="fx")
    _check(module, (example,))
    assert to_onnx(module, example).graph.node  # auto: fx fails, export runs
    groups = sorted(g.size for g in analyze(import_module(module, example)).groups if g.prunable)
    assert groups == [16]  # the residual stage (stem + both convs), head's output is frozen
    result = prune(
        module, example_inputs=example, target_flops=0.57, measure_latency=False, round_to=1
    )
    assert 0.55 <= result.report["cost"]["ratio"]["macs"] <= 0.57
    assert any(g["kept"] < g["size"] for g in result.report["groups"])
    assert result.report["settings"]["tracer"] == "export"  # the report says which path ran


def test_report_names_the_tracer() -> None:
    layers = (torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
    module, example = torch.nn.Sequential(*layers).eval(), torch.randn(1, 3, 8, 8)
    for tracer, used in (("auto", "fx"), ("fx", "fx"), ("export", "export")):
        result = prune(
            module, example_inputs=example, target_flops=0.7, tracer=tracer, dry_run=True
        )
        assert result.report["settings"]["tracer"] == used
    onnx_model = to_onnx(module, example)
    assert "tracer" not in prune(onnx_model, target_flops=0.7, dry_run=True).report["settings"]


class _PixelShuffled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 1), torch.nn.Conv2d(4, 8, 1)
        self.c = torch.nn.Conv2d(3, 12, 1)

    def forward(self, x: Any) -> Any:
        shuffled = torch.nn.functional.pixel_shuffle(torch.relu(self.a(x)), 2)
        return self.b(shuffled), self.c(x)


def test_aten_op_without_lowering_is_opaque_and_frozen() -> None:
    torch.manual_seed(0)
    module, example = _PixelShuffled(), torch.randn(1, 3, 4, 4)
    model = _check(module, (example,))
    assert [n.op_type for n in model.graph.node if n.domain == DOMAIN] == ["pixel_shuffle_default"]
    groups = {g.size: g for g in analyze(import_module(module, example, tracer="export")).groups}
    assert any("pixel_shuffle" in reason for reason in groups[16].frozen)


def test_data_dependent_module_fails_closed() -> None:
    class Branchy(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match=r"torch\.export cannot export Branchy"):
        to_onnx(Branchy(), torch.randn(1, 4), tracer="export")
    both = r"torch\.fx cannot trace Branchy.*; torch\.export cannot export Branchy"
    with pytest.raises(UnsupportedModelError, match=both):
        to_onnx(Branchy(), torch.randn(1, 4))  # auto: both tracers tried, both reasons given
    with pytest.raises(UsageError, match="tracer"):
        to_onnx(Branchy(), torch.randn(1, 4), tracer="jit")
