"""Shape, data-movement, padding and resampling ops of the torch op table (``torch_ops.OPS``).

Resize is written as per-axis index gathers (nearest) and blends (linear) with ONNX's coordinate
transformations, so it is exact for every coordinate mode and differentiable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from irprune.backends.torch_call import (
    Args,
    Call,
    Out,
    arg,
    from_input_or_attr,
    ints,
    norm_axes,
    opt,
    tensor_attr,
    torch_pad,
)


# --- shape and data movement ----------------------------------------------------------------------
def shape(call: Call, a: Args) -> Out:
    dims = list(arg(a).shape)
    start, end = call.attr("start", 0), call.attr("end")
    return torch.tensor(dims[start:end], dtype=torch.int64)


def size(call: Call, a: Args) -> Out:
    return torch.tensor(arg(a).numel(), dtype=torch.int64)


def reshape(call: Call, a: Args) -> Out:
    x, shape = arg(a, 0), ints(arg(a, 1))
    if not call.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def flatten(call: Call, a: Args) -> Out:
    x = arg(a)
    axis = int(call.attr("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def transpose(call: Call, a: Args) -> Out:
    x = arg(a)
    perm = call.attr("perm")
    return x.permute(*(perm if perm else reversed(range(x.dim()))))


def squeeze(call: Call, a: Args) -> Out:
    x = arg(a)
    axes = from_input_or_attr(call, a, 1, "axes")
    if not axes:
        return x.squeeze()
    return x.squeeze(tuple(norm_axes(axes, x.dim())))


def unsqueeze(call: Call, a: Args) -> Out:
    x = arg(a)
    axes = from_input_or_attr(call, a, 1, "axes") or []
    for axis in sorted(norm_axes(axes, x.dim() + len(axes))):
        x = x.unsqueeze(axis)
    return x


def concat(call: Call, a: Args) -> Out:
    return torch.cat([t for t in a if t is not None], dim=int(call.attr("axis")))


def split(call: Call, a: Args) -> Out:
    x = arg(a)
    axis = int(call.attr("axis", 0)) % x.dim()
    sizes = from_input_or_attr(call, a, 1, "split")
    if not sizes:
        n = int(call.attr("num_outputs", call.n_outputs))
        step = math.ceil(x.shape[axis] / n)
        sizes = [step] * (n - 1) + [x.shape[axis] - step * (n - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


def slice_op(call: Call, a: Args) -> Out:
    x = arg(a)
    if call.opset < 10:
        starts, ends = list(call.attr("starts")), list(call.attr("ends"))
        axes, steps = call.attr("axes"), None
    else:
        starts, ends = ints(arg(a, 1)), ints(arg(a, 2))
        axes = ints(t) if (t := opt(a, 3)) is not None else None
        steps = ints(t) if (t := opt(a, 4)) is not None else None
    axes = list(axes) if axes else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for axis, s, e, step in zip(norm_axes(axes, x.dim()), starts, ends, steps, strict=True):
        start, stop, step = slice(s, e, step).indices(x.shape[axis])
        if step > 0:
            index: list[slice] = [slice(None)] * x.dim()
            index[axis] = slice(start, stop, step)
            x = x[tuple(index)]
        else:
            x = x.index_select(axis, torch.arange(start, stop, step))
    return x


def gather(call: Call, a: Args) -> Out:
    x, idx = arg(a, 0), arg(a, 1).long()
    axis = int(call.attr("axis", 0)) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def gather_elements(call: Call, a: Args) -> Out:
    x, idx = arg(a, 0), arg(a, 1).long()
    axis = int(call.attr("axis", 0)) % x.dim()
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


def expand(call: Call, a: Args) -> Out:
    x = arg(a)
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(arg(a, 1)))))


def tile(call: Call, a: Args) -> Out:
    return arg(a).repeat(*ints(arg(a, 1)))


def constant_of_shape(call: Call, a: Args) -> Out:
    value = call.attr("value")
    fill = tensor_attr(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    dtype = torch.from_numpy(fill.copy()).dtype
    return torch.full(ints(arg(a)), fill[0].item(), dtype=dtype)


def constant(call: Call, a: Args) -> Out:
    for key in ("value", "sparse_value"):
        if key in call.attrs:
            return torch.from_numpy(np.array(tensor_attr(call.attrs[key])))
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in call.attrs:
            return torch.tensor(call.attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in call.attrs:
            return torch.tensor(list(call.attrs[key]), dtype=dtype)
    raise call.unsupported("a string value")


def range_op(call: Call, a: Args) -> Out:
    start, limit, delta = arg(a, 0), arg(a, 1), arg(a, 2)
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def trilu(call: Call, a: Args) -> Out:
    x, k = arg(a), opt(a, 1)
    shift = int(k.reshape(-1)[0]) if k is not None else 0
    return torch.triu(x, shift) if call.attr("upper", 1) else torch.tril(x, shift)


def depth_to_space(call: Call, a: Args) -> Out:
    x = arg(a)
    b = int(call.attr("blocksize"))
    n, c, h, w = x.shape
    if call.text("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x, b)
    y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(call: Call, a: Args) -> Out:
    x = arg(a)
    b = int(call.attr("blocksize"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# --- padding and resampling -----------------------------------------------------------------------
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def pad(call: Call, a: Args) -> Out:
    x = arg(a)
    mode = call.text("mode", "constant")
    if mode not in _PAD_MODES:
        raise call.unsupported(f"mode {mode!r}")
    rank = x.dim()
    if call.opset < 11:
        pads = [int(p) for p in call.attr("pads")]
        value: float | Tensor = float(call.attr("value", 0.0))
        axes = list(range(rank))
    else:
        pads = ints(arg(a, 1))
        given = opt(a, 2)
        value = given.reshape(-1)[0].item() if given is not None and given.numel() else 0.0
        axes_t = opt(a, 3)
        axes = norm_axes(ints(axes_t), rank) if axes_t is not None else list(range(rank))
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[len(axes) + i]
    first = next((i for i in range(rank) if begin[i] or end[i]), rank)
    if first == rank:
        return x
    spec = torch_pad(begin[first:], end[first:])
    if mode == "constant":
        return F.pad(x, spec, value=float(value))
    return F.pad(x, spec, mode=_PAD_MODES[mode])


def resize(call: Call, a: Args) -> Out:
    x = arg(a)
    legacy = call.op_type == "Upsample" or call.opset < 11
    scales: list[float] | None
    sizes: list[int] | None
    if legacy:
        scales_t = opt(a, 1)
        scales = scales_t.tolist() if scales_t is not None else list(call.attr("scales"))
        sizes = None
        coord, nearest = "asymmetric", "floor"
    else:
        scales_t, sizes_t = opt(a, 2), opt(a, 3)
        scales = scales_t.tolist() if scales_t is not None and scales_t.numel() else None
        sizes = ints(sizes_t) if sizes_t is not None and sizes_t.numel() else None
        coord = call.text("coordinate_transformation_mode", "half_pixel")
        nearest = call.text("nearest_mode", "round_prefer_floor")
    mode = call.text("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "trilinear"):
        raise call.unsupported(f"mode {mode!r}")
    if call.attr("antialias", 0) or call.text("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise call.unsupported("antialias or keep_aspect_ratio_policy")
    axes = norm_axes(call.attr("axes") or list(range(x.dim())), x.dim())
    for i, axis in enumerate(axes):
        n = x.shape[axis]
        scale = float(scales[i]) if scales is not None else sizes[i] / n  # type: ignore[index]
        out = sizes[i] if sizes is not None else math.floor(n * scale)
        if out == n and scale == 1.0:
            continue
        src = _source_coords(call, coord, n, out, scale)
        if mode == "nearest":
            idx = torch.from_numpy(np.clip(_round(call, nearest, src), 0, n - 1))
            x = x.index_select(axis, idx)
        else:
            x = _linear(x, axis, np.clip(src, 0, n - 1), n)
    return x


def _source_coords(call: Call, coord: str, n: int, out: int, scale: float) -> np.ndarray:
    i = np.arange(out, dtype=np.float64)
    if coord == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if coord == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out > 1 else np.zeros(out)
    if coord == "align_corners":
        return i * (n - 1) / (out - 1) if out > 1 else np.zeros(out)
    if coord == "asymmetric":
        return i / scale
    if coord == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if coord == "half_pixel_symmetric":
        adjustment = out / (scale * n)
        return n / 2 * (1 - adjustment) + (i + 0.5) / scale - 0.5
    raise call.unsupported(f"coordinate_transformation_mode {coord!r}")


def _round(call: Call, mode: str, src: np.ndarray) -> np.ndarray:
    if mode == "floor":
        out = np.floor(src)
    elif mode == "ceil":
        out = np.ceil(src)
    elif mode == "round_prefer_floor":
        out = np.where(src - np.floor(src) == 0.5, np.floor(src), np.round(src))
    elif mode == "round_prefer_ceil":
        out = np.where(src - np.floor(src) == 0.5, np.ceil(src), np.round(src))
    else:
        raise call.unsupported(f"nearest_mode {mode!r}")
    return out.astype(np.int64)


def _linear(x: Tensor, axis: int, src: np.ndarray, n: int) -> Tensor:
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.dim()
    shape[axis] = len(src)
    w = torch.from_numpy((src - lo).astype(np.float64)).to(x.dtype).reshape(shape)
    a, b = x.index_select(axis, torch.from_numpy(lo)), x.index_select(axis, torch.from_numpy(hi))
    return a + (b - a) * w
