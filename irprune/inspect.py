"""``irprune inspect``: channel groups, their members, what freezes them, their cost; the
residual blocks depth pruning may remove (kind, MACs share, params) and the residual Adds it
may not, with the reason; and the channel-group graph in Graphviz DOT (``--dot``).

It reads the model without onnxruntime (``irprune.analyze`` opens a session, so a model the
runtime cannot load could not be inspected), on the same import, folding and analyses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from irprune.frontends.onnx import import_model
from irprune.ir import Graph
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.channels import ChannelAnalysis, analyze
from irprune.passes.analysis.cost import build_cost_model
from irprune.passes.fold import fold_constants


def inspect_model(
    path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, Any]:
    """Channel groups, what froze each and MAC shares, at the deployment shape
    (``input_shapes``, see ``irprune.shapes``)."""
    graph = import_model(path, input_shapes)
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
        "input_shapes": graph.meta["input_shapes"].as_json(),
        "nodes": len(graph.nodes),
        "macs": total,
        "params": cost.evaluate().params,
        "prunable_macs_share": prunable_share(analysis, cost),
        "groups": groups,
        **_blocks(graph, total),
        "subgraph_macs": {k: dict(v) for k, v in cost.subgraph_macs.items()},
    }
    info["text"] = _text(info)
    info["edges"] = [
        {"from": a, "to": b, "ops": ops} for (a, b), ops in group_edges(graph, analysis).items()
    ]
    return info


def _blocks(graph: Graph, macs: float) -> dict[str, Any]:
    """The removable blocks and the rejected residual Adds (``stages.depth``)."""
    from irprune.stages.depth import block_candidates

    _, blocks, rejected = block_candidates(graph, macs)
    return {
        "blocks": [
            {"add": b.add, "output": b.output, "kind": b.kind, "nodes": b.nodes,
             "macs_share": b.macs_share, "params": b.params}
            for b in blocks
        ],
        "rejected_blocks": [{"add": r.add, "output": r.output, "reason": r.reason}
                            for r in rejected],
    }  # fmt: skip


def group_edges(graph: Graph, analysis: ChannelAnalysis) -> dict[tuple[int, int], list[str]]:
    """(A, B) -> op types of the nodes where channel group A flows into group B: a node whose
    (non-constant) inputs carry A and whose outputs carry B, B not among its inputs' groups (a
    Concat of A and B is no edge; a Conv from A to B is)."""
    edges: dict[tuple[int, int], list[str]] = {}
    for node in graph.nodes:
        ins = _groups_of(
            analysis, (v.name for v in node.inputs if v is not None and not v.is_const)
        )
        outs = _groups_of(analysis, (v.name for v in node.outputs))
        for a in sorted(ins - outs):
            for b in sorted(outs - ins):
                ops = edges.setdefault((a, b), [])
                if node.op_type not in ops:
                    ops.append(node.op_type)
    return edges


def _groups_of(analysis: ChannelAnalysis, names: Iterable[str]) -> set[int]:
    return {
        root
        for name in names
        for layout in analysis.layouts.get(name, {}).values()
        for root in lay.roots(layout)
    }


def _dot_string(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, line breaks as DOT's ``\\n``,
    other control characters as spaces (a node name can hold anything)."""
    lines = [
        "".join(c if c.isprintable() else " " for c in line) for line in text.splitlines() or [""]
    ]
    body = "\\n".join(x.replace("\\", "\\\\").replace('"', '\\"') for x in lines)
    # DOT's lexer reads a backslash before the closing quote as an escaped quote
    return f'"{body} "' if body.endswith("\\") else f'"{body}"'


def to_dot(info: Mapping[str, Any]) -> str:
    """The channel-group graph of ``inspect_model``'s result as a Graphviz digraph: one node per
    group (id, width, prunable or the reason it is frozen, its first sources), one edge per pair of
    groups that meet at an op (labelled with the op types)."""
    lines = [
        "digraph channel_groups {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for g in info["groups"]:
        label = [f"group {g['id']}", f"{g['size']} channels, {g['macs_share']:.1%} of MACs"]
        label.append("frozen: " + g["frozen"][0] if g["frozen"] else "prunable")
        label.append(_sources(g["sources"]))
        colour = "#e5e7eb" if g["frozen"] else "#bfdbfe"
        text = _dot_string("\n".join(label))
        lines.append(f'  g{g["id"]} [label={text}, fillcolor="{colour}"];')
    for e in info["edges"]:
        lines.append(f"  g{e['from']} -> g{e['to']} [label={_dot_string(', '.join(e['ops']))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _sources(sources: Sequence[str]) -> str:
    shown = ", ".join(sources[:3]) + (f" +{len(sources) - 3}" if len(sources) > 3 else "")
    return shown or "(no source)"


def _shape_text(shapes: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{name}:{'x'.join(map(str, dims)) or 'scalar'}" for name, dims in shapes["inputs"].items()
    )


def _text(info: dict[str, Any]) -> str:
    groups = info["groups"]
    frozen = [g for g in groups if g["frozen"]]
    lines = [
        f"{info['model']}: {info['nodes']} nodes, {info['macs'] / 1e6:.2f}M MACs, "
        f"{info['params'] / 1e6:.3f}M params at {_shape_text(info['input_shapes'])}",
        f"{len(groups)} channel groups, {len(groups) - len(frozen)} prunable; "
        f"{info['prunable_macs_share']:.1%} of MACs depend on prunable groups",
        *(
            f"not analysed or counted: {', '.join(f'{n} {op}' for op, n in ops.items())} "
            f"inside the subgraphs of {node}"
            for node, ops in info.get("subgraph_macs", {}).items()
        ),
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
    return "\n".join([*lines, *_block_text(info)])


def _block_text(info: Mapping[str, Any]) -> list[str]:
    blocks, rejected = info.get("blocks", []), info.get("rejected_blocks", [])
    if not blocks and not rejected:
        return ["", "residual blocks: none (no Add of two varying inputs)"]
    lines = ["", f"residual blocks: {len(blocks)} removable (--depth), {len(rejected)} not"]
    if blocks:
        lines.append(f"{'MACs':>7} {'params':>9}  {'kind':<20} add")
    for b in blocks:
        lines.append(f"{b['macs_share']:>6.1%} {b['params']:>9}  {b['kind']:<20} {b['add']}")
    for r in rejected:
        lines.append(f"  not removable: {r['add']}: {r['reason']}")
    return lines
