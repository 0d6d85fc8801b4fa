"""Plain-torch architectures mirroring torchvision's (no torchvision dependency).

ResNet-18/50 (v1.5), VGG-16-BN, MobileNetV2 and a small DenseNet-BC. Parameter counts match
torchvision at 1000 classes. Seeded construction and the model registry live in
:mod:`models.reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------- helpers


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Bias-free ``kernel x kernel`` conv with "same"-style padding followed by BatchNorm."""
    conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


def _init_weights(model: nn.Module, linear_std: float | None) -> None:
    """torchvision-style init: Kaiming-normal (fan_out, relu) convs, unit BN, zero biases.

    ``linear_std=None`` keeps PyTorch's default Linear init (as torchvision's ResNet does).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, residual add, ReLU."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True), *_conv_bn(width, cout, 3)
        )
        self.downsample = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.body(x) + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand x4, residual add, ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 1), nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(width, cout, 1),
        )  # fmt: skip
        self.downsample = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.body(x) + identity)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """1x1 projection + BN when the residual shape changes, else identity (``None``)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


class ResNet(nn.Module):
    """torchvision ResNet: 7x7/2 stem, maxpool, four stages, global avgpool, Linear."""

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], 64
        for i, blocks in enumerate(layers):
            width = 64 * 2**i
            stride = 1 if i == 0 else 2
            stage = [block(cin, width, stride)]
            cin = width * block.expansion
            stage += [block(cin, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self, linear_std=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11,689,512 parameters at 1000 classes."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 v1.5 (Bottleneck, [3, 4, 6, 3]); 25,557,032 parameters at 1000 classes."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


# --------------------------------------------------------------------------- VGG

_VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]  # fmt: skip


class VGG(nn.Module):
    """torchvision VGG-BN: conv3x3(+bias)-BN-ReLU stacks, maxpools, 7x7 avgpool, 3 Linear."""

    def __init__(
        self,
        cfg: list[int | str],
        num_classes: int = 1000,
        classifier_width: int = 4096,
        pool_size: int = 7,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            assert isinstance(v, int)
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        w = classifier_width
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool_size * pool_size, w), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(w, w), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(w, num_classes),
        )  # fmt: skip
        _init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16_bn(num_classes: int = 1000, classifier_width: int = 4096, pool_size: int = 7) -> VGG:
    """VGG-16 with BatchNorm (config "D"); 138,365,992 parameters at the default sizes.

    ``classifier_width`` and ``pool_size`` (the AdaptiveAvgPool2d output side) exist so tests
    can build a light variant. The TorchScript ONNX exporter only handles adaptive pooling
    whose output size divides the input size, so a 32x32 input (1x1 feature map) needs
    ``pool_size=1`` and a 64x64 input (2x2 feature map) ``pool_size`` 1 or 2.
    """
    return VGG(_VGG16_CFG, num_classes, classifier_width, pool_size)


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10% below it."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
    return [*_conv_bn(cin, cout, kernel, stride, groups), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-ReLU6, 3x3 depthwise-ReLU6, linear 1x1 project (+ add)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn_relu6(cin, hidden, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, channels c, repeats n, first stride s)
_MBV2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                 (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip


class MobileNetV2(nn.Module):
    """torchvision MobileNetV2: 32-ch stem, 17 inverted residuals, 1x1 conv to 1280, Linear."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [*_conv_bn_relu6(3, cin, 3, 2)]
        for t, c, n, s in _MBV2_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += _conv_bn_relu6(cin, last, 1)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        _init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNetV2; 3,504,872 parameters at 1000 classes and ``width_mult=1.0``."""
    return MobileNetV2(num_classes, width_mult)


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Sequential):
    """DenseNet-BC bottleneck layer: BN-ReLU-Conv1x1(bn_size*k)-BN-ReLU-Conv3x3(k)."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int) -> None:
        mid = bn_size * growth_rate
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, growth_rate, 3, padding=1, bias=False),
        )  # fmt: skip


class DenseBlock(nn.Module):
    """Each layer sees ``torch.cat`` of the block input and all earlier layer outputs."""

    def __init__(self, num_layers: int, cin: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(cin + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    """DenseNet transition: BN-ReLU-Conv1x1-AvgPool(2)."""
    return nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2),
    )  # fmt: skip


class DenseNet(nn.Module):
    """torchvision-style DenseNet-BC: conv stem, dense blocks, transitions, BN-ReLU, Linear.

    The stem is 7x7/2 conv-BN-ReLU + 3x3/2 maxpool; each transition compresses channels.
    """

    def __init__(
        self,
        growth_rate: int,
        block_config: tuple[int, ...],
        num_init_features: int,
        bn_size: int,
        compression: float,
        num_classes: int,
    ) -> None:
        super().__init__()
        c = num_init_features
        layers: list[nn.Module] = [*_conv_bn(3, c, 7, 2), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(3, 2, 1))
        for i, n in enumerate(block_config):
            layers.append(DenseBlock(n, c, growth_rate, bn_size))
            c += n * growth_rate
            if i < len(block_config) - 1:
                cout = int(c * compression)
                layers.append(_transition(c, cout))
                c = cout
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        _init_weights(self, linear_std=None)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def densenet_small(num_classes: int = 1000) -> DenseNet:
    """Small DenseNet-BC (105,658 params at 10 classes, 195,748 at 1000).

    growth_rate=12, block_config=(4, 4, 4), num_init_features=24, bn_size=4 (1x1 convs
    output 48 channels), compression=0.5. Channels: 24 -> 72 -> 36 -> 84 -> 42 -> 90.
    """
    return DenseNet(12, (4, 4, 4), 24, 4, 0.5, num_classes)
