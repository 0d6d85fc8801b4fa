"""Depth pruning through the torch frontends (issue #16): a torch residual net pruned with
``depth="only"`` through torch.fx and torch.export loses whole blocks, and the written model
equals the torch module with that many blocks replaced by the identity (an oracle on the torch
side, sharing nothing with the ONNX pass: some subset of the blocks must match), while
``to_torch()`` equals onnxruntime."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from irprune.api import prune  # noqa: E402
from tests.frontends.compare import one_thread, rel  # noqa: E402, F401
from tests.helpers import run  # noqa: E402

BLOCKS = 4


class Basic(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.skip = False  # the oracle: the block as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip:
            return x
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList(Basic(16) for _ in range(BLOCKS))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


def _net() -> ResNet:
    torch.manual_seed(0)
    net = ResNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as a trained net has
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def _skipping(net: ResNet, skipped: tuple[int, ...], x: np.ndarray) -> np.ndarray:
    for k, block in enumerate(net.blocks):
        block.skip = k in skipped
    try:
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()
    finally:
        for block in net.blocks:
            block.skip = False


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_depth_only_removes_torch_blocks(tracer: str) -> None:
    net = _net()
    example = torch.randn(2, 3, 12, 12)
    result = prune(
        net, example_inputs=(example,), tracer=tracer, target_flops=0.52, depth="only",
        rewrite="drop", measure_latency=False, round_to=1,
    )  # fmt: skip
    removed = result.report["blocks_removed"]
    assert 1 <= len(removed) < BLOCKS
    assert result.report["settings"]["tracer"] == tracer
    assert all(g["kept"] == g["size"] for g in result.report["groups"])  # no width pruning
    x = np.random.default_rng(1).standard_normal((3, 3, 12, 12)).astype(np.float32)
    (got,) = run(result.model, {result.model.graph.input[0].name: x})
    errors = {
        skipped: rel([_skipping(net, skipped, x)], [got])
        for skipped in itertools.combinations(range(BLOCKS), len(removed))
    }
    assert min(errors.values()) < 1e-5, errors
    assert sorted(errors.values())[1] > 1e-3  # the subsets are told apart
    with torch.no_grad():
        mine = result.to_torch().eval()(torch.from_numpy(x)).numpy()
    assert rel([got], [mine]) < 1e-4
