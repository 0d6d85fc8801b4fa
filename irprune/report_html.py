"""``--report-html``: the report as one self-contained HTML page.

Inline CSS and inline SVG drawn here (no script, no external file, no network fetch; a Content
Security Policy forbids any). Sections: summary, per-group width bars before/after (frozen groups
in grey with their reason), cost, fidelity, latency, settings and timings. Every string that came
from the model (node names, frozen reasons, paths) is HTML-escaped: node names can be hostile.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from irprune.emit import atomic_write

# Colours of the charts (tests look for them in a screenshot; each is used by one chart only).
KEPT = "#2563eb"  # channels kept
REMOVED = "#f59e0b"  # channels removed
FROZEN = "#9ca3af"  # frozen group (left alone)
CHART_BG = "#f8fafc"  # the width chart's background (marks its area)
BEFORE = "#cbd5e1"  # cost before
AFTER = "#0d9488"  # cost after
LATENCY_BEFORE = "#ddd6fe"
LATENCY_AFTER = "#7c3aed"

CHART_WIDTH = 1100
_LABEL_W, _BAR_W, _ROW_H, _BAR_H = 300, 520, 18, 12

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#6b7280}.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:12px}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 14px;min-width:150px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse}td,th{padding:3px 12px 3px 0;text-align:left}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-1px}
svg text{font:12px system-ui,sans-serif;fill:#111827}
"""


def esc(value: object) -> str:
    """Text safe inside HTML/SVG text and quoted attributes."""
    return html.escape(str(value), quote=True)


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _num(x: float | None, spec: str = ".4g") -> str:
    if x is None:
        return "n/a"
    return "inf" if math.isinf(x) else format(x, spec)


def _short(text: str, n: int) -> str:
    """At most ``n`` characters, cut in the middle (node paths differ at both ends)."""
    if len(text) <= n:
        return text
    head = (n - 1) // 3
    return text[:head] + "…" + text[len(text) - (n - 1 - head) :]


def _rect(x: float, y: float, w: float, h: float, fill: str, cls: str, title: str) -> str:
    return (
        f'<rect class="{cls}" x="{x:.0f}" y="{y:.0f}" width="{max(w, 0):.0f}" height="{h:.0f}" '
        f'fill="{fill}" shape-rendering="crispEdges"><title>{esc(title)}</title></rect>'
    )


def _svg(height: int, body: Iterable[str], chart_id: str) -> str:
    return (
        f'<svg id="{chart_id}" width="{CHART_WIDTH}" height="{height}" '
        f'viewBox="0 0 {CHART_WIDTH} {height}" role="img">{"".join(body)}</svg>'
    )


def width_bars(groups: Sequence[Mapping[str, Any]]) -> str:
    """One row per group: a bar as long as its width before, blue for the channels kept and
    amber for the ones removed; frozen groups all grey, with their reason."""
    widest = max((int(g["size"]) for g in groups), default=1) or 1
    height = max(len(groups), 1) * _ROW_H
    parts = [_rect(0, 0, CHART_WIDTH, height, CHART_BG, "chart-bg", "channel groups")]
    for row, g in enumerate(groups):
        y = row * _ROW_H
        size, kept = int(g["size"]), int(g["kept"])
        sources = ", ".join(g.get("sources") or []) or "(no source)"
        full = round(_BAR_W * size / widest)
        kept_w = round(_BAR_W * kept / widest)
        tip = f"group {g['id']}: {size} -> {kept} channels; sources: {sources}"
        parts.append(
            f'<text x="0" y="{y + 12}">{esc(g["id"])}  {esc(_short(sources, 42))}'
            f"<title>{esc(tip)}</title></text>"
        )
        x0, yb = _LABEL_W, y + (_ROW_H - _BAR_H) // 2
        if g.get("frozen"):
            reason = "; ".join(g["frozen"])
            parts.append(_rect(x0, yb, full, _BAR_H, FROZEN, "frozen", f"{tip}; frozen: {reason}"))
            note = f"{size}  frozen: {reason}"
        else:
            parts.append(_rect(x0, yb, kept_w, _BAR_H, KEPT, "kept", tip))
            if kept < size:
                parts.append(_rect(x0 + kept_w, yb, full - kept_w, _BAR_H, REMOVED, "removed", tip))
            note = f"{size} → {kept}" if kept < size else f"{size} (unchanged)"
        parts.append(
            f'<text x="{x0 + _BAR_W + 10}" y="{y + 12}">{esc(_short(note, 44))}'
            f"<title>{esc(note)}</title></text>"
        )
    return _svg(height, parts, "width-chart")


def before_after_bars(
    rows: Sequence[tuple[str, float, float, str]],
    chart_id: str,
    colours: tuple[str, str] = (BEFORE, AFTER),
) -> str:
    """Pairs of bars (before light, after dark), each pair scaled to its larger value."""
    parts = []
    for k, (name, before, after, unit) in enumerate(rows):
        y = k * 2 * _ROW_H + k * 6
        top = max(before, after) or 1.0
        parts.append(f'<text x="0" y="{y + 20}">{esc(name)}</text>')
        for j, (value, fill, cls) in enumerate(
            ((before, colours[0], "before"), (after, colours[1], "after"))
        ):
            yy = y + j * _ROW_H + 2
            w = round(_BAR_W * value / top)
            label = f"{cls} {value:.3f} {unit}" if unit == "ms" else f"{cls} {_fmt(value)}"
            parts.append(_rect(120, yy, w, _BAR_H + 2, fill, cls, f"{name} {label}"))
            parts.append(f'<text x="{130 + w}" y="{yy + 12}">{esc(label)}</text>')
    return _svg(len(rows) * (2 * _ROW_H + 6), parts, chart_id)


def _table(rows: Iterable[tuple[object, ...]], header: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _summary(report: Mapping[str, Any]) -> str:
    ratio = report["cost"]["ratio"]
    cards = [("MACs", f"{ratio['macs']:.3f}x"), ("params", f"{ratio['params']:.3f}x")]
    lat = report.get("latency")
    if lat:
        cards.append(("speedup", f"{_num(lat['speedup'], '.2f')}x"))
    fid = report.get("fidelity")
    if fid:
        cards.append(("cosine", _num(fid["cosine"], ".4f")))
        if fid.get("top1_agreement") is not None:
            cards.append(("top-1 agreement", _num(fid["top1_agreement"], ".3f")))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><span class="muted">{esc(k)}</span><b>{esc(v)}</b></div>'
            for k, v in cards
        )
        + "</div>"
    )


def _cost(report: Mapping[str, Any]) -> str:
    cost = report["cost"]
    keys = ("macs", "params", "bytes")
    rows = [
        (k, _fmt(cost["before"][k]), _fmt(cost["after"][k]), f"{cost['ratio'][k]:.4f}")
        for k in keys
    ]
    bars = [(k, float(cost["before"][k]), float(cost["after"][k]), "") for k in keys]
    share = cost.get("prunable_macs_share")
    note = f"<p class='muted'>{share:.1%} of MACs depend on prunable groups.</p>" if share else ""
    return (
        _table(rows, ("", "before", "after", "ratio"))
        + note
        + before_after_bars(bars, "cost-chart")
    )


def _fidelity(report: Mapping[str, Any]) -> str:
    fid = report.get("fidelity")
    if not fid:
        return "<p class='muted'>not measured (dry run).</p>"
    top1 = fid.get("top1_agreement")
    rows = [
        ("max abs diff", _num(fid["max_abs_diff"])),
        ("relative L2 error", _num(fid["rel_l2"])),
        ("cosine", _num(fid["cosine"], ".6f")),
        ("top-1 agreement", _num(top1, ".4f") if top1 is not None else "n/a (not a classifier)"),
        ("inputs", report.get("fidelity_inputs", "")),
    ]
    return _table(rows)


def _latency(report: Mapping[str, Any]) -> str:
    lat = report.get("latency")
    if not lat:
        return "<p class='muted'>not measured.</p>"
    rows = [
        ("before", f"{lat['before_ms']:.3f} ms"),
        ("after", f"{lat['after_ms']:.3f} ms"),
        ("speedup", f"{_num(lat['speedup'], '.3f')}x"),
        (
            "setting",
            f"onnxruntime CPU, {lat['threads']} thread(s), batch {lat.get('batch', '?')}, "
            f"median of {lat['runs']} interleaved runs",
        ),
    ]
    bars = [("latency", float(lat["before_ms"]), float(lat["after_ms"]), "ms")]
    chart = before_after_bars(bars, "latency-chart", (LATENCY_BEFORE, LATENCY_AFTER))
    return _table(rows) + chart


def _settings(report: Mapping[str, Any]) -> str:
    target = report.get("target", {})
    rows: list[tuple[object, ...]] = [
        ("target", f"{target.get('metric', '?')} <= {target.get('fraction', '?')}")
    ]
    rows += [(k, v) for k, v in report.get("settings", {}).items()]
    timings = report.get("timings_s", {})
    total = sum(timings.values())
    trows = [(k, f"{v:.3f} s", f"{v / total:.0%}" if total else "") for k, v in timings.items()]
    trows.append(("total", f"{total:.3f} s", ""))
    return _table(rows) + "<h2>Timings</h2>" + _table(trows, ("step", "time", "share"))


def render(report: Mapping[str, Any]) -> str:
    """The report (``Result.report`` or the ``--report`` JSON) as one HTML page."""
    groups = report["groups"]
    pruned = sum(1 for g in groups if int(g["kept"]) < int(g["size"]))
    frozen = sum(1 for g in groups if g.get("frozen"))
    where = f"{report.get('input', 'model')} → {report.get('output', '(not written)')}"
    legend = "".join(
        f'<span style="background:{c}"></span>{esc(t)}'
        for c, t in ((KEPT, "kept"), (REMOVED, "removed"), (FROZEN, "frozen (left alone)"))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>irprune report: {esc(report.get("input", "model"))}</title><style>{_CSS}</style></head>
<body>
<h1>irprune report</h1><p class="muted">{esc(where)}</p>
{_summary(report)}
<h2>Channel groups: width before → after</h2>
<p class="legend muted">{len(groups)} groups, {pruned} pruned, {frozen} frozen.{legend}</p>
{width_bars(groups)}
<h2>Cost</h2>{_cost(report)}
<h2>Fidelity against the original</h2>{_fidelity(report)}
<h2>Latency</h2>{_latency(report)}
<h2>Settings</h2>{_settings(report)}
</body></html>
"""


def write(report: Mapping[str, Any], path: str | Path) -> Path:
    """Render and write atomically (temp file + rename)."""
    return atomic_write(render(report).encode("utf-8"), path)
