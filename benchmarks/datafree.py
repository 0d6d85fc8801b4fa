"""Data-free pruning: synthetic calibration data, then the calibrated pipeline (reconstruct).

For each digits-trained net (models/digits.py) and export style, each synthesis method makes
inputs from the model alone (``irprune.passes.synthesize``), prunes with them as ``--calib`` to
--target-flops (``reconstruct``, l1, global, default round-to) and measures top-1 accuracy on the
held-out test split. No real image is seen. Methods:

- ``bn``: BN-statistics inversion (ZeroQ / DeepInversion): needs explicit BatchNormalization;
- ``prior``: for folded exports, every Conv output is pushed to mean 0 / std 1 per channel
  (the statistics of a BN output whose gamma stayed near 1 and beta near 0: a prior, not a
  measurement);
- ``class``: inputs that make the model confident of evenly assigned classes (+ TV prior);
- ``noise``: Gaussian N(0, 1) inputs, no optimisation.

    python benchmarks/datafree.py                          # all nets, styles, methods
    python benchmarks/datafree.py --nets resnet20 --methods bn --iterations 300
    python benchmarks/datafree.py --resnet50               # synthesis cost on ResNet-50 (224 px)

Writes benchmarks/results/datafree.json. Synthesis seconds are CPU seconds of this process
(process_time) and wall seconds; on a shared machine the CPU seconds are the ones to compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from irprune.api import prune
from irprune.errors import IrpruneError
from irprune.passes.synthesize import METHODS, SyntheticOptions
from models.digits import accuracy, cached_digits_onnx, load_digits_split

NETS = ("resnet20", "vgg_small", "mobilenetv2_small")
STYLES = ("folded", "explicit")


def run_one(path: Path, options: SyntheticOptions, args: argparse.Namespace) -> dict[str, Any]:
    split = load_digits_split(0)
    row: dict[str, Any] = {"options": dataclasses.asdict(options)}
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        synthesis = options.run(onnx.load(path), seed=args.seed)
    except IrpruneError as exc:
        return {**row, "error": str(exc)}
    row["synthesis"] = synthesis.report
    row["synthesis_cpu_s"] = time.process_time() - cpu
    row["synthesis_wall_s"] = time.perf_counter() - wall
    result = prune(path, target_flops=args.target, calib=synthesis.feeds, measure_latency=False)
    row["accuracy"] = accuracy(result.model, split.x_test, split.y_test)
    row["mac_ratio"] = result.report["cost"]["ratio"]["macs"]
    return row


def digits(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    split = load_digits_split(0)
    for net, style, method in itertools.product(args.nets, args.styles, args.methods):
        if method == "bn" and style == "folded":
            continue  # no statistics to invert (the error is tested)
        path = cached_digits_onnx(net, style, args.cache_dir)
        options = SyntheticOptions(
            samples=args.samples, iterations=args.iterations, batch=args.batch, lr=args.lr,
            tv=args.tv, method=method,
            class_loss=1.0 if method == "class" else 0.0,
        )  # fmt: skip
        row = {"net": net, "style": style, "method": method, "target": args.target}
        row["original"] = accuracy(path, split.x_test, split.y_test)
        row.update(run_one(path, options, args))
        if "accuracy" in row:
            row["drop_points"] = 100 * (row["original"] - row["accuracy"])
        rows.append(row)
        acc = f"{row['accuracy']:.4f}" if "accuracy" in row else "ERR " + row["error"][:60]
        print(
            f"{net:18} {style:8} {method:6} {acc}  (original {row['original']:.4f}, synthesis "
            f"{row.get('synthesis_cpu_s', 0):.0f} cpu-s / {row.get('synthesis_wall_s', 0):.0f} s)",
            flush=True,
        )
        save(rows, args.out)
    return rows


def resnet50(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time a few synthesis iterations on the full-size ResNet-50 and extrapolate."""
    from models.export import cached_export

    path = cached_export("resnet50", "explicit", args.bench_cache, size="full")
    options = SyntheticOptions(samples=args.r50_batch, iterations=args.r50_iterations,
                               batch=args.r50_batch)  # fmt: skip
    cpu, wall = time.process_time(), time.perf_counter()
    synthesis = options.run(onnx.load(path), seed=args.seed)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    per = cpu / (options.samples * (options.iterations + 1))
    default = SyntheticOptions()
    row = {
        "model": "resnet50",
        "measured": synthesis.report,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_s_per_sample_iteration": per,
        "default_extrapolated_cpu_s": per * default.samples * (default.iterations + 1),
    }
    print(json.dumps(row, indent=1, default=float))
    save([row], args.out.with_name("datafree_resnet50.json"))
    return [row]


def save(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1, default=float))
    tmp.replace(path)


def parse() -> argparse.Namespace:
    default = SyntheticOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", nargs="+", default=list(NETS))
    p.add_argument("--styles", nargs="+", default=list(STYLES))
    p.add_argument(
        "--methods", nargs="+", default=[m for m in METHODS if m != "auto"], choices=METHODS
    )
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=default.samples)
    p.add_argument("--iterations", type=int, default=default.iterations)
    p.add_argument("--batch", type=int, default=default.batch)
    p.add_argument("--lr", type=float, default=default.lr)
    p.add_argument(
        "--tv",
        type=float,
        default=default.tv,
        help="total-variation weight (default: the method's DEFAULT_TV)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resnet50", action="store_true", help="time the synthesis on ResNet-50")
    p.add_argument("--r50-batch", type=int, default=8)
    p.add_argument("--r50-iterations", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-digits")
    p.add_argument("--bench-cache", type=Path, default=Path("/tmp/irprune-bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/datafree.json"))
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.resnet50:
        resnet50(args)
    else:
        digits(args)


if __name__ == "__main__":
    main()
