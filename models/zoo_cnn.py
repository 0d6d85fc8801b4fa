"""Zoo: mobile CNNs and classics in plain torch at small widths (ShuffleNetV2, MobileNetV1-3,
EfficientNet-B0, GhostNet, SqueezeNet, GoogLeNet, VGG-11-BN, AlexNet).

Each builder mirrors the structure of the well-known architecture (torchvision / timm /
the paper's reference code) at widths and depths small enough to export in seconds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.architectures import VGG, InvertedResidual
from models.zoo_common import SqueezeExcite, conv_bn, make_divisible

# --------------------------------------------------------------------------- mobile nets


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (torchvision): chunk/branch/concat/shuffle; stride 2 has two branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1)
            )
        b2_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn(b2_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, act=None),
            conv_bn(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return _channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stages: list[int], repeats: list[int], last: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1))
        units, cin = [], 24
        for cout, n in zip(stages, repeats, strict=True):
            units.append(ShuffleUnit(cin, cout, 2))
            units += [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            cin = cout
        self.units = nn.Sequential(*units)
        self.last = conv_bn(cin, last, 1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.last(self.units(self.stem(x)))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2(num_classes: int = 10) -> ShuffleNetV2:
    return ShuffleNetV2([48, 96, 192], [2, 3, 2], 256, num_classes)


def mobilenet_v1(num_classes: int = 10) -> nn.Module:
    """MobileNetV1: conv stem then depthwise-separable (dw3x3-BN-ReLU, pw1x1-BN-ReLU) blocks."""
    cfg = [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 1)]
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2)]
    cin = 16
    for cout, stride in cfg:
        layers += [conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def mobilenet_v2(num_classes: int = 10) -> nn.Module:
    """MobileNetV2 (architectures.InvertedResidual), 0.5x-ish widths, ReLU6, linear bottleneck."""
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1)]
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.ReLU6)]
    cin = 16
    for t, c, n, s in setting:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [conv_bn(cin, 320, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers += [nn.Dropout(0.2), nn.Linear(320, num_classes)]
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """MobileNetV3 / EfficientNet inverted residual: expand, depthwise kxk, SE, project, add."""

    def __init__(
        self,
        cin: int,
        exp: int,
        cout: int,
        kernel: int,
        stride: int,
        act: type[nn.Module],
        se: nn.Module | None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, kernel, stride, groups=exp, act=act))
        if se is not None:
            layers.append(se)
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# (kernel, expanded, out, SE, activation, stride), torchvision's mobilenet_v3_small at 0.5x
_MBV3_SMALL = [
    (3, 16, 16, True, "RE", 2), (3, 40, 24, False, "RE", 2), (3, 48, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 120, 40, True, "HS", 1), (5, 72, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
]  # fmt: skip


def mobilenet_v3_small(num_classes: int = 10) -> nn.Module:
    """MobileNetV3-small: hardswish, SE gated by hardsigmoid, 5x5 depthwise, Linear head."""
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
    cin = 16
    for k, exp, cout, se, act_name, stride in _MBV3_SMALL:
        act = nn.ReLU if act_name == "RE" else nn.Hardswish
        squeeze = SqueezeExcite(exp, make_divisible(exp // 4), nn.ReLU, nn.Hardsigmoid)
        layers.append(MBConv(cin, exp, cout, k, stride, act, squeeze if se else None))
        cin = cout
    layers += [conv_bn(cin, 288, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers += [nn.Linear(288, 256), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


# (expand ratio, kernel, stride, out, repeats): EfficientNet-B0 stages at ~0.5x width
_EFFNET_B0 = [(1, 3, 1, 8, 1), (6, 3, 2, 16, 2), (6, 5, 2, 24, 2), (6, 3, 2, 40, 2),
              (6, 5, 1, 56, 1), (6, 5, 2, 96, 1)]  # fmt: skip


def efficientnet_b0(num_classes: int = 10) -> nn.Module:
    """EfficientNet-B0-style: SiLU, MBConv with SE (squeeze = block input / 4), 1x1 head."""
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.SiLU)]
    cin = 16
    for e, k, s, cout, n in _EFFNET_B0:
        for i in range(n):
            exp = cin * e
            se = SqueezeExcite(exp, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
            layers.append(MBConv(cin, exp, cout, k, s if i == 0 else 1, nn.SiLU, se))
            cin = cout
    layers += [conv_bn(cin, 320, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers += [nn.Dropout(0.2), nn.Linear(320, num_classes)]
    return nn.Sequential(*layers)


class GhostModule(nn.Module):
    """GhostNet module: primary 1x1 conv, cheap depthwise 3x3 on it, concat, slice to ``oup``."""

    def __init__(self, inp: int, oup: int, relu: bool = True) -> None:
        super().__init__()
        self.oup = oup
        init = -(-oup // 2)
        act = nn.ReLU if relu else None
        self.primary = conv_bn(inp, init, 1, act=act)
        self.cheap = conv_bn(init, init, 3, groups=init, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return out[:, : self.oup, :, :]


class GhostBottleneck(nn.Module):
    """Ghost (expand) -> [dw stride-2] -> [SE] -> ghost (project) + shortcut (dw + 1x1 conv)."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [GhostModule(cin, mid, relu=True)]
        if stride > 1:
            layers.append(conv_bn(mid, mid, kernel, stride, groups=mid, act=None))
        if se:
            layers.append(SqueezeExcite(mid, make_divisible(mid // 4, 4), gate=nn.Hardsigmoid))
        layers.append(GhostModule(mid, cout, relu=False))
        self.body = nn.Sequential(*layers)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                conv_bn(cin, cin, kernel, stride, groups=cin, act=None),
                conv_bn(cin, cout, 1, act=None),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.short(x)


# (kernel, mid, out, SE, stride): GhostNet 0.5x, one odd ghost width (the slice then cuts)
_GHOST = [(3, 16, 16, False, 1), (3, 24, 12, False, 2), (3, 36, 12, False, 1),
          (5, 36, 20, True, 2), (3, 60, 40, False, 2), (3, 100, 40, False, 1),
          (3, 120, 56, True, 1), (5, 168, 80, True, 2), (5, 239, 80, True, 1)]  # fmt: skip


def ghostnet(num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [conv_bn(3, 16, 3, 2)]
    cin = 16
    for k, mid, cout, se, s in _GHOST:
        layers.append(GhostBottleneck(cin, mid, cout, k, s, se))
        cin = cout
    layers += [conv_bn(cin, 240, 1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(240, 320, 1), nn.ReLU()]
    layers += [nn.Flatten(), nn.Dropout(0.2), nn.Linear(320, num_classes)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- classics


class Fire(nn.Module):
    """SqueezeNet fire module: 1x1 squeeze, then concat of 1x1 and 3x3 expands (ReLU, bias)."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU(inplace=True))
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet(num_classes: int = 10) -> nn.Module:
    """SqueezeNet 1.1 at half width: ceil-mode maxpools, conv classifier, no BN."""
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    features = [nn.Conv2d(3, 32, 3, 2), nn.ReLU(inplace=True), pool,
                Fire(32, 8, 32, 32), Fire(64, 8, 32, 32), pool,
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool,
                Fire(128, 24, 96, 96), Fire(192, 32, 128, 128)]  # fmt: skip
    head = [nn.Dropout(0.5), nn.Conv2d(256, num_classes, 1), nn.ReLU(inplace=True)]
    return nn.Sequential(*features, *head, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Inception(nn.Module):
    """GoogLeNet module: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1, concatenated."""

    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b2 = nn.Sequential(conv_bn(cin, r3, 1), conv_bn(r3, c3, 3))
        self.b3 = nn.Sequential(conv_bn(cin, r5, 1), conv_bn(r5, c5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, pp, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def inception(num_classes: int = 10) -> nn.Module:
    """GoogLeNet at quarter width: 3 inception modules around a maxpool, avgpool, Linear."""
    return nn.Sequential(
        conv_bn(3, 32, 3, 2), nn.MaxPool2d(3, 2, ceil_mode=True),
        conv_bn(32, 48, 3),
        Inception(48, 16, 24, 32, 4, 8, 8), Inception(64, 32, 32, 48, 8, 24, 16),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Inception(120, 48, 24, 52, 4, 12, 16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, num_classes),
    )  # fmt: skip


def vgg11_bn(num_classes: int = 10) -> VGG:
    """VGG-11-BN (architectures.VGG, config "A") at quarter width; 2x2 pool -> Flatten -> MLP."""
    cfg: list[int | str] = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"]
    return VGG(cfg, num_classes, classifier_width=128, pool_size=2)


def alexnet(num_classes: int = 10) -> nn.Module:
    """AlexNet (torchvision layout) at quarter width: 11x11/4 stem, 5x5, three 3x3, 3 Linear."""
    features = nn.Sequential(
        nn.Conv2d(3, 16, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(16, 48, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(48, 96, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(96, 64, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )  # fmt: skip
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(64 * 2 * 2, 256), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(256, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes),
    )  # fmt: skip
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(2), nn.Flatten(), classifier)
