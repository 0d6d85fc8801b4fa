"""Side by side at the same MAC target: irprune, Torch-Pruning and onnxsim's structured pruning.

For each model (reference models, a few zoo models, the three digits-trained nets), every tool
prunes to ``--target-flops`` (default 0.5):

* ``irprune``        -- ``irprune.prune(path, target_flops=F)`` on the ONNX file with its
  defaults (on the digits nets with ``calib=`` 256 training images, i.e. ``reconstruct``;
  elsewhere no data and ``rewrite="compensate"``, the default's fallback: its synthesis of
  calibration data would make ``prune s`` minutes of torch work on the small models);
* ``irprune-drop``   -- the same with ``rewrite="drop"`` (no repair: apples to apples with the
  peers, which only remove channels);
* ``tp-local`` / ``tp-global`` -- Torch-Pruning 1.6.1, magnitude importance (L1), on the torch
  module the file was exported from, its ``pruning_ratio`` searched to the target, then exported
  to ONNX exactly like the original (``benchmarks/compare_peers.py``); ``-r16``: with its
  ``round_to=16`` (irprune's default rounding; Torch-Pruning's default is none);
* ``onnxsim-local`` / ``onnxsim-global`` -- onnxsim 0.8.1 ``apply_structured_pruning`` (L1), on
  the same ONNX file, its ``sparsity`` searched to the target.

Every result is measured the same way: **MAC ratio** by ONE counter for every tool,
``benchmarks/zoo.py:runtime_macs`` (tests/oracles.py's per-op formulas on shapes measured in
onnxruntime; shares no code with irprune's cost model); **prune s**, the tool's own pruning call
(irprune: ``prune()`` from file to verified model; Torch-Pruning: dependency graph + step at the
found ratio; onnxsim: one ``apply_structured_pruning`` call at the found sparsity; the search
and Torch-Pruning's ONNX export are recorded apart in the JSON); **valid**: ``onnx.checker``
full check, unchanged graph inputs/outputs, an onnxruntime run with the original's output
shapes; **speedup** (1 and 2 threads): ``irprune.report.latency`` (ORT_ENABLE_ALL, intra-op
spinning off, original and pruned interleaved, median of ``--runs`` or more for fast models,
see ``Context.runs``); on the digits nets, top-1
**accuracy** on the held-out split without fine-tuning.

Status: OK / TARGET (MAC ratio outside ``[F - 0.02, F]``: measured anyway, compare with care) /
N/A (the tool finds nothing to prune) / INVALID (the output fails a validity check) / ERROR (the
tool raised; the message's first line is kept). One tool's failure never stops the run.

    python benchmarks/compare.py            # everything (long; run it on a quiet machine)
    python benchmarks/compare.py --quick    # 3 small models, 10 latency runs

Writes benchmarks/results/compare.json (every row, the settings and the environment) and prints
one markdown table plus the irprune / peer ratios. Needs ``pip install -e ".[bench,dev,zoo]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compare_peers import (  # noqa: E402
    NotApplicable,
    PeerResult,
    Subject,
    cache_dir,
    digits_subject,
    reference_subject,
    run_onnxsim,
    run_torch_pruning,
    zoo_subject,
)
from benchmarks.zoo import runtime_macs  # noqa: E402
from irprune.api import prune  # noqa: E402
from irprune.emit.verify import random_inputs, session  # noqa: E402
from irprune.errors import TargetError  # noqa: E402
from irprune.report import latency  # noqa: E402
from models.digits import accuracy, calib_subset, load_digits_split  # noqa: E402

TOOLS = (
    "irprune",
    "irprune-drop",
    "tp-local",
    "tp-global",
    "tp-local-r16",
    "tp-global-r16",
    "onnxsim-local",
    "onnxsim-global",
)
PEERS = TOOLS[2:]
# reference models: name -> size preset ("full" = 224 px, 1000 classes; "test" = small)
REFERENCE = {
    "resnet18": "full",
    "resnet50": "full",
    "vgg16_bn": "test",
    "mobilenet_v2": "full",
    "densenet_small": "full",
}
ZOO_MODELS = ("mobilenet_v1", "efficientnet_b0", "shufflenet_v2", "resnext", "unet")
DIGITS = ("resnet20", "vgg_small", "mobilenetv2_small")
QUICK = ("ref:resnet18:test", "zoo:mobilenet_v1", "digits:resnet20")


def default_models() -> list[str]:
    return (
        [f"ref:{n}:{s}" for n, s in REFERENCE.items()]
        + [f"zoo:{n}" for n in ZOO_MODELS]
        + [f"digits:{n}" for n in DIGITS]
    )


def make_subject(spec: str, style: str) -> Subject:
    """``ref:NAME[:full|test]``, ``zoo:NAME`` or ``digits:NAME``."""
    family, name, *rest = spec.split(":")
    if family == "ref":
        size = rest[0] if rest else "full"
        cache = cache_dir("irprune-bench" if size == "full" else "irprune-tests")
        return reference_subject(name, size, style, cache)  # type: ignore[arg-type]
    if family == "zoo":
        return zoo_subject(name, style, cache_dir("irprune-zoo"))  # type: ignore[arg-type]
    if family == "digits":
        return digits_subject(name, style, cache_dir("irprune-digits"))  # type: ignore[arg-type]
    raise ValueError(f"unknown model spec {spec!r} (ref:NAME[:size], zoo:NAME, digits:NAME)")


# --------------------------------------------------------------------------- measuring


def _io(values: Any) -> list[tuple[str, int, tuple[Any, ...]]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        out.append((v.name, t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim)))
    return out


def validity(original: bytes, pruned: bytes) -> str:
    """'' when valid, else the first failed check: checker (full), interface, an ORT run."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:
        return f"onnx.checker: {first_line(exc)}"
    a, b = onnx.ModelProto.FromString(original), onnx.ModelProto.FromString(pruned)
    if _io(a.graph.input) != _io(b.graph.input) or _io(a.graph.output) != _io(b.graph.output):
        return f"interface changed: {_io(b.graph.input)} -> {_io(b.graph.output)}"
    feeds = random_inputs(session(original), batch=2, seed=1)
    try:
        got = session(pruned).run(None, feeds)
    except Exception as exc:
        return f"onnxruntime: {first_line(exc)}"
    want = session(original).run(None, feeds)
    if [g.shape for g in got] != [w.shape for w in want]:
        return f"output shapes {[g.shape for g in got]} != {[w.shape for w in want]}"
    return ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class Context:
    """What every row of one model shares: the original, its MACs, data, settings."""

    def __init__(self, subject: Subject, args: argparse.Namespace) -> None:
        self.subject = subject
        self.args = args
        self.original = subject.path.read_bytes()
        self.macs = runtime_macs(onnx.ModelProto.FromString(self.original))
        self.feeds = random_inputs(session(self.original), batch=1, seed=0)
        self.calib: dict[str, np.ndarray] | None = None
        self.test: tuple[np.ndarray, np.ndarray] | None = None
        self.base_accuracy: float | None = None
        self._runs: dict[int, int] = {}
        if subject.digits:
            split = load_digits_split(0)
            self.calib = {"input": split.x_train[calib_subset(split, args.calib, 0)]}
            self.test = (split.x_test, split.y_test)
            self.base_accuracy = accuracy(subject.path, *self.test)

    def runs(self, threads: int) -> int:
        """``--runs``, raised for fast models so each median covers ~``--latency-budget`` s of
        the original's runs (at most 200): tiny models are the noisiest under load."""
        if threads not in self._runs:
            sess = session(self.original, threads=threads, optimize=True)
            sess.run(None, self.feeds)
            start = time.perf_counter()
            sess.run(None, self.feeds)
            one = max(time.perf_counter() - start, 1e-6)
            want = int(self.args.latency_budget / one)
            self._runs[threads] = max(self.args.runs, min(want, 200))
        return self._runs[threads]

    def mac_ratio(self, model: onnx.ModelProto) -> float:
        return runtime_macs(model) / self.macs


def measure(ctx: Context, row: dict[str, Any], pruned: bytes) -> None:
    """Fill the shared measurements of one pruned model into ``row`` (status included)."""
    args = ctx.args
    problem = validity(ctx.original, pruned)
    row["valid"] = not problem
    row["mac_ratio"] = ctx.mac_ratio(onnx.ModelProto.FromString(pruned))
    if problem:
        row.update(status="INVALID", message=problem)
        return
    if ctx.test is not None:
        row["accuracy"] = accuracy(onnx.ModelProto.FromString(pruned), *ctx.test)
    if not args.no_latency:
        for threads in args.threads:
            runs = ctx.runs(threads)
            lat = latency(ctx.original, pruned, ctx.feeds, threads=threads, runs=runs, warmup=3)
            row[f"latency_{threads}t"] = lat
    lo, hi = args.target_flops - 0.02, args.target_flops
    if not lo - 1e-9 <= row["mac_ratio"] <= hi + 1e-9:
        row.setdefault("status", "TARGET")
        note = f"MAC ratio {row['mac_ratio']:.3f} outside [{lo:.2f}, {hi:.2f}]"
        row["message"] = "; ".join(m for m in (note, row.get("message", "")) if m)
    row.setdefault("status", "OK")


# --------------------------------------------------------------------------- the tools


def run_irprune(ctx: Context, row: dict[str, Any], rewrite: str | None) -> bytes:
    start, cpu = time.perf_counter(), time.process_time()
    result = prune(
        str(ctx.subject.path),
        target_flops=ctx.args.target_flops,
        # without data: compensate, not the default's synthesis of calibration data (minutes
        # of torch work on the small models, measured in benchmarks/datafree.py)
        rewrite=rewrite or (None if ctx.calib is not None else "compensate"),
        calib=ctx.calib,
        measure_latency=False,
    )
    row["prune_s"] = time.perf_counter() - start
    row["prune_cpu_s"] = time.process_time() - cpu
    row["settings"] = {
        k: result.report["settings"].get(k)
        for k in ("criterion", "strategy", "rewrite", "round_to", "round_to_applied")
    }
    row["irprune_mac_ratio"] = result.report["cost"]["ratio"]["macs"]
    return result.serialized or result.model.SerializeToString()


def run_peer(ctx: Context, row: dict[str, Any], tool: str) -> bytes:
    target, global_ = ctx.args.target_flops, "-global" in tool
    result: PeerResult
    if tool.startswith("tp-"):
        round_to = 16 if tool.endswith("-r16") else None
        result = run_torch_pruning(ctx.subject, target, ctx.mac_ratio, global_, round_to)
        row["knob"] = {"pruning_ratio": result.knob}
    else:
        result = run_onnxsim(ctx.subject, target, ctx.mac_ratio, global_)
        row["knob"] = {"sparsity": result.knob}
    row.update(prune_s=result.prune_s.wall, prune_cpu_s=result.prune_s.cpu)
    row["search_s"] = result.search_s
    row["probes"] = result.search.probes
    if result.notes:
        row["message"] = "; ".join(result.notes)
    return result.model


def run_tool(ctx: Context, tool: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": ctx.subject.name,
        "family": ctx.subject.family,
        "detail": ctx.subject.detail,
        "tool": tool,
        "original_accuracy": ctx.base_accuracy,
        "original_mmacs": ctx.macs / 1e6,
    }
    runners: dict[str, Callable[[], bytes]] = {
        "irprune": lambda: run_irprune(ctx, row, None),
        "irprune-drop": lambda: run_irprune(ctx, row, "drop"),
    }
    start = time.perf_counter()
    try:
        pruned = runners[tool]() if tool in runners else run_peer(ctx, row, tool)
    except NotApplicable as exc:
        return {**row, "status": "N/A", "message": str(exc)}
    except TargetError as exc:
        return {**row, "status": "TARGET", "message": first_line(exc)}
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        msg = f"{first_line(exc)} ({Path(where.filename).name}:{where.lineno})"
        return {**row, "status": "ERROR", "message": msg}
    row["tool_wall_s"] = time.perf_counter() - start
    try:
        measure(ctx, row, pruned)
    except Exception as exc:
        row.update(status="ERROR", message=f"measuring: {first_line(exc)}")
    return row


# --------------------------------------------------------------------------- report


def _speedup(row: dict[str, Any], threads: int) -> float | None:
    lat = row.get(f"latency_{threads}t")
    return lat["speedup"] if lat else None


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    t1, t2 = args.threads[0], args.threads[-1]
    head = (
        f"| model | tool | status | MAC ratio | prune s (CPU s) | speedup {t1}t | speedup {t2}t "
        f"| irprune ÷ tool ({t1}t) | top-1 % (orig) | note |"
    )
    lines = [head, "|" + " --- |" * 10]
    ref = {r["model"]: r for r in rows if r["tool"] == "irprune" and r.get("status") == "OK"}
    for r in rows:
        base = ref.get(r["model"])
        ratio = None
        if base and _speedup(base, t1) and _speedup(r, t1) and r["tool"] != "irprune":
            ratio = _speedup(base, t1) / _speedup(r, t1)  # type: ignore[operator]
        acc = "-"
        if r.get("accuracy") is not None:
            acc = f"{100 * r['accuracy']:.1f} ({100 * r['original_accuracy']:.1f})"
        note = r.get("message", "")[:90].replace("|", "/")
        lines.append(
            f"| {r['model']} | {r['tool']} | {r['status']} | {_f(r.get('mac_ratio'), '.3f')} "
            f"| {_f(r.get('prune_s'), '.2f')} ({_f(r.get('prune_cpu_s'), '.2f')}) "
            f"| {_f(_speedup(r, t1), '.2f')} "
            f"| {_f(_speedup(r, t2), '.2f')} | {_f(ratio, '.2f')} | {acc} | {note} |"
        )
    return "\n".join(lines)


def pivot(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The same rows, compact (for docs/peers.md): one line per model, one column per tool, cell =
    speedup at 1 / 2 threads (top-1 % on the digits nets); '!' marks a row that is not OK."""
    tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    t1, t2 = args.threads[0], args.threads[-1]
    lines = [
        f"| model (speedup {t1}t / {t2}t; top-1 %) | MMACs | " + " | ".join(tools) + " |",
        "|" + " --- |" * (len(tools) + 2),
    ]
    by = {(r["model"], r["tool"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        any_row = next(r for r in rows if r["model"] == model)
        cells = []
        for tool in tools:
            r = by.get((model, tool))
            if r is None or "mac_ratio" not in r:
                cells.append(r["status"] if r else "-")
                continue
            cell = f"{_f(_speedup(r, t1), '.2f')} / {_f(_speedup(r, t2), '.2f')}"
            if r.get("accuracy") is not None:
                cell += f"; {100 * r['accuracy']:.1f}"
            if r["status"] != "OK":
                cell += f" ! {r['status']} {r['mac_ratio']:.2f}"
            cells.append(cell)
        name = model
        if any_row.get("original_accuracy") is not None:
            name += f" (orig {100 * any_row['original_accuracy']:.1f})"
        macs = any_row.get("original_mmacs")
        lines.append(f"| {name} | {_f(macs, '.0f')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """irprune (default and drop) against each peer, over models where both rows are OK."""
    out: dict[str, Any] = {}
    by = {(r["model"], r["tool"]): r for r in rows if r.get("status") == "OK"}
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ours in ("irprune", "irprune-drop"):
        for peer in PEERS:
            pairs = [
                (by[m, ours], by[m, peer]) for m in models if (m, ours) in by and (m, peer) in by
            ]
            entry: dict[str, Any] = {"models": len(pairs)}
            for threads in args.threads:
                vals = [
                    _speedup(a, threads) / _speedup(b, threads)  # type: ignore[operator]
                    for a, b in pairs
                    if _speedup(a, threads) and _speedup(b, threads)
                ]
                entry[f"median_speedup_ratio_{threads}t"] = (
                    statistics.median(vals) if vals else None
                )
            times = [b["prune_s"] / a["prune_s"] for a, b in pairs if a.get("prune_s")]
            entry["median_time_ratio_peer_over_ours"] = statistics.median(times) if times else None
            accs = [100 * (a["accuracy"] - b["accuracy"]) for a, b in pairs if "accuracy" in a]
            entry["mean_accuracy_points_ours_minus_peer"] = statistics.mean(accs) if accs else None
            out[f"{ours} vs {peer}"] = entry
    return out


def ratio_table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    t = args.threads
    lines = [
        "| comparison | models (both OK) | "
        + " | ".join(f"median speedup ratio {n}t" for n in t)
        + " | median prune time peer ÷ irprune | mean top-1 points irprune − peer (digits) |",
        "|" + " --- |" * (4 + len(t)),
    ]
    for key, e in summary.items():
        cells = [_f(e[f"median_speedup_ratio_{n}t"], ".2f") for n in t]
        lines.append(
            f"| {key} | {e['models']} | {' | '.join(cells)} "
            f"| {_f(e['median_time_ratio_peer_over_ours'], '.2f')} "
            f"| {_f(e['mean_accuracy_points_ours_minus_peer'], '+.1f')} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _dist_version(name: str) -> str:
    """The installed distribution's version (torch_pruning 1.6.1's ``__version__`` says 1.6.0)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    return {
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "torch": _dist_version("torch"),
        "torch_pruning": _dist_version("torch-pruning"),
        "onnxsim": _dist_version("onnxsim"),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--models", nargs="+", help="ref:NAME[:full|test], zoo:NAME, digits:NAME")
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    p.add_argument("--quick", action="store_true", help=f"{' '.join(QUICK)}; 10 latency runs")
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--style", choices=["folded", "explicit"], default="folded")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--latency-budget", type=float, default=2.0, help="see Context.runs")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--calib", type=int, default=256, help="digits calibration images (train)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare.json")
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or list(QUICK)
        args.runs = min(args.runs, 10)
    args.models = args.models or default_models()
    return args


def save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result: dict[str, Any] = {"settings": settings, "environment": environment(), "rows": []}
    rows: list[dict[str, Any]] = result["rows"]
    for spec in args.models:
        try:
            ctx = Context(make_subject(spec, args.style), args)
        except Exception as exc:
            rows.append({"model": spec, "tool": "-", "status": "ERROR", "message": first_line(exc)})
            print(f"{spec}: harness failed: {first_line(exc)}", flush=True)
            continue
        print(f"{spec}: {ctx.subject.detail}, {ctx.macs / 1e6:.1f} MMACs", flush=True)
        for tool in args.tools:
            row = run_tool(ctx, tool)
            rows.append(row)
            print(
                f"  {tool:15} {row['status']:7} ratio {_f(row.get('mac_ratio'), '.3f')}"
                f"  prune {_f(row.get('prune_s'), '.2f')}s  speedup {_f(_speedup(row, 1), '.2f')}"
                f"  {row.get('message', '')[:120]}",
                flush=True,
            )
            save(args.out, result)
    result["ratios"] = ratios(rows, args)
    result["environment"]["loadavg_at_end"] = os.getloadavg()
    result["benchmark_wall_s"] = time.perf_counter() - start
    save(args.out, result)
    print()
    print(table(rows, args))
    print()
    print(ratio_table(result["ratios"], args))
    print()
    print(pivot(rows, args))
    print(f"\nwrote {args.out} ({result['benchmark_wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
