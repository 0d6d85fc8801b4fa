"""Block maps shared by grouped convolutions and axis-splitting Reshapes.

A *unit* is a run of ``unit`` consecutive positions along an axis (one group of a grouped conv,
one row of a Reshape split). A layout is aligned to units when every unit lies inside one channel
of one segment (or inside a fixed segment): each segment starts on a unit boundary, and a channel
segment's ``inner`` is a multiple of ``unit`` (a fixed one's span is). Then position block

    [u * unit, (u + 1) * unit)  ->  [u * unit_out, (u + 1) * unit_out)

maps channel c of a segment to channel c of the same segment with ``inner`` scaled by
unit_out / unit (``rescale``). ``align`` coarsens a layout's groups until it is aligned: channel
``c`` of a group whose segment has ``inner`` i becomes a block of lcm(i, unit) / i channels.
"""

from __future__ import annotations

from dataclasses import replace
from math import lcm
from typing import TYPE_CHECKING

from irprune.ir import Value
from irprune.passes.analysis.layout import Layout, Segment

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context


def misaligned(layout: Layout, unit: int) -> Segment | None:
    """The first segment whose channels would need coarsening to hold whole units (or None).

    Raises ValueError when a segment does not start on a unit boundary (no coarsening helps).
    """
    offset = 0
    for s in layout:
        if offset % unit or (s.root is None and s.span % unit):
            raise ValueError(f"a block of {unit} positions straddles two channel segments")
        if s.root is not None and s.inner % unit:
            return s
        offset += s.span
    return None


def align(ctx: Context, value: Value, axis: int, unit: int) -> Layout | None:
    """``value``'s layout on ``axis``, its groups coarsened so it is aligned to ``unit``.

    None when it cannot be (a unit straddles segments, or a group's size is not divisible).
    """
    while (layout := ctx.get(value, axis)) is not None:
        try:
            bad = misaligned(layout, unit)
        except ValueError:
            return None
        if bad is None:
            return layout
        assert bad.root is not None
        if not ctx.coarsen(bad.root, lcm(bad.inner, unit) // bad.inner):
            return None
    return None


def rescale(layout: Layout, unit: int, unit_out: int) -> Layout:
    """The layout after every aligned unit of ``unit`` positions becomes ``unit_out`` positions."""
    return tuple(
        Segment(None, s.span // unit * unit_out)
        if s.root is None
        else replace(s, inner=s.inner // unit * unit_out)
        for s in layout
    )
