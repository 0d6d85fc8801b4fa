"""Lowerings of the torch.fx table that move data rather than compute: shapes (view, flatten,
size, indexing, cat, split, transpose, repeat / tile -> Tile), resampling and padding, plus the
argument helpers every lowering shares. Run-time shape arithmetic becomes Shape / Gather / Slice /
Concat, as the ONNX exporter writes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from irprune.errors import UnsupportedModelError
from irprune.frontends.fx import Lowering, ModuleLowering, SymInt, SymShape, torch_dtype
from irprune.ir import Value

_INT64_MAX = int(np.iinfo(np.int64).max)
REQUIRED = object()

# --------------------------------------------------------------------------- argument helpers


def arg_at(args: tuple, kwargs: dict, i: int, name: str, default: Any = REQUIRED) -> Any:
    if i < len(args):
        return args[i]
    if name in kwargs:
        return kwargs[name]
    if default is REQUIRED:
        raise UnsupportedModelError(f"torch.fx frontend: argument {name!r} is missing")
    return default


def as_tensor(ctx: Lowering, x: Any) -> Value:
    if not isinstance(x, Value):
        raise ctx.fail(f"expected a tensor, got {type(x).__name__}")
    return x


def per_dim(value: Any, n: int) -> list[Any]:
    if isinstance(value, int | float):
        return [value] * n
    items = list(value)
    return items * n if len(items) == 1 else items


def norm_axis(ctx: Lowering, x: Value, axis: int) -> int:
    return axis + ctx.rank(x) if axis < 0 else axis


def norm_axes(ctx: Lowering, x: Value, dims: Any) -> list[int]:
    items = [dims] if isinstance(dims, int) else list(dims)
    return [norm_axis(ctx, x, int(d)) for d in items]


# --------------------------------------------------------------------------- shapes


def shape_tensor(ctx: Lowering, items: Any) -> Value:
    """A 1-d int64 value from python ints, SymInts and SymShapes (Unsqueeze + Concat)."""
    if isinstance(items, SymShape):
        return items.value
    parts: list[Value] = []
    pending: list[int] = []
    for item in items:
        if isinstance(item, int | np.integer):
            pending.append(int(item))
            continue
        if pending:
            parts.append(ctx.ints(pending, f"{ctx.where}_shape"))
            pending = []
        if isinstance(item, SymInt):
            parts.append(ctx.op("Unsqueeze", item.value, ctx.ints([0])))
        elif isinstance(item, SymShape):
            parts.append(item.value)
        else:
            raise ctx.fail(f"shape entry of type {type(item).__name__}")
    if pending:
        parts.append(ctx.ints(pending, f"{ctx.where}_shape"))
    return parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=0)


def shape_items(args: tuple) -> Any:
    """``view(a, b)`` / ``view((a, b))`` / ``view(x.shape)`` -> the items."""
    if len(args) == 1 and isinstance(args[0], tuple | list | SymShape):
        return args[0]
    return args


def view(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    items = shape_items(args[1:]) if len(args) > 1 else kwargs.get("shape", kwargs.get("size"))
    return ctx.op("Reshape", x, shape_tensor(ctx, items))


def flatten_op(ctx: Lowering, x: Value, start: int, end: int) -> Value:
    rank = ctx.rank(x)
    start, end = norm_axis(ctx, x, start), norm_axis(ctx, x, end)
    if start >= end:
        return x
    if start == 1 and end == rank - 1:
        return ctx.op("Flatten", x, axis=1)
    shape = ctx.op("Shape", x)
    parts: list[Any] = []
    if start > 0:
        parts.append(SymShape(slice_shape(ctx, shape, 0, start), start))
    parts.append(-1)
    if end < rank - 1:
        parts.append(SymShape(slice_shape(ctx, shape, end + 1, rank), rank - end - 1))
    return ctx.op("Reshape", x, shape_tensor(ctx, parts))


def slice_shape(ctx: Lowering, shape: Value, start: int, stop: int) -> Value:
    return ctx.op("Slice", shape, ctx.ints([start]), ctx.ints([stop]), ctx.ints([0]))


def flatten_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    start, end = arg_at(args, kwargs, 1, "start_dim", 0), arg_at(args, kwargs, 2, "end_dim", -1)
    return flatten_op(ctx, x, start, end)


def flatten_module(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    return flatten_op(ctx, as_tensor(ctx, args[0]), m.start_dim, m.end_dim)


def size_of(ctx: Lowering, args: tuple, kwargs: dict) -> SymInt | SymShape:
    x = as_tensor(ctx, args[0])
    shape = ctx.op("Shape", x)
    dim = arg_at(args, kwargs, 1, "dim", None)
    if dim is None:
        return SymShape(shape, ctx.rank(x))
    return SymInt(ctx.op("Gather", shape, ctx.ints(norm_axis(ctx, x, dim)), axis=0))


def get_attribute(ctx: Lowering, args: tuple, kwargs: dict) -> Any:
    obj, name = args[0], args[1]
    if isinstance(obj, Value) and name == "shape":
        return size_of(ctx, (obj,), {})
    if isinstance(obj, Value) and name == "ndim":
        return ctx.rank(obj)
    if isinstance(obj, Value) and name in ("dtype", "device"):
        return _torch_attribute(ctx, obj, name)
    raise ctx.fail(f"attribute .{name} of {type(obj).__name__} has no lowering")


def _torch_attribute(ctx: Lowering, x: Value, name: str) -> Any:
    """``x.dtype`` (from the element type) and ``x.device`` (the CPU: the lowering ran there),
    python values that casts and tensor factories take as arguments."""
    import torch

    if name == "device":
        return torch.device("cpu")
    dtypes = {torch_dtype(t): t for t in (torch.float32, torch.float64, torch.float16,
              torch.int64, torch.int32, torch.bool)}  # fmt: skip
    return dtypes[ctx.dtype(x)]


def ndim(ctx: Lowering, args: tuple, kwargs: dict) -> int:
    return ctx.rank(as_tensor(ctx, args[0]))


def getitem(ctx: Lowering, args: tuple, kwargs: dict) -> Any:
    obj, index = args
    if isinstance(obj, tuple | list):
        return obj[index]
    if isinstance(obj, SymShape):
        if isinstance(index, int):
            return SymInt(ctx.op("Gather", obj.value, ctx.ints(index), axis=0))
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(obj.length)
            return SymShape(slice_shape(ctx, obj.value, start, stop), max(0, stop - start))
        raise ctx.fail(f"shape index {index!r}")
    return index_tensor(ctx, as_tensor(ctx, obj), index if isinstance(index, tuple) else (index,))


def index_tensor(ctx: Lowering, x: Value, index: tuple) -> Value:
    """Basic indexing: slices (one Slice), ints (Gather), None (Unsqueeze), Ellipsis."""
    rank = ctx.rank(x)
    real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for item in index:
        expanded += [slice(None)] * (rank - real) if item is Ellipsis else [item]
    starts, ends, axes, steps, gathers, unsqueeze = [], [], [], [], [], []
    axis = out = 0
    for item in expanded:
        if item is None:
            unsqueeze.append(out)
            out += 1
        elif isinstance(item, slice):
            if item != slice(None):
                if not all(isinstance(v, int | None) for v in (item.start, item.stop, item.step)):
                    raise ctx.fail("slicing with run-time bounds has no lowering")
                if (item.step or 1) < 1:
                    raise ctx.fail("slicing with a negative step has no lowering")
                starts.append(item.start or 0)
                ends.append(_INT64_MAX if item.stop is None else item.stop)
                steps.append(item.step or 1)
                axes.append(axis)
            axis, out = axis + 1, out + 1
        elif isinstance(item, int):
            gathers.append((axis, item))
            axis += 1
        else:
            raise ctx.fail(f"indexing with {type(item).__name__} has no lowering")
    if axes:
        x = ctx.op("Slice", x, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes), ctx.ints(steps))
    for ax, i in sorted(gathers, reverse=True):
        x = ctx.op("Gather", x, ctx.ints(i), axis=ax)
    if unsqueeze:
        x = ctx.op("Unsqueeze", x, ctx.ints(unsqueeze))
    return x


def cat(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    tensors = [as_tensor(ctx, t) for t in arg_at(args, kwargs, 0, "tensors")]
    dim = arg_at(args, kwargs, 1, "dim", 0)
    return ctx.op("Concat", *tensors, axis=norm_axis(ctx, tensors[0], dim))


def stack(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    tensors = [as_tensor(ctx, t) for t in arg_at(args, kwargs, 0, "tensors")]
    dim = arg_at(args, kwargs, 1, "dim", 0)
    axis = dim + ctx.rank(tensors[0]) + 1 if dim < 0 else dim
    parts = [ctx.op("Unsqueeze", t, ctx.ints([axis])) for t in tensors]
    return ctx.op("Concat", *parts, axis=axis)


def repeat_op(ctx: Lowering, x: Value, sizes: Any) -> Value:
    """``x.repeat(*sizes)``: x read with ``len(sizes) - rank`` leading 1-dims (Unsqueeze), then
    Tile by ``sizes`` (python ints and run-time sizes, one Concat: ``repeat(B, 1, 1)``)."""
    n = sizes.length if isinstance(sizes, SymShape) else len(sizes)
    rank = ctx.rank(x)
    if n < rank:
        raise ctx.fail(f"repeat with {n} sizes for a rank-{rank} tensor (torch refuses it)")
    if n > rank:
        x = ctx.op("Unsqueeze", x, ctx.ints(list(range(n - rank))))
    return ctx.op("Tile", x, shape_tensor(ctx, sizes))


def repeat(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``x.repeat(a, b)`` / ``x.repeat((a, b))`` / ATen ``repeat(x, [a, b])``."""
    x = as_tensor(ctx, args[0])
    sizes = shape_items(args[1:]) if len(args) > 1 else arg_at(args, kwargs, 1, "repeats")
    return repeat_op(ctx, x, sizes)


def tile(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``torch.tile(x, dims)`` / ``x.tile(dims)``: ``repeat`` with 1s prepended to ``dims`` up to
    x's rank."""
    x = as_tensor(ctx, args[0])
    dims = shape_items(args[1:]) if len(args) > 1 else arg_at(args, kwargs, 1, "dims")
    if isinstance(dims, SymShape):
        raise ctx.fail("tile by a whole run-time shape has no lowering")
    items = list(dims)
    return repeat_op(ctx, x, [1] * (ctx.rank(x) - len(items)) + items)


def expand_as(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x, other = as_tensor(ctx, args[0]), as_tensor(ctx, arg_at(args, kwargs, 1, "other"))
    return ctx.op("Expand", x, ctx.op("Shape", other))


def split_op(ctx: Lowering, x: Value, sizes: list[int], dim: int) -> tuple[Value, ...]:
    outs = ctx.op("Split", x, ctx.ints(sizes), outputs=len(sizes), axis=norm_axis(ctx, x, dim))
    return outs if isinstance(outs, tuple) else (outs,)


def chunk(ctx: Lowering, args: tuple, kwargs: dict) -> tuple[Value, ...]:
    x = as_tensor(ctx, args[0])
    chunks, dim = arg_at(args, kwargs, 1, "chunks"), arg_at(args, kwargs, 2, "dim", 0)
    total = ctx.shape(x)[norm_axis(ctx, x, dim)]
    step = -(-total // chunks)
    sizes = [min(step, total - i) for i in range(0, total, step)]
    return split_op(ctx, x, sizes, dim)


def split(ctx: Lowering, args: tuple, kwargs: dict) -> tuple[Value, ...]:
    x = as_tensor(ctx, args[0])
    size, dim = arg_at(args, kwargs, 1, "split_size_or_sections"), arg_at(args, kwargs, 2, "dim", 0)
    total = ctx.shape(x)[norm_axis(ctx, x, dim)]
    if isinstance(size, int):
        sizes = [min(size, total - i) for i in range(0, total, size)]
    else:
        sizes = [int(s) for s in size]
    return split_op(ctx, x, sizes, dim)


def transpose(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    a, b = (
        norm_axis(ctx, x, arg_at(args, kwargs, 1, "dim0")),
        norm_axis(ctx, x, arg_at(args, kwargs, 2, "dim1")),
    )
    perm = list(range(ctx.rank(x)))
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.op("Transpose", x, perm=perm)


def permute(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    dims = shape_items(args[1:]) if len(args) > 1 else arg_at(args, kwargs, 1, "dims")
    return ctx.op("Transpose", x, perm=norm_axes(ctx, x, dims))


def unsqueeze(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    dim = arg_at(args, kwargs, 1, "dim")
    return ctx.op("Unsqueeze", x, ctx.ints([dim + ctx.rank(x) + 1 if dim < 0 else dim]))


def squeeze(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    dim = arg_at(args, kwargs, 1, "dim", None)
    shape = ctx.shape(x)
    axes = [i for i, d in enumerate(shape) if d == 1] if dim is None else norm_axes(ctx, x, dim)
    return ctx.op("Squeeze", x, ctx.ints([a for a in axes if shape[a] == 1]))


# --------------------------------------------------------------------------- resampling, padding


def pad_op(ctx: Lowering, x: Value, pad: list[int], mode: str, value: float | None) -> Value:
    """torch pads (last dim first, begin/end pairs) -> ONNX Pad (all begins, then all ends)."""
    rank = ctx.rank(x)
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    fill = None if value is None or mode != "constant" else ctx.scalar(value, x)
    return ctx.op("Pad", x, ctx.ints(begins + ends), fill, mode=mode)


PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def pad_module(mode: str) -> ModuleLowering:
    def lower(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
        value = getattr(m, "value", None)
        return pad_op(ctx, as_tensor(ctx, args[0]), list(m.padding), mode, value)

    return lower


def pad_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x, pad = as_tensor(ctx, args[0]), list(arg_at(args, kwargs, 1, "pad"))
    mode, value = (
        arg_at(args, kwargs, 2, "mode", "constant"),
        arg_at(args, kwargs, 3, "value", None),
    )
    if mode not in PAD_MODES:
        raise ctx.fail(f"pad(mode={mode!r}) has no lowering")
    return pad_op(ctx, x, pad, PAD_MODES[mode], value)


def resize(
    ctx: Lowering, x: Value, size: Any, scale: Any, mode: str, align_corners: bool | None
) -> Value:
    """nearest (asymmetric, floor) and (bi/tri)linear (half_pixel or align_corners) Resize."""
    n = ctx.rank(x) - 2
    if mode == "nearest":
        kind, ctm, nearest = "nearest", "asymmetric", "floor"
    elif mode in ("linear", "bilinear", "trilinear"):
        kind, ctm, nearest = "linear", "align_corners" if align_corners else "half_pixel", None
    else:
        raise ctx.fail(f"interpolate(mode={mode!r}) has no lowering")
    scales = sizes = None
    if size is not None:
        head = SymShape(slice_shape(ctx, ctx.op("Shape", x), 0, 2), 2)
        tail = [size] if isinstance(size, SymShape) else per_dim(size, n)
        sizes = shape_tensor(ctx, [head, *tail])
    elif scale is not None:
        factors = [1.0, 1.0, *[float(s) for s in per_dim(scale, n)]]
        scales = ctx.const(np.asarray(factors, np.float32), f"{ctx.where}_scales")
    else:
        raise ctx.fail("interpolate needs size or scale_factor")
    return ctx.op(
        "Resize", x, None, scales, sizes,
        coordinate_transformation_mode=ctm, mode=kind, nearest_mode=nearest,
    )  # fmt: skip


def interpolate(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    size = arg_at(args, kwargs, 1, "size", None)
    scale = arg_at(args, kwargs, 2, "scale_factor", None)
    mode = arg_at(args, kwargs, 3, "mode", "nearest")
    align = arg_at(args, kwargs, 4, "align_corners", None)
    if kwargs.get("recompute_scale_factor") or kwargs.get("antialias"):
        raise ctx.fail("interpolate(recompute_scale_factor/antialias) has no lowering")
    return resize(ctx, x, size, scale, mode, align)


def upsample(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    return resize(ctx, as_tensor(ctx, args[0]), m.size, m.scale_factor, m.mode, m.align_corners)
