"""Depth + width against width only, at one MAC budget: a prototype of issue #16's depth pruning.

For each residual image model of the zoo, exported at ``--image-size`` px (``benchmarks/zoo.py
--image-size``; folded BN), and a budget ``F`` (default 0.5) of the original's MACs:

* ``width`` -- ``irprune.prune(original, target_flops=F, rewrite="drop")`` (the default
  allocation, round-to 16);
* ``depth`` -- the removable residual blocks (``passes.analysis.blocks``) with the lowest
  data-free score (``passes.importance.blocks.weight_norm``) removed, lowest first, skipping a
  block that would take the removed share past ``--depth-max``, until it reaches
  ``--depth-min`` (default 20-30% of the MACs); ``rewrite.remove_blocks``;
* ``depth+width`` -- ``irprune.prune(depth, target_flops=F / r_d, rewrite="drop")`` with ``r_d``
  the depth model's MAC ratio, so the result costs ``F`` of the original again;
* ``auto`` -- the product's own path, ``irprune.prune(original, target_flops=F,
  rewrite="drop", depth="auto")`` (``stages.depth`` chooses blocks and widths together).

MAC ratios are counted by ``tests/oracles.py`` (independent of irprune's cost model). Latency:
onnxruntime with all graph optimizations, ``--threads`` intra-op threads (spinning off), batch 1,
the original and the three models interleaved in a fresh random order every iteration, wall
time, median of ``--runs``; speedup = original / model. ``rel_l2``: the relative L2 error of
the outputs against the original on seeded random inputs (the zoo's weights are random, so
this says how much each plan changes the function, not accuracy).

``--digits``: accuracy instead of speed, through the product path. For each digits-trained
net (``--digits-nets``, ``models/digits.py``, explicit BN), ``irprune.prune(net,
target_flops=F, calib=C)`` (the default rewrite with calibration data: reconstruct) with
``depth="off"`` and ``depth="auto"`` (``stages.depth``: blocks and widths chosen together), C
the 128-image calibration subset of the training split, top-1 accuracy on the 450 test images;
MAC ratios by ``tests/oracles.py``. Writes ``benchmarks/results/depth_digits.json`` and the
section of ``docs/depth.md`` between its markers.

Usage: ``python benchmarks/depth.py [--models resnet18 ...] [--runs 60]`` writes
``benchmarks/results/depth.json`` and ``docs/depth.md`` (``--render JSON``: only the doc);
``python benchmarks/depth.py --digits`` the accuracy section.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.spine import git_head  # noqa: E402
from benchmarks.zoo import NotApplicable, export_path  # noqa: E402
from irprune.api import prune  # noqa: E402
from irprune.emit import to_model  # noqa: E402
from irprune.emit.verify import random_inputs, session, verify  # noqa: E402
from irprune.frontends.onnx import import_model  # noqa: E402
from irprune.passes.analysis.blocks import Block, find_blocks, node_macs  # noqa: E402
from irprune.passes.fold import fold_constants  # noqa: E402
from irprune.passes.importance.blocks import weight_norm  # noqa: E402
from irprune.passes.rewrite.remove_blocks import remove_blocks  # noqa: E402
from models.zoo import ZOO  # noqa: E402
from tests.oracles import count_macs  # noqa: E402

log = logging.getLogger("depth")

MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "convnext", "resnext", "regnet_y")
STYLE = "folded"


def choose_blocks(
    blocks: Sequence[Block], scores: dict[str, float], total: float, low: float, high: float
) -> list[Block]:
    """Lowest score first, skipping any block that would take the removed share past
    ``high``, until the share reaches ``low``."""
    chosen: list[Block] = []
    share = 0.0
    for block in sorted(blocks, key=lambda b: scores.get(b.output, float("inf"))):
        if block.output not in scores or share >= low:
            continue
        if share + block.macs / total <= high:
            chosen.append(block)
            share += block.macs / total
    return chosen


def depth_model(path: Path, low: float, high: float) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The original with the chosen blocks removed, and what was chosen."""
    graph = import_model(path)
    fold_constants(graph)
    total = float(sum(node_macs(n) for n in graph.nodes))
    analysis = find_blocks(graph)
    scores = {s.block: s.score for s in weight_norm(graph, analysis.blocks) if s.score is not None}
    chosen = choose_blocks(analysis.blocks, scores, total, low, high)
    if not chosen:
        raise NotApplicable(f"no removable block set within {high:.0%} of the MACs")
    remove_blocks(graph, chosen)
    model = to_model(graph)
    verify(model)
    info = {
        "candidates": len(analysis.blocks),
        "rejected": len(analysis.rejected),
        "removed": [
            {"block": b.add, "kind": b.kind, "mac_share": b.macs / total, "score": scores[b.output]}
            for b in chosen
        ],
        "removed_mac_share": sum(b.macs for b in chosen) / total,
    }
    return model, info


def timed(
    models: Sequence[bytes], feeds: dict[str, np.ndarray], threads: int, runs: int
) -> dict[str, list[float]]:
    """Median ms per model by two clocks, all interleaved in a fresh random order every
    iteration: ``wall`` (latency) and ``cpu`` (the process's CPU time, all of onnxruntime's
    threads: the work, which other jobs on a shared machine disturb far less)."""
    sessions = [session(m, threads=threads, optimize=True) for m in models]
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    rng = np.random.default_rng(0)
    for i in range(3 + runs):
        for k in rng.permutation(len(sessions)):
            t0, c0 = time.perf_counter(), time.process_time()
            sessions[k].run(None, feeds)
            if i >= 3:
                wall[k].append((time.perf_counter() - t0) * 1e3)
                cpu[k].append((time.process_time() - c0) * 1e3)
    return {
        "wall": [statistics.median(t) for t in wall],
        "cpu": [statistics.median(t) for t in cpu],
    }


def rel_l2(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    num = sum(float(np.sum((g - r) ** 2)) for r, g in zip(reference, got, strict=True))
    den = sum(float(np.sum(r**2)) for r in reference)
    return float(np.sqrt(num / den)) if den else 0.0


def bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "style": STYLE}
    try:
        path = export_path(name, STYLE, args)
        start = time.perf_counter()
        original = onnx.load(path)
        depth, row["depth"] = depth_model(path, args.depth_min, args.depth_max)
    except NotApplicable as exc:
        return {**row, "status": "SKIP", "message": str(exc)}
    shape = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
             for i in original.graph.input}  # fmt: skip
    base = count_macs(original, shape)
    r_depth = count_macs(depth, shape) / base
    width = prune(str(path), target_flops=args.target_flops, rewrite="drop", measure_latency=False)
    both = prune(depth, target_flops=min(1.0, args.target_flops / r_depth), rewrite="drop",
                 measure_latency=False)  # fmt: skip
    auto = prune(
        str(path),
        target_flops=args.target_flops,
        rewrite="drop",
        depth="auto",
        measure_latency=False,
    )  # fmt: skip  (the product path: stages.depth)
    row["auto_blocks"] = [b["add"] for b in auto.report.get("blocks_removed", [])]
    plans = {"width": width.model, "depth": depth, "depth+width": both.model, "auto": auto.model}
    data = [m.SerializeToString() for m in (original, *plans.values())]
    feeds = random_inputs(session(data[0]), batch=1, seed=0)
    clocks = timed(data, feeds, args.threads, args.runs)
    ms, cpu = clocks["wall"], clocks["cpu"]
    reference = session(data[0]).run(None, feeds)
    row.update(
        status="OK",
        seconds=time.perf_counter() - start,
        original_ms=ms[0],
        ms=dict(zip(plans, ms[1:], strict=True)),
        speedup={k: ms[0] / t for k, t in zip(plans, ms[1:], strict=True)},
        original_cpu_ms=cpu[0],
        cpu_speedup={k: cpu[0] / t for k, t in zip(plans, cpu[1:], strict=True)},
        mac_ratio={k: count_macs(m, shape) / base for k, m in plans.items()},
        rel_l2={k: rel_l2(reference, session(d).run(None, feeds)) for k, d in
                zip(plans, data[1:], strict=True)},
    )  # fmt: skip
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and minimum speedups by each clock, and depth+width's over width-only."""
    ok = [r for r in rows if r["status"] == "OK"]
    out: dict[str, Any] = {}
    for clock in ("speedup", "cpu_speedup"):
        for key in ("width", "depth", "depth+width", "auto"):
            values = [r[clock][key] for r in ok]
            if values:
                out[f"{clock}:{key}"] = {"median": statistics.median(values), "min": min(values)}
        for key in ("depth+width", "auto"):
            gains = [r[clock][key] / r[clock]["width"] for r in ok if key in r[clock]]
            if gains:
                out[f"{clock}:{key}/width"] = {
                    "median": statistics.median(gains),
                    "min": min(gains),
                }
    return out


def markdown(result: dict[str, Any]) -> str:
    s, env = result["settings"], result["environment"]
    load = f"{env['loadavg_at_start'][0]:.1f}-{env['loadavg_at_end'][0]:.1f}"
    lines = [
        "# Depth pruning: a first measurement (issue #16)",
        "",
        "Produced by `python benchmarks/depth.py` (its docstring has the method); raw numbers in",
        f"`benchmarks/results/depth.json`. The zoo's residual image models at {s['image_size']} px",
        f"(folded BN), budget {s['target_flops']} of the original's MACs; onnxruntime at batch 1",
        f"with {s['threads']} threads and all graph optimizations, the four models interleaved,",
        f"median of {s['runs']} runs. *depth*: the blocks with the lowest data-free score",
        f"(`weight_norm`) removed until {float(s['depth_min']):.0%}-{float(s['depth_max']):.0%}",
        "of the MACs are gone; *depth+width*: then width-pruned to the same total budget as",
        "*width*. Speedups are original / model by wall time (latency), the process CPU time's in",
        f"brackets (a shared machine: load average {load} on {env['cpus']} cores).",
        "",
        "| model | blocks removed / removable | depth MACs removed | original ms | width | "
        "depth | depth+width | auto (blocks) | MACs width / d+w | rel L2 width / d+w |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r) for r in result["rows"]]
    lines += ["", "Over the models (`speedup`: wall time, `cpu_speedup`: process CPU time):", ""]
    for key, v in result["summary"].items():
        lines.append(f"- {key}: median {v['median']:.2f}x (min {v['min']:.2f}x)")
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


def _row(r: dict[str, Any]) -> str:
    if r["status"] != "OK":
        return f"| {r['model']} | {r['status']}: {r.get('message', '')} |||||||||"
    d, mr, e = r["depth"], r["mac_ratio"], r["rel_l2"]
    sp = {k: f"{r['speedup'][k]:.2f}x ({r['cpu_speedup'][k]:.2f}x)" for k in r["speedup"]}
    return (
        f"| {r['model']} | {len(d['removed'])} / {d['candidates']} | "
        f"{d['removed_mac_share']:.0%} | {r['original_ms']:.1f} | {sp['width']} | "
        f"{sp['depth']} | {sp['depth+width']} | "
        f"{sp.get('auto', '-')} ({len(r.get('auto_blocks', []))}) | "
        f"{mr['width']:.3f} / {mr['depth+width']:.3f} | "
        f"{e['width']:.2f} / {e['depth+width']:.2f} |"
    )


NOTES = [
    "Reading it. Removing 20-30% of the MACs as whole blocks speeds the models up about in",
    "proportion (1/0.75 = 1.33x): at 224 px these nets are compute-bound, so a block saves no",
    "more per MAC than channels do. At the same 0.5 budget depth+width and *auto* end within a",
    "few percent of width-only (the ratios above): depth is not yet the way past width's",
    "ceiling on these models. Where the two clocks disagree the machine was shared (a wall",
    "speedup far above the CPU one, as mobilenet_v2's, is contention, not speed). Caveats: the",
    "zoo's weights are random, so the data-free score ranks blocks by weight scale only, and",
    "*rel L2* shows how much each plan changes the function (no repair run), not accuracy;",
    "accuracy at equal MACs is the digits section below.",
    "",
    "In the product: `--depth {off,auto,only}` and `--max-blocks N` (`irprune/stages/depth.py`",
    "states the rule). *auto* tries k = 0, 1, ... of the lowest-scored blocks with the widths",
    "planned for the rest of the budget and keeps the candidate measured closest to the",
    "original (repaired by reconstruct on half of 64 calibration samples and measured on the",
    "other half; unrepaired on random inputs without data). The *auto* column is that path",
    "with `--rewrite drop` and no calibration data.",
]


DIGITS_BEGIN, DIGITS_END = "<!-- digits:begin -->", "<!-- digits:end -->"


def digits_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy of one digits net pruned to ``--target-flops`` with calibration, depth off vs
    auto (the product path: ``irprune.prune(depth=...)``)."""
    from models.digits import accuracy, cached_digits_onnx, calib_subset, load_digits_split

    split = load_digits_split(0)
    test = (split.x_test, split.y_test)
    calib = {"input": split.x_train[calib_subset(split, 128, 0)]}
    path = cached_digits_onnx(name, "explicit", args.digits_cache)
    original = onnx.load(path)
    shape = {"input": [1, *split.x_test.shape[1:]]}
    row: dict[str, Any] = {"model": name, "original": accuracy(path, *test)}
    for depth in ("off", "auto"):
        start = time.perf_counter()
        result = prune(str(path), target_flops=args.target_flops, calib=calib, depth=depth,
                       measure_latency=False)  # fmt: skip
        row[depth] = {
            "accuracy": accuracy(result.model, *test),
            "mac_ratio": count_macs(result.model, shape) / count_macs(original, shape),
            "blocks_removed": [b["add"] for b in result.report.get("blocks_removed", [])],
            "rel_l2": result.report["fidelity"]["rel_l2"],
            "seconds": time.perf_counter() - start,
        }
        log.info("%s depth %s: %s", name, depth, row[depth])
    return row


def digits_markdown(rows: list[dict[str, Any]], target: float) -> str:
    lines = [
        DIGITS_BEGIN,
        "## Accuracy: digits nets, calibrated, depth auto vs off",
        "",
        "Produced by `python benchmarks/depth.py --digits` (raw numbers in",
        f"`benchmarks/results/depth_digits.json`): `irprune.prune(net, target_flops={target},",
        "calib=128 training images, depth=...)`, the default rewrite (reconstruct),",
        "top-1 accuracy on the 450 held-out test images; MAC ratio by `tests/oracles.py`.",
        "",
        "| net | original | off: acc / MACs | auto: acc / MACs | auto removed "
        "| rel L2 off / auto |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        off, auto = r["off"], r["auto"]
        lines.append(
            f"| {r['model']} | {r['original']:.3f} | {off['accuracy']:.3f} / "
            f"{off['mac_ratio']:.3f} | {auto['accuracy']:.3f} / {auto['mac_ratio']:.3f} | "
            f"{', '.join(auto['blocks_removed']) or 'none'} | {off['rel_l2']:.3f} / "
            f"{auto['rel_l2']:.3f} |"
        )
    deltas = [r["auto"]["accuracy"] - r["off"]["accuracy"] for r in rows]
    lines += [
        "",
        f"Depth auto minus off, accuracy: {', '.join(f'{d * 100:+.1f}' for d in deltas)} points"
        f" ({', '.join(r['model'] for r in rows)}). *rel L2* is the report's fidelity, on the",
        "calibration data the repair was fitted on. Auto picks among k = 0 .. K blocks by the",
        "error of each candidate repaired on 32 calibration samples and measured on 32 others;",
        "where that pick removes blocks the full repair (128 samples) may still end farther from",
        "the original than width alone, as the rel L2 column shows: blocks are repaired only",
        "through the consumers the width plan shrinks.",
    ]
    return "\n".join([*lines, DIGITS_END])


def write_digits(args: argparse.Namespace, rows: list[dict[str, Any]] | None = None) -> None:
    """Measure (or, given ``rows``, only render) the digits section."""
    out = args.out.with_name("depth_digits.json")
    if rows is None:
        rows = [digits_row(name, args) for name in args.digits_nets]
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {"target_flops": args.target_flops, "rows": rows}
        out.write_text(json.dumps(data, indent=1) + "\n")
    text = args.doc.read_text() if args.doc.is_file() else ""
    section = digits_markdown(rows, args.target_flops)
    if DIGITS_BEGIN in text:
        head, rest = text.split(DIGITS_BEGIN, 1)
        text = head + section + (rest.split(DIGITS_END, 1)[1] or "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    args.doc.write_text(text)
    log.info("wrote %s and %s", out, args.doc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(ZOO))
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--depth-min", type=float, default=0.20)
    p.add_argument("--depth-max", type=float, default=0.30)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-zoo")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "depth.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "depth.md")
    p.add_argument("--render", type=Path, help="only write --doc from this results JSON")
    p.add_argument("--digits", action="store_true", help="the digits accuracy section only")
    p.add_argument("--render-digits", type=Path, help="with --digits: only render this JSON")
    p.add_argument("--digits-nets", nargs="+", default=["resnet20", "mobilenetv2_small"])
    p.add_argument(
        "--digits-cache", type=Path, default=Path(tempfile.gettempdir()) / "irprune-digits"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.render is not None:
        args.doc.write_text(markdown(json.loads(args.render.read_text())))
        return 0
    if args.digits:
        rows = None
        if args.render_digits is not None:
            rows = json.loads(args.render_digits.read_text())["rows"]
        write_digits(args, rows)
        return 0
    env = {"git_head": git_head(), "loadavg_at_start": os.getloadavg(), "cpus": os.cpu_count()}
    rows = []
    for name in args.models:
        row = bench(name, args)
        rows.append(row)
        shown = " ".join(f"{k} {v:.2f}x" for k, v in row.get("speedup", {}).items())
        log.info("%-14s %-5s %s %s", name, row["status"], shown, row.get("message", ""))
    env["loadavg_at_end"] = os.getloadavg()
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "environment": env,
              "summary": summary(rows), "rows": rows}  # fmt: skip
    result["settings"] = {k.replace("-", "_"): v for k, v in result["settings"].items()}
    log.info("%s", json.dumps(result["summary"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    text = markdown(result)
    if args.doc.is_file() and DIGITS_BEGIN in (old := args.doc.read_text()):
        section = DIGITS_BEGIN + old.split(DIGITS_BEGIN, 1)[1].split(DIGITS_END, 1)[0]
        text += "\n" + section + DIGITS_END + "\n"  # the --digits section, kept
    args.doc.write_text(text)
    log.info("wrote %s and %s", args.out, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
