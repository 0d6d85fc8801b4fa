"""ONNX operator semantics in torch: one table, ``OPS``, keyed by (domain, op type).

Each entry takes the node's call context (attributes, the opset of its domain) and its input
tensors (None for an absent optional input) and returns the output tensor, or a tuple of them.
Attributes that moved to inputs across opsets (Split/Squeeze/Unsqueeze/Reduce* axes, Slice
starts/ends, Pad pads, Clip bounds, Resize scales) are read from the input when it is present
and from the attribute otherwise, so every opset the frontend accepts (7..23) is covered by one
function. A mode an entry does not implement raises ``UnsupportedOpError`` naming the op and the
mode; an op missing from the table is reported by the caller the same way.

Every function is differentiable where ONNX's op is (resampling and padding are written as index
gathers and blends so their gradients are exact), and computes in the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

from irprune.backends import torch_movement as mv
from irprune.backends.torch_call import (
    DTYPES,
    Args,
    Call,
    OpFn,
    Out,
    arg,
    from_input_or_attr,
    norm_axes,
    opt,
    pads,
    spatial,
    torch_pad,
)
from irprune.backends.torch_recurrent import lstm


# --- elementwise ----------------------------------------------------------------------------------
def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    def op(call: Call, a: Args) -> Out:
        return fn(arg(a))

    return op


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def op(call: Call, a: Args) -> Out:
        return fn(arg(a, 0), arg(a, 1))

    return op


def _variadic(fn: Callable[[Tensor, Tensor], Tensor], mean: bool = False) -> OpFn:
    def op(call: Call, a: Args) -> Out:
        items = [t for t in a if t is not None]
        out = items[0]
        for t in items[1:]:
            out = fn(out, t)
        return out / len(items) if mean else out

    return op


def _div(call: Call, a: Args) -> Out:
    x, y = arg(a, 0), arg(a, 1)
    if x.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


def _mod(call: Call, a: Args) -> Out:
    x, y = arg(a, 0), arg(a, 1)
    if call.attr("fmod", 0) or x.is_floating_point():
        return torch.fmod(x, y)
    return torch.remainder(x, y)


def _pow(call: Call, a: Args) -> Out:
    x = arg(a, 0)
    return torch.pow(x, arg(a, 1)).to(x.dtype)


def _where(call: Call, a: Args) -> Out:
    return torch.where(arg(a, 0).bool(), arg(a, 1), arg(a, 2))


def _clip(call: Call, a: Args) -> Out:
    x = arg(a)
    if call.opset < 11:
        lo, hi = call.attr("min"), call.attr("max")
        return torch.clamp(x, lo, hi)
    lo_t, hi_t = opt(a, 1), opt(a, 2)
    bounds = _scalar_bounds(x, lo_t, hi_t)
    if bounds is not None:
        # one fused op: its backward is ~10x cheaper than maximum + minimum's (ReLU6 nets)
        return F.hardtanh(x, *bounds)
    if lo_t is not None:
        x = torch.maximum(x, lo_t.to(x.dtype))
    if hi_t is not None:
        x = torch.minimum(x, hi_t.to(x.dtype))
    return x


def _scalar_bounds(x: Tensor, lo: Tensor | None, hi: Tensor | None) -> tuple[float, float] | None:
    """Clip's bounds as floats when both are fixed scalars (eager mode, no gradient) and
    lo <= hi, for ``hardtanh``; None otherwise (the general maximum / minimum form)."""
    if not x.is_floating_point() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None
    values = []
    for t, default in ((lo, -math.inf), (hi, math.inf)):
        if t is not None and (t.numel() != 1 or t.requires_grad):
            return None
        values.append(default if t is None else float(t))
    return (values[0], values[1]) if values[0] <= values[1] else None


def _leaky_relu(call: Call, a: Args) -> Out:
    return F.leaky_relu(arg(a), float(call.attr("alpha", 0.01)))


def _elu(call: Call, a: Args) -> Out:
    return F.elu(arg(a), float(call.attr("alpha", 1.0)))


def _selu(call: Call, a: Args) -> Out:
    x = arg(a)
    alpha = float(call.attr("alpha", 1.67326319217681884765625))
    gamma = float(call.attr("gamma", 1.05070102214813232421875))
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _celu(call: Call, a: Args) -> Out:
    return F.celu(arg(a), float(call.attr("alpha", 1.0)))


def _hard_sigmoid(call: Call, a: Args) -> Out:
    x = arg(a)
    alpha, beta = float(call.attr("alpha", 0.2)), float(call.attr("beta", 0.5))
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def _hard_swish(call: Call, a: Args) -> Out:
    x = arg(a)
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


def _gelu(call: Call, a: Args) -> Out:
    return F.gelu(arg(a), approximate=call.text("approximate", "none"))


def _thresholded_relu(call: Call, a: Args) -> Out:
    x = arg(a)
    return torch.where(x > float(call.attr("alpha", 1.0)), x, torch.zeros_like(x))


def _prelu(call: Call, a: Args) -> Out:
    x, slope = arg(a, 0), arg(a, 1)
    return torch.where(x >= 0, x, slope * x)


def _mish(call: Call, a: Args) -> Out:
    x = arg(a)
    return x * torch.tanh(F.softplus(x))


def _softmax_like(fn: Callable[..., Tensor]) -> OpFn:
    def op(call: Call, a: Args) -> Out:
        x = arg(a)
        if call.opset >= 13:
            return fn(x, dim=int(call.attr("axis", -1)))
        axis = int(call.attr("axis", 1)) % max(x.dim(), 1)  # before 13: coerced to 2-D
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return op


def _cast(call: Call, a: Args) -> Out:
    to = int(call.attr("to"))
    if to not in DTYPES:
        raise call.unsupported(f"target type {to}")
    return arg(a).to(DTYPES[to])


def _cast_like(call: Call, a: Args) -> Out:
    return arg(a, 0).to(arg(a, 1).dtype)


def _identity(call: Call, a: Args) -> Out:
    return arg(a)


def _dropout(call: Call, a: Args) -> Out:
    x = arg(a)
    if call.n_outputs > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


# --- linear algebra -------------------------------------------------------------------------------
def _matmul(call: Call, a: Args) -> Out:
    return torch.matmul(arg(a, 0), arg(a, 1))


def _gemm(call: Call, a: Args) -> Out:
    x, w, c = arg(a, 0), arg(a, 1), opt(a, 2)
    if call.attr("transA", 0):
        x = x.transpose(0, 1)
    if call.attr("transB", 0):
        w = w.transpose(0, 1)
    y = x @ w
    alpha, beta = float(call.attr("alpha", 1.0)), float(call.attr("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


def _einsum(call: Call, a: Args) -> Out:
    return torch.einsum(call.text("equation", ""), *[t for t in a if t is not None])


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv(call: Call, a: Args) -> Out:
    x, w, b = arg(a, 0), arg(a, 1), opt(a, 2)
    nd = x.dim() - 2
    if nd not in _CONV:
        raise call.unsupported(f"{nd} spatial dims")
    strides, dil = spatial(call, "strides", nd, 1), spatial(call, "dilations", nd, 1)
    begin, end = pads(call, x.shape[2:], w.shape[2:], strides, dil)
    padding: list[int] = begin
    if begin != end:
        x, padding = F.pad(x, torch_pad(begin, end)), [0] * nd
    return _CONV[nd](x, w, b, strides, padding, dil, int(call.attr("group", 1)))


def _conv_transpose(call: Call, a: Args) -> Out:
    x, w, b = arg(a, 0), arg(a, 1), opt(a, 2)
    nd = x.dim() - 2
    if nd not in _CONV_T:
        raise call.unsupported(f"{nd} spatial dims")
    strides, dil = spatial(call, "strides", nd, 1), spatial(call, "dilations", nd, 1)
    out_pad = spatial(call, "output_padding", nd, 0)
    full = [
        s * (n - 1) + p + (k - 1) * d + 1
        for n, k, s, d, p in zip(x.shape[2:], w.shape[2:], strides, dil, out_pad, strict=True)
    ]
    begin, end = _transpose_pads(call, x.shape[2:], full, strides, nd)
    y = _CONV_T[nd](x, w, b, strides, 0, out_pad, int(call.attr("group", 1)), dil)
    index = [slice(None), slice(None)] + [
        slice(bb, n - e) for bb, e, n in zip(begin, end, full, strict=True)
    ]
    return y[tuple(index)]


def _transpose_pads(
    call: Call, size: Sequence[int], full: list[int], strides: list[int], nd: int
) -> tuple[list[int], list[int]]:
    shape = call.attr("output_shape")
    auto = call.text("auto_pad", "NOTSET")
    if shape is None and auto in ("NOTSET", "", "VALID"):
        pads = spatial(call, "pads", 2 * nd, 0)
        return pads[:nd], pads[nd:]
    wanted = (
        [int(v) for v in shape[-nd:]]
        if shape
        else [n * s for n, s in zip(size, strides, strict=True)]
    )
    totals = [f - w for f, w in zip(full, wanted, strict=True)]
    if any(t < 0 for t in totals):
        raise call.unsupported("an output_shape larger than the full transposed convolution")
    lower = auto == "SAME_LOWER"
    begin = [t - t // 2 if lower else t // 2 for t in totals]
    return begin, [t - bb for t, bb in zip(totals, begin, strict=True)]


# --- pooling --------------------------------------------------------------------------------------
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(
    call: Call, x: Tensor
) -> tuple[int, list[int], list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in call.attr("kernel_shape")]
    nd = len(kernel)
    if nd not in _MAX or x.dim() != nd + 2:
        raise call.unsupported(f"{nd} spatial dims")
    strides, dil = spatial(call, "strides", nd, 1), spatial(call, "dilations", nd, 1)
    begin, end = pads(call, x.shape[2:], kernel, strides, dil)
    return nd, kernel, strides, dil, begin, end


def _max_pool(call: Call, a: Args) -> Out:
    if call.n_outputs > 1:
        raise call.unsupported("the Indices output")
    x = arg(a)
    nd, kernel, strides, dil, begin, end = _pool_geometry(call, x)
    ceil = bool(call.attr("ceil_mode", 0))
    padding = begin
    if begin != end or any(2 * p > k for p, k in zip(begin, kernel, strict=True)):
        x, padding = F.pad(x, torch_pad(begin, end), value=-math.inf), [0] * nd
    return _MAX[nd](x, kernel, strides, padding, dil, ceil_mode=ceil)


def _avg_pool(call: Call, a: Args) -> Out:
    x = arg(a)
    nd, kernel, strides, dil, begin, end = _pool_geometry(call, x)
    if any(d != 1 for d in dil):
        raise call.unsupported("dilations")
    ceil = bool(call.attr("ceil_mode", 0))
    include = bool(call.attr("count_include_pad", 0))
    symmetric = begin == end and all(2 * p <= k for p, k in zip(begin, kernel, strict=True))
    if symmetric:
        return _AVG[nd](x, kernel, strides, begin, ceil, include)
    pad = torch_pad(begin, end)
    summed = _AVG[nd](F.pad(x, pad), kernel, strides, 0, ceil, True)
    if include:
        return summed
    ones = F.pad(torch.ones_like(x[:1, :1]), pad)
    return summed / _AVG[nd](ones, kernel, strides, 0, ceil, True)


def _global_pool(reduce: str) -> OpFn:
    def op(call: Call, a: Args) -> Out:
        x = arg(a)
        dims = tuple(range(2, x.dim()))
        return x.mean(dims, keepdim=True) if reduce == "mean" else x.amax(dims, keepdim=True)

    return op


# --- normalization --------------------------------------------------------------------------------
def _batch_norm(call: Call, a: Args) -> Out:
    if call.attr("training_mode", 0) or call.n_outputs > 1:
        raise call.unsupported("training mode (only the inference form is supported)")
    x, scale, bias, mean, var = (arg(a, i) for i in range(5))
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(call.attr("epsilon", 1e-5)))


def batch_norm_training(call: Call, a: Args) -> Out:
    """BatchNormalization with batch statistics, updating the running ones in place (the
    module's buffers): how BN is fine-tuned. Not in ``OPS``: ``GraphModule`` opts in."""
    x, scale, bias, mean, var = (arg(a, i) for i in range(5))
    momentum = 1.0 - float(call.attr("momentum", 0.9))  # ONNX keeps this much of the old
    eps = float(call.attr("epsilon", 1e-5))
    return F.batch_norm(x, mean, var, scale, bias, True, momentum, eps)


def _instance_norm(call: Call, a: Args) -> Out:
    """y = scale * (x - mean) / sqrt(var + eps) + bias over each sample's and channel's spatial
    axes (written out: torch's instance_norm refuses a single spatial element, ONNX gives bias)."""
    x, scale, bias = arg(a, 0), arg(a, 1), arg(a, 2)
    axes = tuple(range(2, x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    var = x.var(dim=axes, unbiased=False, keepdim=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    eps = float(call.attr("epsilon", 1e-5))
    return (x - mean) / torch.sqrt(var + eps) * scale.reshape(shape) + bias.reshape(shape)


def _layer_norm(call: Call, a: Args) -> Out:
    x, scale, bias = arg(a, 0), arg(a, 1), opt(a, 2)
    eps = float(call.attr("epsilon", 1e-5))
    axis = int(call.attr("axis", -1)) % x.dim()
    shape = tuple(x.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        y = F.layer_norm(x, shape, scale, bias, eps)
    else:  # scale / bias broadcast to the normalized shape
        y = F.layer_norm(x, shape, None, None, eps) * scale
        y = y if bias is None else y + bias
    if call.n_outputs == 1:
        return y
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    inv = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    return (y, mean, inv)[: call.n_outputs]


def _group_norm(call: Call, a: Args) -> Out:
    x, scale, bias = arg(a, 0), arg(a, 1), arg(a, 2)
    groups, channels = int(call.attr("num_groups")), x.shape[1]
    y = F.group_norm(x, groups, None, None, float(call.attr("epsilon", 1e-5)))
    if scale.numel() != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    shape = [1, channels] + [1] * (x.dim() - 2)
    return y * scale.reshape(shape) + bias.reshape(shape)


# --- reductions -----------------------------------------------------------------------------------
def _reduce(kind: str) -> OpFn:
    def op(call: Call, a: Args) -> Out:
        x = arg(a)
        axes = from_input_or_attr(call, a, 1, "axes")
        keep = bool(call.attr("keepdims", 1))
        if not axes:
            if call.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        if x.dim() == 0:
            return x
        dims = tuple(norm_axes(axes, x.dim()))
        return _REDUCERS[kind](x, dims, keep).to(x.dtype)

    return op


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


_REDUCERS: Mapping[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = MappingProxyType(
    {
        "mean": lambda x, d, k: x.mean(d, keepdim=k),
        "sum": lambda x, d, k: x.sum(d, keepdim=k),
        "max": lambda x, d, k: x.amax(d, keepdim=k),
        "min": lambda x, d, k: x.amin(d, keepdim=k),
        "prod": _prod,
        "l1": lambda x, d, k: x.abs().sum(d, keepdim=k),
        "l2": lambda x, d, k: x.square().sum(d, keepdim=k).sqrt(),
        "sumsquare": lambda x, d, k: x.square().sum(d, keepdim=k),
        "logsum": lambda x, d, k: x.sum(d, keepdim=k).log(),
        "logsumexp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
    }
)


def _arg(largest: bool) -> OpFn:
    def op(call: Call, a: Args) -> Out:
        x = arg(a)
        axis = int(call.attr("axis", 0)) % x.dim()
        keep = bool(call.attr("keepdims", 1))
        if call.attr("select_last_index", 0):
            flipped = x.flip(axis)
            idx = flipped.argmax(axis, keep) if largest else flipped.argmin(axis, keep)
            return x.shape[axis] - 1 - idx
        return x.argmax(axis, keep) if largest else x.argmin(axis, keep)

    return op


def _cumsum(call: Call, a: Args) -> Out:
    x = arg(a)
    axis = int(arg(a, 1).reshape(-1)[0]) % x.dim()
    y = x.flip(axis) if call.attr("reverse", 0) else x
    out = y.cumsum(axis).to(x.dtype)
    if call.attr("exclusive", 0):
        out = out - y
    return out.flip(axis) if call.attr("reverse", 0) else out


OPS: Mapping[tuple[str, str], OpFn] = MappingProxyType(
    {
        # elementwise arithmetic, comparison, logic
        ("", "Add"): _binary(torch.add),
        ("", "Sub"): _binary(torch.sub),
        ("", "Mul"): _binary(torch.mul),
        ("", "Div"): _div,
        ("", "Mod"): _mod,
        ("", "Pow"): _pow,
        ("", "Sum"): _variadic(torch.add),
        ("", "Mean"): _variadic(torch.add, mean=True),
        ("", "Max"): _variadic(torch.maximum),
        ("", "Min"): _variadic(torch.minimum),
        ("", "Equal"): _binary(torch.eq),
        ("", "Less"): _binary(torch.lt),
        ("", "LessOrEqual"): _binary(torch.le),
        ("", "Greater"): _binary(torch.gt),
        ("", "GreaterOrEqual"): _binary(torch.ge),
        ("", "And"): _binary(torch.logical_and),
        ("", "Or"): _binary(torch.logical_or),
        ("", "Xor"): _binary(torch.logical_xor),
        ("", "Not"): _unary(torch.logical_not),
        ("", "Where"): _where,
        # unary math and activations
        ("", "Neg"): _unary(torch.neg),
        ("", "Abs"): _unary(torch.abs),
        ("", "Sqrt"): _unary(torch.sqrt),
        ("", "Reciprocal"): _unary(torch.reciprocal),
        ("", "Exp"): _unary(torch.exp),
        ("", "Log"): _unary(torch.log),
        ("", "Erf"): _unary(torch.erf),
        ("", "Sin"): _unary(torch.sin),
        ("", "Cos"): _unary(torch.cos),
        ("", "Floor"): _unary(torch.floor),
        ("", "Ceil"): _unary(torch.ceil),
        ("", "Round"): _unary(torch.round),
        ("", "Sign"): _unary(torch.sign),
        ("", "Relu"): _unary(F.relu),
        ("", "Sigmoid"): _unary(torch.sigmoid),
        ("", "Tanh"): _unary(torch.tanh),
        ("", "Softplus"): _unary(F.softplus),
        ("", "Softsign"): _unary(F.softsign),
        ("", "LeakyRelu"): _leaky_relu,
        ("", "Elu"): _elu,
        ("", "Selu"): _selu,
        ("", "Celu"): _celu,
        ("", "HardSigmoid"): _hard_sigmoid,
        ("", "HardSwish"): _hard_swish,
        ("", "Gelu"): _gelu,
        ("", "ThresholdedRelu"): _thresholded_relu,
        ("", "PRelu"): _prelu,
        ("", "Mish"): _mish,
        ("", "Clip"): _clip,
        ("", "Softmax"): _softmax_like(torch.softmax),
        ("", "LogSoftmax"): _softmax_like(torch.log_softmax),
        ("", "Cast"): _cast,
        ("", "CastLike"): _cast_like,
        ("", "Identity"): _identity,
        ("", "Dropout"): _dropout,
        # linear algebra
        ("", "MatMul"): _matmul,
        ("", "Gemm"): _gemm,
        ("", "Einsum"): _einsum,
        ("", "LSTM"): lstm,
        ("", "Conv"): _conv,
        ("", "ConvTranspose"): _conv_transpose,
        # pooling and normalization
        ("", "MaxPool"): _max_pool,
        ("", "AveragePool"): _avg_pool,
        ("", "GlobalAveragePool"): _global_pool("mean"),
        ("", "GlobalMaxPool"): _global_pool("max"),
        ("", "BatchNormalization"): _batch_norm,
        ("", "InstanceNormalization"): _instance_norm,
        ("", "LayerNormalization"): _layer_norm,
        ("", "GroupNormalization"): _group_norm,
        # reductions
        ("", "ReduceMean"): _reduce("mean"),
        ("", "ReduceSum"): _reduce("sum"),
        ("", "ReduceMax"): _reduce("max"),
        ("", "ReduceMin"): _reduce("min"),
        ("", "ReduceProd"): _reduce("prod"),
        ("", "ReduceL1"): _reduce("l1"),
        ("", "ReduceL2"): _reduce("l2"),
        ("", "ReduceSumSquare"): _reduce("sumsquare"),
        ("", "ReduceLogSum"): _reduce("logsum"),
        ("", "ReduceLogSumExp"): _reduce("logsumexp"),
        ("", "ArgMax"): _arg(largest=True),
        ("", "ArgMin"): _arg(largest=False),
        ("", "CumSum"): _cumsum,
        # shapes and data movement
        ("", "Shape"): mv.shape,
        ("", "Size"): mv.size,
        ("", "Reshape"): mv.reshape,
        ("", "Flatten"): mv.flatten,
        ("", "Transpose"): mv.transpose,
        ("", "Squeeze"): mv.squeeze,
        ("", "Unsqueeze"): mv.unsqueeze,
        ("", "Concat"): mv.concat,
        ("", "Split"): mv.split,
        ("", "Slice"): mv.slice_op,
        ("", "Gather"): mv.gather,
        ("", "GatherElements"): mv.gather_elements,
        ("", "Expand"): mv.expand,
        ("", "Tile"): mv.tile,
        ("", "ConstantOfShape"): mv.constant_of_shape,
        ("", "Constant"): mv.constant,
        ("", "Range"): mv.range_op,
        ("", "Trilu"): mv.trilu,
        ("", "DepthToSpace"): mv.depth_to_space,
        ("", "SpaceToDepth"): mv.space_to_depth,
        ("", "Pad"): mv.pad,
        ("", "Resize"): mv.resize,
        ("", "Upsample"): mv.resize,
    }
)
