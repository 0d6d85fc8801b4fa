"""Shape vectors computed at run time, and the Reshapes whose target shape they are.

Shape(x) is a vector whose entry k is the size of x's axis k *at run time*: after pruning, an
entry for a channel axis holds the new width by itself. Index map of Shape: no data flows from
x's channels, only their count, so every axis of x is bound (tied to its own layout), provided
every entry holding a channel count only flows, through Gather / Slice / Concat / Unsqueeze /
Squeeze / Identity / Cast / Reshape of vectors, into Reshape target shapes (checked there, see
below) or into a Resize's ``sizes`` at the position of that same axis of the Resize's own input
(``F.interpolate(x, size=...)`` builds ``sizes`` as ``Shape(x)[:2]`` + the new spatial size: the
channel entry is x's own count at run time, which follows the pruning by itself). Anywhere else
(arithmetic, Expand, Range, a graph output, ...) the channel axes are left unmapped, refused
with where the count goes, so their groups freeze.

Entries of a shape vector (``entries``): each a literal int, ``Size(v, k)``, the run-time size
of axis k of v, or a ``Product`` of such sizes (batch x sequence merged into one dim, as torch's
exporter computes it with Mul), read through Constant, Shape (start/end), Gather (axis 0,
constant indices), Slice (axis 0, constant bounds), Concat, Unsqueeze, Squeeze, Identity, Cast to
an integer type, Reshape of a vector and Mul of one-entry vectors; anything else is unreadable
(None). A channel count multiplied by anything is a leak (below): a product is never a width.

Reshape targets (``read_target``), constant or computed: the output dims are resolved from the
entries (0 copies the input's dim, -1 is inferred when the symbolic dims cancel, other unknown
dims come from shape inference), and an input dim of unknown size that carries channels is the
span of its layout. When the axes do not match in one pass from the left, ``match_runs`` matches
runs from the left, then from the right, and makes the rest one run. For a target computed at run
time, ``Target.check`` then requires, for every output axis k:
- entry -1: follows by itself;
- entry Size(v, j) (or 0, which copies x's axis k): v's axis j and y's axis k have the same width
  after pruning, so their layouts are coupled (joined; frozen when they do not line up); a channel
  count that lands on an axis without channels freezes its group;
- a literal on a channel axis: rewritten after slicing when it is an element of a constant input
  of the Concat building the target (``concat_rewrite``, that Concat's rewrite hook); any other
  literal or dim on a channel axis freezes the channel group.
Batch and sequence entries copied from Shape stay computed at run time: dynamic dims stay dynamic.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

import numpy as np

from irprune.ir import Node, Shape, Value
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.rules.base import NodeEdit, OpRule, RewriteView, const_ints

if TYPE_CHECKING:
    from collections.abc import Callable

    from irprune.passes.analysis.channels import Context


@dataclass(frozen=True)
class Size:
    """The run-time size of axis ``axis`` of ``value``."""

    value: Value
    axis: int


@dataclass(frozen=True)
class Product:
    """``factor`` times the run-time sizes ``sizes`` (at least one)."""

    sizes: tuple[Size, ...]
    factor: int = 1


Entry = int | Size | Product
Entries = tuple[Entry, ...]


def sizes_in(e: Entry) -> tuple[Size, ...]:
    """The run-time sizes an entry reads."""
    return e.sizes if isinstance(e, Product) else (e,) if isinstance(e, Size) else ()


def _times(a: Entry, b: Entry) -> Entry:
    factor = 1
    for e in (a, b):
        factor *= e.factor if isinstance(e, Product) else e if isinstance(e, int) else 1
    sizes = (*sizes_in(a), *sizes_in(b))
    if not sizes or factor == 0:
        return factor
    return sizes[0] if factor == 1 and len(sizes) == 1 else Product(sizes, factor)


_MAX_DEPTH = 64
_INT_TYPES = frozenset({2, 3, 4, 5, 6, 7, 12, 13})  # ONNX (u)int8/16/32/64


# --- reading shape vectors ----------------------------------------------------------------------
def entries(value: Value | None, depth: int = 0) -> Entries | None:
    """The entries of a shape vector (or scalar), or None when they cannot be read."""
    if value is None or depth > _MAX_DEPTH:
        return None
    if value.const is not None:
        data = np.asarray(value.const)
        if data.ndim > 1 or not np.issubdtype(data.dtype, np.integer):
            return None
        return tuple(int(v) for v in data.reshape(-1))
    node = value.producer
    read = _READERS.get(node.key) if node is not None else None
    return read(node, depth + 1) if node is not None and read is not None else None


def _shape(node: Node, depth: int) -> Entries | None:
    x = node.required(0)
    if x.rank is None:
        return None
    axes = range(x.rank)[node.attr("start", 0) : node.attr("end", None)]
    return tuple(Size(x, k) for k in axes)


def _gather(node: Node, depth: int) -> Entries | None:
    data, indices = entries(node.required(0), depth), node.required(1).const
    if data is None or indices is None or indices.ndim > 1 or node.attr("axis", 0) not in (0, -1):
        return None
    picked = [int(i) for i in indices.reshape(-1)]
    if any(not -len(data) <= i < len(data) for i in picked):
        return None
    return tuple(data[i] for i in picked)


def _bounds(node: Node, name: str, index: int, default: list[int] | None) -> list[int] | None:
    if name in node.attrs:
        return [int(v) for v in node.attrs[name]]
    return default if node.input(index) is None else const_ints(node.input(index))


def _slice(node: Node, depth: int) -> Entries | None:
    data = entries(node.required(0), depth)
    starts, ends = _bounds(node, "starts", 1, None), _bounds(node, "ends", 2, None)
    axes, steps = _bounds(node, "axes", 3, [0]), _bounds(node, "steps", 4, [1])
    if data is None or starts is None or ends is None or axes is None or steps is None:
        return None
    if len(starts) != 1 or axes[0] not in (0, -1) or steps[0] == 0:
        return None
    return data[starts[0] : ends[0] : steps[0]]


def _concat(node: Node, depth: int) -> Entries | None:
    parts = [entries(v, depth) for v in node.inputs if v is not None]
    if any(p is None for p in parts):
        return None
    return tuple(e for p in parts if p is not None for e in p)


def _same(node: Node, depth: int) -> Entries | None:
    return entries(node.required(0), depth)


def _cast(node: Node, depth: int) -> Entries | None:
    return _same(node, depth) if node.attr("to") in _INT_TYPES else None


def _mul(node: Node, depth: int) -> Entries | None:
    a, b = entries(node.required(0), depth), entries(node.required(1), depth)
    if a is None or b is None or len(a) != 1 or len(b) != 1:
        return None
    return (_times(a[0], b[0]),)


def _flat(node: Node, depth: int) -> Entries | None:
    rank = node.required(0).rank
    return _same(node, depth) if rank is not None and rank <= 1 else None


_READERS: dict[tuple[str, str], Callable[[Node, int], Entries | None]] = {
    ("", "Shape"): _shape,
    ("", "Gather"): _gather,
    ("", "Slice"): _slice,
    ("", "Concat"): _concat,
    ("", "Unsqueeze"): _same,
    ("", "Squeeze"): _same,
    ("", "Identity"): _same,
    ("", "Cast"): _cast,
    ("", "Reshape"): _flat,
    ("", "Mul"): _mul,
}
_DATA_INPUT_ONLY = {key for key in _READERS if key not in (("", "Concat"), ("", "Mul"))}


# --- Shape --------------------------------------------------------------------------------------
def _counts(values: Entries, x: Value, axes: set[int]) -> bool:
    return any(s.value is x and s.axis in axes for e in values for s in sizes_in(e))


def _multiplied(values: Entries, x: Value, axes: set[int]) -> bool:
    return any(isinstance(e, Product) and _counts((e,), x, axes) for e in values)


def _leak(ctx: Context, vector: Value, x: Value, axes: set[int]) -> str | None:
    """Where entries holding the sizes of ``axes`` of ``x`` go other than Reshape targets."""
    stack, seen = [vector], {id(vector)}
    while stack:
        value = stack.pop()
        if ctx.graph.is_graph_output(value):
            return f"graph output {value.name!r}"
        for user, i in value.uses:
            if user.key == ("", "Reshape") and i == 1:
                continue
            if user.key == ("", "Resize") and i == 3 and _sizes_repeat(user, x, axes):
                continue
            readable = user.key in _READERS and (i == 0 or user.key not in _DATA_INPUT_ONLY)
            out = user.outputs[0] if readable else None
            got = entries(out) if out is not None else None
            if out is None or got is None or _multiplied(got, x, axes):
                return f"{user.op_type} {ctx.label(user)!r}"
            if _counts(got, x, axes) and id(out) not in seen:
                seen.add(id(out))
                stack.append(out)
    return None


def resize_sizes_kept(node: Node) -> set[int]:
    """The axes of a Resize's input x whose entry in its ``sizes`` input (3) is the run-time
    size of that same axis of x: the op leaves them alone whatever their width."""
    x = node.required(0)
    got = entries(node.input(3)) if len(node.inputs) > 3 else None
    if got is None or x.rank is None:
        return set()
    axes = [int(a) % x.rank for a in node.attr("axes", range(x.rank))]
    if len(got) != len(axes):
        return set()
    return {a for a, e in zip(axes, got, strict=True) if e == Size(x, a)}


def _sizes_repeat(resize: Node, x: Value, axes: set[int]) -> bool:
    """Every channel count of ``x`` in the Resize's ``sizes`` is the size of that same axis of
    the Resize's own input (a size that follows the pruning by itself)."""
    got = entries(resize.input(3))
    data = resize.required(0)
    if got is None or data.rank is None:
        return False
    listed = [int(a) % data.rank for a in resize.attr("axes", range(data.rank))]
    if len(got) != len(listed):
        return False
    kept = resize_sizes_kept(resize)
    return all(
        a in kept
        for a, e in zip(listed, got, strict=True)
        if isinstance(e, Size) and e.value is x and e.axis in axes
    )


def _shape_rule(ctx: Context, node: Node) -> None:
    x = node.required(0)
    if x.rank is None:
        return
    read = set(range(x.rank)[node.attr("start", 0) : node.attr("end", None)])
    counted = {a for a, layout in ctx.axes(x).items() if a in read and lay.roots(layout)}
    leak = _leak(ctx, node.outputs[0], x, counted) if counted else None
    if leak is not None:
        ctx.refuse(node, f"a channel count flows into {leak}")
    for axis, layout in ctx.axes(x).items():
        if leak is None or axis not in counted:
            ctx.tie(node, 0, axis, layout)


SHAPE = OpRule(_shape_rule)


# --- Reshape targets ----------------------------------------------------------------------------
def _size(ctx: Context, value: Value, axis: int) -> int | str | None:
    """A dim of ``value``: the span of its layout when it carries channels, else its shape's."""
    layout = ctx.get(value, axis)
    if layout is not None:
        return lay.span(layout)
    return value.shape[axis] if value.shape is not None else None


def _monomial(dims: Shape) -> tuple[int, Counter[str]] | None:
    if any(d is None for d in dims):
        return None
    symbols = Counter(d for d in dims if isinstance(d, str))
    return prod(d for d in dims if isinstance(d, int)), symbols


def _infer(total: Shape, others: Shape) -> int | str | None:
    """The dim a -1 stands for: prod(total) / prod(others), when the symbolic dims cancel."""
    num, den = _monomial(total), _monomial(others)
    if num is None or den is None or den[0] == 0 or num[0] % den[0] or den[1] - num[1]:
        return None
    value, rest = num[0] // den[0], num[1] - den[1]
    if not rest:
        return value
    return next(iter(rest)) if value == 1 and rest.total() == 1 else None


@dataclass(frozen=True)
class Target:
    """A Reshape's target shape: its entries and the resolved input and output dims."""

    node: Node
    entries: Entries
    runtime: bool
    in_dims: Shape
    out_dims: Shape

    def _where(self, ctx: Context) -> str:
        return f"Reshape {ctx.label(self.node)!r}"

    def fail(self, ctx: Context) -> None:
        """The Reshape is not mapped: a channel count in a run-time target freezes its group."""
        for e in self.entries if self.runtime else ():
            for size in sizes_in(e):
                if (layout := ctx.get(size.value, size.axis)) is not None:
                    ctx.freeze(layout, f"{self._where(ctx)} reads a channel count it cannot map")

    def check(self, ctx: Context) -> None:
        """Every entry of a run-time target follows the pruning (see the module docstring)."""
        if self.runtime:
            for k, e in enumerate(self.entries):
                self._check(ctx, k, e)

    def _check(self, ctx: Context, k: int, e: Entry) -> None:
        x, y = self.node.required(0), self.node.outputs[0]
        if e == 0 and not self.node.attr("allowzero", 0):
            e = Size(x, k)
        mine = ctx.get(y, k)
        theirs = ctx.get(e.value, e.axis) if isinstance(e, Size) else None
        if isinstance(e, Size) and theirs is not None and lay.roots(theirs):
            if mine is None:
                why = f"the channel count of {e.value.name!r} sets its axis {k} (no channels)"
                ctx.freeze(theirs, f"{self._where(ctx)}: {why}")
            else:
                ctx.set_layout(y, k, theirs)
            return
        if mine is None or not lay.roots(mine) or e == -1:
            return
        if isinstance(e, int) and self._rewritable(k):
            return
        what = f"the size of {e.value.name!r} axis {e.axis}" if isinstance(e, Size) else str(e)
        if isinstance(e, Product):
            what = " x ".join(f"the size of {s.value.name!r} axis {s.axis}" for s in e.sizes)
        why = f"its run-time target sets channel axis {k} to {what}, which cannot follow pruning"
        ctx.freeze(mine, f"{self._where(ctx)}: {why}")

    def _rewritable(self, k: int) -> bool:
        """Entry k is an element of a constant input of the Concat building the target alone."""
        target = self.node.required(1)
        concat = target.producer
        if concat is None or concat.key != ("", "Concat") or len(target.uses) != 1:
            return False
        pos = 0
        for value in concat.inputs:
            got = entries(value)
            if value is None or got is None:
                return False
            if pos <= k < pos + len(got):
                return value.const is not None
            pos += len(got)
        return False


def read_target(ctx: Context, node: Node) -> Target | None:
    """The Reshape's target; None (refused, channel counts in it frozen) when unreadable."""
    x, y, target = node.required(0), node.outputs[0], node.input(1)
    got = entries(target)
    runtime = target is not None and target.const is None
    if got is None or x.rank is None or y.rank is None or len(got) != y.rank:
        why = "target shape is computed at run time" if runtime else "shapes are unknown"
        ctx.refuse(node, why)
        if got is not None:
            Target(node, got, runtime, (), ()).fail(ctx)
        return None
    in_dims = tuple(_size(ctx, x, k) for k in range(x.rank))
    return Target(node, got, runtime, in_dims, _resolve(ctx, node, got, in_dims))


def _resolve(ctx: Context, node: Node, got: Entries, in_dims: Shape) -> Shape:
    y = node.outputs[0]
    dims: list[int | str | None] = []
    for k, e in enumerate(got):
        if isinstance(e, Size):
            dims.append(_size(ctx, e.value, e.axis))
        elif isinstance(e, Product):
            dims.append(_product(ctx, e))
        elif e == 0 and not node.attr("allowzero", 0):
            dims.append(in_dims[k] if k < len(in_dims) else None)
        else:
            dims.append(None if e == -1 else e)
    if -1 in got:
        k = got.index(-1)
        dims[k] = _infer(in_dims, (*dims[:k], *dims[k + 1 :]))
    known = y.shape or ()
    return tuple(d if d is not None or k >= len(known) else known[k] for k, d in enumerate(dims))


def _product(ctx: Context, e: Product) -> int | None:
    """A product's value when every size in it is static (else shape inference's dim)."""
    dims = [_size(ctx, s.value, s.axis) for s in e.sizes]
    ints = [d for d in dims if isinstance(d, int)]
    return e.factor * prod(ints) if len(ints) == len(dims) else None


def _greedy(src: Shape, dst: Shape) -> tuple[list[tuple[range, range]], int, int]:
    """Runs of equal size from the left, up to the first dims it cannot match."""
    runs: list[tuple[range, range]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        if src[i] is not None and src[i] == dst[j]:
            runs.append((range(i, i + 1), range(j, j + 1)))
            i, j = i + 1, j + 1
            continue
        p, q, a, b = src[i], dst[j], i + 1, j + 1
        while isinstance(p, int) and isinstance(q, int) and p != q:
            grow_src = p < q and a < len(src) and isinstance(src[a], int)
            grow_dst = q < p and b < len(dst) and isinstance(dst[b], int)
            if not (grow_src or grow_dst):
                return runs, i, j
            if grow_src:
                p, a = p * src[a], a + 1  # type: ignore[operator]
            else:
                q, b = q * dst[b], b + 1  # type: ignore[operator]
        if not (isinstance(p, int) and p == q):
            return runs, i, j
        runs.append((range(i, a), range(j, b)))
        i, j = a, b
    return runs, i, j


def match_runs(src: Shape, dst: Shape) -> list[tuple[range, range]] | None:
    """Pair runs of input and output axes: greedy from the left, then from the right; the dims
    neither pass can match form one run (None if one side of it is empty and the other not 1s)."""
    head, i, j = _greedy(src, dst)
    back, bi, bj = _greedy(tuple(reversed(src[i:])), tuple(reversed(dst[j:])))
    n, m = len(src), len(dst)
    tail = [(range(n - r.stop, n - r.start), range(m - q.stop, m - q.start)) for r, q in back]
    mid_src, mid_dst = range(i, n - bi), range(j, m - bj)
    if mid_src and mid_dst:
        return [*head, (mid_src, mid_dst), *reversed(tail)]
    if any(src[a] != 1 for a in mid_src) or any(dst[b] != 1 for b in mid_dst):
        return None
    return [*head, *reversed(tail)]


def concat_rewrite(node: Node, view: RewriteView) -> NodeEdit | None:
    """Rewrite the literals of a Concat that builds a Reshape's run-time target (and nothing
    else) where the Reshape's output axis changed width; -1 and 0 stay."""
    out = node.outputs[0]
    if out.rank != 1 or len(out.uses) != 1 or out.uses[0][1] != 1:
        return None
    reshape = out.uses[0][0]
    old, new = reshape.outputs[0].shape, view.shape(reshape.outputs[0])
    if reshape.key != ("", "Reshape") or old is None or new is None or tuple(old) == tuple(new):
        return None
    edits: dict[int, np.ndarray] = {}
    pos = 0
    for i, value in enumerate(node.inputs):
        got = entries(value)
        if value is None or got is None:
            return None
        if value.const is not None:
            span = range(pos, pos + len(got))
            data = [_new_literal(t, old[k], new[k]) for t, k in zip(got, span, strict=True)]
            if data != list(got):
                edits[i] = np.asarray(data, dtype=value.const.dtype).reshape(value.const.shape)
        pos += len(got)
    return NodeEdit(const_inputs=edits) if edits else None


def _new_literal(t: Entry, old: object, new: object) -> Entry:
    if isinstance(t, int) and t not in (-1, 0) and old != new and isinstance(new, int):
        return new
    return t
