"""The shape of an op rule: how channels flow, how the node is fixed up after slicing, its cost.

- ``propagate(ctx, node)`` relates the node's input and output axes (see ``channels.Context``).
- ``rewrite(node, view)`` returns the attribute and constant-input edits the node needs once
  every tensor has been sliced (a depthwise conv's ``group``, a Reshape's target shape); slicing
  itself is generic and needs no rule.
- ``contracts(node)`` says which input axis the node sums against which weight axis.
- ``macs(node)`` returns the node's multiply-accumulates as terms ``coef * prod(factors)``, each
  factor one axis of one value, so the cost model can evaluate them at any group widths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from irprune.ir import Node, Shape, Value
from irprune.passes.analysis.layout import Layout

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context

Factor = tuple[Value, int]


@dataclass(frozen=True)
class Term:
    coef: float
    factors: tuple[Factor, ...]


@dataclass(frozen=True)
class NodeEdit:
    """Attributes to set or drop, and constant inputs to replace (or append, at len(inputs))."""

    attrs: dict[str, Any] = field(default_factory=dict)
    const_inputs: dict[int, np.ndarray] = field(default_factory=dict)
    drop_attrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RewriteView:
    """What a node's rewrite hook may ask about the plan being applied (nothing is changed yet).

    ``shape(v)``: v's shape after slicing; ``layout(v, axis)``: v's layout before slicing;
    ``positions(layout)``: the surviving indices along an axis with that layout.
    """

    shape: Callable[[Value], Shape | None]
    layout: Callable[[Value, int], Layout | None]
    positions: Callable[[Layout], np.ndarray]


@dataclass(frozen=True)
class Contraction:
    """The node sums input ``data``'s axis ``data_axis`` against input ``weight``'s axis
    ``weight_axis`` (a Conv's input channels against W axis 1). Repair rewrites use it: a merge
    adds removed channels' weights into kept ones, a refit re-solves that weight."""

    data: int
    data_axis: int
    weight: int
    weight_axis: int


@dataclass(frozen=True)
class OpRule:
    propagate: Callable[[Context, Node], None]
    rewrite: Callable[[Node, RewriteView], NodeEdit | None] | None = None
    macs: Callable[[Node], list[Term]] | None = None
    contracts: Callable[[Node], list[Contraction]] | None = None


def static_product(dims: Shape | None, skip: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """Product of the known integer dims (symbolic or unknown dims count as 1)."""
    out = 1
    for i, d in enumerate(dims or ()):
        if i not in skip and isinstance(d, int):
            out *= d
    return out


def const_ints(value: Value | None) -> list[int] | None:
    if value is None or value.const is None:
        return None
    return [int(x) for x in np.asarray(value.const).reshape(-1)]


def axes_arg(ctx_opset: int, node: Node, since: int, index: int = 1) -> list[int] | None:
    """An ``axes`` list that moved from attribute to input at opset ``since``."""
    if ctx_opset >= since:
        return const_ints(node.input(index)) if node.input(index) is not None else None
    value = node.attr("axes")
    return list(value) if value is not None else None
