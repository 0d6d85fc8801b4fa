"""Fixtures: the demo model in both export styles, and the reference models exported from torch.

Exports are cached under a temp dir (override with IRPRUNE_TEST_CACHE) so repeated runs are fast.
Tests that need torch are skipped when it is not installed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session", autouse=True)
def _no_automatic_synthesis() -> Iterator[None]:
    """Without calibration data and a chosen rewrite, ``prune`` synthesises data for models
    small enough (minutes of CPU on the digits nets; passes/synthesize.py). Tests of other
    features, module fixtures included, run the pre-synthesis default (``compensate``);
    tests marked ``auto_synthesis`` get the real default back."""
    from irprune.passes import synthesize

    saved, synthesize.AUTO_SYNTHESIS = synthesize.AUTO_SYNTHESIS, False
    yield
    synthesize.AUTO_SYNTHESIS = saved


@pytest.fixture(autouse=True)
def _automatic_synthesis_when_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("auto_synthesis") is not None:
        from irprune.passes import synthesize

        monkeypatch.setattr(synthesize, "AUTO_SYNTHESIS", True)


@pytest.fixture(autouse=True)
def _irprune_logger_restored() -> Iterator[None]:
    """``cli.main`` sets the ``irprune`` logger's level (``-q``: errors only) and adds its
    handler; a later test's ``caplog`` would then see no warnings. Restored after each test."""
    logger = logging.getLogger("irprune")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


# Under CI (IRPRUNE_CI=1, set by .ci/run) a test skipped because a Python package is missing is
# an error: every package a test imports is declared in the extras the README's command installs.
STRICT_IMPORTS = os.environ.get("IRPRUNE_CI") == "1"
_MISSING = ("could not import", "No module named")


def _missing_package(longrepr: object) -> str | None:
    text = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
    return text if any(m in text for m in _MISSING) else None


def _fail_on_missing_package(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (STRICT_IMPORTS and report.skipped):
        return
    reason = _missing_package(report.longrepr)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"skipped for a missing Python package under CI: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_on_missing_package(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_on_missing_package(outcome.get_result())
