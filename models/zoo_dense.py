"""Zoo: dense-prediction nets, 1-D convs, other normalisations, MLP-style nets (plain torch).

UNet, FPN, a conv autoencoder, DeepLab-style ASPP, a TCN on raw audio, ConvNeXt, a GroupNorm
ResNet, an InstanceNorm style-transfer net, MLP-Mixer and a plain MLP, at small widths.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.zoo_common import conv_bn

# --------------------------------------------------------------------------- dense prediction


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout, 3), conv_bn(cout, cout, 3))


class UNet(nn.Module):
    """UNet: maxpool encoder, ConvTranspose 2x2/2 upsampling, skip concat, 1x1 class conv."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 2) -> None:
        super().__init__()
        self.down = nn.ModuleList([_double_conv(3, widths[0])])
        self.down.extend(_double_conv(a, b) for a, b in pairwise(widths))
        rev = widths[::-1]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, 2) for a, b in pairwise(rev))
        self.up_convs = nn.ModuleList(_double_conv(2 * b, b) for b in rev[1:])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, conv, skip in zip(self.ups, self.up_convs, skips[-2::-1], strict=True):
            x = conv(torch.cat([skip, up(x)], 1))
        return self.head(x)


class FPN(nn.Module):
    """ResNet-ish backbone (C2..C4) + FPN: 1x1 laterals, nearest upsample to the lateral's
    runtime size (torchvision's ``F.interpolate(size=feat.shape[-2:])``), add, 3x3 outputs;
    three outputs P2, P3, P4."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), out: int = 32) -> None:
        super().__init__()
        self.stem = conv_bn(3, widths[0], 3, 2)
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn(a, b, 3, 2), conv_bn(b, b, 3))
            for a, b in pairwise((widths[0], *widths))
        )
        self.lateral = nn.ModuleList(nn.Conv2d(w, out, 1) for w in widths)
        self.smooth = nn.ModuleList(nn.Conv2d(out, out, 3, padding=1) for _ in widths)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x, feats = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        inner = self.lateral[-1](feats[-1])
        results = [self.smooth[-1](inner)]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            inner = lat + F.interpolate(inner, size=lat.shape[-2:], mode="nearest")
            results.insert(0, self.smooth[i](inner))
        return tuple(results)


def autoencoder(widths: tuple[int, ...] = (16, 32, 64)) -> nn.Sequential:
    """SegNet-like conv autoencoder: strided conv-BN-ReLU encoder, ConvTranspose-BN-ReLU
    decoder (3x3/2, output_padding 1), ConvTranspose to 3 channels, sigmoid."""
    enc = [conv_bn(a, b, 3, 2) for a, b in pairwise((3, *widths))]
    dec: list[nn.Module] = []
    rev = widths[::-1]
    for a, b in pairwise(rev):
        dec += [nn.ConvTranspose2d(a, b, 3, 2, 1, output_padding=1, bias=False)]
        dec += [nn.BatchNorm2d(b), nn.ReLU()]
    dec += [nn.ConvTranspose2d(widths[0], 3, 3, 2, 1, output_padding=1), nn.Sigmoid()]
    return nn.Sequential(*enc, *dec)


class ASPP(nn.Module):
    """DeepLabV3 ASPP: 1x1, dilated 3x3 (rates 2, 4), image pooling branch upsampled
    (bilinear, runtime size) back, concat, 1x1 projection."""

    def __init__(self, cin: int, out: int, rates: tuple[int, ...] = (2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn(cin, out, 1)] + [conv_bn(cin, out, 3, dilation=r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn(cin, out, 1))
        self.project = conv_bn(out * (len(rates) + 2), out, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(self.pool(x), size=size, mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, 1))


class DeepLab(nn.Module):
    """Strided + dilated backbone, ASPP, 1x1 classifier, bilinear upsample to the input size."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            conv_bn(3, 16, 3, 2), conv_bn(16, 32, 3, 2), conv_bn(32, 64, 3, 2),
            conv_bn(64, 64, 3, dilation=2),
        )  # fmt: skip
        self.aspp = ASPP(64, 32)
        self.classifier = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.classifier(self.aspp(self.backbone(x)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- 1-D


class TemporalBlock(nn.Module):
    """TCN block: two causal dilated Conv1d (pad both sides, chomp the right), BN1d, ReLU,
    dropout, residual (1x1 Conv1d when widths differ)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.chomp = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(cin, cout, kernel, padding=self.chomp, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, kernel, padding=self.chomp, dilation=dilation)
        self.bn1, self.bn2 = nn.BatchNorm1d(cout), nn.BatchNorm1d(cout)
        self.drop = nn.Dropout(0.1)
        self.down = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop(F.relu(self.bn1(self.conv1(x)[:, :, : -self.chomp])))
        y = self.drop(F.relu(self.bn2(self.conv2(y)[:, :, : -self.chomp])))
        return F.relu(y + (x if self.down is None else self.down(x)))


class TCN(nn.Module):
    """Raw-audio TCN: strided Conv1d front end, dilated temporal blocks, mean over time, Linear."""

    def __init__(self, widths: tuple[int, ...] = (32, 32, 64, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(1, widths[0], 9, 4, 4, bias=False), nn.BatchNorm1d(widths[0]), nn.ReLU()
        )
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(TemporalBlock(cin, w, 3, 2**i))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.front(x)).mean(dim=2))


# --------------------------------------------------------------------------- other norms


class LayerNorm2d(nn.Module):
    """ConvNeXt reference "channels_first" LayerNorm: mean/var over C computed by hand."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """dw7x7 -> permute NHWC -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale ->
    permute back -> residual add."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) * 0.9 + 0.1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pw2(F.gelu(self.pw1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt (reference code): 4x4/4 patchify stem + LN2d, stages separated by LN2d +
    2x2/2 conv, global mean, LayerNorm, Linear."""

    def __init__(
        self,
        dims: tuple[int, ...] = (16, 32, 64),
        depths: tuple[int, ...] = (1, 1, 2),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0])]
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            if i > 0:
                layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.features(x).mean([-2, -1])))


class GNBlock(nn.Module):
    """Basic residual block with GroupNorm (8 channels per group) instead of BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.gn1, self.gn2 = nn.GroupNorm(cout // 8, cout), nn.GroupNorm(cout // 8, cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(cout // 8, cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.gn2(self.conv2(F.relu(self.gn1(self.conv1(x)))))
        return F.relu(y + (x if self.short is None else self.short(x)))


def groupnorm_resnet(num_classes: int = 10) -> nn.Sequential:
    """ResNet-10-ish with GroupNorm everywhere (detection-backbone style)."""
    blocks: list[nn.Module] = [
        nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.GroupNorm(2, 16), nn.ReLU(),
        GNBlock(16, 16, 1), GNBlock(16, 32, 2), GNBlock(32, 64, 2), GNBlock(64, 128, 2),
    ]  # fmt: skip
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)]
    return nn.Sequential(*blocks)


def _pad_conv_in(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Reflection pad + conv + affine InstanceNorm (Johnson et al.)."""
    return [
        nn.ReflectionPad2d(kernel // 2),
        nn.Conv2d(cin, cout, kernel, stride),
        nn.InstanceNorm2d(cout, affine=True),
    ]


class StyleResidual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_pad_conv_in(c, c, 3), nn.ReLU(), *_pad_conv_in(c, c, 3))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def style_transfer() -> nn.Sequential:
    """Johnson fast style transfer: reflect-pad 9x9 conv, strided downsampling, residual
    blocks, one nearest-upsample+conv and one ConvTranspose upsampling, 9x9 output conv."""
    return nn.Sequential(
        *_pad_conv_in(3, 16, 9), nn.ReLU(),
        *_pad_conv_in(16, 32, 3, 2), nn.ReLU(),
        *_pad_conv_in(32, 64, 3, 2), nn.ReLU(),
        StyleResidual(64), StyleResidual(64), StyleResidual(64),
        nn.Upsample(scale_factor=2, mode="nearest"), *_pad_conv_in(64, 32, 3), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1),
        nn.InstanceNorm2d(16, affine=True), nn.ReLU(),
        nn.ReflectionPad2d(4), nn.Conv2d(16, 3, 9), nn.Tanh(),
    )  # fmt: skip


# --------------------------------------------------------------------------- MLP-style


class MixerBlock(nn.Module):
    """LN -> transpose -> token MLP -> transpose + residual; LN -> channel MLP + residual."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(
            nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens)
        )
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """MLP-Mixer: 4x4 patch-embedding conv, flatten to tokens, mixer blocks, LN, mean, Linear."""

    def __init__(self, image: int = 32, patch: int = 4, dim: int = 64, depth: int = 2) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim, 32, 4 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def mlp(num_classes: int = 10) -> nn.Sequential:
    """Plain MLP on 28x28 images: Flatten, Linear-BN1d-ReLU-Dropout x2, Linear."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )  # fmt: skip
