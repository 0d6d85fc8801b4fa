"""Measurements for the report: output fidelity, onnxruntime latency, and the printed table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from irprune import progress
from irprune.emit.verify import ModelData, session
from irprune.passes.rounding import MIN_STEPS, group_step

MIN_TIMED_RUNS = 5  # a time budget never stops a measurement before this many timed runs
# The report's measurement (not a latency target's, which times every run): seconds of timed
# runs of the original. No warm-up: a first run after the session is made is not slower here
# (ResNet-50: 75.8 ms, then 75.7, 75.6), and the median of at least 5 ignores one that is.
REPORT_BUDGET_S = 0.25
REPORT_WARMUP = 0


def fidelity(reference: list[np.ndarray], pruned: list[np.ndarray]) -> dict[str, float | None]:
    """Compare the first output of two runs on the same inputs."""
    ref = np.asarray(reference[0], dtype=np.float64)
    out = np.asarray(pruned[0], dtype=np.float64)
    diff = out - ref
    ref_norm = float(np.linalg.norm(ref))
    denom = ref_norm * float(np.linalg.norm(out))
    result: dict[str, float | None] = {
        "max_abs_diff": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(diff) / ref_norm) if ref_norm else 0.0,
        "cosine": float(np.sum(ref * out) / denom) if denom else 1.0,
        "top1_agreement": None,
    }
    if ref.ndim == 2 and ref.shape[1] > 1:
        result["top1_agreement"] = float(np.mean(ref.argmax(1) == out.argmax(1)))
    return result


def prepare_session(model: ModelData, threads: int) -> Future[Any]:
    """The latency measurement's optimized session of ``model``, made on a background thread:
    onnxruntime releases the GIL while it builds a session (graph optimization, weight packing:
    0.2 s for ResNet-50), so started before the rewrite it costs no wall time on a second core."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="irprune-session")
    made = pool.submit(session, model, threads=threads, optimize=True)
    pool.shutdown(wait=False)  # the thread ends with its one task
    return made


def latency(
    original: ModelData,
    pruned: ModelData,
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    callback: progress.Callback | None = None,
    interleave: bool = True,
    budget_s: float | None = None,
    prepared: tuple[Future[Any] | None, Future[Any] | None] = (None, None),
) -> dict[str, Any]:
    """Median onnxruntime CPU latency (ms) of both models: all graph optimizations on (what users
    deploy), spinning off, runs interleaved with the order alternating every iteration.
    Progress (one unit per pair of runs) goes to ``callback`` and any display enabled.
    Without ``interleave`` (models too large to hold two sessions) each model is timed alone,
    the original first, and its session freed before the next is made.

    ``budget_s``: stop timing once the timed runs of a model have taken that long, after at
    least ``MIN_TIMED_RUNS`` of them (at most ``runs``); the report says how many were made.
    A small model makes all ``runs`` in a fraction of the budget; ResNet-50 at one thread
    (75 ms a run) stops after 5.

    ``prepared``: the original's and the pruned model's sessions from ``prepare_session``
    (same ``threads``) where made, used instead of making them (interleaved runs only)."""
    budget = _Budget(runs, budget_s)
    if interleave:
        made = [None if p is None else p.result() for p in prepared]
        times = _interleaved([original, pruned], feeds, threads, budget, warmup, callback, made)
    else:
        steps = iter(progress.track(range(2 * (warmup + runs)), "latency", callback=callback))
        times = [_alone(m, feeds, threads, budget, warmup, steps) for m in (original, pruned)]
        for _ in steps:  # let the display finish
            pass
    before, after = (statistics.median(t) for t in times)
    first = next(iter(feeds.values()), None)
    return {
        "threads": threads,
        "batch": int(first.shape[0]) if first is not None and first.ndim else 1,
        "runs": min(len(t) for t in times),
        "interleaved": interleave,
        "before_ms": before,
        "after_ms": after,
        "speedup": before / after if after else float("inf"),
    }


class _Budget:
    """When a model's timed runs stop: after ``runs``, or once they have taken ``seconds``
    (and number at least ``MIN_TIMED_RUNS``)."""

    def __init__(self, runs: int, seconds: float | None) -> None:
        self.runs, self.seconds = runs, seconds

    def done(self, times_ms: list[float]) -> bool:
        if len(times_ms) >= self.runs:
            return True
        if self.seconds is None or len(times_ms) < MIN_TIMED_RUNS:
            return False
        return sum(times_ms) >= self.seconds * 1e3


def _interleaved(
    models: list[ModelData],
    feeds: Mapping[str, np.ndarray],
    threads: int,
    budget: _Budget,
    warmup: int,
    callback: progress.Callback | None,
    made: list[Any],
) -> list[list[float]]:
    sessions = [
        s if s is not None else session(m, threads=threads, optimize=True)
        for m, s in zip(models, made, strict=True)
    ]
    times: list[list[float]] = [[], []]
    total = warmup + budget.runs
    with progress.task("latency", total, callback) as step:
        for i in range(total):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                t0 = time.perf_counter()
                sessions[k].run(None, dict(feeds))
                if i >= warmup:
                    times[k].append((time.perf_counter() - t0) * 1e3)
            if budget.done(times[0]):
                break
            step.advance()
        step.advance(total - step.done)  # stopped by the budget: the display ends full
    return times


def _alone(
    model: ModelData,
    feeds: Mapping[str, np.ndarray],
    threads: int,
    budget: _Budget,
    warmup: int,
    steps: Iterator[int],
) -> list[float]:
    sess = session(model, threads=threads, optimize=True)
    times: list[float] = []
    for i in range(warmup + budget.runs):
        next(steps, None)
        t0 = time.perf_counter()
        sess.run(None, dict(feeds))
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
            if budget.done(times):
                break
    return times


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _blocks_removed(blocks: list[Mapping[str, Any]]) -> list[str]:
    """The table's lines for the residual blocks a depth plan removed."""
    if not blocks:
        return []
    lines = [f"blocks removed: {len(blocks)} ({blocks[0]['why']})"]
    for b in blocks[:12]:
        score = "-" if b["score"] is None else f"{b['score']:.4g}"
        lines.append(
            f"  {b['add']}: {b['kind']}, {b['macs_share']:.1%} of MACs, {b['criterion']} {score}"
        )
    if len(blocks) > 12:
        lines.append(f"  ... {len(blocks) - 12} more (see --report)")
    return lines


def format_table(report: Mapping[str, Any]) -> str:
    """The human-readable summary printed by the CLI."""
    lines = []
    cost = report["cost"]
    shapes = report.get("input_shapes")
    if shapes:
        at = ", ".join(
            f"{name}:{'x'.join(map(str, dims)) or 'scalar'}"
            for name, dims in shapes["inputs"].items()
        )
        second = f"; also verified at {shapes['second']}" if shapes.get("second") else ""
        lines.append(f"costs at input shape {at}{second}")
    lines.append(f"{'':10}{'before':>12}{'after':>12}{'ratio':>9}")
    for key in ("macs", "params", "bytes"):
        b, a = cost["before"][key], cost["after"][key]
        lines.append(f"{key:10}{_fmt(b):>12}{_fmt(a):>12}{a / b if b else 1:>9.3f}")
    lat = report.get("latency")
    if lat:
        lines.append(
            f"{'latency':10}{lat['before_ms']:>10.2f}ms{lat['after_ms']:>10.2f}ms"
            f"{lat['speedup']:>8.2f}x  (onnxruntime CPU, {lat['threads']} thread"
            + (f", batch {lat['batch']})" if "batch" in lat else ")")
        )
    if lat and "rounds" in lat:
        last = lat["after_ms"] / lat["before_ms"]
        lines.append(
            f"latency target {report['target']['fraction']:g}: measured {last:.3f}"
            f" (predicted {lat['predicted_ratio']:.3f}, {len(lat['rounds'])} round(s))"
            + ("" if lat["met"] else "  NOT MET")
        )
    settings = report.get("settings", {})
    if settings.get("round_to_applied", settings.get("round_to")) != settings.get("round_to"):
        lines.append(
            f"round-to {settings['round_to']} could not reach the target; "
            f"widths rounded to {settings['round_to_applied']}"
        )
    if settings.get("round_narrow"):
        applied = settings.get("round_to_applied", settings.get("round_to"))
        finest = group_step(1, applied)
        lines.append(
            f"round-to {applied} would cut a group by more than half; groups narrower than "
            f"{MIN_STEPS * applied} channels rounded to smaller multiples (down to {finest})"
        )
    groups = report["groups"]
    pruned = [g for g in groups if g["kept"] < g["size"]]
    frozen = [g for g in groups if g["frozen"]]
    lines.append(f"groups: {len(groups)} total, {len(pruned)} pruned, {len(frozen)} left alone")
    for g in pruned[:12]:
        lines.append(
            f"  group {g['id']:>3}: {g['size']:>5} -> {g['kept']:<5} {', '.join(g['sources'][:3])}"
        )
    if len(pruned) > 12:
        lines.append(f"  ... {len(pruned) - 12} more (see --report)")
    for g in frozen[:8]:
        lines.append(f"  frozen {g['id']:>3} ({g['size']} ch): {g['frozen'][0]}")
    if len(frozen) > 8:
        lines.append(f"  ... {len(frozen) - 8} more frozen groups (see --report)")
    lines += _blocks_removed(report.get("blocks_removed", []))
    syn = report.get("synthetic")
    if syn:
        lines.append(
            f"synthetic calibration{' (no --calib given)' if syn.get('auto') else ''}: "
            f"{syn['samples']} inputs ({syn['method']}, "
            f"{syn['iterations']} iterations), statistics loss {syn['stats_loss_initial']:.3g}"
            f" -> {syn['stats_loss_final']:.3g}, {syn['seconds']:.1f}s"
        )
    fid = report.get("fidelity")
    if fid:
        top1 = fid["top1_agreement"]
        lines.append(
            f"fidelity vs original: max|diff| {fid['max_abs_diff']:.4g},"
            f" rel L2 {fid['rel_l2']:.4g}, cosine {fid['cosine']:.4f}"
            + (f", top-1 agreement {top1:.3f}" if top1 is not None else "")
            + f" ({report['fidelity_inputs']})"
        )
    return "\n".join(lines)
