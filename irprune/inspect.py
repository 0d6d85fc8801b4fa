"""``irprune inspect``: channel groups, their members, what freezes them, their cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.fold import fold_constants


def inspect_model(path: str | Path) -> dict[str, Any]:
    graph = import_model(path)
    fold_constants(graph)
    analysis = analyze(graph)
    cost = build_cost_model(graph, analysis)
    total = cost.macs_at(cost.base_widths)
    groups = []
    for g in analysis.groups:
        w = cost.base_widths.copy()
        w[g.id] = 0.0
        share = 1.0 - cost.macs_at(w) / total if total else 0.0
        groups.append(
            {
                "id": g.id,
                "size": g.size,
                "sources": [s.node for s in g.sources],
                "members": [f"{m.value}[{m.axis}]" for m in g.members],
                "macs_share": share,
                "frozen": list(g.frozen),
            }
        )
    from irprune.api import prunable_share

    info: dict[str, Any] = {
        "model": str(path),
        "nodes": len(graph.nodes),
        "macs": total,
        "params": cost.evaluate().params,
        "prunable_macs_share": prunable_share(analysis, cost),
        "groups": groups,
    }
    info["text"] = _text(info)
    return info


def _text(info: dict[str, Any]) -> str:
    groups = info["groups"]
    frozen = [g for g in groups if g["frozen"]]
    lines = [
        f"{info['model']}: {info['nodes']} nodes, {info['macs'] / 1e6:.2f}M MACs, "
        f"{info['params'] / 1e6:.3f}M params",
        f"{len(groups)} channel groups, {len(groups) - len(frozen)} prunable; "
        f"{info['prunable_macs_share']:.1%} of MACs depend on prunable groups",
        "",
        f"{'group':>5} {'width':>6} {'MACs':>7}  {'status':<8} sources / reason",
    ]
    for g in groups:
        status = "frozen" if g["frozen"] else "prunable"
        lines.append(
            f"{g['id']:>5} {g['size']:>6} {g['macs_share']:>6.1%}  {status:<8} "
            f"{', '.join(g['sources'][:4])}{' ...' if len(g['sources']) > 4 else ''}"
        )
        members = g["members"]
        shown = ", ".join(members[:4]) + (
            f" (+{len(members) - 4} more)" if len(members) > 4 else ""
        )
        lines.append(f"{'':>30}members: {shown}")
        for reason in g["frozen"][:3]:
            lines.append(f"{'':>30}- {reason}")
    return "\n".join(lines)
