"""Drop + short fine-tuning on the digits nets: test accuracy before and after.

For each net and export style: prune the ONNX file to --target-flops with ``--rewrite drop``
(the exact masked-equivalence rewrite, no repair; ``--rewrite reconstruct`` starts from the
least-squares repair on 256 training images instead), then fine-tune it with ``irprune.finetune``
on the whole TRAINING split for --epochs, in each mode:

- ``distill``: no labels, knowledge distillation from the original ONNX model;
- ``labels``: cross-entropy on the training labels plus distillation.

Top-1 accuracy is measured in onnxruntime on the held-out test split. BN (explicit exports)
trains on batch statistics. No augmentation.

    python benchmarks/finetune.py                          # resnet20, both styles, 5 epochs
    python benchmarks/finetune.py --nets resnet20 --styles explicit --epochs 3

Writes benchmarks/results/finetune.json and prints one row per setting.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from irprune import finetune, prune
from models.digits import accuracy, cached_digits_onnx, calib_subset, load_digits_split

MODES = ("distill", "labels")


def bench(name: str, style: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    split = load_digits_split(0)
    test = (split.x_test, split.y_test)
    path = cached_digits_onnx(name, style, args.cache_dir)
    original = accuracy(path, *test)
    calib = None if args.rewrite == "drop" else {"input": split.x_train[calib_subset(split)]}
    pruned = prune(
        path, target_flops=args.target, rewrite=args.rewrite, calib=calib, measure_latency=False
    )
    before = accuracy(pruned.model, *test)
    base = {
        "net": name,
        "style": style,
        "target_flops": args.target,
        "rewrite": args.rewrite,
        "mac_ratio": pruned.report["cost"]["ratio"]["macs"],
        "original": original,
        "pruned": before,
    }
    print(f"{name} {style}: original {original:.4f}, {args.rewrite} {args.target}: {before:.4f}")
    rows = []
    for mode in args.modes:
        labels = split.y_train if mode == "labels" else None
        start = time.perf_counter()
        result = finetune(
            pruned.model,
            {"input": split.x_train},
            teacher=path,
            labels=labels,
            epochs=args.epochs,
            lr=args.lr,
            optimizer=args.optimizer,
            batch=args.batch,
            temporary_bn=not args.no_temporary_bn,
        )
        after = accuracy(result.model, *test)
        row = {
            **base,
            "mode": mode,
            "epochs": args.epochs,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "batch": args.batch,
            "temporary_bn": not args.no_temporary_bn,
            "finetuned": after,
            "points_lost": 100 * (original - after),
            "losses": result.losses,
            "seconds": time.perf_counter() - start,
        }
        print(
            f"  {mode:8} {args.epochs} epochs: {after:.4f} "
            f"({-row['points_lost']:+.2f} points vs original, {row['seconds']:.0f} s)",
            flush=True,
        )
        rows.append(row)
    return rows


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", nargs="+", default=["resnet20"])
    p.add_argument("--styles", nargs="+", default=["folded", "explicit"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--rewrite", default="drop", help="drop, or a repair to start from")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--optimizer", default="sgd", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--no-temporary-bn", action="store_true", help="train folded nets as they are")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-digits")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune.json"))
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name, style in itertools.product(args.nets, args.styles):
        rows += bench(name, style, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1, default=float))
        tmp.replace(args.out)
    print(f"\nwrote {args.out} ({len(rows)} rows, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
