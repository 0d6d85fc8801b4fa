"""Fine-tuning on one process and on two (torchrun, gloo): accuracy and samples per second.

A digits net (trained here, cached) is pruned with ``--rewrite drop`` to --target (no repair,
so fine-tuning has something to recover), then fine-tuned with the same settings (seed, global
batch, epochs, labels plus distillation from the original) by ``irprune finetune`` on one
process and by ``torchrun --nproc-per-node 2 -m irprune finetune`` with the training images
written as a folder of .npy shards; top-1 % on the 450 held-out test images, and training
samples per second (wall time of the command, startup included, one torch thread per process).

    python benchmarks/distributed.py                       # resnet20 explicit, 3 epochs
    python benchmarks/distributed.py --nets vgg_small --epochs 5

Writes benchmarks/results/distributed.json and docs/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from irprune import prune  # noqa: E402
from models.digits import accuracy, cached_digits_onnx, load_digits_split  # noqa: E402

CACHE = Path(os.environ.get("IRPRUNE_DIGITS_CACHE", Path(tempfile.gettempdir()) / "irprune-digits"))


def _command(procs: int, args: list[str]) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "irprune", *args]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, "--nproc-per-node", str(procs), "-m", "irprune", *args]


def _train(work: Path, procs: int, epochs: int, batch: int) -> tuple[float, Path]:
    out = work / f"tuned-{procs}.onnx"
    args = ["finetune", "pruned.onnx", "--data", "data", "--labels", "labels",
            "--teacher", "original.onnx", "--epochs", str(epochs), "--batch", str(batch),
            "-q", "-o", out.name]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(_command(procs, args), cwd=work, env=env, check=True)
    return time.perf_counter() - start, out


def bench(name: str, style: str, target: float, epochs: int, batch: int) -> dict[str, Any]:
    split = load_digits_split(0)
    original = cached_digits_onnx(name, style, CACHE)
    pruned = prune(original, target_flops=target, rewrite="drop", measure_latency=False)
    test = (split.x_test, split.y_test)
    row: dict[str, Any] = {"net": name, "style": style, "target": target, "epochs": epochs,
                           "batch": batch, "original": accuracy(original, *test),
                           "pruned": accuracy(pruned.model, *test)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx.save(onnx.load(str(original)), str(work / "original.onnx"))
        pruned.save(work / "pruned.onnx")
        (work / "data" / "input").mkdir(parents=True)
        for k, part in enumerate(np.array_split(split.x_train, 4)):
            np.save(work / "data" / "input" / f"part-{k}.npy", part)
        np.save(work / "data" / "labels.npy", split.y_train)
        for procs in (1, 2):
            seconds, out = _train(work, procs, epochs, batch)
            row[f"accuracy_{procs}"] = accuracy(out, *test)
            row[f"samples_per_s_{procs}"] = epochs * len(split.x_train) / seconds
    print(json.dumps(row))
    return row


def render(rows: list[dict[str, Any]], note: str = "") -> str:
    lines = [
        "# Fine-tuning on two processes (issue #17)",
        "",
        "Written by `benchmarks/distributed.py`; do not edit by hand. A digits net pruned with "
        "`--rewrite drop` (no repair), then `irprune finetune` with labels and the original as "
        "teacher, same seed and global batch, on one process and under `torchrun "
        "--nproc-per-node 2` (gloo, one torch thread per process, data as a folder of .npy "
        "shards). Top-1 % on the 450 test images; samples per second of the whole command "
        "(startup included) on this 2-core machine.",
        *(["", note] if note else []),
        "",
        "| net | export | target | epochs | original | pruned | 1 process | 2 processes | "
        "samples/s, 1 | samples/s, 2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["net"], r["style"], r["target"], r["epochs"], *(
            f"{100 * r[k]:.2f}" for k in ("original", "pruned", "accuracy_1", "accuracy_2")
        ), f"{r['samples_per_s_1']:.0f}", f"{r['samples_per_s_2']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=["resnet20"])
    p.add_argument("--styles", nargs="+", default=["explicit"])
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "distributed.md")
    p.add_argument("--note", default="", help="a line on the machine's state, for the doc")
    p.add_argument("--render", type=Path, help="only re-render the doc from this JSON")
    args = p.parse_args(argv)
    if args.render:
        args.doc.write_text(render(json.loads(args.render.read_text()), args.note))
        return
    rows = [
        bench(net, style, args.target, args.epochs, args.batch)
        for net in args.nets
        for style in args.styles
    ]
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    args.doc.write_text(render(rows, args.note))


if __name__ == "__main__":
    main()
