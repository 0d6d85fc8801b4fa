"""The fused per-channel moments: values as mean / biased var, gradients by finite differences."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from irprune.backends.torch_moments import channel_moments  # noqa: E402


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (6, 3), (2, 5, 7)])
def test_values_and_gradients(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 3).requires_grad_(True)
    mean, var = channel_moments(x)
    dims = [d for d in range(x.dim()) if d != 1]
    assert torch.allclose(mean, x.mean(dim=dims))
    assert torch.allclose(var, x.var(dim=dims, unbiased=False))
    assert torch.autograd.gradcheck(channel_moments, (x,))


def test_needs_a_channel_axis() -> None:
    with pytest.raises(ValueError, match="channel axis"):
        channel_moments(torch.zeros(4))
