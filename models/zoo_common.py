"""Shared pieces of the model zoo: the spec types, small building blocks, seeded randomisation.

The zoo (:mod:`models.zoo`) registers plain-torch architectures (:mod:`models.zoo_resnets`,
:mod:`models.zoo_cnn`, :mod:`models.zoo_dense`) and ``transformers`` models from tiny configs
(:mod:`models.zoo_transformers`). Every model is built from a seed and randomised so no
layer is an identity: biases, BatchNorm (as :mod:`models.reference` does it), and the affine
params of LayerNorm / GroupNorm / InstanceNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.reference import randomize_batchnorm, randomize_biases

DType = Literal["float32", "int64"]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: ``shape`` includes the batch as its first dim (exported symbolic).

    Integer inputs are drawn from ``[low, high)`` (token ids); ``ones=True`` makes them all
    ones (attention masks).
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType = "float32"
    low: int = 0
    high: int = 0
    ones: bool = False


@dataclass(frozen=True)
class ZooSpec:
    """A zoo model: builder + kwargs, its graph inputs/outputs, BN flag and what it exercises.

    ``kwargs`` are the (small, test-size) builder arguments. ``has_bn``: the model has
    BatchNorm layers, so it is exported in both the "folded" and "explicit" styles.
    ``structures`` lists the structures the model exercises (free text, for reports).
    """

    builder: Callable[..., nn.Module]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...] = ("output",)
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    has_bn: bool = False
    structures: tuple[str, ...] = ()
    family: Literal["torch", "transformers"] = "torch"
    opset: int = 17

    @property
    def styles(self) -> tuple[str, ...]:
        return ("folded", "explicit") if self.has_bn else ("folded",)


def image(size: int | tuple[int, int], channels: int = 3, name: str = "input") -> InputSpec:
    """An NCHW float image input of batch 1 (the batch is symbolic in the export)."""
    h, w = (size, size) if isinstance(size, int) else size
    return InputSpec(name, (1, channels, h, w))


def frozen_kwargs(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


# --------------------------------------------------------------------------- building blocks


def conv_bn(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
    dilation: int = 1,
) -> nn.Sequential:
    """Bias-free conv with "same"-style padding, BatchNorm, optional activation."""
    pad = dilation * (kernel - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, pad, dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor`` without going more than 10% below (torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcite(nn.Module):
    """Conv-based squeeze-and-excitation: avgpool, 1x1 reduce, act, 1x1 expand, gate, scale."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


# --------------------------------------------------------------------------- randomisation

_CALIBRATION_BATCH = 8
_EXTRA_BIAS_TYPES = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_AFFINE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


def _randomize_other_biases(model: nn.Module, gen: torch.Generator) -> None:
    """N(0, 0.05) biases for the layer types ``reference.randomize_biases`` does not cover
    (Conv1d, ConvTranspose, and transformers' GPT-2 ``Conv1D``)."""
    with torch.no_grad():
        for m in model.modules():
            extra = isinstance(m, _EXTRA_BIAS_TYPES) or type(m).__name__ == "Conv1D"
            bias = getattr(m, "bias", None)
            if extra and isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=gen) * 0.05)


def _randomize_affine_norms(model: nn.Module, gen: torch.Generator) -> None:
    """LayerNorm / GroupNorm / affine InstanceNorm (and any class with "LayerNorm" in its name:
    transformers' own, ConvNeXt's LayerNorm2d): weight ~ U(0.5, 1.5), bias ~ N(0, 0.1)."""
    with torch.no_grad():
        for m in model.modules():
            is_norm = isinstance(m, _AFFINE_NORMS) or "LayerNorm" in type(m).__name__
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            if not is_norm or not isinstance(weight, torch.Tensor):
                continue
            weight.copy_(torch.rand(weight.shape, generator=gen) + 0.5)
            if isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=gen) * 0.1)


def randomize(model: nn.Module, sample: tuple[Tensor, ...], gen: torch.Generator) -> None:
    """Make no layer an identity: biases, affine norms, BatchNorm params and statistics.

    BatchNorm layers of any rank go through :func:`models.reference.randomize_batchnorm`
    (calibrated on ``sample``).
    """
    randomize_biases(model, gen)
    _randomize_other_biases(model, gen)
    _randomize_affine_norms(model, gen)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if len(sample) != 1:
            raise ValueError("BatchNorm calibration supports single-input models only")
        randomize_batchnorm(model, sample[0], gen)
    model.eval()


def calibration_sample(inputs: tuple[InputSpec, ...], gen: torch.Generator) -> tuple[Tensor, ...]:
    """A seeded batch of ``_CALIBRATION_BATCH`` for BatchNorm calibration."""
    return tuple(make_input(spec, _CALIBRATION_BATCH, gen) for spec in inputs)


def make_input(spec: InputSpec, batch: int, gen: torch.Generator) -> Tensor:
    """A seeded tensor for ``spec`` with the given batch."""
    shape = (batch, *spec.shape[1:])
    if spec.dtype == "float32":
        return torch.randn(shape, generator=gen)
    if spec.ones:
        return torch.ones(shape, dtype=torch.int64)
    return torch.randint(spec.low, spec.high, shape, generator=gen, dtype=torch.int64)
