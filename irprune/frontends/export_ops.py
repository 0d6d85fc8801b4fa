"""The torch.export lowering table: ATen ops -> ONNX opset-17 ops.

One table (:func:`table`) keyed by ATen op overload (``torch.ops.aten.linear.default``, ...),
built explicitly on first use (no registration by import side effects). Lowerings take
``(ctx, args, kwargs)`` in the op's schema order; ``args`` hold IR values where the ATen graph
had tensors and :class:`~irprune.frontends.fx.SymInt` where it had run-time sizes
(``aten.sym_size``). Where an ATen op takes the same arguments as the torch function the
torch.fx table lowers, that lowering is reused (:mod:`fx_ops`, :mod:`fx_shapes`).

The math, as the TorchScript ONNX exporter writes it at opset 17:

- ``linear(x, W, b)`` = x W^T + b: Gemm(transB=1) for 2-D x, else MatMul(x, W^T) + b;
  ``addmm(b, A, B, beta, alpha)`` = beta b + alpha A B: Gemm.
- ``conv{1,2,3}d`` -> Conv (pads begin = end), ``batch_norm`` (inference) ->
  BatchNormalization, ``layer_norm`` -> LayerNormalization over the trailing dims,
  ``embedding(W, ids)`` = W[ids] -> Gather(axis 0), ``gather(x, d, i)`` -> GatherElements.
- ``scaled_dot_product_attention(q, k, v, mask)`` = Softmax(q k^T s + mask) v with
  s = ``scale`` or 1/sqrt(E), written MatMul(q sqrt(s), k^T sqrt(s)); a boolean mask becomes
  Where(mask, 0, -inf); ``is_causal`` adds the upper-triangular -inf mask.
- ``gelu`` = x Phi(x): 0.5 x (1 + erf(x / sqrt 2)), or the tanh form.
- ``roll(x, s, d)`` = Concat(x[n-s:], x[:n-s]) along d; ``masked_fill(x, m, v)`` =
  Where(m, v, x); ``zeros/ones/full(size)`` -> ConstantOfShape; ``arange`` -> Range.
- ``view/reshape/expand/repeat`` take run-time sizes (Shape, Gather, Concat); ``expand``'s -1
  keeps a dim (Expand broadcasts a 1); ``repeat`` / ``tile`` are Tile (Unsqueeze to its rank).

Dropout, contiguous, clone, detach and the export's metadata assertions are the identity (or
nothing). An op without a lowering is kept opaque (:mod:`fx_opaque`) or fails closed.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from irprune.frontends import fx_opaque
from irprune.frontends import fx_ops as fxo
from irprune.frontends import fx_shapes as shp
from irprune.frontends.fx import (
    _NP_OF,
    FunctionLowering,
    Lowering,
    SymInt,
    TensorMeta,
    torch_dtype,
)
from irprune.frontends.fx_shapes import arg_at, as_tensor, norm_axis, per_dim
from irprune.ir import Value

_INT64_MAX = int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class AtenTable:
    """ATen op overload (or python operator on sizes) -> lowering."""

    ops: dict[Any, FunctionLowering]
    copy_dims: dict[Any, int]  # view-like op -> the target entry that keeps an input dim

    def lower(self, ctx: Lowering, gm: Any, node: Any, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":  # the input guards torch.export adds (``_guards_fn``)
            return None
        if node.op != "call_function":
            raise ctx.fail(f"unexpected node kind {node.op!r} in an exported program")
        lowering = self.ops.get(node.target)
        if lowering is not _noop and fxo._all_constant((args, kwargs)):
            return fxo._evaluate(ctx, node, args, kwargs)
        if node.target in self.copy_dims:
            args = _copy_own_dims(node, args, self.copy_dims[node.target])
        if lowering is None:
            what = f"ATen op {node.target}"
            return fx_opaque.opaque_call(ctx, node, what, args, kwargs, ctx.examples[node.name])
        return lowering(ctx, args, kwargs)

    def is_opaque(self, gm: Any, node: Any) -> bool:
        return node.op == "call_function" and node.target not in self.ops


def _copy_own_dims(node: Any, args: tuple, keep: int) -> tuple:
    """``view(x, [s, 16, -1])`` where ``s`` is, symbolically, x's own run-time dim at that
    position: the entry becomes ``keep`` (Reshape's 0, Expand's 1: the input's dim), as the
    ONNX exporter's Shape(x)[i], so the channel analysis can follow the dim (torch.export
    computes it by arithmetic on the batch, ``4 * s0``, which no rule can read)."""
    import torch

    source, sizes = node.args[0].meta.get("val"), node.args[1]
    if not isinstance(source, torch.Tensor) or not isinstance(sizes, list | tuple):
        return args
    items = list(args[1])
    for i, (entry, raw) in enumerate(zip(items, sizes, strict=False)):
        if not isinstance(entry, SymInt) or i >= source.dim():
            continue
        wanted: Any = getattr(raw, "meta", {}).get("val")
        have: Any = source.shape[i]
        symbolic = isinstance(wanted, torch.SymInt) and isinstance(have, torch.SymInt)
        if symbolic and wanted.node.expr == have.node.expr:
            items[i] = keep
    return (args[0], items, *args[2:])


# --------------------------------------------------------------------------- identity, casts


def _same(ctx: Lowering, args: tuple, kwargs: dict) -> Any:
    return args[0]


def _noop(ctx: Lowering, args: tuple, kwargs: dict) -> None:
    return None


def _to_copy(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``_to_copy`` / ``to.dtype_layout``: only a ``dtype`` keyword changes anything."""
    x = as_tensor(ctx, args[0])
    dtype = kwargs.get("dtype")
    return x if dtype is None else fxo._cast(ctx, x, torch_dtype(dtype))


# --------------------------------------------------------------------------- elementwise


def _gelu(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    approximate = arg_at(args, kwargs, 1, "approximate", "none")
    if approximate != "tanh":
        return fxo._gelu(ctx, x, approximate)
    cube = ctx.op("Mul", ctx.op("Mul", x, x), x)
    inner = ctx.op("Add", x, ctx.op("Mul", cube, ctx.scalar(0.044715, x)))
    tanh = ctx.op("Tanh", ctx.op("Mul", inner, ctx.scalar(math.sqrt(2.0 / math.pi), x)))
    half = ctx.op("Mul", x, ctx.scalar(0.5, x))
    return ctx.op("Mul", half, ctx.op("Add", tanh, ctx.scalar(1.0, x)))


def _rsqrt(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    return ctx.op("Reciprocal", ctx.op("Sqrt", as_tensor(ctx, args[0])))


def _operand(ctx: Lowering, value: Any, like: Value) -> Value:
    return value if isinstance(value, Value) else ctx.scalar(value, like)


def _compare(op_type: str, negate: bool = False) -> FunctionLowering:
    """``ge/gt/le/lt/eq/ne`` with a tensor or a scalar other; ``ne`` is Not(Equal)."""

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        a = as_tensor(ctx, args[0])
        y = ctx.op(op_type, a, _operand(ctx, args[1], a))
        return ctx.op("Not", y) if negate else y

    return lower


def _logical(op_type: str) -> FunctionLowering:
    """``&``, ``|`` and ``~`` of boolean tensors (ONNX And/Or/Not take bool only)."""

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        tensors = [as_tensor(ctx, a) for a in args if isinstance(a, Value)]
        if len(tensors) != len(args) or any(ctx.dtype(t) != onnx.TensorProto.BOOL for t in tensors):
            raise ctx.fail(f"{op_type} of non-boolean operands has no lowering")
        return ctx.op(op_type, *tensors)

    return lower


def _where(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``where(cond, a, b)``; a scalar branch takes the element type of the other."""
    cond, a, b = as_tensor(ctx, args[0]), args[1], args[2]
    if not isinstance(a, Value) and not isinstance(b, Value):  # where(c, 0.0, -inf)
        a = ctx.const(np.asarray(a, np.float32 if isinstance(a, float) else np.int64), "where")
    if not isinstance(a, Value):
        a = ctx.scalar(a, as_tensor(ctx, b))
    return ctx.op("Where", cond, a, _operand(ctx, b, a))


def _masked_fill(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x, mask = as_tensor(ctx, args[0]), as_tensor(ctx, args[1])
    return ctx.op("Where", mask, _operand(ctx, args[2], x), x)


def _cumsum(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """torch sums integers and booleans in int64."""
    x = as_tensor(ctx, args[0])
    dtype = kwargs.get("dtype")
    if dtype is not None:
        x = fxo._cast(ctx, x, torch_dtype(dtype))
    elif ctx.dtype(x) in (onnx.TensorProto.INT32, onnx.TensorProto.BOOL):
        x = fxo._cast(ctx, x, onnx.TensorProto.INT64)
    axis = norm_axis(ctx, x, arg_at(args, kwargs, 1, "dim"))
    return ctx.op("CumSum", x, ctx.ints(axis))


# --------------------------------------------------------------------------- linear algebra


def _addmm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    bias, a, b = (as_tensor(ctx, v) for v in args[:3])
    beta, alpha = arg_at(args, kwargs, 3, "beta", 1), arg_at(args, kwargs, 4, "alpha", 1)
    return ctx.op("Gemm", a, b, bias, alpha=float(alpha), beta=float(beta))


def _attention(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    q, k, v = (as_tensor(ctx, a) for a in args[:3])
    mask = arg_at(args, kwargs, 3, "attn_mask", None)
    causal = arg_at(args, kwargs, 5, "is_causal", False)
    scale = arg_at(args, kwargs, 6, "scale", None)
    if arg_at(args, kwargs, 7, "enable_gqa", False):
        raise ctx.fail("scaled_dot_product_attention(enable_gqa=True) has no lowering")
    if scale is None:
        scale = 1.0 / math.sqrt(ctx.shape(q)[-1])
    root = ctx.scalar(math.sqrt(float(scale)), q)
    perm = list(range(ctx.rank(k)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    k_t = ctx.op("Mul", ctx.op("Transpose", k, perm=perm), root)
    scores = ctx.op("MatMul", ctx.op("Mul", q, root), k_t)
    if causal:
        rows, cols = ctx.shape(q)[-2], ctx.shape(k)[-2]
        upper = np.triu(np.full((rows, cols), -np.inf, np.float32), 1)
        scores = ctx.op("Add", scores, ctx.const(upper, f"{ctx.where}_causal"))
    if isinstance(mask, Value):
        if ctx.dtype(mask) == onnx.TensorProto.BOOL:
            mask = ctx.op("Where", mask, ctx.scalar(0.0, q), ctx.scalar(-np.inf, q))
        scores = ctx.op("Add", scores, mask)
    return ctx.op("MatMul", ctx.op("Softmax", scores, axis=-1), v)


# --------------------------------------------------------------------------- conv, norms


def _conv(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``conv{1,2,3}d(x, W, b, stride, padding, dilation, groups)``; padding may be a string."""
    x, weight = as_tensor(ctx, args[0]), as_tensor(ctx, args[1])
    n = ctx.rank(x) - 2
    kernel = list(ctx.shape(weight)[2:])
    dilation = per_dim(arg_at(args, kwargs, 5, "dilation", 1), n)
    padding = arg_at(args, kwargs, 4, "padding", 0)
    if padding == "valid":
        pads = [0] * 2 * n
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        pads = per_dim(padding, n) * 2
    return ctx.op(
        "Conv", x, weight, arg_at(args, kwargs, 2, "bias", None),
        dilations=dilation, group=int(arg_at(args, kwargs, 6, "groups", 1)),
        kernel_shape=kernel, pads=pads,
        strides=per_dim(arg_at(args, kwargs, 3, "stride", 1), n),
    )  # fmt: skip


def _conv_transpose(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``conv_transpose{1,2,3}d(x, W, b, stride, padding, output_padding, groups, dilation)``."""
    x, weight = as_tensor(ctx, args[0]), as_tensor(ctx, args[1])
    n = ctx.rank(x) - 2
    return ctx.op(
        "ConvTranspose", x, weight, arg_at(args, kwargs, 2, "bias", None),
        dilations=per_dim(arg_at(args, kwargs, 7, "dilation", 1), n),
        group=int(arg_at(args, kwargs, 6, "groups", 1)), kernel_shape=list(ctx.shape(weight)[2:]),
        output_padding=per_dim(arg_at(args, kwargs, 5, "output_padding", 0), n),
        pads=per_dim(arg_at(args, kwargs, 4, "padding", 0), n) * 2,
        strides=per_dim(arg_at(args, kwargs, 3, "stride", 1), n),
    )  # fmt: skip


def _filled(ctx: Lowering, value: Any, fill: float, n: int, like: Value) -> Value:
    if isinstance(value, Value):
        return value
    dtype = _NP_OF.get(ctx.dtype(like), np.float32)
    return ctx.const(np.full((n,), fill, dtype), f"{ctx.where}_{'one' if fill else 'zero'}s")


def _batch_norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``batch_norm(x, w, b, mean, var, training, momentum, eps, cudnn)`` in inference form."""
    x = as_tensor(ctx, args[0])
    mean, var = args[3], args[4]
    if not isinstance(mean, Value) or not isinstance(var, Value) or args[5]:
        raise ctx.fail("batch_norm in training mode (batch statistics) has no lowering")
    c = ctx.shape(x)[1]
    momentum = 1.0 - float(args[6])
    return ctx.op(
        "BatchNormalization", x, _filled(ctx, args[1], 1.0, c, x),
        _filled(ctx, args[2], 0.0, c, x), mean, var, epsilon=float(args[7]), momentum=momentum,
    )  # fmt: skip


def _batch_norm_no_training(ctx: Lowering, args: tuple, kwargs: dict) -> tuple:
    """``_native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)``: (y, -, -)."""
    y = _batch_norm(ctx, (*args[:5], False, args[5], args[6]), {})
    return (y, None, None)


def _layer_norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    shape = [int(d) for d in arg_at(args, kwargs, 1, "normalized_shape")]
    weight, bias = arg_at(args, kwargs, 2, "weight", None), arg_at(args, kwargs, 3, "bias", None)
    ones = weight if isinstance(weight, Value) else ctx.const(np.ones(shape, np.float32), "ones")
    zeros = bias if isinstance(bias, Value) else ctx.const(np.zeros(shape, np.float32), "zeros")
    return ctx.op(
        "LayerNormalization", x, ones, zeros, axis=-len(shape),
        epsilon=float(arg_at(args, kwargs, 4, "eps", 1e-5)),
    )  # fmt: skip


def _group_norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``group_norm(x, G, w, b, eps)``; the affine parameters must be constants."""
    x = as_tensor(ctx, args[0])
    weight, bias = arg_at(args, kwargs, 2, "weight", None), arg_at(args, kwargs, 3, "bias", None)
    if any(isinstance(v, Value) and v.const is None for v in (weight, bias)):
        raise ctx.fail("group_norm with run-time affine parameters has no lowering")
    w = weight.const if isinstance(weight, Value) else None
    b = bias.const if isinstance(bias, Value) else None
    if (w is None) != (b is None):
        c = ctx.shape(x)[1]
        w = np.ones(c, np.float32) if w is None else w
        b = np.zeros(c, np.float32) if b is None else b
    eps = float(arg_at(args, kwargs, 4, "eps", 1e-5))
    return fxo.group_norm_op(ctx, x, int(args[1]), w, b, eps)


def _instance_norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``instance_norm(x, w, b, mean, var, use_input_stats, momentum, eps, cudnn)``."""
    x = as_tensor(ctx, args[0])
    if not args[5]:
        raise ctx.fail("instance_norm with running statistics has no lowering")
    c = ctx.shape(x)[1]
    return ctx.op(
        "InstanceNormalization", x, _filled(ctx, args[1], 1.0, c, x),
        _filled(ctx, args[2], 0.0, c, x), epsilon=float(args[7]),
    )  # fmt: skip


# --------------------------------------------------------------------------- shapes, indexing


def _expand(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """A -1 keeps the input's dim: Expand broadcasts a 1 to it."""
    x = as_tensor(ctx, args[0])
    items = [1 if isinstance(d, int) and d == -1 else d for d in shp.shape_items(args[1:2])]
    return ctx.op("Expand", x, shp.shape_tensor(ctx, items))


def _bound(ctx: Lowering, value: Any, default: int) -> Value:
    if value is None:
        return ctx.ints([default])
    return shp.shape_tensor(ctx, [value])


def _slice(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``slice(x, dim, start, end, step)``; bounds may be run-time sizes."""
    x = as_tensor(ctx, args[0])
    dim = norm_axis(ctx, x, arg_at(args, kwargs, 1, "dim", 0))
    start, end = arg_at(args, kwargs, 2, "start", None), arg_at(args, kwargs, 3, "end", None)
    step = arg_at(args, kwargs, 4, "step", 1)
    whole = end is None or (isinstance(end, int) and end >= _INT64_MAX)
    if start in (None, 0) and whole and step == 1:
        return x
    if not isinstance(step, int) or step < 1:
        raise ctx.fail(f"slice with step {step!r} has no lowering")
    return ctx.op(
        "Slice", x, _bound(ctx, start, 0), _bound(ctx, end, _INT64_MAX), ctx.ints([dim]),
        ctx.ints([step]),
    )  # fmt: skip


def _select(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    axis, index = norm_axis(ctx, x, args[1]), args[2]
    indices = index.value if isinstance(index, SymInt) else ctx.ints(int(index))
    return ctx.op("Gather", x, indices, axis=axis)


def _index(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``x[idx]`` advanced indexing with integer index tensors: one tensor (after leading full
    slices) is a Gather on its axis; tensors on the leading axes 0..k-1 broadcast together
    and index like ``x[i0, ..., ik-1]``: GatherND on the stacked broadcast indices."""
    x, indices = as_tensor(ctx, args[0]), list(args[1])
    used = [i for i, t in enumerate(indices) if t is not None]
    tensors = [indices[i] for i in used]
    if not all(isinstance(t, Value) and ctx.dtype(t) != onnx.TensorProto.BOOL for t in tensors):
        raise ctx.fail("indexing with a boolean mask or a non-tensor index has no lowering")
    if len(used) == 1:
        return ctx.op("Gather", x, tensors[0], axis=used[0])
    if used != list(range(len(used))):
        raise ctx.fail("advanced indexing with non-leading index tensors has no lowering")
    tensors = [fxo._cast(ctx, t, onnx.TensorProto.INT64) for t in tensors]
    total = functools.reduce(lambda a, b: ctx.op("Add", a, b), tensors)
    shape = ctx.op("Shape", total)
    last = ctx.ints([-1])
    parts = [ctx.op("Unsqueeze", ctx.op("Expand", t, shape), last) for t in tensors]
    return ctx.op("GatherND", x, ctx.op("Concat", *parts, axis=-1))


def _embedding(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    return ctx.op("Gather", as_tensor(ctx, args[0]), as_tensor(ctx, args[1]), axis=0)


def _gather(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x, index = as_tensor(ctx, args[0]), as_tensor(ctx, args[2])
    return ctx.op("GatherElements", x, index, axis=norm_axis(ctx, x, args[1]))


def _unbind(ctx: Lowering, args: tuple, kwargs: dict) -> tuple[Value, ...]:
    x = as_tensor(ctx, args[0])
    axis = norm_axis(ctx, x, arg_at(args, kwargs, 1, "dim", 0))
    parts = shp.split_op(ctx, x, [1] * ctx.shape(x)[axis], axis)
    return tuple(ctx.op("Squeeze", p, ctx.ints([axis])) for p in parts)


def _t(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    return x if ctx.rank(x) < 2 else ctx.op("Transpose", x, perm=[1, 0])


def _roll(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """Each (shift, dim): the last ``shift`` entries moved to the front (Slice + Concat)."""
    x = as_tensor(ctx, args[0])
    shifts, dims = per_dim(args[1], 1), per_dim(arg_at(args, kwargs, 2, "dims", []), 1)
    if len(shifts) != len(dims) or not dims:
        raise ctx.fail("roll without one dim per shift (flattened roll) has no lowering")
    for shift, dim in zip(shifts, dims, strict=True):
        axis = norm_axis(ctx, x, dim)
        size = ctx.shape(x)[axis]
        cut = size - int(shift) % size
        if cut == size:
            continue
        head = shp.index_tensor(ctx, x, (*[slice(None)] * axis, slice(cut, None)))
        tail = shp.index_tensor(ctx, x, (*[slice(None)] * axis, slice(0, cut)))
        rolled = ctx.op("Concat", head, tail, axis=axis)
        ctx.meta[rolled.name] = TensorMeta(ctx.shape(x), ctx.dtype(x))
        x = rolled
    return x


def _cat(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``cat`` skips the legacy empty 1-D tensors torch allows (an empty cache, say)."""
    tensors = [as_tensor(ctx, t) for t in arg_at(args, kwargs, 0, "tensors")]
    kept = [t for t in tensors if ctx.shape(t) != (0,)] or tensors[:1]
    if len(kept) == 1:
        return kept[0]
    return ctx.op("Concat", *kept, axis=norm_axis(ctx, kept[0], arg_at(args, kwargs, 1, "dim", 0)))


def _constant_pad(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    return shp.pad_op(ctx, x, list(args[1]), "constant", arg_at(args, kwargs, 2, "value", 0))


def _upsample(mode: str) -> FunctionLowering:
    """``upsample_{bilinear,nearest}2d.vec(x, output_size, [align_corners,] scale_factors)``."""

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        x, size = as_tensor(ctx, args[0]), args[1]
        align = args[2] if mode == "bilinear" else None
        scales = args[-1] if len(args) > (3 if mode == "bilinear" else 2) else None
        return shp.resize(ctx, x, size, scales, mode, align)

    return lower


# --------------------------------------------------------------------------- creation


def _dtype_of(kwargs: dict, default: int) -> int:
    dtype = kwargs.get("dtype")
    return default if dtype is None else torch_dtype(dtype)


def _full(size_at: int, fill: Any) -> FunctionLowering:
    """``zeros/ones/full/new_*(size)`` with a run-time size: ConstantOfShape."""

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        value = args[size_at + 1] if fill is None else fill
        like = args[0] if size_at == 1 and isinstance(args[0], Value) else None
        default = ctx.dtype(like) if like is not None else _default_dtype(value)
        dtype = _NP_OF.get(_dtype_of(kwargs, default), np.float32)
        shape = shp.shape_tensor(ctx, shp.shape_items((args[size_at],)))
        return ctx.op("ConstantOfShape", shape, value=np.asarray([value], dtype=dtype))

    return lower


def _default_dtype(value: Any) -> int:
    if isinstance(value, bool):
        return onnx.TensorProto.BOOL
    return onnx.TensorProto.INT64 if isinstance(value, int) else onnx.TensorProto.FLOAT


def _arange(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``arange(end)`` / ``arange(start, end[, step])`` with run-time bounds: Range (int64)."""
    bounds = list(args) if len(args) > 1 else [0, args[0]]
    if len(bounds) == 2:
        bounds.append(1)
    if not all(isinstance(b, int | SymInt) for b in bounds):
        raise ctx.fail("arange with non-integer bounds has no lowering")
    values = [b.value if isinstance(b, SymInt) else ctx.ints(b) for b in bounds]
    out = ctx.op("Range", *values)
    return fxo._cast(ctx, out, _dtype_of(kwargs, onnx.TensorProto.INT64))


# --------------------------------------------------------------------------- the table


def _family(
    packet: Any, names: tuple[str, ...], lowering: FunctionLowering
) -> dict[Any, FunctionLowering]:
    """``packet.<name>`` for every overload name that exists in this torch build."""
    return {getattr(packet, n): lowering for n in names if hasattr(packet, n)}


@functools.cache
def table() -> AtenTable:
    """Built on first use (torch imported here, not at module import)."""
    import torch

    aten = torch.ops.aten
    ops: dict[Any, FunctionLowering] = {}

    def add(names: str, overloads: tuple[str, ...], lowering: FunctionLowering) -> None:
        for name in names.split():
            ops.update(_family(getattr(aten, name), overloads, lowering))

    tensor, default = ("Tensor",), ("default",)
    both = ("Tensor", "Scalar")
    add("add add_", both, fxo._binary("Add"))
    add("sub sub_", both, fxo._binary("Sub"))
    add("mul mul_", both, fxo._binary("Mul"))
    add("div div_", both, fxo._binary("Div"))
    add("pow", ("Tensor_Scalar", "Tensor_Tensor"), fxo._pow)
    for name, op_type in [("relu", "Relu"), ("relu_", "Relu"), ("sigmoid", "Sigmoid"),
                          ("tanh", "Tanh"), ("exp", "Exp"), ("sqrt", "Sqrt"), ("neg", "Neg"),
                          ("abs", "Abs"), ("log", "Log"), ("erf", "Erf"), ("sin", "Sin"),
                          ("cos", "Cos"),
                          ("reciprocal", "Reciprocal"), ("hardswish", "HardSwish"),
                          ("hardswish_", "HardSwish")]:  # fmt: skip
        add(name, default, fxo._unary(op_type))
    add("hardsigmoid hardsigmoid_", default, fxo._unary("HardSigmoid", alpha=1 / 6, beta=0.5))
    add("rsqrt", default, _rsqrt)
    add("gelu", default, _gelu)
    add("silu silu_", default, fxo._silu)
    add("hardtanh hardtanh_", default, fxo._hardtanh_fn)
    add("clamp", default, fxo._clamp)
    add("leaky_relu", default, fxo._leaky_relu_fn)
    add("softmax", ("int",), fxo._softmax_fn)
    add("_softmax", default, fxo._softmax_fn)
    for name, op_type, negate in [("ge", "GreaterOrEqual", False), ("gt", "Greater", False),
                                  ("le", "LessOrEqual", False), ("lt", "Less", False),
                                  ("eq", "Equal", False), ("ne", "Equal", True)]:  # fmt: skip
        add(name, both, _compare(op_type, negate))
    add("__and__ bitwise_and logical_and", both, _logical("And"))
    add("__or__ bitwise_or logical_or", both, _logical("Or"))
    add("bitwise_not logical_not", default, _logical("Not"))
    add("where", ("self", "ScalarOther", "ScalarSelf", "Scalar"), _where)
    add("masked_fill", both, _masked_fill)
    add("cumsum", default, _cumsum)
    add("linear", default, fxo._linear_fn)
    add("addmm", default, _addmm)
    add("matmul mm bmm", default, fxo._matmul)
    add("scaled_dot_product_attention", default, _attention)
    add("conv1d conv2d conv3d", ("default", "padding"), _conv)
    add("conv_transpose1d conv_transpose2d conv_transpose3d", ("input", "default"),
        _conv_transpose)  # fmt: skip
    add("batch_norm", default, _batch_norm)
    add("_native_batch_norm_legit_no_training", default, _batch_norm_no_training)
    add("layer_norm", default, _layer_norm)
    add("group_norm", default, _group_norm)
    add("instance_norm", default, _instance_norm)
    add("max_pool1d max_pool2d max_pool3d", default, fxo._max_pool_fn)
    add("avg_pool1d avg_pool2d avg_pool3d", default, fxo._avg_pool_fn)
    add("adaptive_avg_pool1d adaptive_avg_pool2d", default, fxo._adaptive_avg_fn)
    add("mean", ("dim", "default"), fxo._reduce("ReduceMean"))
    add("sum", ("dim_IntList", "default"), fxo._reduce("ReduceSum"))
    add("sym_size", ("int",), shp.size_of)
    add("view reshape _unsafe_view", default, shp.view)
    add("flatten", ("using_ints",), shp.flatten_fn)
    add("permute", default, shp.permute)
    add("transpose", ("int",), shp.transpose)
    add("t", default, _t)
    add("unsqueeze", default, shp.unsqueeze)
    add("squeeze", ("dim", "dims", "default"), shp.squeeze)
    add("expand", default, _expand)
    add("repeat", default, shp.repeat)
    add("tile", default, shp.tile)
    add("cat concat", default, _cat)
    add("stack", default, shp.stack)
    add("slice", tensor, _slice)
    add("select", ("int",), _select)
    add("index", tensor, _index)
    add("embedding", default, _embedding)
    add("gather", default, _gather)
    add("split", tensor, shp.split)
    add("split_with_sizes", default, shp.split)
    add("chunk", default, shp.chunk)
    add("unbind", ("int",), _unbind)
    add("roll", default, _roll)
    add("pad", default, shp.pad_fn)
    add("constant_pad_nd", default, _constant_pad)
    add("upsample_bilinear2d", ("vec",), _upsample("bilinear"))
    add("upsample_nearest2d", ("vec",), _upsample("nearest"))
    add("dropout feature_dropout alpha_dropout contiguous clone detach detach_ alias "
        "lift_fresh_copy", default, _same)  # fmt: skip
    add("_assert_tensor_metadata _assert_scalar sym_constrain_range_for_size", default, _noop)
    add("to", ("dtype", "device", "dtype_layout", "other"), fxo._to)
    add("_to_copy", default, _to_copy)
    add("type_as", default, fxo._type_as)
    ops.update({aten.zeros.default: _full(0, 0.0), aten.ones.default: _full(0, 1.0)})
    ops.update({aten.full.default: _full(0, None)})
    ops.update({aten.new_zeros.default: _full(1, 0.0), aten.new_ones.default: _full(1, 1.0)})
    add("arange", ("default", "start", "start_step"), _arange)
    ops.update(_size_arithmetic())
    copy_dims = {aten.view.default: 0, aten.reshape.default: 0, aten._unsafe_view.default: 0}
    return AtenTable(ops, {**copy_dims, aten.expand.default: 1})


def _size_arithmetic() -> dict[Any, FunctionLowering]:
    """Python operators on run-time sizes (``s0 * 4``, ``s0 // 2``) and ``getitem``."""
    arithmetic: dict[Callable[..., Any], FunctionLowering] = {
        operator.add: fxo._binary("Add"), operator.sub: fxo._binary("Sub"),
        operator.mul: fxo._binary("Mul"), operator.floordiv: fxo._binary("FloorDiv"),
        operator.getitem: shp.getitem,
    }  # fmt: skip
    return dict(arithmetic)
