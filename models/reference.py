"""Reference models used as pruning test subjects and benchmarks: registry and seeded build.

The architectures are defined in :mod:`models.architectures` (re-exported here). Use
:func:`build` / :func:`build_preset` to get a seeded, eval-mode instance whose biases and
BatchNorm layers carry randomized (non-identity) values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.architectures import densenet_small, mobilenet_v2, resnet18, resnet50, vgg16_bn

__all__ = [
    "REFERENCE_MODELS",
    "ModelSpec",
    "Size",
    "build",
    "build_preset",
    "densenet_small",
    "mobilenet_v2",
    "randomize_batchnorm",
    "randomize_biases",
    "resnet18",
    "resnet50",
    "vgg16_bn",
]

Size = Literal["test", "full"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder plus the input sizes and kwargs used by tests/benchmarks.

    ``test_kwargs`` / ``full_kwargs`` are passed to ``builder`` for the "test" / "full" size.
    """

    builder: Callable[..., nn.Module]
    test_size: int
    full_size: int = 224
    test_kwargs: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"num_classes": 10})
    )
    full_kwargs: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"num_classes": 1000})
    )

    def resolution(self, size: Size) -> int:
        """Spatial input size (H == W) for the given size preset."""
        return self.test_size if size == "test" else self.full_size

    def kwargs(self, size: Size) -> dict[str, Any]:
        """Builder kwargs for the given size preset."""
        return dict(self.test_kwargs if size == "test" else self.full_kwargs)

    def input_shape(self, size: Size, batch: int = 1) -> tuple[int, int, int, int]:
        """NCHW input shape for the given size preset."""
        r = self.resolution(size)
        return (batch, 3, r, r)


_CALIBRATION_BATCH = 8

REFERENCE_MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(resnet18, test_size=64),
    "resnet50": ModelSpec(resnet50, test_size=64),
    # 64x64 -> 2x2 feature map; pool_size=2 keeps a spatial Flatten (4 Gemm columns per
    # channel) like the full model's 7x7, which 32x32 (1x1 map, pool_size=1) would lose.
    "vgg16_bn": ModelSpec(
        vgg16_bn,
        test_size=64,
        test_kwargs=MappingProxyType({"num_classes": 10, "classifier_width": 256, "pool_size": 2}),
    ),
    "mobilenet_v2": ModelSpec(mobilenet_v2, test_size=64),
    "densenet_small": ModelSpec(densenet_small, test_size=32),
}


def randomize_batchnorm(model: nn.Module, sample: Tensor, generator: torch.Generator) -> None:
    """Give every BatchNorm random affine params and perturbed, data-calibrated statistics.

    weight ~ U(0.5, 1.5) and bias ~ N(0, 0.1). Running statistics are calibrated in a single
    eval-mode pass over ``sample``: each BN, just before it runs, measures the per-channel
    mean/var of its actual input and stores ``running_mean = mean + N(0, 0.1) * std`` and
    ``running_var = var * U(0.5, 1.5)``. BN is therefore never an identity, yet activations
    keep a sane scale through deep (residual) nets instead of drifting layer after layer.
    """

    def calibrate(bn: nn.modules.batchnorm._BatchNorm, args: tuple[Tensor, ...]) -> None:
        dims = tuple(d for d in range(args[0].dim()) if d != 1)  # every axis but the channels
        var, mean = torch.var_mean(args[0], dim=dims, correction=0)
        n = bn.num_features
        bn.running_mean.copy_(mean + torch.randn(n, generator=generator) * 0.1 * var.sqrt())
        bn.running_var.copy_(var * (torch.rand(n, generator=generator) + 0.5))

    model.eval()
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
        hooks = [bn.register_forward_pre_hook(calibrate) for bn in bns]
        try:
            model(sample)
        finally:
            for h in hooks:
                h.remove()


def randomize_biases(model: nn.Module, generator: torch.Generator) -> None:
    """Set every Conv/Linear bias to N(0, 0.05).

    Zero biases would hide bias-slicing bugs, and the TorchScript exporter deduplicates
    identical initializers into ``Identity`` nodes that alias unrelated layers' biases.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.05)


def build(name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build reference model ``name`` deterministically from ``seed``, in eval mode.

    ``kwargs`` go to the architecture builder (e.g. ``num_classes=10``). Conv/Linear biases
    are randomized (:func:`randomize_biases`) and BatchNorm layers get random parameters and
    statistics calibrated on a seeded N(0, 1) batch at the model's test resolution, so they
    are not identities (:func:`randomize_batchnorm`).
    """
    if name not in REFERENCE_MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(REFERENCE_MODELS)}")
    spec = REFERENCE_MODELS[name]
    torch.manual_seed(seed)
    model = spec.builder(**kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    sample = torch.randn(_CALIBRATION_BATCH, 3, spec.test_size, spec.test_size, generator=gen)
    randomize_biases(model, gen)
    randomize_batchnorm(model, sample, gen)
    return model.eval()


def build_preset(name: str, size: Size = "test", seed: int = 0) -> nn.Module:
    """``build`` with the registry's kwargs for ``size`` (the exact model ``export`` writes)."""
    return build(name, seed, **REFERENCE_MODELS[name].kwargs(size))
