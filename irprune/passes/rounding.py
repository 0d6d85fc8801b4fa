"""Per-group channel rounding: which multiple a group's kept width snaps to.

``--round-to N`` asks for kept widths that are multiples of N (onnxruntime's blocked convolution
kernels want multiples of 8 or 16 on AVX2 CPUs). For a narrow group a step of N is a large
fraction of its width: a 16-wide group can only be kept whole at N = 16, a 32-wide one whole or
halved. So a group narrower than ``MIN_STEPS`` x N is rounded to N halved (repeatedly), but never
below ``MIN_ROUND`` (the multiple the fast kernels need): at N = 16, groups under 48 channels
round to 8, wider ones to 16. A request of ``MIN_ROUND`` or less applies as given.

The finer steps cost speed where the CPU's blocked kernels want the full multiple (AVX-512:
blocks of 16), so ``allocation`` uses them only when the plan at N would remove more than half
of some group (measured on the digits nets: ResNet-20 at 0.5 FLOPs, N = 16, keeps its 16-wide
stage and cuts its 64-wide stage to 16: -1.8 points; with the narrow groups at 8: -0.2).
"""

from __future__ import annotations

import numpy as np

MIN_STEPS = 3  # a group gets at least this many rounding steps across its width ...
MIN_ROUND = 8  # ... unless that needs a multiple below this


def group_step(size: int, round_to: int) -> int:
    """The multiple a group of ``size`` channels rounds to under ``--round-to round_to``."""
    n = max(int(round_to), 1)
    while n // 2 >= MIN_ROUND and size < MIN_STEPS * n:
        n //= 2
    return n


def group_steps(sizes: np.ndarray, round_to: int) -> np.ndarray:
    """``group_step`` of every size, as a float array aligned with ``sizes``."""
    return np.array([group_step(int(s), round_to) for s in sizes], dtype=np.float64)
