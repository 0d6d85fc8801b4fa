"""Every command in README.md's code blocks, and the staged-API examples of docs/usage.md, run by
the test suite (issue #18).

The blocks run verbatim in a temporary folder that holds the files they name, generated here
(nothing is substituted in the commands themselves):

- ``model.onnx``: the bundled demo model (``irprune.demo``, explicit BN, input ``input``, at
  32 x 32; at 128 x 128 for the slow test, where a latency target of 0.5 is reachable);
- ``rec.onnx``: the same network with its input renamed ``x`` and H, W symbolic, standing in for
  a text recognizer deployed at 48x320;
- ``calib.npz``: 32 random inputs for ``model.onnx``; ``train.npz``: 64 more;
- ``MyNet`` (Python blocks): a small torch CNN, put in the blocks' namespace.

Shell blocks: ``irprune ...`` and ``python -m irprune ...`` run through the CLI entry point
(``irprune.cli.main``) and must exit 0; ``pip install`` lines are checked against pyproject.toml
(the extras exist, the ``irprune`` script is declared) and ``python -m pytest`` is this suite.
Commands slower than a few seconds (``--target-latency`` times every op) are only parsed by the
CLI's argument parser in the default run, and run by the ``slow`` test. Python blocks run in
order in one namespace per file.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from irprune.cli import _prune_parser, main
from irprune.demo import build_demo_model

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
USAGE = ROOT / "docs" / "usage.md"
SLOW_OPTIONS = ("--target-latency",)  # latency targets time every op: tens of seconds
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def commands(block: str) -> Iterator[list[str]]:
    """Each command of a shell block: one per line and per ``&&``, comments dropped."""
    for line in block.splitlines():
        for part in line.split("&&"):
            argv = shlex.split(part, comments=True)
            if argv:
                yield argv


def _demo(path: Path, size: int, *, symbolic: bool = False) -> None:
    """The demo network (global pooling before its head) at ``size`` x ``size``."""
    model = build_demo_model(seed=0, explicit_bn=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = size
    if symbolic:
        old = model.graph.input[0].name
        model.graph.input[0].name = "x"
        for node in model.graph.node:
            node.input[:] = ["x" if name == old else name for name in node.input]
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def _files(folder: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> Path:
    """The files the README names (see the module docstring), and the folder as cwd."""
    _demo(folder / "model.onnx", size)
    _demo(folder / "rec.onnx", size, symbolic=True)
    rng = np.random.default_rng(0)
    for name, n in (("calib.npz", 32), ("train.npz", 64)):
        inputs = rng.standard_normal((n, 3, size, size)).astype(np.float32)
        np.savez(folder / name, input=inputs)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("IRPRUNE_CACHE", str(folder / "cache"))  # latency tables
    return folder


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _files(tmp_path, monkeypatch, 32)


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _check_pip(argv: list[str]) -> None:
    """``pip install -e .`` or ``pip install -e ".[extra,...]"``: the extras exist."""
    assert argv[:3] == ["pip", "install", "-e"], argv
    match = re.fullmatch(r"\.(?:\[([\w,]+)\])?", argv[3])
    assert match is not None and len(argv) == 4, argv
    extras = _pyproject()["project"]["optional-dependencies"]
    for extra in filter(None, (match.group(1) or "").split(",")):
        assert extra in extras, f"README installs extra {extra!r}, not in pyproject.toml"


def _run(argv: list[str], *, slow: bool, capsys: pytest.CaptureFixture[str]) -> None:
    shown = shlex.join(argv)
    if argv[0] == "pip":
        _check_pip(argv)
        return
    if argv[:3] == ["python", "-m", "pytest"]:
        return  # this suite
    if argv[:3] == ["python", "-m", "irprune"]:
        args = argv[3:]
    else:
        assert argv[0] == "irprune", f"README command not checked by any test: {shown}"
        assert "irprune" in _pyproject()["project"]["scripts"]
        args = argv[1:]
    if any(option in args for option in SLOW_OPTIONS) and not slow:
        _prune_parser().parse_args(args)  # parses; run by the slow test
        return
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # --help
        code = int(exc.code or 0)
    _, err = capsys.readouterr()
    assert code == 0, f"`{shown}` exited {code}: {err}"


def _run_shell_blocks(slow: bool, capsys: pytest.CaptureFixture[str]) -> list[str]:
    ran = []
    for block in blocks(README, "bash"):
        for argv in commands(block):
            _run(argv, slow=slow, capsys=capsys)
            ran.append(shlex.join(argv))
    return ran


def test_the_readme_shell_commands_run(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran = _run_shell_blocks(False, capsys)
    assert len(ran) >= 10, ran  # the blocks were found
    assert (folder / "model.pruned.onnx").is_file() and (folder / "plan.json").is_file()
    assert (folder / "out.onnx").is_file() and (folder / "groups.dot").is_file()
    assert (folder / "irprune-demo" / "demo.pruned.onnx").is_file()


@pytest.mark.slow
def test_the_readme_shell_commands_run_slow_ones_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 128 x 128: at 32 x 32 the demo's fixed per-op costs keep its latency above half."""
    _files(tmp_path, monkeypatch, 128)
    _run_shell_blocks(True, capsys)


def _namespace() -> dict[str, Any]:
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):  # type: ignore[name-defined]
        """The README's ``MyNet``: any module torch.fx can trace."""

        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 32, 3, stride=4, padding=1),
                torch.nn.BatchNorm2d(32),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 32, 3, stride=2, padding=1),
                torch.nn.BatchNorm2d(32),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
            )
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            return self.head(torch.flatten(self.features(x), 1))

    return {"__name__": "readme", "MyNet": Net}


WRITES = {  # what each file's Python blocks write: they ran through
    README: {"model.pruned.onnx", "model.trained.onnx", "model.finetuned.onnx", "mynet.pruned.onnx",
             "model.staged.onnx", "plan.json"},
    USAGE: {"mynet.pruned.onnx", "staged.plan.json", "staged.onnx", "widths.onnx"},
}  # fmt: skip


@pytest.mark.parametrize("doc", [README, USAGE], ids=["README", "usage"])
def test_the_python_examples_run(doc: Path, folder: Path) -> None:
    namespace = _namespace()
    examples = blocks(doc, "python")
    assert examples
    for i, code in enumerate(examples):
        try:
            exec(compile(code, f"{doc.name}[python block {i}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{doc.name} python block {i} failed: {exc!r}\n{code}") from exc
    missing = WRITES[doc] - set(os.listdir(folder))
    assert not missing, f"{doc.name}'s examples did not write {sorted(missing)}"


def test_the_readme_stays_short() -> None:
    assert len(README.read_text().splitlines()) <= 250


def test_the_scripts_the_readme_names_exist() -> None:
    for script in re.findall(r"python (benchmarks/\w+\.py)", README.read_text()):
        assert (ROOT / script).is_file(), script
