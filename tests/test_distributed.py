"""Fine-tuning on two processes (torchrun, gloo on this CPU) takes the steps one process takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from irprune import finetune
from irprune.distributed import World
from tests.backends.test_finetune import _mlp

pytest.importorskip("torch")

ROWS = 100  # a tenth held out: 90 rows, 9 global batches of 10, 5 rows per rank


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_a_rank_takes_its_contiguous_share_of_the_global_batch() -> None:
    rows = np.arange(11)
    shares = [World(r, 3).shard(rows) for r in range(3)]
    assert [s.tolist() for s in shares] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert World().shard(rows) is rows


def _torchrun(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "irprune", *map(str, args)]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("bn", [False, True])
def test_two_processes_train_as_one(tmp_path: Path, bn: bool) -> None:
    """Same seed, same global batch: ``torchrun --nproc-per-node 2 -m irprune finetune`` (data
    read from a folder of shards) writes the weights one process gets from the same arrays, up
    to floating-point order. With the model's BN training on batch statistics (its
    BN's running statistics included), the statistics are the global batch's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((ROWS, 5)).astype(np.float32)
    teacher, student = _mlp(1), _mlp(2, bn_mean=0.5 if bn else None)
    onnx.save(teacher, str(tmp_path / "teacher.onnx"))
    onnx.save(student, str(tmp_path / "student.onnx"))
    (tmp_path / "data" / "x").mkdir(parents=True)
    for k, part in enumerate(np.array_split(x, 3)):
        np.save(tmp_path / "data" / "x" / f"part-{k}.npy", part)
    settings = {"epochs": 2, "batch": 10, "lr": 0.05, "temporary_bn": bn, "seed": 4}
    one = finetune(student, {"x": x}, teacher=teacher, **settings)
    assert one.best_epoch == 2  # training moved the weights, so the comparison means something
    flags = [] if bn else ["--no-temporary-bn"]
    run = _torchrun(
        "finetune", "student.onnx", "--data", "data", "--teacher", "teacher.onnx",
        "--epochs", "2", "--batch", "10", "--lr", "0.05", "--seed", "4", *flags,
        "-o", "two.onnx", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote") == 1  # rank 0 alone writes and reports
    two = _weights(onnx.load(str(tmp_path / "two.onnx")))
    start = _weights(student)
    trained = _weights(one.model)
    assert all(np.abs(trained[k] - start[k]).max() > 1e-3 for k in ("w1", "w2"))  # they moved
    for name, value in trained.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


_CSGD_SCRIPT = """
import os
import sys
import numpy as np
sys.path.insert(0, {root!r})
from irprune import csgd
from irprune.passes.rewrite.merge import cluster_groups
from tests.test_csgd import _setup
from tests.test_distributed import constants

graph, analysis, plan, data = _setup()
clusters = cluster_groups(graph, analysis, plan)
csgd.train(graph, analysis, clusters, data, epochs=2, lr=0.01, epsilon=0.1, batch=32)
if os.environ.get("RANK", "0") == "0":
    np.savez({out!r}, **constants(graph))
"""


def constants(graph: object) -> dict[str, np.ndarray]:
    return {v.name: np.asarray(v.const) for v in graph.values.values() if v.is_const}  # type: ignore[attr-defined]


def test_csgd_on_two_processes_trains_as_one(tmp_path: Path) -> None:
    """C-SGD training (``--csgd-epochs``) under torchrun: the same constants as one process
    (the demo net has BN, trained on the global batch's statistics)."""
    from irprune import csgd
    from irprune.passes.rewrite.merge import cluster_groups
    from tests.test_csgd import _setup

    graph, analysis, plan, data = _setup()
    before = constants(graph)
    clusters = cluster_groups(graph, analysis, plan)
    csgd.train(graph, analysis, clusters, data, epochs=2, lr=0.01, epsilon=0.1, batch=32)
    one = constants(graph)
    script = tmp_path / "train.py"
    out = tmp_path / "two.npz"
    script.write_text(_CSGD_SCRIPT.format(root=str(Path.cwd()), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(script)]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(out) as two:
        moved = [k for k in one if np.abs(one[k] - before[k]).max() > 1e-4]
        assert len(moved) > 3
        for name in moved:
            np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_prune_command_under_torchrun_writes_from_rank_zero(tmp_path: Path) -> None:
    """``torchrun ... -m irprune MODEL --rewrite merge --csgd-epochs 1``: C-SGD trains on both
    ranks, one process writes the model and prints the report."""
    from irprune.demo import build_demo_model

    onnx.save(build_demo_model(seed=0), str(tmp_path / "demo.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", input=rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    run = _torchrun(
        "demo.onnx", "--target-flops", "0.5", "--rewrite", "merge", "--csgd-epochs", "1",
        "--data", "train.npz", "--no-latency", "-o", "out.onnx", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote") == 1
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")), full_check=True)
