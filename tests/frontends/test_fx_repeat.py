"""``Tensor.repeat`` / ``torch.tile`` lower to ONNX Tile on both tracers (issue 17: XCiT's
positional encoding, ``pos.repeat(B, 1, 1, 1)``).

The module below repeats by run-time sizes read off its tensors (the batch, the height, the
width), repeats a rank-1 tensor by three sizes (Unsqueeze to rank 3 first, as torch reads it)
and tiles with fewer dims than the rank (1s prepended). It lowers with nothing kept opaque,
computes what torch computes at another batch than the one traced, and prunes: the channel
group that passes through a run-time Tile (its channel entry the literal 1) is pruned, and the
pruned model equals the lowered original with the removed channels masked (DESIGN.md section 4);
``to_torch()`` agrees with onnxruntime.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from irprune.api import prune  # noqa: E402
from irprune.emit.verify import session  # noqa: E402
from irprune.frontends.fx import lower, lowered_by, to_onnx  # noqa: E402
from tests.frontends.compare import (  # noqa: E402, F401
    assert_masked_and_torch_agree,
    one_thread,
    rel,
    torch_outputs,
)

TOLERANCE = 1e-4
SHAPE = (1, 3, 6, 5)


class _Repeats(nn.Module):
    """A position map built from the input's run-time sizes and repeated by the run-time batch,
    as a fourth input channel of conv c1 -> c1's first row repeated down the height and its
    first sample repeated by the run-time batch, added back -> conv c2 -> tiled twice in
    height (``torch.tile``, two dims of four) -> c3."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.c3 = nn.Conv2d(6, 2, 1)
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, x: Any) -> Any:
        b, _, h, w = x.shape
        pos = torch.arange(1, w + 1).to(torch.float32).repeat(1, h, 1)  # 3 sizes, rank 1
        pos = pos[:, None].repeat(b, 1, 1, 1) * self.scale  # (b, 1, h, w)
        y = torch.relu(self.c1(torch.cat([x, pos], 1)))
        top = y[:, :, :1].repeat(1, 1, y.size(2), 1)  # a static size (folded to a constant)
        first = y[:1].repeat(y.size(0), 1, 1, 1)  # the run-time batch; channels once
        z = torch.relu(self.c2(y + top + first))
        return self.c3(torch.tile(z, (2, 1)))


def _example() -> Any:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def _batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, *SHAPE[1:])).astype(np.float32)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_repeat_and_tile_lower_and_match_torch(tracer: str) -> None:
    torch.manual_seed(0)
    module = _Repeats().eval()
    model = to_onnx(module, _example(), tracer=tracer)
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions  # nothing kept opaque
    assert sum(n.op_type == "Tile" for n in model.graph.node) >= 3
    for n in (1, 3):
        got = session(model).run(None, {"x": _batch(n)})
        assert rel(torch_outputs(module, {"x": _batch(n)}, ["x"]), got) <= TOLERANCE


def test_auto_lowers_repeat_by_fx() -> None:
    assert lowered_by(lower(_Repeats().eval(), _example())) == "fx"


def test_channels_through_a_runtime_repeat_prune_exactly() -> None:
    torch.manual_seed(0)
    module = _Repeats().eval()
    example = _example()
    lowered = to_onnx(module, example)
    result = prune(
        module, example_inputs=example, target_flops=0.6, rewrite="drop", measure_latency=False,
        round_to=1,
    )  # fmt: skip
    assert result.report["settings"]["tracer"] == "fx"
    (through_tile,) = [g for g in result.report["groups"] if g["size"] == 8]
    assert not through_tile["frozen"] and through_tile["kept"] < 8
    assert result.report["cost"]["ratio"]["macs"] <= 0.6
    for batch in (2, 3):
        assert_masked_and_torch_agree(lowered, result, batch, TOLERANCE)
