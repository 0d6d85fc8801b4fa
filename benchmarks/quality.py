"""Pruning quality on real data: test accuracy of digits-trained nets pruned without fine-tuning.

For each net (resnet20, vgg_small, mobilenetv2_small, trained on scikit-learn's bundled digits by
models/digits.py) and export style (BN folded / explicit), at each --target-flops, for every
criterion x strategy x rewrite: prune the ONNX file with irprune and measure top-1 accuracy on the
held-out test split. Calibration data (for data-driven criteria, sensitivity and the calibrated
rewrites) is a seeded subset of the TRAINING split only.

    python benchmarks/quality.py                      # the full grid (long: run in background)
    python benchmarks/quality.py --quick              # target 0.5 and a reduced grid
    python benchmarks/quality.py --training           # the training rows (see below)
    python benchmarks/quality.py --only-synthetic     # just the synthetic-data rows

With --synthetic (on by default) each net, style and target also gets one data-free row that
makes its calibration data from the model (``--calib synthetic``: BN-statistics inversion, torch
extra; l1/global/reconstruct); folded exports have no BN statistics and get the BN-output prior.

Writes benchmarks/results/quality.json (every row) and prints the best data-free and calibrated
setting per net, style and target, plus the rows of the defaults.

``--training`` runs nothing: it reads the results of ``benchmarks/csgd.py`` (C-SGD + merge) and
``benchmarks/finetune.py`` (drop + fine-tuning) from benchmarks/results/ (``--csgd-results``,
``--finetune-results``: several files, later ones replace earlier rows of the same net and
style) and prints, per net and style, the original, C-SGD + merge, drop + fine-tune (labels
mode) and the merge's own relative output change, as a markdown table; writes
benchmarks/results/quality_training.json.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from irprune.api import prune
from irprune.errors import IrpruneError
from irprune.passes.importance import CRITERIA, DATA_DRIVEN
from models.digits import (
    accuracy,
    cached_digits_onnx,
    calib_subset,
    load_digits_split,
)

NETS = ("resnet20", "vgg_small", "mobilenetv2_small")
STYLES = ("folded", "explicit")
STRATEGIES = ("global", "uniform", "sensitivity")
REWRITES = ("drop", "merge", "compensate", "reconstruct")
DATA_FREE_REWRITES = ("drop", "merge")


def data_free(criterion: str, strategy: str, rewrite: str) -> bool:
    return (
        criterion not in DATA_DRIVEN and strategy != "sensitivity" and rewrite in DATA_FREE_REWRITES
    )


def run_one(path: Path, setting: dict[str, Any], calib: dict, test: tuple) -> dict[str, Any]:
    start = time.perf_counter()
    options = {k: v for k, v in setting.items() if k != "calib"}
    try:
        result = prune(path, calib=setting.get("calib", calib), measure_latency=False, **options)
    except IrpruneError as exc:
        return {**setting, "error": str(exc), "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    acc = accuracy(result.model, *test)
    synthetic = result.report.get("synthetic")
    return {
        **setting,
        **({"synthetic": synthetic} if synthetic else {}),
        "accuracy": acc,
        "mac_ratio": result.report["cost"]["ratio"]["macs"],
        "seconds": seconds,
    }


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    combos = itertools.product(args.targets, args.criteria, args.strategies, args.rewrites)
    rows: list[dict[str, Any]] = []
    if not args.only_synthetic:
        rows += [
            {"target_flops": t, "criterion": c, "strategy": s, "rewrite": r}
            for t, c, s, r in combos
        ]
    if args.synthetic or args.only_synthetic:
        rows += [
            {"target_flops": t, "criterion": "l1", "strategy": "global", "rewrite": "reconstruct",
             "calib": "synthetic"}
            for t in args.targets
        ]  # fmt: skip
    return rows


def bench_net(name: str, style: str, args: argparse.Namespace, out: list[dict]) -> None:
    split = load_digits_split(0)
    calib = {"input": split.x_train[calib_subset(split, args.calib, 0)]}
    test = (split.x_test, split.y_test)
    path = cached_digits_onnx(name, style, args.cache_dir)
    base = accuracy(path, *test)
    print(f"{name} {style}: original accuracy {base:.4f}", flush=True)
    done = {_key(r) for r in out if (r["net"], r["style"]) == (name, style)}
    for setting in grid(args):
        if _key(setting) in done:
            continue  # --resume: measured already
        row = run_one(path, setting, calib, test)
        row.update(
            net=name,
            style=style,
            original=base,
            data_free=setting.get("calib") == "synthetic"
            or data_free(setting["criterion"], setting["strategy"], setting["rewrite"]),
        )
        if "accuracy" in row:
            row["drop_points"] = 100 * (base - row["accuracy"])
        out.append(row)
        acc = f"{row['accuracy']:.4f}" if "accuracy" in row else "ERR " + row["error"][:60]
        print(
            f"  {setting['target_flops']:.1f} {setting['criterion']:10} {setting['strategy']:11}"
            f" {setting['rewrite']:11} {setting.get('calib', ''):9} {acc}  ({row['seconds']:.1f}s)",
            flush=True,
        )
        save(out, args.out)


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["target_flops"], row["criterion"], row["strategy"], row["rewrite"],
            row.get("calib", ""))  # fmt: skip


def save(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1, default=float))
    tmp.replace(path)


def summary(rows: list[dict]) -> None:
    print("\nbest setting per net / style / target (accuracy; points lost vs original)")
    keys = sorted({(r["net"], r["style"], r["target_flops"]) for r in rows})
    for net, style, target in keys:
        sel = [r for r in rows if (r["net"], r["style"], r["target_flops"]) == (net, style, target)]
        ok = [r for r in sel if "accuracy" in r]
        for label, pool in (("data-free", [r for r in ok if r["data_free"]]), ("calibrated", ok)):
            if not pool:
                continue
            best = max(pool, key=lambda r: r["accuracy"])
            print(
                f"  {net:18} {style:8} {target:.1f} {label:10} {best['accuracy']:.4f}"
                f" (-{best['drop_points']:.1f} pts)  {best['criterion']}/{best['strategy']}/"
                f"{best['rewrite']}" + (" (synthetic calib)" if best.get("calib") else "")
            )


def _latest(paths: list[Path], key: str | None = None) -> dict[tuple[str, str], dict]:
    """Rows by (net, style) from result files (a list, or {"rows": [...]}), later files win;
    ``key``: only fine-tuning rows of the labels mode."""
    out: dict[tuple[str, str], dict] = {}
    for path in paths:
        if not path.is_file():
            print(f"  (no {path})")
            continue
        data = json.loads(path.read_text())
        for row in data["rows"] if isinstance(data, dict) else data:
            if key is None or row.get("mode") == key:
                out[(row["net"], row["style"])] = row
    return out


def training(args: argparse.Namespace) -> None:
    csgd, tuned = _latest(args.csgd_results), _latest(args.finetune_results, "labels")
    print("| net | export | original | C-SGD + merge | drop + fine-tune | merge change |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for net, style in itertools.product(args.nets, args.styles):
        c, f = csgd.get((net, style)), tuned.get((net, style))
        if c is None and f is None:
            continue
        base = (c or f)["original"]  # type: ignore[index]
        row = {"net": net, "style": style, "original": base}
        cells = [f"{100 * base:.2f}"]
        if c is not None:
            row |= {"csgd_merge": c["csgd_merge"], "merge_rel_change": c["merge_rel_change"]}
            cells.append(f"{100 * c['csgd_merge']:.2f} ({100 * (c['csgd_merge'] - base):+.2f})")
        else:
            cells.append("-")
        if f is not None:
            row |= {"finetuned": f["finetuned"], "finetune_epochs": f["epochs"]}
            cells.append(f"{100 * f['finetuned']:.2f} ({100 * (f['finetuned'] - base):+.2f})")
        else:
            cells.append("-")
        cells.append(f"{c['merge_rel_change']:.1e}" if c is not None else "-")
        rows.append(row)
        print(f"| {net} | {style} | " + " | ".join(cells) + " |")
    save(rows, args.out.with_name("quality_training.json"))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", nargs="+", default=list(NETS))
    p.add_argument("--styles", nargs="+", default=list(STYLES))
    p.add_argument("--targets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--rewrites", nargs="+", default=list(REWRITES))
    p.add_argument("--calib", type=int, default=256, help="calibration images (training split)")
    p.add_argument("--quick", action="store_true", help="target 0.5, l1/fpgm/apoz, global")
    p.add_argument(
        "--synthetic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the --calib synthetic rows (data-free, torch extra)",
    )
    p.add_argument("--only-synthetic", action="store_true", help="only the synthetic rows")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-digits")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.json"))
    p.add_argument("--resume", action="store_true", help="keep --out's rows, run the rest")
    p.add_argument("--training", action="store_true", help="table of the training results")
    results = Path("benchmarks/results")
    p.add_argument("--csgd-results", nargs="+", type=Path, default=[results / "csgd.json"])
    p.add_argument("--finetune-results", nargs="+", type=Path, default=[results / "finetune.json"])
    args = p.parse_args()
    if args.quick:
        args.targets, args.criteria, args.strategies = [0.5], ["l1", "fpgm", "apoz"], ["global"]
    return args


def main() -> None:
    args = parse()
    if args.training:
        training(args)
        return
    resume = args.resume and args.out.is_file()
    rows: list[dict] = json.loads(args.out.read_text()) if resume else []
    start = time.perf_counter()
    for name, style in itertools.product(args.nets, args.styles):
        bench_net(name, style, args, rows)
    summary(rows)
    print(f"\nwrote {args.out} ({len(rows)} rows, {time.perf_counter() - start:.0f}s)")
    np.set_printoptions()


if __name__ == "__main__":
    main()
