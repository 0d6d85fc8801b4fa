"""End-to-end benchmark of the pruning spine on the full-size reference models.

For each model (224x224, 1000 classes) and each ``--round-to`` value, at ``--target-flops``:

* **CLI run** -- ``python -m irprune MODEL --target-flops F --rewrite compensate --round-to N -o
  OUT --report R.json --no-latency`` in a fresh process (``compensate``: what the default does
  without data on models too large for its synthesis of calibration data). ``total_s`` is the
  wall time of that whole process (spawn to
  exit, interpreter start-up and imports included). ``peak_mb`` is its peak RSS:
  ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` taken in a small per-run wrapper process
  whose only child is the CLI (see :func:`run_measured` for why a wrapper).
* **Stages** -- load / analysis / importance / allocation / rewrite / emit / verify come from the
  CLI report's ``timings_s`` (``time.perf_counter`` laps inside ``irprune.prune``).
* **In-process path** -- a second fresh process (this script with ``--worker``) imports irprune,
  then times ``irprune.prune(...)`` as a whole and ``Result.save(path)`` alone. ``save_s`` is that
  ``Result.save`` time (serialize + fsync + rename). ``ref_s`` = prune total - sum of stages: the
  untimed tail of ``prune`` (onnxruntime reference run of the original for fidelity, report).
* **Start-up** -- median wall time of ``python -c "import irprune.cli"`` and of
  ``python -c "import irprune.cli, irprune.api, irprune.report"`` (what the CLI imports before
  its first stage starts). ``rest_s`` = total - stages - ref - save - the second start-up
  figure: argument parsing, JSON report, the printed table, exit.
* **MACs** -- ratio of the written file to the original by ``tests.oracles.count_macs``, an
  independent counter that shares no code with irprune's cost model.
* **Latency** -- onnxruntime CPU, ``ORT_ENABLE_ALL`` graph optimizations, intra-op spinning off,
  batch 1, ``--warmup`` untimed then ``--runs`` timed runs per model, original and pruned
  interleaved (order alternating every iteration); medians in ms; speedup = before / after.

Usage: ``python benchmarks/spine.py [--models ...] [--size full|test] [--round-to 1 8]
[--style explicit|folded] [--threads 1 2] [--out benchmarks/results/spine.json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from irprune.emit.verify import random_inputs, session  # noqa: E402
from irprune.report import latency  # noqa: E402
from models.export import cached_export  # noqa: E402
from tests.oracles import count_macs  # noqa: E402

MODELS = ("resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "densenet_small")
STAGES = ("load", "analysis", "importance", "allocation", "reference", "rewrite", "emit", "verify")
WINDOW = (0.48, 0.50)  # contract: target - 0.02 <= ratio <= target, for target 0.5


@dataclass
class Proc:
    """One finished child process: exit code, wall seconds, peak RSS (MB), captured output."""

    rc: int
    wall_s: float
    peak_mb: float
    stdout: str
    stderr: str


_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(json.dumps({"rc": rc, "wall_s": wall, "maxrss_kb": peak}))
"""


def run_measured(cmd: list[str], cwd: Path | None = None) -> Proc:
    """Run ``cmd`` under a small wrapper process that measures its wall time and peak RSS.

    The wrapper is needed because Linux carries a parent's RSS high-water mark into a child
    across fork + exec: measured straight from this (large) process, ``ru_maxrss`` reports this
    process's size. The wrapper is a bare interpreter (~10 MB), so ``RUSAGE_CHILDREN`` in it is
    the command's own peak. Wall time is spawn-to-exit of the command, as seen by the wrapper.
    """
    with tempfile.TemporaryDirectory() as tmp:
        stats, out, err = (Path(tmp) / n for n in ("stats.json", "out", "err"))
        with out.open("wb") as fo, err.open("wb") as fe:
            wrapper = [sys.executable, "-c", _WRAPPER, str(stats), *cmd]
            subprocess.run(wrapper, stdout=fo, stderr=fe, cwd=cwd, check=True)
        m = json.loads(stats.read_text())
        texts = out.read_text(errors="replace"), err.read_text(errors="replace")
    return Proc(m["rc"], m["wall_s"], m["maxrss_kb"] / 1024, *texts)


def startup_s(code: str, repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter running ``code``."""
    return statistics.median(
        run_measured([sys.executable, "-c", code]).wall_s for _ in range(repeats)
    )


def run_cli(model: Path, round_to: int, target: float, out_dir: Path) -> dict[str, Any]:
    """The real CLI, end to end, in a fresh process."""
    stem = f"{model.stem}.r{round_to}"
    output, report = out_dir / f"{stem}.pruned.onnx", out_dir / f"{stem}.report.json"
    # --rewrite compensate: the default without data would synthesise calibration data on a
    # model under its budget (minutes of torch work, measured in benchmarks/datafree.py); the
    # spine's figures are the pruning pipeline's own
    cmd = [sys.executable, "-m", "irprune", str(model), "--target-flops", str(target)]
    cmd += ["--rewrite", "compensate"]
    cmd += ["--round-to", str(round_to), "-o", str(output), "--report", str(report)]
    proc = run_measured([*cmd, "--no-latency"])
    result: dict[str, Any] = {"cmd": " ".join([*cmd, "--no-latency"]), "rc": proc.rc}
    result.update(total_s=proc.wall_s, peak_mb=proc.peak_mb, output=str(output))
    if proc.rc != 0:
        result["error"] = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        return result
    result["report"] = json.loads(report.read_text())
    return result


def run_worker(model: Path, round_to: int, target: float, out_dir: Path) -> dict[str, Any]:
    """The in-process path (``prune`` + ``Result.save`` timed separately), in a fresh process."""
    output = out_dir / f"{model.stem}.r{round_to}.inproc.onnx"
    cmd = [sys.executable, __file__, "--worker", str(model), str(round_to), str(target)]
    proc = run_measured([*cmd, str(output)])
    if proc.rc != 0:
        return {"rc": proc.rc, "error": proc.stderr.strip().splitlines()[-1:]}
    return {"rc": 0, **json.loads(proc.stdout.strip().splitlines()[-1])}


def worker_main(model: str, round_to: str, target: str, output: str) -> None:
    """Entry point of ``--worker``: prints one JSON line with the in-process timings."""
    from irprune.api import prune

    start = time.perf_counter()
    result = prune(
        model,
        target_flops=float(target),
        round_to=int(round_to),
        rewrite="compensate",  # as the CLI run (see run_cli)
        measure_latency=False,
    )
    prune_s = time.perf_counter() - start
    start = time.perf_counter()
    result.save(output)
    save_s = time.perf_counter() - start
    Path(output).unlink()
    timings = result.report["timings_s"]
    print(json.dumps({"prune_s": prune_s, "save_s": save_s, "timings_s": timings}))


def latency_row(before: Path, after: Path, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """irprune's own interleaved measurement, batch-1 random feeds."""
    data = before.read_bytes()
    feeds = random_inputs(session(data), batch=1, seed=0)
    return latency(data, after.read_bytes(), feeds, threads=threads, runs=runs, warmup=warmup)


def breakdown(cli: dict[str, Any], worker: dict[str, Any], startup: float) -> dict[str, float]:
    """Split the CLI's wall time into the reported stages and the measured remainders."""
    stages = cli["report"]["timings_s"]
    split = {s: float(stages.get(s, 0.0)) for s in STAGES}
    staged = sum(split.values())
    save = worker.get("save_s", float("nan"))
    split.update(
        imp_alloc=split["importance"] + split["allocation"],
        ref=split["reference"],
        save=save,
        startup=startup,
        rest=cli["total_s"] - staged - save - startup,
    )
    return split


def window_flag(ratio: float) -> str:
    lo, hi = WINDOW
    return "ok" if lo <= ratio <= hi else ("LOW" if ratio < lo else "HIGH")


def bench_one(
    name: str, path: Path, round_to: int, args: argparse.Namespace, ctx: dict[str, Any]
) -> dict[str, Any]:
    """CLI run, in-process run, MAC ratio and latency for one (model, round_to)."""
    row: dict[str, Any] = {
        "model": name,
        "round_to": round_to,
        "irprune_source_hash": source_hash(),
    }
    cli = run_cli(path, round_to, args.target_flops, ctx["out_dir"])
    row["cli"] = cli
    if cli["rc"] != 0:
        print(f"  {name} r{round_to}: CLI exit {cli['rc']}: {cli['error']}", flush=True)
        return row
    worker = run_worker(path, round_to, args.target_flops, ctx["out_dir"])
    row["inprocess"] = worker
    row["split_s"] = breakdown(cli, worker, ctx["startup_full_s"])
    pruned = Path(cli["output"])
    row["macs_after"] = count_macs(onnx.load(pruned))
    row["mac_ratio"] = row["macs_after"] / ctx["macs_before"]
    row["mac_ratio_irprune"] = cli["report"]["cost"]["ratio"]["macs"]
    row["in_window"] = window_flag(row["mac_ratio"])
    row["latency"] = [latency_row(path, pruned, t, args.warmup, args.runs) for t in args.threads]
    row["fidelity"] = cli["report"].get("fidelity")
    if not args.keep:
        pruned.unlink(missing_ok=True)
    print(f"  {name} r{round_to}: {summary(row)}", flush=True)
    return row


def summary(row: dict[str, Any]) -> str:
    lat = row["latency"][0]
    return (
        f"total {row['cli']['total_s']:.2f}s, MACs {row['mac_ratio']:.4f} ({row['in_window']}),"
        f" {lat['before_ms']:.1f} -> {lat['after_ms']:.1f} ms ({lat['speedup']:.2f}x)"
    )


def bench_model(name: str, args: argparse.Namespace, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    start = time.perf_counter()
    path = cached_export(name, args.style, args.cache_dir, size=args.size)
    export_s = time.perf_counter() - start
    macs = count_macs(onnx.load(path))
    print(
        f"{name}: {path.name} ({path.stat().st_size / 1e6:.1f} MB, {macs / 1e9:.3f} GMACs,"
        f" export/cache {export_s:.1f}s)",
        flush=True,
    )
    ctx = {**ctx, "macs_before": macs}
    rows = [bench_one(name, path, r, args, ctx) for r in args.round_to]
    for row in rows:
        row.update(path=str(path), export_or_cache_s=export_s, macs_before=macs)
    return rows


HEADER = (
    f"{'model':15}{'rnd':>4}{'total':>7}{'load':>6}{'anal':>6}{'imp+al':>7}{'rewr':>6}"
    f"{'emit':>6}{'verif':>6}{'ref':>6}{'save':>6}{'peakMB':>7}{'MACs':>8}{'win':>5}"
    f"{'bef ms':>8}{'aft ms':>8}{'spdup':>6}{'2t spd':>7}"
)


def table_line(row: dict[str, Any]) -> str:
    head = f"{row['model']:15}{row['round_to']:>4}"
    if "split_s" not in row:
        return f"{head}  FAILED: exit {row['cli']['rc']} {row['cli'].get('error')}"
    s, lat = row["split_s"], row["latency"]
    two = f"{lat[1]['speedup']:>7.2f}" if len(lat) > 1 else f"{'-':>7}"
    cells = [row["cli"]["total_s"], s["load"], s["analysis"]]
    line = head + "".join(f"{v:>7.2f}" if i == 0 else f"{v:>6.2f}" for i, v in enumerate(cells))
    line += f"{s['imp_alloc']:>7.2f}" + "".join(
        f"{s[k]:>6.2f}" for k in ("rewrite", "emit", "verify", "ref", "save")
    )
    return line + (
        f"{row['cli']['peak_mb']:>7.0f}{row['mac_ratio']:>8.4f}{row['in_window']:>5}"
        f"{lat[0]['before_ms']:>8.1f}{lat[0]['after_ms']:>8.1f}{lat[0]['speedup']:>6.2f}{two}"
    )


def print_table(rows: list[dict[str, Any]], ctx: dict[str, Any]) -> None:
    print()
    print(HEADER)
    for row in rows:
        print(table_line(row))
    print(
        f"seconds; start-up: `import irprune.cli` {ctx['startup_cli_s']:.2f}s, + irprune.api"
        f" {ctx['startup_full_s']:.2f}s (included in total); ref = untimed tail of prune()"
        f" (reference run for fidelity); save = Result.save in-process;"
        f" latency = 1 thread, median of {ctx['runs']}; win = MAC ratio in {list(WINDOW)}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--size", choices=("full", "test"), default="full")
    p.add_argument("--style", choices=("explicit", "folded"), default="explicit")
    p.add_argument("--round-to", nargs="+", type=int, default=[1, 8])
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-bench")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "spine.json")
    p.add_argument("--keep", action="store_true", help="keep the pruned files in the cache dir")
    return p.parse_args(argv)


def source_hash() -> str:
    """Hash of irprune's sources: other people edit them while benchmarks run; record it."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "irprune").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_head() -> str:
    cmd = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def environment(ctx: dict[str, Any]) -> dict[str, Any]:
    return {
        "git_head": git_head(),
        "irprune_source_hash_at_start": source_hash(),
        "python": sys.version.split()[0],
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        **{k: v for k, v in ctx.items() if k.startswith("startup")},
        "peak_rss_method": "getrusage(RUSAGE_CHILDREN).ru_maxrss in a per-run wrapper process",
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_dir = args.cache_dir / "spine-out"
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = {"out_dir": out_dir, "runs": args.runs}
    ctx["startup_cli_s"] = startup_s("import irprune.cli")
    ctx["startup_full_s"] = startup_s("import irprune.cli, irprune.api, irprune.report")
    env = environment(ctx)
    start = time.perf_counter()
    rows = [row for name in args.models for row in bench_model(name, args, ctx)]
    print_table(rows, ctx)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    env.update(loadavg_at_end=os.getloadavg(), irprune_source_hash_at_end=source_hash())
    result: dict[str, Any] = {"settings": settings, "environment": env, "rows": rows}
    if len({r["irprune_source_hash"] for r in rows}) > 1:
        print("WARNING: irprune's sources changed during the run (see irprune_source_hash)")
    result["benchmark_wall_s"] = time.perf_counter() - start
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out} ({result['benchmark_wall_s']:.0f}s)")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker_main(*sys.argv[2:])
    else:
        main()
