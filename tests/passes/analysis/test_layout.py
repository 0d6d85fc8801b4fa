"""Layouts (irprune/passes/analysis/layout.py): known answers for the position arithmetic of
segments, checked against a brute-force enumeration of ``offset + o*(size*inner) + c*inner + i``.
Gaps mutation testing found (docs/mutation.md)."""

from __future__ import annotations

import numpy as np

from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.layout import Segment

# [fixed 2] [group 0: size 3, inner 2, outer 2] [group 1: size 2] [fixed 1]
LAYOUT = (Segment(None, 2), Segment(0, 3, inner=2, outer=2), Segment(1, 2), Segment(None, 1))


def _brute(layout: lay.Layout, kept: dict[int, list[int]]) -> list[int]:
    out, offset = [], 0
    for s in layout:
        chans = kept.get(s.root, range(s.size)) if s.root is not None else range(s.size)
        if s.root is None:
            out += range(offset, offset + s.span)
        else:
            out += [
                offset + o * s.size * s.inner + c * s.inner + i
                for o in range(s.outer)
                for c in chans
                for i in range(s.inner)
            ]
        offset += s.span
    return out


def test_span_and_roots() -> None:
    assert Segment(0, 3, inner=2, outer=5).span == 30
    assert [s.span for s in LAYOUT] == [2, 12, 2, 1] and lay.span(LAYOUT) == 17
    assert lay.roots(LAYOUT) == {0, 1} and lay.roots((Segment(None, 4),)) == set()
    assert lay.single(7, 5) == (Segment(7, 5, 1, 1),)


def test_positions_keep_the_kept_channels_of_each_group() -> None:
    for kept in [{}, {0: [2]}, {0: [0, 2], 1: [1]}, {1: []}, {0: [], 1: [0, 1]}]:
        arrays = {g: np.asarray(c, dtype=np.int64) for g, c in kept.items()}
        got = lay.positions(LAYOUT, arrays)
        assert got.dtype == np.int64 and got.tolist() == _brute(LAYOUT, kept), kept
    empty = lay.positions((), {})
    assert empty.tolist() == [] and empty.dtype == np.int64  # indices, even when there are none
    # channel 1 of group 0 (outer 2, inner 2) sits at 2 + {2, 3} and 2 + 6 + {2, 3}
    assert lay.positions(LAYOUT[:2], {0: np.array([1])}).tolist() == [0, 1, 4, 5, 10, 11]


def test_channel_positions_are_every_channel_of_the_root() -> None:
    (pos,) = lay.channel_positions(LAYOUT, 0)
    assert pos.shape == (2, 3, 2)
    assert pos.ravel().tolist() == _brute(LAYOUT[:2], {})[2:]
    assert pos[1, 2].tolist() == [2 + 6 + 4, 2 + 6 + 5]
    (pos,) = lay.channel_positions(LAYOUT, 1)
    assert pos.ravel().tolist() == [14, 15]
    twice = (Segment(3, 2), Segment(None, 1), Segment(3, 2))
    assert [p.ravel().tolist() for p in lay.channel_positions(twice, 3)] == [[0, 1], [3, 4]]
    assert lay.channel_positions(LAYOUT, 9) == []


def test_channel_slices_group_the_positions_by_channel() -> None:
    array = np.arange(17 * 2).reshape(2, 17)  # the layout on axis 1
    (pos,) = lay.channel_positions(LAYOUT, 0)
    got = lay.channel_slices(array, 1, pos)
    assert got.shape == (3, 2, 2, 2)  # [size, outer, inner, other axis]
    for c in range(3):
        cols = [2 + o * 6 + c * 2 + i for o in range(2) for i in range(2)]
        assert got[c].reshape(4, 2).T.tolist() == array[:, cols].tolist()


def test_same_geometry_ignores_roots_not_sizes() -> None:
    other = (Segment(None, 2), Segment(5, 3, inner=2, outer=2), Segment(6, 2), Segment(None, 1))
    assert lay.same_geometry(LAYOUT, other)
    assert not lay.same_geometry(LAYOUT, other[:3])
    for k, changed in enumerate(
        [Segment(0, 2), Segment(0, 3, inner=1, outer=2), Segment(0, 3, inner=2, outer=1)]
    ):
        assert not lay.same_geometry(LAYOUT[:2], (LAYOUT[0], changed)), k
    assert not lay.same_geometry((Segment(None, 2),), (Segment(4, 2),))  # fixed vs grouped


def test_merge_axes_repeats_each_segment() -> None:
    assert lay.merge_axes(LAYOUT[1:3], 1, 5) == (
        Segment(0, 3, inner=10, outer=2),
        Segment(1, 2, inner=5, outer=1),
    )
    assert lay.merge_axes((Segment(0, 3, outer=2),), 4, 3) == (Segment(0, 3, inner=3, outer=8),)
    assert lay.merge_axes(LAYOUT[1:3], 2, 1) is None  # several segments repeated by an outer axis


def test_resized_cuts_only_the_groups_given() -> None:
    got = lay.resized(LAYOUT, {0: 1, 5: 9})
    assert got == (LAYOUT[0], Segment(0, 1, inner=2, outer=2), *LAYOUT[2:])
    assert lay.resized(LAYOUT, {}) == LAYOUT


def test_substitute_places_pieces_inside_the_segment() -> None:
    pieces = (Segment(4, 2), Segment(5, 1, inner=3))
    got = lay.substitute((Segment(None, 1), Segment(0, 5, inner=2)), {0: pieces})
    assert got == (Segment(None, 1), Segment(4, 2, inner=2), Segment(5, 1, inner=6))
    one = (Segment(4, 3, outer=2),)
    assert lay.substitute((Segment(0, 3, inner=2, outer=5),), {0: one}) == (
        Segment(4, 3, inner=2, outer=10),
    )
    assert lay.substitute((Segment(0, 3, outer=5),), {0: pieces}) is None
    assert lay.substitute((Segment(0, 3, outer=2),), {0: pieces}) is None
    assert lay.substitute(LAYOUT, {}) == LAYOUT
