"""The quality grid as tables: reads the rows of ``benchmarks/quality.py`` and prints markdown.

    python benchmarks/quality_table.py benchmarks/results/quality_grid.csv
    python benchmarks/quality_table.py a.json b.json --slim benchmarks/results/quality_grid.csv

Tables (top-1 % on the held-out digits, no fine-tuning; one column per net and export style):

1. **Repair x strategy**, per target: for each rewrite and strategy, the median over the
   criteria and the best criterion's accuracy (``median / best``).
2. **Criteria** under the default strategy and repair (``global`` + ``reconstruct``), per target.
3. **The defaults**: ``l1`` / ``global`` / ``reconstruct`` (with data) at each target, and the
   best data-free setting of the grid.

``--slim OUT.csv`` also writes the rows with only the fields the tables use (the raw rows carry
timings and repeated settings; the slim CSV is what benchmarks/results keeps, and this script
reads it back: ``python benchmarks/quality_table.py benchmarks/results/quality_grid.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

NETS = ("resnet20", "vgg_small", "mobilenetv2_small")
STYLES = ("folded", "explicit")
SHORT = {"resnet20": "ResNet-20", "vgg_small": "VGG", "mobilenetv2_small": "MobileNetV2"}
REWRITES = ("drop", "merge", "compensate", "reconstruct")
STRATEGIES = ("global", "uniform", "sensitivity")
FIELDS = ("net", "style", "target_flops", "criterion", "strategy", "rewrite", "accuracy",
          "original", "mac_ratio", "data_free", "error")  # fmt: skip

Row = dict[str, Any]


def load(paths: list[Path]) -> list[Row]:
    """Rows of every file, JSON from quality.py or the slim CSV (later files replace earlier
    rows of the same setting)."""
    rows: dict[tuple[Any, ...], Row] = {}
    for path in paths:
        for row in _read(path):
            if row.get("calib"):  # the synthetic rows are tabled in docs/datafree.md
                continue
            key = tuple(row[k] for k in FIELDS[:6])
            rows[key] = {k: row[k] for k in FIELDS if k in row}
    return list(rows.values())


def _read(path: Path) -> list[Row]:
    if path.suffix != ".csv":
        return list(json.loads(path.read_text()))
    with path.open(newline="") as f:
        return [_typed(r) for r in csv.DictReader(f)]


def _typed(row: dict[str, str]) -> Row:
    out: Row = {k: v for k, v in row.items() if v != ""}
    for k in ("target_flops", "accuracy", "original", "mac_ratio"):
        if k in out:
            out[k] = float(out[k])
    out["data_free"] = out.get("data_free") == "True"
    return out


def write_slim(rows: list[Row], path: Path) -> None:
    """The rows as CSV with the tables' fields (accuracy and MAC ratio to 4 decimals)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


def columns(rows: list[Row]) -> list[tuple[str, str]]:
    present = {(r["net"], r["style"]) for r in rows}
    return [(n, s) for n in NETS for s in STYLES if (n, s) in present]


def header(cols: list[tuple[str, str]], first: str) -> list[str]:
    names = [f"{SHORT[n]} {s}" for n, s in cols]
    return [f"| {first} | " + " | ".join(names) + " |", "|" + " --- |" * (len(cols) + 1)]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def index(rows: list[Row]) -> dict[tuple[Any, ...], list[Row]]:
    out: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in rows:
        if "accuracy" in r:
            out[(r["target_flops"], r["rewrite"], r["strategy"], r["net"], r["style"])].append(r)
    return out


def repair_table(rows: list[Row], target: float) -> list[str]:
    cols, by = columns(rows), index(rows)
    lines = header(cols, f"{target} FLOPs: rewrite / strategy")
    originals = {(r["net"], r["style"]): r["original"] for r in rows}
    lines.append("| original | " + " | ".join(pct(originals.get(c)) for c in cols) + " |")
    for rewrite in REWRITES:
        for strategy in STRATEGIES:
            cells = []
            for net, style in cols:
                accs = [r["accuracy"] for r in by[(target, rewrite, strategy, net, style)]]
                cells.append(f"{pct(statistics.median(accs))} / {pct(max(accs))}" if accs else "-")
            lines.append(f"| {rewrite} / {strategy} | " + " | ".join(cells) + " |")
    return lines


def criteria_table(rows: list[Row], target: float, strategy: str, rewrite: str) -> list[str]:
    cols = columns(rows)
    lines = header(cols, f"{target} FLOPs, {strategy} + {rewrite}: criterion")
    crits = sorted({r["criterion"] for r in rows}, key=_criterion_order)
    for crit in crits:
        cells = []
        for net, style in cols:
            hit = [
                r
                for r in rows
                if (r["target_flops"], r["strategy"], r["rewrite"], r["criterion"])
                == (target, strategy, rewrite, crit)
                and (r["net"], r["style"]) == (net, style)
            ]
            cells.append(pct(hit[0].get("accuracy")) if hit else "-")
        lines.append(f"| {crit} | " + " | ".join(cells) + " |")
    return lines


def _criterion_order(name: str) -> tuple[int, str]:
    order = ("l1", "l2", "bn", "fpgm", "similarity", "random", "apoz", "activation", "taylor")
    return (order.index(name) if name in order else len(order), name)


def best_table(rows: list[Row]) -> list[str]:
    cols = columns(rows)
    lines = header(cols, "setting (target)")
    for target in sorted({r["target_flops"] for r in rows}, reverse=True):
        for label, pick in (
            ("default with data: l1/global/reconstruct", _default),
            ("best data-free rewrite (drop/merge, no data)", _best_free),
            ("best in the grid", _best_any),
        ):
            cells = []
            for net, style in cols:
                sel = [
                    r
                    for r in rows
                    if (r["net"], r["style"], r["target_flops"]) == (net, style, target)
                    and "accuracy" in r
                ]
                hit = pick(sel)
                cells.append("-" if hit is None else f"{pct(hit['accuracy'])}{_tag(hit, pick)}")
            lines.append(f"| {label} ({target}) | " + " | ".join(cells) + " |")
    return lines


def _default(sel: list[Row]) -> Row | None:
    default = ("l1", "global", "reconstruct")
    hit = [r for r in sel if (r["criterion"], r["strategy"], r["rewrite"]) == default]
    return hit[0] if hit else None


def _best_free(sel: list[Row]) -> Row | None:
    free = [r for r in sel if r["data_free"]]
    return max(free, key=lambda r: r["accuracy"]) if free else None


def _best_any(sel: list[Row]) -> Row | None:
    return max(sel, key=lambda r: r["accuracy"]) if sel else None


def _tag(row: Row, pick: Any) -> str:
    if pick is _default:
        return ""
    return f" ({row['criterion']}/{row['strategy']}/{row['rewrite']})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--slim", type=Path, help="write the rows with the tables' fields only")
    args = p.parse_args(argv)
    rows = load(args.files)
    if args.slim:
        write_slim(rows, args.slim)
    errors = [r for r in rows if "error" in r]
    print(f"{len(rows)} rows, {len(errors)} errors\n")
    for line in best_table(rows):
        print(line)
    for target in sorted({r["target_flops"] for r in rows}, reverse=True):
        print()
        for line in repair_table(rows, target):
            print(line)
    for target in sorted({r["target_flops"] for r in rows}, reverse=True):
        print()
        for line in criteria_table(rows, target, "global", "reconstruct"):
            print(line)


if __name__ == "__main__":
    main()
