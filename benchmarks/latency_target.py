"""``--target-latency`` end to end on the full-size reference models, checked independently.

For each model: the CLI (fresh process) with ``--target-latency F --threads T``, then the
pruned file is timed again by this script, apart from irprune's own rounds (onnxruntime, all
optimizations, T threads, spinning off, batch 1, interleaved, median of ``--runs``). Also the
same model at ``--target-flops F`` for comparison: what the latency target buys over the MAC
target at the same nominal fraction.

Usage: ``python benchmarks/latency_target.py [--models resnet50 ...] [--target 0.5]
[--threads 1] [--runs 30]``; writes ``benchmarks/results/latency_target.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.spine import MODELS, git_head, latency_row, run_measured  # noqa: E402
from models.export import cached_export  # noqa: E402


def run(model: Path, flag: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    output = out_dir / f"{model.stem}.{flag}.onnx"
    report = out_dir / f"{model.stem}.{flag}.json"
    cmd = [sys.executable, "-m", "irprune", str(model), f"--target-{flag}", str(args.target)]
    cmd += ["--threads", str(args.threads), "-o", str(output), "--report", str(report)]
    proc = run_measured(cmd)
    row: dict[str, Any] = {"cmd": " ".join(cmd), "rc": proc.rc, "total_s": proc.wall_s}
    if proc.rc != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1:]
        return row
    rep = json.loads(report.read_text())
    row.update(
        mac_ratio=rep["cost"]["ratio"]["macs"],
        irprune_latency=rep.get("latency"),
        check=latency_row(model, output, args.threads, 3, args.runs),
    )
    return row


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["resnet50"], choices=MODELS)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-bench")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latency_target.json")
    args = p.parse_args()
    rows = []
    print(f"{'model':14}{'target':>8}{'MACs':>7}{'rounds':>7}{'speedup':>9}{'check':>7}{'wall':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = cached_export(name, "explicit", args.cache_dir, size="full")
            for flag in ("latency", "flops"):
                row = {"model": name, "target": flag, **run(path, flag, args, Path(tmp))}
                rows.append(row)
                if row["rc"] != 0:
                    print(f"{name:14}{flag:>8}  failed: {row['error']}")
                    continue
                own = row["irprune_latency"] or {}
                rounds = len(own.get("rounds", [])) or "-"
                print(
                    f"{name:14}{flag:>8}{row['mac_ratio']:>7.3f}{rounds!s:>7}"
                    f"{own.get('speedup', float('nan')):>8.2f}x{row['check']['speedup']:>6.2f}x"
                    f"{row['total_s']:>6.1f}s",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"git_head": git_head(), "threads": args.threads, "runs": args.runs}
    args.out.write_text(json.dumps({"settings": meta, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
