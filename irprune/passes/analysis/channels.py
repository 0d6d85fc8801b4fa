"""Channel dependency analysis: which channel spaces must share one index set.

Every node's rule (``rules.RULES``, keyed by (domain, op type)) relates its input and output
axes through three primitives of ``Context``:

- ``source``: a weight axis creates channels (Conv/Gemm/MatMul output channels): a new root;
- ``set_layout``: an output axis takes a layout computed from the inputs;
- ``tie``: an input axis must carry a given layout. Two layouts that split the axis the same way
  join their roots (union-find); a constant with no layout yet takes it (it will be sliced); a
  non-constant without one (graph input, unknown op's output) has fixed channels, so the roots are
  frozen, except the Expand of a constant (a class token), whose constant takes the layout
  (``rules.derived``).

A group is a union-find class of roots. Fail closed: after all rules ran, every use of every axis
that carries a layout must have been tied by the consumer's rule; any other use (an op without a
rule, an axis a rule does not map, a subgraph reading the value, a graph output) freezes the
groups in that layout, with the reason recorded. Nothing is assumed to pass channels through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from irprune.ir import Graph, Node, Value
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.layout import Layout, Segment
from irprune.passes.analysis.rules import RULES, derived

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Space:
    """One axis of one value."""

    value: str
    axis: int


@dataclass(frozen=True)
class Source:
    """A node whose weight axis creates a group's channels (scored by importance criteria)."""

    node: str
    weight: str
    axis: int
    output: str


@dataclass(frozen=True)
class ChannelGroup:
    id: int
    size: int
    sources: tuple[Source, ...]
    members: tuple[Space, ...]
    frozen: tuple[str, ...]

    @property
    def prunable(self) -> bool:
        return not self.frozen


@dataclass(frozen=True)
class ChannelAnalysis:
    """The result of the analysis. Layout roots are group ids."""

    groups: tuple[ChannelGroup, ...]
    layouts: Mapping[str, Mapping[int, Layout]]

    def layout(self, value: str, axis: int) -> Layout | None:
        return self.layouts.get(value, {}).get(axis)

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)


def node_label(node: Node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


class Context:
    """Mutable state of one analysis run; rules only see this interface."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.opset = graph.opset_imports.get("", 0)
        self.input_ids = {id(v) for v in graph.inputs}  # analysis never changes the graph
        self.layouts: dict[int, dict[int, Layout]] = {}
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.frozen: dict[int, list[str]] = {}
        self.sources: list[tuple[int, Source]] = []
        self.bound: set[tuple[int, int, int]] = set()
        self.refused: dict[int, str] = {}
        self.labels: dict[int, str] = {}
        self.retired: set[int] = set()
        self.replaced: dict[int, Layout] = {}
        # Indices that keep ``refine`` proportional to the group it refines, not to the graph:
        # every root of each union-find class (retired ones included), and for every root the
        # (value id, axis) keys of the layouts that hold it (a superset: stale keys are checked).
        self.members: dict[int, list[int]] = {}
        self.users: dict[int, set[tuple[int, int]]] = {}

    # --- union-find over roots ----------------------------------------------------------------
    def find(self, root: int) -> int:
        while self.parent[root] != root:
            self.parent[root] = self.parent[self.parent[root]]
            root = self.parent[root]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            top, child = min(ra, rb), max(ra, rb)
            self.parent[child] = top
            big, small = self.members.pop(top), self.members.pop(child)
            if len(big) < len(small):
                big, small = small, big
            big += small
            self.members[top] = big

    def _new_root(self, size: int) -> int:
        root = len(self.parent)
        self.parent.append(root)
        self.sizes.append(size)
        self.members[root] = [root]
        return root

    def _store(self, vid: int, axis: int, layout: Layout) -> None:
        """The one place layouts are written, so ``users`` stays a superset."""
        self.layouts.setdefault(vid, {})[axis] = layout
        for s in layout:
            if s.root is not None:
                self.users.setdefault(s.root, set()).add((vid, axis))

    def _holding(self, roots: list[int]) -> list[tuple[int, int]]:
        """Keys of the layouts that hold any of ``roots`` (each layout is changed on its own,
        so their order does not matter)."""
        wanted = set(roots)
        keys = {key for r in roots for key in self.users.get(r, ())}
        return [k for k in keys if any(s.root in wanted for s in self.layouts[k[0]][k[1]])]

    def refine(self, root: int, pieces: Layout) -> bool:
        """Re-express the channels of ``root``'s group as ``pieces``; False if not expressible.

        ``pieces`` is a layout over the group's own channel axis (span = group size) whose roots
        are placeholders 0..k-1: ``(Segment(0, 32), Segment(1, 32))`` cuts a 64-channel group in
        two at 32 (Split, Slice); ``(Segment(0, 8, inner=4),)`` makes it 8 blocks of 4 (attention
        heads, whole groups of a grouped conv). Every root coupled with ``root`` is replaced in
        every layout by its own copy of the pieces, and copies of the same piece are joined, so
        the coupling survives piece by piece. Every layout is checked before any is changed.
        """
        top = self.find(root)
        members = sorted(r for r in self.members[top] if r not in self.retired)
        placeholder = {r: tuple(pieces) for r in members}
        held = self._holding(members)
        if any(lay.substitute(self.layouts[v][a], placeholder) is None for v, a in held):
            return False
        leaders: list[int] = []
        mapping: dict[int, Layout] = {}
        for r in members:
            new = [self._new_root(p.size) for p in pieces]
            leaders = leaders or new
            for a, b in zip(new, leaders, strict=True):
                self._union(a, b)
            mapping[r] = tuple(replace(p, root=n) for p, n in zip(pieces, new, strict=True))
            for n in new:
                if r in self.frozen:
                    self.frozen[n] = list(self.frozen[r])
        self.retired |= set(members)
        self.replaced.update(mapping)
        for vid, axis in held:
            new_layout = lay.substitute(self.layouts[vid][axis], mapping)
            assert new_layout is not None  # checked above
            self._store(vid, axis, new_layout)
        for r in members:
            self.users.pop(r, None)
        return True

    def join(self, a: int, b: int, where: str) -> None:
        """Couple two roots channel for channel (same size; e.g. the input and output blocks of a
        grouped conv, whose layouts differ in block size), or freeze both if their sizes differ."""
        if self.sizes[a] != self.sizes[b]:
            self.freeze(
                (Segment(a, self.sizes[a]), Segment(b, self.sizes[b])), f"{where}: sizes differ"
            )
            return
        self._union(a, b)

    def coarsen(self, root: int, block: int) -> bool:
        """Make ``root``'s group prunable only in whole blocks of ``block`` channels."""
        size = self.sizes[root]
        if block <= 1:
            return True
        if size % block:
            return False
        return self.refine(root, (Segment(0, size // block, inner=block),))

    def cut(self, value: Value, axis: int, offsets: list[int]) -> Layout | None:
        """The layout of ``value``'s axis, refined so every offset falls on a segment boundary.

        None when an offset falls inside a block or a repeated segment (the caller refuses).
        """
        for offset in offsets:
            layout = self.get(value, axis)
            if layout is None:
                return None
            start = 0
            for s in layout:
                if start < offset < start + s.span:
                    inside = offset - start
                    if s.root is None:
                        split = (Segment(None, inside), Segment(None, s.span - inside))
                        self._replace_fixed(value, axis, s, start, split)
                    elif s.outer != 1 or inside % s.inner or not self._cut_root(s, inside):
                        return None
                    break
                start += s.span
        return self.get(value, axis)

    def _cut_root(self, s: Segment, inside: int) -> bool:
        k = inside // s.inner
        base = self.sizes[s.root] if s.root is not None else 0
        if base != s.size:  # the group was refined to another size meanwhile
            return False
        return self.refine(s.root, (Segment(0, k), Segment(1, s.size - k)))  # type: ignore[arg-type]

    def _replace_fixed(
        self, value: Value, axis: int, seg: Segment, start: int, pieces: tuple[Segment, ...]
    ) -> None:
        axis %= max(value.rank or 1, 1)
        out, pos = [], 0
        for s in self.layouts[id(value)][axis]:
            out += list(pieces) if (pos == start and s == seg) else [s]
            pos += s.span
        self._store(id(value), axis, tuple(out))

    def current(self, layout: Layout) -> Layout | None:
        """``layout`` with roots refined since it was computed replaced by their pieces."""
        while any(s.root in self.replaced for s in layout):
            updated = lay.substitute(layout, self.replaced)
            if updated is None:
                return None
            layout = updated
        return layout

    def _live(self, root: int) -> list[int]:
        pieces = self.replaced.get(root)
        if pieces is None:
            return [root]
        return [live for r in sorted(lay.roots(pieces)) for live in self._live(r)]

    def freeze(self, layout: Layout, reason: str) -> None:
        for r in lay.roots(layout):
            for live in self._live(r):
                reasons = self.frozen.setdefault(live, [])
                if reason not in reasons:
                    reasons.append(reason)

    # --- the primitives rules use ---------------------------------------------------------------
    def label(self, node: Node) -> str:
        return self.labels.get(id(node), node.name or node.op_type)

    def get(self, value: Value | None, axis: int) -> Layout | None:
        if value is None or value.rank is None:
            return None
        return self.layouts.get(id(value), {}).get(axis % max(value.rank, 1))

    def axes(self, value: Value | None) -> dict[int, Layout]:
        return dict(self.layouts.get(id(value), {})) if value is not None else {}

    def set_layout(self, value: Value, axis: int, layout: Layout) -> None:
        if value.rank is None:
            self.freeze(layout, f"shape of {value.name!r} is unknown")
            return
        axis %= max(value.rank, 1)
        existing = self.layouts.setdefault(id(value), {}).get(axis)
        fresh = self.current(layout)
        if existing is None and fresh is not None:
            self._store(id(value), axis, fresh)
        elif existing is None:
            self.freeze(layout, f"layout of {value.name!r} cannot be expressed after refinement")
        else:
            self._couple(existing, layout, value.name)

    def tie(self, node: Node, index: int, axis: int, layout: Layout) -> None:
        """Input ``index`` of ``node`` must carry ``layout`` on ``axis``."""
        value = node.inputs[index]
        if value is None or value.rank is None:
            self.freeze(layout, f"{self.label(node)}: input {index} has no known shape")
            return
        axis %= max(value.rank, 1)
        self.bound.add((id(node), index, axis))
        existing = self.get(value, axis)
        if existing is not None:
            self._couple(existing, layout, value.name)
        elif value.is_const:
            fresh = self.current(layout)
            if fresh is None or value.static_dim(axis) != lay.span(fresh):
                self.freeze(layout, f"constant {value.name!r} does not match its channels")
            else:
                self._store(id(value), axis, fresh)
        elif not derived.carry(self, node, index, axis, layout):
            why = "a graph input" if id(value) in self.input_ids else "fixed channels"
            self.freeze(layout, f"{self.label(node)}: coupled with {value.name!r} ({why})")

    def source(
        self,
        node: Node,
        w_index: int,
        w_axis: int,
        out: Value | None,
        out_axis: int,
        *,
        outer: int = 1,
    ) -> Layout:
        """New channels made by ``node``'s weight axis, which holds ``outer`` blocks of them (an
        LSTM's W rows are gates x hidden: outer 4); returns their layout, which ``out``'s axis
        takes (None: the caller places it)."""
        weight = node.inputs[w_index]
        assert weight is not None and weight.const is not None
        size = int(weight.const.shape[w_axis]) // outer
        root = self._new_root(size)
        layout = lay.single(root, size)
        self.add_source(root, node, w_index, w_axis, out or node.outputs[0])
        self.tie(node, w_index, w_axis, (Segment(root, size, outer=outer),))
        if out is not None:
            self.set_layout(out, out_axis, layout)
        return layout

    def add_source(self, root: int, node: Node, w_index: int, w_axis: int, out: Value) -> None:
        """Score ``root``'s channels by (one more of) ``node``'s weights; the caller ties the
        weight's layout."""
        weight = node.required(w_index)
        assert weight.const is not None
        src = Source(self.label(node), weight.name, w_axis % weight.const.ndim, out.name)
        self.sources.append((root, src))

    def refuse(self, node: Node, reason: str) -> None:
        """Record why ``node``'s rule leaves some of its inputs unmapped."""
        self.refused[id(node)] = reason

    def _couple(self, a: Layout, b: Layout, where: str) -> None:
        """Join two layouts of one axis piece by piece, refining groups until they line up:
        a segment that straddles the other side's boundary is cut there, and a group whose
        channels are finer than the other side's blocks is coarsened to them."""
        for _ in range(4 * (len(a) + len(b)) + 8):
            ca, cb = self.current(a), self.current(b)
            if ca is None or cb is None:
                break
            a, b = ca, cb
            if lay.same_geometry(a, b):
                for x, y in zip(a, b, strict=True):
                    if x.root is not None and y.root is not None:
                        self._union(x.root, y.root)
                return
            step = self._align_step(a, b)
            if step is None:
                break
            a, b = step
        self.freeze(a + b, f"index maps meeting at {where!r} do not line up")

    def _align_step(self, a: Layout, b: Layout) -> tuple[Layout, Layout] | None:
        """One refinement towards equal geometry; the (possibly locally split) layouts."""
        i = j = 0
        while i < len(a) and j < len(b):
            x, y = a[i], b[j]
            same = (x.size, x.inner, x.outer, x.root is None) == (
                y.size,
                y.inner,
                y.outer,
                y.root is None,
            )
            if same:
                i, j = i + 1, j + 1
                continue
            if x.span != y.span:
                long, short, swap = (x, y, False) if x.span > y.span else (y, x, True)
                pieces = self._split_at(long, short.span)
                if pieces is None:
                    return None
                if pieces == ():  # a root was cut: stored layouts changed; re-read
                    return a, b
                k = j if swap else i
                side = b if swap else a
                side = side[:k] + pieces + side[k + 1 :]
                return (a, side) if swap else (side, b)
            return (a, b) if self._coarsen_to(x, y) else None
        return None

    def _split_at(self, seg: Segment, at: int) -> tuple[Segment, ...] | None:
        """Cut ``seg`` at position ``at`` of its span: () after cutting a root (re-read),
        two fixed pieces for a fixed segment, None when it cannot be cut there."""
        if seg.root is None:
            return (Segment(None, at), Segment(None, seg.span - at))
        if seg.outer != 1 or at % seg.inner or not self._cut_root(seg, at):
            return None
        return ()

    def _coarsen_to(self, x: Segment, y: Segment) -> bool:
        """Equal spans, different blocks: coarsen the finer root to the coarser blocks."""
        if x.root is None or y.root is None or x.outer != 1 or y.outer != 1:
            return False
        fine, coarse = (x, y) if x.inner < y.inner else (y, x)
        if coarse.inner % fine.inner or fine.root is None:
            return False
        factor = coarse.inner // fine.inner
        return factor > 1 and self.coarsen(fine.root, factor)

    # --- closing --------------------------------------------------------------------------------
    def freeze_unbound(self, has_rule: Callable[[Node], bool]) -> None:
        for value in self.graph.values.values():
            axes = self.layouts.get(id(value))
            if not axes:
                continue
            if self.graph.is_graph_output(value):
                for layout in axes.values():
                    self.freeze(layout, f"reaches graph output {value.name!r}")
            for node, i in value.uses:
                for axis, layout in axes.items():
                    if (id(node), i, axis) not in self.bound:
                        self.freeze(layout, self._unbound_reason(node, i, axis, value, has_rule))

    def _unbound_reason(
        self, node: Node, i: int, axis: int, value: Value, has_rule: Callable[[Node], bool]
    ) -> str:
        where = f"{node.op_type} {self.label(node)!r}"
        if i < 0:
            return f"{where} reads {value.name!r} inside a subgraph"
        if id(node) in self.refused:
            return f"{where}: {self.refused[id(node)]}"
        if not has_rule(node):
            return f"{where}: no channel rule for {node.domain or 'ai.onnx'}::{node.op_type}"
        return f"{where} does not map axis {axis} of input {i} ({value.name!r})"

    def result(self) -> ChannelAnalysis:
        for root, reasons in list(self.frozen.items()):
            if root in self.retired:
                continue
            top = self.find(root)
            if top != root:
                merged = self.frozen.setdefault(top, [])
                merged += [r for r in reasons if r not in merged]
        live = [r for r in range(len(self.parent)) if r not in self.retired]
        tops = sorted({self.find(r) for r in live})
        gid = {top: i for i, top in enumerate(tops)}
        relabel = {r: gid[self.find(r)] for r in live}
        names = {id(v): v.name for v in self.graph.values.values()}
        layouts: dict[str, dict[int, Layout]] = {}
        members: dict[int, list[Space]] = {i: [] for i in gid.values()}
        for vid, axes in self.layouts.items():
            for axis, layout in axes.items():
                mapped = tuple(
                    Segment(relabel[s.root], s.size, s.inner, s.outer) if s.root is not None else s
                    for s in layout
                )
                layouts.setdefault(names[vid], {})[axis] = mapped
                for g in lay.roots(mapped):
                    members[g].append(Space(names[vid], axis))
        sources: dict[int, list[Source]] = {i: [] for i in gid.values()}
        for root, src in self.sources:  # a refined source's channels went to its pieces
            for piece in self._live(root):
                sources[relabel[piece]].append(src)
        groups = tuple(
            ChannelGroup(
                id=gid[top],
                size=self.sizes[top],
                sources=tuple(dict.fromkeys(sources[gid[top]])),
                members=tuple(members[gid[top]]),
                frozen=tuple(self.frozen.get(top, ())),
            )
            for top in tops
        )
        frozen_layouts = MappingProxyType({k: MappingProxyType(v) for k, v in layouts.items()})
        return ChannelAnalysis(groups=groups, layouts=frozen_layouts)


def analyze(graph: Graph) -> ChannelAnalysis:
    """Run every node's channel rule and return the groups; never mutates ``graph``."""
    ctx = Context(graph)
    for i, node in enumerate(graph.nodes):
        ctx.labels[id(node)] = node_label(node, i)
    for node in graph.nodes:
        rule = RULES.get(node.key)
        if rule is not None:
            rule.propagate(ctx, node)
    ctx.freeze_unbound(lambda n: n.key in RULES)
    result = ctx.result()
    log.info("analysis: %d groups, %d prunable", len(result.groups), len(result.prunable))
    return result
