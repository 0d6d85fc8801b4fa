"""The defaults on the digits nets over several training seeds (issue #14: one seed's nets do not
carry).

For each seed, each net of ``models/digits.py`` is trained on scikit-learn's bundled digits set
(that seed's stratified split, that seed's initialisation and augmentation order) and exported
BN-folded and with explicit BN; each is pruned with irprune's defaults at each ``--targets``
fraction of MACs, with ``--calib`` (``--calib-samples`` training images) and without data, and
its test accuracy measured. Prints and writes per net, style, target and mode the mean, worst and
spread of the points lost over the seeds; ``--doc`` gets the table.

    python benchmarks/digits_seeds.py                         # seeds 0-4, 0.5 (long)
    python benchmarks/digits_seeds.py --seeds 1 2 --nets resnet20 --targets 0.5 0.3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from irprune.api import prune
from models.digits import accuracy, cached_digits_onnx, calib_subset, load_digits_split

NETS = ("resnet20", "vgg_small", "mobilenetv2_small")
STYLES = ("folded", "explicit")
MODES = ("calibrated", "data-free")


def run_one(net: str, style: str, seed: int, target: float, mode: str, cache: Path) -> dict:
    split = load_digits_split(seed)
    path = cached_digits_onnx(net, style, cache, seed=seed)  # type: ignore[arg-type]
    before = accuracy(path, split.x_test, split.y_test)
    calib = None
    if mode == "calibrated":
        calib = {"input": split.x_train[calib_subset(split, 128, seed)]}
    result = prune(str(path), target_flops=target, calib=calib, measure_latency=False, seed=0)
    after = accuracy(result.model, split.x_test, split.y_test)
    return {
        "net": net, "style": style, "seed": seed, "target": target, "mode": mode,
        "before": before, "after": after, "criterion": result.report["settings"]["criterion"],
    }  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| net | style | target | mode | seeds | original (mean) | lost, mean | lost, worst |"
        " lost, per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["net"], r["style"], r["target"], r["mode"]) for r in rows)
    for net, style, target, mode in keys:
        group = [
            r
            for r in rows
            if (r["net"], r["style"], r["target"], r["mode"]) == (net, style, target, mode)
        ]
        lost = [100 * (r["before"] - r["after"]) for r in sorted(group, key=lambda r: r["seed"])]
        base = statistics.mean(100 * r["before"] for r in group)
        lines.append(
            f"| {net} | {style} | {target} | {mode} | {len(group)} | {base:.1f} | "
            f"{statistics.mean(lost):.1f} | {max(lost):.1f} | "
            + ", ".join(f"{x:.1f}" for x in lost)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    p.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    p.add_argument("--targets", nargs="+", type=float, default=[0.5])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-digits")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/digits_seeds.json"))
    p.add_argument("--doc", type=Path, default=Path("docs/digits_seeds.md"))
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        for net in args.nets:
            for style in args.styles:
                for target in args.targets:
                    for mode in args.modes:
                        row = run_one(net, style, seed, target, mode, args.cache_dir)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    table = summary(rows)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/digits_seeds.py " + " ".join(sys.argv[1:])
    args.doc.write_text(
        "# The defaults on the digits nets, over training seeds\n\n"
        "Written by `benchmarks/digits_seeds.py`; do not edit by hand. Points of test accuracy\n"
        "lost by irprune's defaults (calibrated: 128 training images as `--calib`; data-free: no\n"
        "data), per net trained on scikit-learn's digits with each seed (split, initialisation\n"
        f"and augmentation order).\n\nCommand: `{command.strip()}`\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
