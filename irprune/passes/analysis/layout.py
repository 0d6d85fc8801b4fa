"""Layouts: how one axis of one value is made of channel groups.

An axis of size ``n`` is a sequence of contiguous blocks, one ``Segment`` each. A segment with
``root`` r covers ``outer * size * inner`` positions; channel ``c`` of r sits at positions

    offset + o * (size * inner) + c * inner + i      for o < outer, i < inner

where ``offset`` is the sum of the spans of the segments before it. So:

- a conv output's channel axis is one segment (size C, inner 1, outer 1);
- Concat on that axis lists the inputs' segments one after another;
- Flatten of [N, C, H, W] from axis 1 gives inner = H * W (channel c -> a block of H*W columns);
  flattening a channels-last [N, H, W, C] gives outer = H * W instead.

A segment whose ``root`` is None holds channels that are not prunable (a graph input, an unknown
op's output, a constant) and is carried along unchanged. After analysis, roots are group ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Segment:
    root: int | None
    size: int
    inner: int = 1
    outer: int = 1

    @property
    def span(self) -> int:
        return self.outer * self.size * self.inner


Layout = tuple[Segment, ...]


def single(root: int, size: int) -> Layout:
    return (Segment(root, size),)


def span(layout: Layout) -> int:
    return sum(s.span for s in layout)


def roots(layout: Layout) -> set[int]:
    return {s.root for s in layout if s.root is not None}


def same_geometry(a: Layout, b: Layout) -> bool:
    """True when the two layouts split the axis the same way (roots may differ)."""
    if len(a) != len(b):
        return False
    return all(
        (x.size, x.inner, x.outer, x.root is None) == (y.size, y.inner, y.outer, y.root is None)
        for x, y in zip(a, b, strict=True)
    )


def merge_axes(layout: Layout, outer_before: int, inner_after: int) -> Layout | None:
    """The layout of an axis after it is merged with neighbours (Flatten/Reshape).

    ``outer_before`` is the product of the merged axes before it, ``inner_after`` of those after.
    Returns None when the result is not expressible (several segments repeated by an outer axis).
    """
    if outer_before > 1 and len(layout) > 1:
        return None
    return tuple(
        replace(s, inner=s.inner * inner_after, outer=s.outer * outer_before) for s in layout
    )


def positions(layout: Layout, kept: Mapping[int, np.ndarray]) -> np.ndarray:
    """Indices along the axis that survive when group g keeps channels ``kept[g]`` (sorted)."""
    parts: list[np.ndarray] = []
    offset = 0
    for s in layout:
        chans = kept.get(s.root) if s.root is not None else None
        if chans is None:
            parts.append(np.arange(offset, offset + s.span, dtype=np.int64))
        else:
            o = np.arange(s.outer, dtype=np.int64)[:, None, None] * (s.size * s.inner)
            c = np.asarray(chans, dtype=np.int64)[None, :, None] * s.inner
            i = np.arange(s.inner, dtype=np.int64)[None, None, :]
            parts.append((offset + o + c + i).ravel())
        offset += s.span
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def resized(layout: Layout, widths: Mapping[int, int]) -> Layout:
    """The layout after group g is cut to ``widths[g]`` channels."""
    return tuple(
        replace(s, size=widths[s.root]) if s.root is not None and s.root in widths else s
        for s in layout
    )


def substitute(layout: Layout, mapping: Mapping[int, Layout]) -> Layout | None:
    """Replace each segment of a refined root by its pieces (see ``Context.refine``).

    A piece at channel offset k of root r with (size, inner, outer) lands, inside a segment of r
    with (inner_s, outer_s), at inner = inner * inner_s and outer = outer * outer_s. Pieces stay
    contiguous only when the segment is not repeated (outer_s == 1) or r becomes a single piece;
    otherwise None.
    """
    out: list[Segment] = []
    for s in layout:
        pieces = mapping.get(s.root) if s.root is not None else None
        if pieces is None:
            out.append(s)
            continue
        if s.outer > 1 and len(pieces) > 1:
            return None
        out += [
            Segment(p.root, p.size, inner=p.inner * s.inner, outer=p.outer * s.outer)
            for p in pieces
        ]
    return tuple(out)


def channel_positions(layout: Layout, root: int) -> list[np.ndarray]:
    """For each segment of ``root``: positions as an array [outer, size, inner]."""
    found, offset = [], 0
    for s in layout:
        if s.root == root:
            o = np.arange(s.outer)[:, None, None] * (s.size * s.inner)
            c = np.arange(s.size)[None, :, None] * s.inner
            i = np.arange(s.inner)[None, None, :]
            found.append(offset + o + c + i)
        offset += s.span
    return found


def channel_slices(array: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    """Slices of ``array`` along ``axis`` at ``pos`` (``[outer, size, inner]``, one entry of
    ``channel_positions``), grouped by channel: ``[size, outer, inner, ...other axes]``."""
    return np.moveaxis(array, axis, 0)[np.transpose(pos, (1, 0, 2))]
