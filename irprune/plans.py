"""Pruning plans as reviewable, versioned JSON documents that can be re-applied (issue #18).

A document (``plan.schema.json`` is its JSON Schema)::

    {
      "format": "irprune-plan",            # FORMAT
      "version": 1,                        # VERSION
      "model": {"name": "resnet18.onnx", "fingerprint": "<sha256 hex, see fingerprint()>"},
      "settings": {"target_flops": 0.5, "criterion": "l1", ...},   # how it was made (free form)
      "ratio": 0.4981,                     # achieved cost / original cost, as planned
      "round_to": 16,                      # the rounding the planner applied
      "narrow": false,                     # narrow groups rounded finer (optional, default false)
      "groups": [                          # every group of the channel analysis, by id
        {"id": 0, "size": 64, "unit": 1, "width": 32,
         "sources": ["conv1:conv1.weight:0"], "frozen": [],
         "kept": [0, 3, 4, ...]},          # sorted kept indices; only when width < size
        {"id": 1, "size": 10, "unit": 1, "width": 10,
         "sources": ["fc:fc.weight:0"], "frozen": ["reaches graph output 'y'"]}
      ]
    }

``size``, ``width`` and ``kept`` count the group's units: one tensor channel each, or a block of
``unit`` channels for a group pruned in whole blocks (the groups of a grouped conv, attention
heads; ``allocation.unit_channels``). ``sources`` (``node:weight:axis``) and ``frozen`` (the
analysis's reasons) are for the reviewer; the analysis of the model decides, not the file.

``from_dict`` re-applies a document to the model it was made for (same ``fingerprint``): a hand
edit of ``width``/``kept`` is accepted when it is valid for the group; anything else that does
not match the model raises ``PlanError`` (naming the group where it concerns one).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np

from irprune.emit import atomic_write
from irprune.errors import UsageError
from irprune.ir import Graph, Node
from irprune.passes.allocation import Plan, unit_channels
from irprune.passes.analysis.channels import ChannelAnalysis, ChannelGroup
from irprune.passes.rounding import group_step

log = logging.getLogger(__name__)

FORMAT = "irprune-plan"
VERSION = 1
SCHEMA = Path(__file__).with_name("plan.schema.json")


class PlanError(UsageError):
    """A plan document that is malformed or does not fit the model it is applied to."""


# --- fingerprint ---------------------------------------------------------------------------------
def fingerprint(graph: Graph) -> str:
    """A sha256 hex of ``graph``'s structure (take it after import + fold, before any rewrite):
    per node in order its domain, op type, name, input and output value names; per constant its
    name, dtype and shape (never its values, so mapped weights are not read); the graph's input
    and output names."""
    structure = {
        "nodes": [_node_entry(n) for n in graph.nodes],
        "constants": sorted(
            [v.name, np.dtype(v.const.dtype).str, [int(d) for d in v.const.shape]]
            for v in graph.constants()
            if v.const is not None
        ),
        "inputs": [v.name for v in graph.inputs],
        "outputs": [v.name for v in graph.outputs],
    }
    text = json.dumps(structure, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _node_entry(node: Node) -> list[object]:
    inputs = [v.name if v is not None else "" for v in node.inputs]
    return [node.domain, node.op_type, node.name, inputs, [v.name for v in node.outputs]]


# --- writing -------------------------------------------------------------------------------------
def to_dict(
    plan: Plan,
    analysis: ChannelAnalysis,
    *,
    fingerprint: str,
    settings: Mapping[str, Any],
    model_name: str,
) -> dict[str, Any]:
    """The document of ``plan`` (made on ``analysis`` of the model with ``fingerprint``)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model_name, "fingerprint": fingerprint},
        "settings": {str(k): _jsonable(k, v) for k, v in settings.items()},
        "ratio": float(plan.ratio),
        "round_to": int(plan.round_to),
        "narrow": bool(plan.narrow),
        "groups": [_group_entry(plan, analysis, g) for g in analysis.groups],
    }


def _group_entry(plan: Plan, analysis: ChannelAnalysis, group: ChannelGroup) -> dict[str, Any]:
    width = int(plan.widths[group.id])
    entry: dict[str, Any] = {
        "id": group.id,
        "size": group.size,
        "unit": unit_channels(analysis, group.id),
        "width": width,
        "sources": [f"{s.node}:{s.weight}:{s.axis}" for s in group.sources],
        "frozen": list(group.frozen),
    }
    if width < group.size:
        entry["kept"] = sorted(int(i) for i in plan.kept[group.id])
    return entry


def _jsonable(key: object, value: Any) -> Any:
    """``value`` as plain JSON (tuples and sets as lists, numpy scalars as numbers)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=repr)
    if isinstance(value, (list, tuple)):
        return [_jsonable(key, v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(key, v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise PlanError(f"setting {key!r}: {value!r} cannot be written to a plan (not JSON)")


def save(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (a temporary file renamed over ``path``)."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return atomic_write(text.encode(), path, external_data=False)


def load(path: str | Path) -> dict[str, Any]:
    """The document at ``path`` (``PlanError`` when it is missing or not a JSON object)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError(f"cannot read plan {str(path)!r}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PlanError(f"plan {str(path)!r} is not a JSON object")
    return data


# --- reading -------------------------------------------------------------------------------------
def from_dict(data: Mapping[str, Any], analysis: ChannelAnalysis, *, fingerprint: str) -> Plan:
    """The ``Plan`` a document describes, checked against ``analysis`` of the model with
    ``fingerprint``. ``ratio`` is the file's (re-measure it if widths were edited)."""
    _check_header(data, fingerprint)
    entries = _entries_by_id(data.get("groups"), analysis)
    widths = np.array([float(g.size) for g in analysis.groups], dtype=np.float64)
    kept: dict[int, np.ndarray] = {}
    for group in analysis.groups:
        width, indices = _check_group(entries[group.id], group, analysis)
        widths[group.id] = width
        if width < group.size:
            kept[group.id] = np.asarray(indices, dtype=np.int64)
    plan = Plan(
        widths=widths,
        kept=MappingProxyType(kept),
        ratio=_number(data.get("ratio"), "ratio"),
        round_to=_count(data.get("round_to", 1), "round_to", low=1),
        narrow=_flag(data.get("narrow", False), "narrow"),
    )
    for note in rounding_notes(plan, analysis):
        log.warning("%s", note)
    return plan


def rounding_notes(plan: Plan, analysis: ChannelAnalysis) -> list[str]:
    """One line per shrunk group whose width is off the plan's rounding (a hand edit): the width
    is applied as given, and said, since kernels that work in blocks of channels may run it
    slower. The step is the planner's (``passes.rounding``): ``round_to`` channels, or the
    narrow group's finer step, in units of the group's channel blocks."""
    notes = []
    for group in analysis.groups:
        width = int(plan.widths[group.id])
        if width >= group.size:
            continue
        unit = unit_channels(analysis, group.id)
        channels = group_step(group.size * unit, plan.round_to) if plan.narrow else plan.round_to
        step = channels // math.gcd(channels, unit)
        if width % step:
            notes.append(
                f"group {group.id}: width {width} is not a multiple of {step} (round-to "
                f"{plan.round_to}{' for narrow groups' if plan.narrow else ''}); applied as given"
            )
    return notes


def blocks_of(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The residual blocks a document removes (``"blocks"``, depth pruning: each names its
    block by its Add's ``output``), checked for form; empty when it removes none."""
    blocks = data.get("blocks", [])
    if not isinstance(blocks, list):
        raise PlanError("'blocks' must be a list of removed blocks")
    out = []
    for i, entry in enumerate(blocks):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("output"), str):
            raise PlanError(f"blocks[{i}]: an object with the block's 'output' name expected")
        out.append(dict(entry))
    names = [b["output"] for b in out]
    if len(set(names)) != len(names):
        raise PlanError("a block is listed twice in 'blocks'")
    return out


def _check_header(data: Mapping[str, Any], fingerprint: str) -> None:
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise PlanError(f"not an irprune plan: format is {found!r}, expected {FORMAT!r}")
    version = data.get("version")
    if version != VERSION or isinstance(version, bool):
        raise PlanError(f"unsupported plan version {version!r} (this irprune reads {VERSION})")
    model = data.get("model")
    made_for = model.get("fingerprint") if isinstance(model, Mapping) else None
    if made_for != fingerprint:
        raise PlanError(
            f"the plan was made for a different model (fingerprint {made_for}), "
            f"this one is {fingerprint}"
        )


def _entries_by_id(groups: object, analysis: ChannelAnalysis) -> dict[int, Mapping[str, Any]]:
    if not isinstance(groups, list):
        raise PlanError("plan: 'groups' must be a list of group entries")
    entries: dict[int, Mapping[str, Any]] = {}
    for entry in groups:
        gid = entry.get("id") if isinstance(entry, Mapping) else None
        if not _is_int(gid):
            raise PlanError(f"plan: a group entry has no integer 'id': {entry!r}")
        if gid in entries:
            raise PlanError(f"group {gid}: listed twice")
        entries[gid] = entry
    known = {g.id for g in analysis.groups}
    unknown = sorted(set(entries) - known)
    if unknown:
        raise PlanError(f"group {unknown[0]}: no such group in this model (ids {_ids(unknown)})")
    missing = sorted(known - set(entries))
    if missing:
        raise PlanError(f"group {missing[0]}: missing from the plan (ids {_ids(missing)})")
    return entries


def _check_group(
    entry: Mapping[str, Any], group: ChannelGroup, analysis: ChannelAnalysis
) -> tuple[int, list[int] | None]:
    """The width and kept indices of one entry, valid for ``group``."""
    where = f"group {group.id}"
    if entry.get("size") != group.size:
        raise PlanError(
            f"{where}: size {entry.get('size')!r} in the plan, {group.size} in the model"
        )
    unit = unit_channels(analysis, group.id)
    if entry.get("unit", unit) != unit:
        raise PlanError(f"{where}: unit {entry.get('unit')!r} in the plan, {unit} in the model")
    width = entry.get("width")
    if not _is_int(width) or not 1 <= width <= group.size:
        raise PlanError(f"{where}: width {width!r} is not between 1 and its size {group.size}")
    if group.frozen and width < group.size:
        raise PlanError(f"{where}: frozen ({group.frozen[0]}) but the plan shrinks it to {width}")
    kept = entry.get("kept")
    if kept is None and width < group.size:
        raise PlanError(f"{where}: shrinks to {width} but lists no 'kept' indices")
    if kept is not None:
        _check_kept(kept, width, group.size, where)
    return width, kept


def _check_kept(kept: object, width: int, size: int, where: str) -> None:
    if not isinstance(kept, list) or not all(_is_int(i) for i in kept):
        raise PlanError(f"{where}: 'kept' must be a list of integers")
    if len(kept) != width:
        raise PlanError(f"{where}: width {width} but {len(kept)} kept indices")
    if any(b <= a for a, b in itertools.pairwise(kept)):
        raise PlanError(f"{where}: kept indices must be sorted and unique")
    if kept and (kept[0] < 0 or kept[-1] >= size):
        bad = kept[0] if kept[0] < 0 else kept[-1]
        raise PlanError(f"{where}: kept index {bad} is out of range [0, {size})")


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (JSON's numbers and flags)."""
    return isinstance(value, int) and not isinstance(value, bool)


_is_int = is_int


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanError(f"plan: {name!r} must be a finite number, got {value!r}")
    return float(value)


def _count(value: object, name: str, *, low: int) -> int:
    if not _is_int(value) or value < low:
        raise PlanError(f"plan: {name!r} must be an integer >= {low}, got {value!r}")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"plan: {name!r} must be true or false, got {value!r}")
    return value
