"""Where the time goes: onnxruntime's profiler on a zoo model before and after pruning.

For each model (the 224 px exports of ``benchmarks/zoo.py --image-size``, or the zoo's own
size), prune to ``--target-flops`` with the defaults (``drop`` rewrite, as ``benchmarks/zoo.py``)
and profile original and pruned with onnxruntime (all optimizations, 1 thread, batch 1, spinning
off): the per-node kernel times are summed per op type (as ORT runs them, after fusion) and per
node, and set against each node's MAC ratio, so a table shows which ops do not speed up in
proportion to their MACs. ``--interleaved`` also prints the plain interleaved speedup of
``irprune.report.latency`` (median of ``--runs``).

Usage: ``python benchmarks/zoo_profile.py --models fpn regnet_y [--image-size 224]
[--style folded] [--runs 30] [--top 12]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.zoo import export_path  # noqa: E402
from irprune.api import prune  # noqa: E402
from irprune.emit.verify import random_inputs, session  # noqa: E402
from irprune.report import latency  # noqa: E402
from models.zoo import ZOO  # noqa: E402


def profile(model: bytes, feeds: dict[str, np.ndarray], runs: int) -> dict[str, list[float]]:
    """Kernel time per node (us, one list entry per run) from onnxruntime's profiler."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 4
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for _ in range(3 + runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_node[f"{e['args'].get('op_name', '?')}|{node}"].append(float(e["dur"]))
    return {k: v[3:] for k, v in per_node.items()}


def summarise(per_node: dict[str, list[float]]) -> dict[str, float]:
    """The fastest run of each node: a run the other processes on the machine did not preempt
    (the median is inflated under load; the minimum is stable)."""
    return {k: min(v) for k, v in per_node.items() if v}


def by_op(times: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for key, t in times.items():
        out[key.split("|", 1)[0]] += t
    return dict(out)


def one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    path = export_path(name, args.style, args)
    original = Path(path).read_bytes()
    result = prune(str(path), target_flops=args.target_flops, rewrite="drop", measure_latency=False)
    pruned = result.serialized or result.model.SerializeToString()
    feeds = random_inputs(session(original), batch=1, seed=0)
    before = summarise(profile(original, feeds, args.runs))
    after = summarise(profile(pruned, feeds, args.runs))
    same = [k for k, t in before.items() if k in after and after[k] >= 0.9 * t]
    row: dict[str, Any] = {
        "model": name,
        # the share of the original's kernel time in nodes pruning did not speed up (>= 0.9x
        # of their time left): what bounds the speedup at any MAC target with this plan
        "unchanged_share": sum(before[k] for k in same) / max(sum(before.values()), 1e-9),
        "mac_ratio": result.report["cost"]["ratio"]["macs"],
        "round_to": result.report["settings"].get("round_to_applied"),
        "kernel_us_before": sum(before.values()),
        "kernel_us_after": sum(after.values()),
        "by_op_before": by_op(before),
        "by_op_after": by_op(after),
        "nodes_before": before,
        "nodes_after": after,
        "frozen": [g.frozen[0] for g in result.analysis.groups if g.frozen][:8],
    }
    if args.interleaved:
        row["latency"] = latency(original, pruned, feeds, runs=args.runs)
    return row


def print_row(row: dict[str, Any], top: int) -> None:
    kb, ka = row["kernel_us_before"], row["kernel_us_after"]
    lat = row.get("latency")
    extra = f", interleaved speedup {lat['speedup']:.2f}x" if lat else ""
    print(
        f"\n== {row['model']}: MAC ratio {row['mac_ratio']:.3f}, round-to {row['round_to']},"
        f" kernel sum {kb / 1e3:.2f} -> {ka / 1e3:.2f} ms ({kb / ka:.2f}x){extra},"
        f" {row['unchanged_share']:.0%} of the time in nodes not sped up"
    )
    ops = sorted(row["by_op_before"], key=lambda k: -row["by_op_before"][k])
    print(f"  {'op':28}{'before us':>11}{'after us':>11}{'ratio':>7}{'share':>7}")
    for op in ops[:top]:
        b, a = row["by_op_before"][op], row["by_op_after"].get(op, 0.0)
        print(f"  {op:28}{b:11.0f}{a:11.0f}{b / a if a else float('inf'):7.2f}{b / kb:7.2f}")
    rest = set(row["by_op_after"]) - set(row["by_op_before"])
    for op in sorted(rest):
        print(f"  {op + ' (new)':28}{0:11.0f}{row['by_op_after'][op]:11.0f}")
    nodes = sorted(row["nodes_before"], key=lambda k: -row["nodes_before"][k])
    print(f"  slowest nodes: {'before us':>11}{'after us':>11}{'ratio':>7}")
    for key in nodes[:top]:
        b, a = row["nodes_before"][key], row["nodes_after"].get(key)
        ratio = f"{b / a:7.2f}" if a else "      -"
        print(f"    {key[:60]:60}{b:9.0f}{a if a is not None else 0:11.0f}{ratio}")
    if row["frozen"]:
        print("  frozen:", "; ".join(r[:90] for r in row["frozen"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, choices=list(ZOO))
    p.add_argument("--style", default="folded")
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--interleaved", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-zoo")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.image_size == 0:
        args.image_size = None
    rows = []
    for name in args.models:
        row = one(name, args)
        rows.append(row)
        print_row(row, args.top)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(f"\nloadavg {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
