"""Zoo: the ResNet family in plain torch at small widths (ResNet-18/34/50, SE-ResNet,
Wide-ResNet, ResNeXt, RegNet-Y) and a small DenseNet-BC.

Each builder mirrors the structure of the well-known architecture (torchvision / timm /
the paper's reference code) at widths and depths small enough to export in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.architectures import BasicBlock, Bottleneck, DenseNet
from models.zoo_common import SqueezeExcite, conv_bn

# --------------------------------------------------------------------------- ResNet family


class ZooResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, stages of blocks (first one strided), avgpool, Linear.

    ``block(cin, width, stride)`` builds one block; it must expose ``expansion``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        widths: list[int],
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = conv_bn(3, widths[0], 3)
        stages, cin = [], widths[0]
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stage = [block(cin, width, 1 if i == 0 else 2)]
            cin = width * block.expansion
            stage += [block(cin, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet18(num_classes: int = 10) -> ZooResNet:
    return ZooResNet(BasicBlock, [2, 2, 2, 2], [16, 32, 64, 128], num_classes)


def resnet34(num_classes: int = 10) -> ZooResNet:
    return ZooResNet(BasicBlock, [3, 4, 6, 3], [16, 32, 64, 128], num_classes)


def resnet50(num_classes: int = 10) -> ZooResNet:
    return ZooResNet(Bottleneck, [3, 4, 6, 3], [16, 32, 64, 128], num_classes)


class SEBasicBlock(BasicBlock):
    """SE-ResNet block: the residual branch is gated by a Linear-based SE before the add.

    The SE reshapes with ``view(b, c)`` / ``view(b, c, 1, 1)`` from the runtime shape, as in
    the SENet reference code (Shape/Gather/Reshape in the export).
    """

    def __init__(self, cin: int, width: int, stride: int = 1, reduction: int = 4) -> None:
        super().__init__(cin, width, stride)
        self.fc1 = nn.Linear(width, width // reduction)
        self.fc2 = nn.Linear(width // reduction, width)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.body(x)
        b, c = out.shape[:2]
        w = F.adaptive_avg_pool2d(out, 1).view(b, c)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w)))).view(b, c, 1, 1)
        return self.relu(out * w + identity)


def se_resnet(num_classes: int = 10) -> ZooResNet:
    return ZooResNet(SEBasicBlock, [1, 2, 2, 1], [16, 32, 64, 128], num_classes)


class WideBlock(nn.Module):
    """Wide-ResNet pre-activation block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 + shortcut.

    The projection shortcut reads the pre-activated input (as in the WRN reference code).
    """

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(0.3)
        self.short = None
        if stride != 1 or cin != width:
            self.short = nn.Conv2d(cin, width, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(self.drop(F.relu(self.bn2(self.conv1(a)))))
        return out + (x if self.short is None else self.short(a))


class WideResNet(nn.Module):
    """WRN-d-k: 3x3 stem (16), three pre-activation stages, final BN-ReLU, avgpool, Linear."""

    def __init__(self, depth: int = 10, widen: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(WideBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.head(self.blocks(self.stem(x))), 1))


def wide_resnet(num_classes: int = 10) -> WideResNet:
    return WideResNet(16, 2, num_classes)


class GroupedBottleneck(nn.Module):
    """ResNeXt / RegNet-Y block: 1x1, grouped 3x3 (optional SE after it), 1x1, residual add."""

    def __init__(
        self, cin: int, cout: int, stride: int, group_width: int, mid: int, se: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(cin, mid, 1)]
        layers.append(conv_bn(mid, mid, 3, stride, groups=mid // group_width))
        if se:
            layers.append(SqueezeExcite(mid, max(1, int(cin * se))))
        layers.append(conv_bn(mid, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + (x if self.short is None else self.short(x)))


class GroupedNet(nn.Module):
    """Stem, stages of :class:`GroupedBottleneck`, avgpool, Linear (ResNeXt / RegNet-Y).

    ``first_stride=2`` (RegNet): strided stem and every stage starts strided; ``1`` (ResNeXt
    for CIFAR): plain stem, the first stage keeps the resolution.
    """

    def __init__(
        self,
        stem: int,
        widths: list[int],
        depths: list[int],
        group_width: int,
        bottleneck: float,
        se: float,
        num_classes: int = 10,
        first_stride: int = 1,
    ) -> None:
        super().__init__()
        self.stem = conv_bn(3, stem, 3, 2 if first_stride == 2 else 1)
        blocks, cin = [], stem
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            for j in range(d):
                stride = (first_stride if i == 0 else 2) if j == 0 else 1
                mid = int(w * bottleneck)
                blocks.append(GroupedBottleneck(cin, w, stride, group_width, mid, se))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def resnext(num_classes: int = 10) -> GroupedNet:
    """ResNeXt-style: cardinality 8 x 4-wide groups in a 32-wide bottleneck, 4x expansion."""
    return GroupedNet(32, [128, 256, 512], [1, 2, 1], 4, 0.25, 0.0, num_classes)


def regnet_y(num_classes: int = 10) -> GroupedNet:
    """RegNetY-200MF-like: bottleneck ratio 1, group width 8, SE 0.25 of the block input."""
    return GroupedNet(16, [24, 56, 152], [1, 2, 3], 8, 1.0, 0.25, num_classes, first_stride=2)


def densenet(num_classes: int = 10) -> DenseNet:
    """DenseNet-BC (architectures.DenseNet): growth 8, blocks (3, 3, 3), concat everywhere."""
    return DenseNet(8, (3, 3, 3), 16, 4, 0.5, num_classes)
