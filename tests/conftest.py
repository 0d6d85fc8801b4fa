"""Fixtures: the demo model in both export styles, and the reference models exported from torch.

Exports are cached under a temp dir (override with IRPRUNE_TEST_CACHE) so repeated runs are fast.
Tests that need torch are skipped when it is not installed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from irprune.demo import build_demo_model

CACHE = Path(os.environ.get("IRPRUNE_TEST_CACHE", Path(tempfile.gettempdir()) / "irprune-tests"))
REFERENCE = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "densenet_small"]
STYLES = ["folded", "explicit"]


@pytest.fixture(params=STYLES)
def demo_model(request: pytest.FixtureRequest) -> onnx.ModelProto:
    return build_demo_model(seed=0, explicit_bn=request.param == "explicit")


@pytest.fixture(scope="session")
def reference_onnx() -> Callable[[str, str], Path]:
    pytest.importorskip("torch")
    from models.export import cached_export

    CACHE.mkdir(parents=True, exist_ok=True)

    def get(name: str, style: str) -> Path:
        return cached_export(name, style, CACHE)

    return get


@pytest.fixture(scope="session")
def zoo_onnx() -> Callable[[str, str], Path]:
    """Cached, torch-verified export of a zoo model (models/zoo.py) in one style.

    Skips without torch; ``transformers`` models also skip without ``transformers``.
    """
    pytest.importorskip("torch")
    from models.zoo import ZOO
    from models.zoo_export import cached_zoo_export

    CACHE.mkdir(parents=True, exist_ok=True)

    def get(name: str, style: str) -> Path:
        if ZOO[name].family == "transformers":
            pytest.importorskip("transformers")
        return cached_zoo_export(name, style, CACHE)

    return get


CliRun = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRun:
    """Run ``irprune`` in-process; returns (exit code, stdout, stderr)."""
    from irprune.cli import main

    def run(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
