"""Issue #4's quality bound, measured: the calibrated default loses at most 1 point of top-1
accuracy at 0.5 FLOPs without fine-tuning, on the three digits-trained nets in both export styles.

Slow (``-m slow``): the nets are trained once (about 3.5 minutes on one core) and cached under
``$IRPRUNE_DIGITS_CACHE`` (default: the temp dir's ``irprune-digits``, shared with
``benchmarks/quality.py``); each case then prunes with the defaults (calibration: 256 training
images) and scores the 450 held-out test images, 5-20 s per case.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from irprune.api import prune
from models import digits

CACHE = Path(os.environ.get("IRPRUNE_DIGITS_CACHE", Path(tempfile.gettempdir()) / "irprune-digits"))
MAX_POINTS_LOST = 1.0


@pytest.fixture(scope="module")
def split() -> digits.DigitsSplit:
    return digits.load_digits_split(seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("style", ["folded", "explicit"])
@pytest.mark.parametrize("name", ["resnet20", "vgg_small", "mobilenetv2_small"])
def test_calibrated_default_within_one_point_at_half_flops(
    name: str, style: str, split: digits.DigitsSplit
) -> None:
    path = digits.cached_digits_onnx(name, style, CACHE)
    calib = {"input": split.x_train[digits.calib_subset(split)]}
    original = digits.accuracy(path, split.x_test, split.y_test)
    result = prune(path, target_flops=0.5, calib=calib, measure_latency=False)
    assert result.report["settings"]["rewrite"] == "reconstruct"
    assert result.report["settings"]["round_to"] == 16
    assert 0.48 <= result.report["cost"]["ratio"]["macs"] <= 0.50
    pruned = digits.accuracy(result.model, split.x_test, split.y_test)
    lost = 100 * (original - pruned)
    assert original > 0.95  # the cached net is the trained one
    assert lost <= MAX_POINTS_LOST, f"{name} {style}: {100 * pruned:.2f}% vs {100 * original:.2f}%"
