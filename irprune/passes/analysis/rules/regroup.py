"""A Reshape run that merges a channel axis with its neighbours and splits the result again.

torch exports nn.GroupNorm as Reshape [N, C, H, W] -> [N, G, C/G*H*W], InstanceNormalization,
Reshape back to [N, C, H, W]: runs of several input axes (one carrying channels) becoming several
output axes. The run's input axes, flattened, hold channel c of the channel axis m at

    o * (C * inner) + c * inner + i        (o < outer, i < inner)

with ``outer`` / ``inner`` the products of the run's dims before / after m (``merge_axes``).
The output axes of the run split that flat axis row-major; the first of size > 1, axis j, takes
blocks of U = (product of the run's output dims after j) flat positions, and the others are kept
whole. Axis j carries the channels when every block of U positions lies inside one channel (or a
fixed segment): x's groups are coarsened until it does (``blocks.align`` with U / gcd(U, inner)
positions of axis m), and axis j carries the flat layout with ``inner`` divided by U
(``blocks.rescale``). So [N, C, H, W] -> [N, G, -1] prunes whole groups of C/G channels (each
group's statistics are untouched), and the Reshape back maps them to Segment(r, G, inner=C/G).
The same map serves a single channel axis split when the output's static shape is unknown
(sizes resolved from a run-time target). Refused when sizes are unknown, several axes carry
channels, or no coarsening aligns the blocks.
"""

from __future__ import annotations

from math import gcd, prod
from typing import TYPE_CHECKING

from irprune.ir import Node
from irprune.passes.analysis import layout as lay
from irprune.passes.analysis.rules import blocks

if TYPE_CHECKING:
    from irprune.passes.analysis.channels import Context
    from irprune.passes.analysis.rules.dynamic_shape import Target


def _aligned(layout: lay.Layout, unit: int) -> bool:
    try:
        return blocks.misaligned(layout, unit) is None
    except ValueError:
        return False


def _ints(dims: list[int | str | None]) -> list[int] | None:
    known = [d for d in dims if isinstance(d, int)]
    return known if len(known) == len(dims) else None


def merge_split(ctx: Context, node: Node, target: Target, src: range, dst: range) -> bool:
    """Carry the run ``src`` of input axes (one with channels) onto the output axes ``dst``;
    refuse (and return False) when it cannot."""
    x, y = node.required(0), node.outputs[0]
    carried = [a for a in src if ctx.get(x, a) is not None]
    ins = _ints([target.in_dims[a] for a in src])
    outs = _ints([target.out_dims[b] for b in dst])
    if len(carried) != 1:
        ctx.refuse(node, f"merges channel axes {carried} into one run")
        return False
    if ins is None or outs is None:
        dims = [target.in_dims[a] for a in src], [target.out_dims[b] for b in dst]
        ctx.refuse(
            node, "cannot tell where channel axis {} goes: {} -> {}".format(carried[0], *dims)
        )
        return False
    m = carried[0] - src.start
    j = next((k for k, d in enumerate(outs) if d != 1), 0)
    unit, outer, inner = prod(outs[j + 1 :]), prod(ins[:m]), prod(ins[m + 1 :])
    layout = blocks.align(ctx, x, src.start + m, unit // gcd(unit, inner))
    flat = lay.merge_axes(layout, outer, inner) if layout is not None else None
    if layout is None or flat is None or not _aligned(flat, unit):
        ctx.refuse(
            node, f"regroups a channel axis into blocks of {unit} that cut across its groups"
        )
        return False
    ctx.tie(node, 0, src.start + m, layout)
    ctx.set_layout(y, dst.start + j, blocks.rescale(flat, unit, 1))
    return True
