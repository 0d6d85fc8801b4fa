"""Prune every zoo model (models/zoo.py) in every export style and check the contracts.

For each (model, style): ``irprune.prune(path, target_flops=F, rewrite="drop")`` on the
cached export (models/zoo_export.py), then

* **valid** -- ``onnx.checker`` full check of the returned model;
* **drop-in** -- onnxruntime (graph optimizations off) runs it; graph inputs and outputs keep
  their names, dtypes and (symbolic) shapes; outputs on a batch-2 feed keep their shapes;
* **MACs** -- ratio by :func:`runtime_macs`: ``tests/oracles.py``'s per-op formulas applied to
  shapes measured by running the model in onnxruntime (independent of irprune's cost model and
  of ONNX shape inference); must lie in ``[F - 0.02, F]``. ``tests.oracles.count_macs`` is
  recorded too (``mac_ratio_oracle``), but it counts every dim shape inference cannot infer as 1,
  which undercounts behind run-time Reshape/Pad/Resize targets (attention, channel shuffle,
  reflection padding). ``irprune_cost_vs_runtime`` compares irprune's own MAC count of the
  original with the measured one;
* **masked equivalence** -- ``tests.helpers.masked_original`` vs the pruned model, max |diff| /
  max |out| <= 1e-4 (ORT optimizations off);
* **latency** -- onnxruntime, ``ORT_ENABLE_ALL``, 1 thread, spinning off, batch 1, original
  and pruned interleaved, median of ``--runs``; speedup = before / after; ``--clock cpu`` times
  by the thread's CPU time (stable on a machine shared with other jobs, where wall-clock medians
  swing by 2x);
* **analysis** -- groups (prunable / total), prunable MAC share, and the first frozen reason
  of each frozen group, counted, plus the MAC share each (normalised) reason blocks: the MACs
  that depend on the groups it froze.

Status: OK (all checks pass) / TARGET (``TargetError``: the target cannot be met; the message
and the frozen reasons say what blocked it) / INVALID (a returned model that fails the checker,
ORT, the drop-in check or masked equivalence: must never happen) / ERROR (anything else irprune
raised, or a returned model whose MAC ratio is outside the window).

Usage: ``python benchmarks/zoo.py [--models ...] [--styles folded explicit] [--runs 15]
[--no-latency] [--image-size 224] [--clock cpu] [--out benchmarks/results/zoo.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.spine import git_head, source_hash  # noqa: E402
from irprune.api import prunable_share, prune  # noqa: E402
from irprune.emit.verify import random_inputs, session  # noqa: E402
from irprune.errors import IrpruneError, TargetError  # noqa: E402
from irprune.frontends.onnx import import_model  # noqa: E402
from irprune.passes.analysis.channels import analyze  # noqa: E402
from irprune.passes.analysis.cost import build_cost_model  # noqa: E402
from irprune.passes.fold import fold_constants  # noqa: E402
from irprune.report import latency  # noqa: E402
from models.zoo import ZOO  # noqa: E402
from models.zoo_export import (  # noqa: E402
    cached_zoo_export,
    code_version,
    export_zoo,
    zoo_cache_filename,
)
from tests.helpers import masked_original, rel_diff  # noqa: E402
from tests.oracles import _MACS, count_macs  # noqa: E402

TOLERANCE = 1e-4
STATUS_ORDER = ("INVALID", "ERROR", "TARGET", "OK", "SKIP")


class Invalid(Exception):
    """A returned model broke a contract that must always hold."""


# --------------------------------------------------------------------------- analysis


def normalise(reason: str, op_types: dict[str, str], producers: dict[str, str]) -> str:
    """A frozen reason without value/node names, so reasons group across models.

    Quoted names become ``*``; a reason that starts with a bare node name ("NAME: coupled
    with ...") starts with that node's op type instead, and "coupled with 'VALUE'" names the
    op that produces VALUE (where the fixed channels come from).
    """
    head, sep, rest = reason.partition(": ")
    if sep and head in op_types:
        reason = f"{op_types[head]} *: {rest}"
    coupled = re.search(r"coupled with '([^']*)'", reason)
    if coupled:
        source = producers.get(coupled.group(1), "a graph input or constant")
        reason = reason.replace(coupled.group(0), f"coupled with the output of {source}")
    return re.sub(r"'[^']*'", "*", reason)


def analysis_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Groups, prunable MAC share and frozen reasons, computed apart from ``prune`` on the same
    IR it analyses (imported, constants folded: run-time pads/scales that are constant fold)."""
    graph = import_model(model)
    fold_constants(graph)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    total = cost.macs_at(cost.base_widths)
    first = [g.frozen[0] for g in analysis.groups if not g.prunable and g.frozen]
    op_types = {n.name: n.op_type for n in model.graph.node if n.name}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    by_category: dict[str, list[int]] = defaultdict(list)
    for g in analysis.groups:
        if not g.prunable and g.frozen:
            by_category[normalise(g.frozen[0], op_types, producers)].append(g.id)
    blocked = {}
    for category, ids in by_category.items():
        widths = cost.base_widths.copy()
        widths[ids] = 0.0
        blocked[category] = 1.0 - cost.macs_at(widths) / total if total else 0.0
    return {
        "macs_irprune_before": total,
        "groups": len(analysis.groups),
        "prunable_groups": len(analysis.prunable),
        "prunable_macs_share": prunable_share(analysis, cost),
        "frozen_first_reasons": dict(Counter(first).most_common()),
        "frozen_categories": {c: len(ids) for c, ids in by_category.items()},
        "blocked_macs_share": dict(sorted(blocked.items(), key=lambda kv: -kv[1])),
    }


# --------------------------------------------------------------------------- checks


def _io(values: Any) -> list[tuple[str, int, tuple[Any, ...]]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
        out.append((v.name, t.elem_type, dims))
    return out


def check_result(original: onnx.ModelProto, result: Any) -> dict[str, Any]:
    """The contract checks on a returned model; raises :class:`Invalid` on a violation."""
    data = result.serialized or result.model.SerializeToString()
    pruned = onnx.ModelProto.FromString(data)
    try:
        onnx.checker.check_model(data, full_check=True)
    except Exception as exc:
        raise Invalid(f"onnx.checker: {exc}") from exc
    if _io(pruned.graph.input) != _io(original.graph.input):
        raise Invalid(f"graph inputs changed: {_io(pruned.graph.input)}")
    if _io(pruned.graph.output) != _io(original.graph.output):
        raise Invalid(f"graph outputs changed: {_io(pruned.graph.output)}")
    feeds = random_inputs(session(original), batch=2, seed=1)
    try:
        got = session(data).run(None, feeds)
    except Exception as exc:
        raise Invalid(f"onnxruntime: {' '.join(str(exc).split())[:300]}") from exc
    reference = session(original).run(None, feeds)
    if [g.shape for g in got] != [r.shape for r in reference]:
        raise Invalid(f"output shapes {[g.shape for g in got]} != {[r.shape for r in reference]}")
    masked = masked_original(original, result.analysis, result.plan)
    expected = session(masked).run(None, feeds)
    err = max(rel_diff(e, g) for e, g in zip(expected, got, strict=True))
    if not err <= TOLERANCE:
        raise Invalid(f"masked equivalence violated: max rel diff {err:.3g} > {TOLERANCE:g}")
    return {"masked_rel_diff": err, "fidelity": result.report.get("fidelity")}


# --------------------------------------------------------------------------- one row


def _oracle_macs(model: onnx.ModelProto) -> tuple[int | None, str]:
    """tests/oracles.count_macs, or None and the reason when it cannot count (unknown dims)."""
    try:
        return count_macs(model), ""
    except ValueError as exc:
        return None, str(exc)


def runtime_macs(model: onnx.ModelProto) -> int:
    """MACs per sample with ``tests.oracles``' per-op formulas on shapes *measured* by running
    the model in onnxruntime at batch 1 (every MAC node's operands exposed as outputs).

    ``count_macs`` takes shapes from ONNX shape inference and counts a dim it cannot infer as
    1; behind run-time Reshape targets (attention heads) that undercounts. This count needs no
    inference and shares no code with irprune.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    consts = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type in _MACS]
    wanted = {name for n in nodes for name in (*n.input[:2], n.output[0]) if name}
    wanted -= set(consts)
    present = {o.name for o in probe.graph.output}
    for name in sorted(wanted - present):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    arrays = sess.run(names, random_inputs(sess, batch=1, seed=0))
    shapes: dict[str, tuple[int | str | None, ...]] = {**consts}
    shapes.update({n: tuple(a.shape) for n, a in zip(names, arrays, strict=True)})
    return sum(_MACS[n.op_type](n, shapes) for n in nodes)


def cpu_latency(
    original: bytes, pruned: bytes, feeds: dict[str, np.ndarray], *, warmup: int, runs: int
) -> dict[str, Any]:
    """``irprune.report.latency`` (1 thread, interleaved, median) timed by the calling thread's
    CPU time: with one thread onnxruntime runs every kernel in the caller's thread, so the time
    the process spends preempted by other jobs on a shared machine is not counted."""
    sessions = [session(m, threads=1, optimize=True) for m in (original, pruned)]
    times: list[list[float]] = [[], []]
    for i in range(warmup + runs):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.thread_time()
            sessions[k].run(None, feeds)
            if i >= warmup:
                times[k].append((time.thread_time() - t0) * 1e3)
    before, after = (statistics.median(t) for t in times)
    return {
        "clock": "thread CPU time",
        "threads": 1,
        "batch": 1,
        "runs": runs,
        "before_ms": before,
        "after_ms": after,
        "speedup": before / after if after else float("inf"),
    }


def bench_one(name: str, style: str, args: argparse.Namespace) -> dict[str, Any]:
    """One (model, style) row; harness failures (export, analysis) are ERROR "harness: ..."."""
    row: dict[str, Any] = {"model": name, "style": style, "irprune_source_hash": source_hash()}
    try:
        start = time.perf_counter()
        path = export_path(name, style, args)
        row.update(path=str(path), export_or_cache_s=time.perf_counter() - start)
        original = onnx.load(path)
        row["macs_before"] = runtime_macs(original)
        row["oracle_macs_before"], row["oracle_error"] = _oracle_macs(original)
        row.update(analysis_summary(original))
        row["irprune_cost_vs_runtime"] = row["macs_irprune_before"] / row["macs_before"]
    except NotApplicable as exc:
        return {**row, "status": "SKIP", "message": str(exc).splitlines()[0]}
    except Exception as exc:
        return {**row, "status": "ERROR", "message": f"harness: {type(exc).__name__}: {exc}"}
    return _prune_and_check(row, path, original, args)


class NotApplicable(Exception):
    """The model cannot be built at the requested size (its status is SKIP)."""


def export_path(name: str, style: str, args: argparse.Namespace) -> Path:
    """The cached export; with ``--image-size N`` the image models re-exported at N pixels
    (the long side), since the zoo's own 32-64 px sizes make every model overhead-bound."""
    if args.image_size is None:
        return cached_zoo_export(name, style, args.cache_dir)  # type: ignore[arg-type]
    spec = ZOO[name]
    images = [i for i in spec.inputs if len(i.shape) == 4 and i.dtype == "float32"]
    if spec.family == "transformers" or len(images) != len(spec.inputs):
        raise NotApplicable("not an image model built from code at any size")
    scale = args.image_size / max(images[0].shape[2:])
    inputs = tuple(
        replace(i, shape=(*i.shape[:2], *(round(d * scale) for d in i.shape[2:])))
        for i in spec.inputs
    )
    target = args.cache_dir / f"px{args.image_size}_{zoo_cache_filename(name, style)}"  # type: ignore[arg-type]
    if target.is_file():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    ZOO[name] = replace(spec, inputs=inputs)
    try:
        export_zoo(name, tmp, style)  # type: ignore[arg-type]
        os.replace(tmp, target)
    except Exception as exc:
        raise NotApplicable(f"export at {args.image_size} px failed: {exc}") from exc
    finally:
        ZOO[name] = spec
        tmp.unlink(missing_ok=True)
    return target


def _prune_and_check(
    row: dict[str, Any], path: Path, original: onnx.ModelProto, args: argparse.Namespace
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = prune(
            str(path), target_flops=args.target_flops, rewrite="drop", measure_latency=False
        )
    except TargetError as exc:
        return {**row, "status": "TARGET", "message": str(exc)}
    except IrpruneError as exc:
        return {**row, "status": "ERROR", "message": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        return {**row, "status": "ERROR", "message": f"{type(exc).__name__} at {where}: {exc}"}
    finally:
        row["prune_s"] = time.perf_counter() - start
    row["prunable_macs_share"] = result.report["cost"]["prunable_macs_share"]
    row["mac_ratio_irprune"] = result.report["cost"]["ratio"]["macs"]
    row["round_to_applied"] = result.report["settings"].get("round_to_applied")
    try:
        row.update(check_result(original, result))
    except Invalid as exc:
        return {**row, "status": "INVALID", "message": str(exc)}
    except Exception as exc:  # the check itself broke
        return {**row, "status": "ERROR", "message": f"harness: {type(exc).__name__}: {exc}"}
    row["macs_after"] = runtime_macs(result.model)
    row["mac_ratio"] = row["macs_after"] / row["macs_before"]
    if row["oracle_macs_before"] is not None:
        after, row["oracle_error"] = _oracle_macs(result.model)
        row["mac_ratio_oracle"] = None if after is None else after / row["oracle_macs_before"]
    if not args.no_latency:
        data = result.serialized or result.model.SerializeToString()
        before = original.SerializeToString()
        feeds = random_inputs(session(before), batch=1, seed=0)
        if args.clock == "cpu":
            row["latency"] = cpu_latency(before, data, feeds, warmup=args.warmup, runs=args.runs)
        else:
            row["latency"] = latency(before, data, feeds, warmup=args.warmup, runs=args.runs)
    lo, hi = args.target_flops - 0.02, args.target_flops
    if not lo - 1e-9 <= row["mac_ratio"] <= hi + 1e-9:
        msg = f"MAC ratio {row['mac_ratio']:.4f} outside [{lo:.2f}, {hi:.2f}]"
        extra = f"irprune's cost model says {row['mac_ratio_irprune']:.4f}"
        return {**row, "status": "ERROR", "message": f"{msg} ({extra})"}
    return {**row, "status": "OK", "message": ""}


# --------------------------------------------------------------------------- report

HEADER = (
    f"{'model':20}{'style':9}{'groups':>8}{'share':>7}{'ratio':>7}{'cost':>6}{'spdup':>7}  "
    f"{'status':8}"
    "frozen (first reason of each frozen group: count)"
)


def _short_reasons(row: dict[str, Any], width: int = 3) -> str:
    cats = Counter(row.get("frozen_categories", {}))
    return "; ".join(f"{c[:70]}: {n}" for c, n in cats.most_common(width))


def table_line(row: dict[str, Any]) -> str:
    groups = f"{row.get('prunable_groups', 0)}/{row.get('groups', 0)}"
    share = f"{row['prunable_macs_share']:.2f}" if "prunable_macs_share" in row else "-"
    ratio = f"{row['mac_ratio']:.3f}" if "mac_ratio" in row else "-"
    cost = row.get("irprune_cost_vs_runtime")
    cost_s = "-" if cost is None else ("=" if abs(cost - 1) < 1e-3 else f"{cost:.2f}")
    lat = row.get("latency")
    speed = f"{lat['speedup']:.2f}" if lat else "-"
    line = f"{row['model']:20}{row['style']:9}{groups:>8}{share:>7}{ratio:>7}{cost_s:>6}"
    line += f"{speed:>7}  "
    return line + f"{row['status']:8}{_short_reasons(row)}"


def todo(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Frozen-reason categories across the zoo: where they occur and what MACs they block."""
    out: dict[str, Any] = {}
    for row in rows:
        for cat, share in row.get("blocked_macs_share", {}).items():
            entry = out.setdefault(cat, {"rows": 0, "groups": 0, "models": {}})
            entry["rows"] += 1
            entry["groups"] += row["frozen_categories"][cat]
            key = f"{row['model']}/{row['style']}"
            entry["models"][key] = round(share, 3)
    return dict(sorted(out.items(), key=lambda kv: -sum(kv[1]["models"].values())))


def print_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(HEADER)
    for row in rows:
        print(table_line(row))
    counts = Counter(r["status"] for r in rows)
    print(
        f"\n{len(rows)} runs: "
        + ", ".join(f"{s} {counts[s]}" for s in STATUS_ORDER)
        + "; groups = prunable/total; share = prunable MAC share; ratio = MAC ratio by"
        " runtime_macs (tests/oracles formulas on shapes measured in ORT); cost = irprune's"
        " MAC count of the original / runtime_macs ('=' within 0.1%); spdup = ORT latency"
        f" speedup (1 thread, median of {args.runs}, {args.clock} clock)"
    )
    speedups = sorted(r["latency"]["speedup"] for r in rows if r.get("latency"))
    if speedups:
        print(
            f"speedup over {len(speedups)} runs: median {statistics.median(speedups):.2f}x,"
            f" min {speedups[0]:.2f}x, max {speedups[-1]:.2f}x,"
            f" slower than the original: {sum(x < 1 for x in speedups)}"
        )
    for status in ("INVALID", "ERROR", "TARGET", "SKIP"):
        bad = [r for r in rows if r["status"] == status]
        if not bad:
            continue
        banner = "!!! INVALID OUTPUT (must never happen) !!!" if status == "INVALID" else status
        print(f"\n{banner}")
        for r in bad:
            print(f"  {r['model']}/{r['style']}: {r['message'][:400]}")
    print("\nfrozen-reason categories (MACs blocked = share of the model's MACs that depend on")
    print("the groups this reason froze first):")
    for cat, entry in todo(rows).items():
        big = {k: v for k, v in entry["models"].items() if v >= 0.01}
        models = ", ".join(f"{k} {v:.2f}" for k, v in big.items())
        rest = len(entry["models"]) - len(big)
        if rest:
            models += f"{', ' if big else ''}{rest} more runs < 0.01"
        print(f"  [{entry['groups']} groups in {entry['rows']} runs] {cat}\n      {models}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--styles", nargs="+", default=["folded", "explicit"])
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time runs by the wall clock, or by the calling thread's CPU time (1 thread: "
        "onnxruntime runs every kernel in that thread, so preemption by other processes on a "
        "shared machine is not counted)",
    )
    p.add_argument(
        "--image-size", type=int, help="re-export the image models at this size (long side, px)"
    )
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "irprune-zoo")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "zoo.json")
    args = p.parse_args(argv)
    if args.runs < 10:
        p.error("--runs must be at least 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    env = {
        "git_head": git_head(),
        "irprune_source_hash_at_start": source_hash(),
        "zoo_code_version": code_version(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }
    rows = []
    for name in args.models:
        for style in (s for s in args.styles if s in ZOO[name].styles):
            row = bench_one(name, style, args)
            rows.append(row)
            print(table_line(row), flush=True)
    print_report(rows, args)
    env.update(loadavg_at_end=os.getloadavg(), irprune_source_hash_at_end=source_hash())
    if len({r["irprune_source_hash"] for r in rows}) > 1:
        print("WARNING: irprune's sources changed during the run (see irprune_source_hash)")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {
        "settings": settings,
        "environment": env,
        "counts": dict(Counter(r["status"] for r in rows)),
        "rows": rows,
        "frozen_reason_categories": todo(rows),
        "benchmark_wall_s": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out} ({result['benchmark_wall_s']:.0f}s)")
    return 1 if any(r["status"] == "INVALID" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
