"""The torch.fx lowering table: torch module types, functions and methods -> ONNX ops.

One table (:func:`table`) with three key spaces: module type -> lowering, function -> lowering,
method name -> lowering. Each family is one small function here or in :mod:`fx_shapes`; the
table is built explicitly (no registration by import side effects). A call without a lowering
is kept opaque (:mod:`fx_opaque`: an exported local function whose channels the analysis
freezes) or, where that is impossible, fails closed with
:class:`~irprune.errors.UnsupportedModelError` naming it.

Module lowerings take ``(ctx, module, args, kwargs)``; function and method lowerings take
``(ctx, args, kwargs)`` (for methods ``args[0]`` is the tensor). ``args`` hold IR values where fx
had tensors, :class:`SymInt` / :class:`SymShape` where it had run-time shape arithmetic.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from irprune.frontends import fx_opaque
from irprune.frontends import fx_shapes as shp
from irprune.frontends.fx import (
    FunctionLowering,
    Lowering,
    ModuleLowering,
    SymInt,
    SymShape,
    torch_dtype,
)
from irprune.frontends.fx_shapes import arg_at, as_tensor, norm_axes, norm_axis, per_dim
from irprune.ir import Value

_INTEGER = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}


@dataclass(frozen=True)
class Table:
    modules: dict[type, ModuleLowering]
    functions: dict[Any, FunctionLowering]
    methods: dict[str, FunctionLowering]

    def lower(self, ctx: Lowering, gm: Any, node: Any, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            lowering = self.modules.get(type(module))
            if lowering is None:
                example = ctx.examples[node.name]
                return fx_opaque.opaque_module(ctx, module, args, kwargs, example)
            return lowering(ctx, module, args, kwargs)
        if _all_constant((args, kwargs)):
            return _evaluate(ctx, node, args, kwargs)
        if node.op == "call_function":
            fn = self.functions.get(node.target)
        elif node.op == "call_method":
            fn = self.methods.get(node.target)
        else:
            raise ctx.fail(f"unexpected fx node kind {node.op!r}")
        if fn is None:
            what = f"function {_qualname(node.target)}" if node.op == "call_function" else (
                f"tensor method .{node.target}()"
            )  # fmt: skip
            return fx_opaque.opaque_call(ctx, node, what, args, kwargs, ctx.examples[node.name])
        return fn(ctx, args, kwargs)

    def is_opaque(self, gm: Any, node: Any) -> bool:
        """A call without a lowering (kept opaque if it can be, or refused)."""
        if node.op == "call_module":
            return type(gm.get_submodule(node.target)) not in self.modules
        if node.op == "call_function":
            return node.target not in self.functions
        return node.op == "call_method" and node.target not in self.methods


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}" if module else name


# --------------------------------------------------------------------------- constants


def _all_constant(tree: Any) -> bool:
    """No run-time value anywhere in ``tree`` (constants and python values only)."""
    if isinstance(tree, Value):
        return tree.const is not None
    if isinstance(tree, SymInt | SymShape):
        return False
    if isinstance(tree, tuple | list):
        return all(_all_constant(t) for t in tree)
    if isinstance(tree, dict):
        return all(_all_constant(t) for t in tree.values())
    return True


def _evaluate(ctx: Lowering, node: Any, args: tuple, kwargs: dict) -> Any:
    """Run a call on constants once in torch (``self.weight[:, None, None]``)."""
    import torch
    import torch.fx

    def to_torch(a: Any) -> Any:
        return torch.from_numpy(np.array(a.const)) if isinstance(a, Value) else a

    targs = torch.fx.node.map_aggregate(args, to_torch)
    tkwargs = torch.fx.node.map_aggregate(kwargs, to_torch)
    with torch.no_grad():
        if node.op == "call_method":
            out = getattr(targs[0], node.target)(*targs[1:], **tkwargs)
        else:
            out = node.target(*targs, **tkwargs)

    def to_ir(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return ctx.const(o.detach().numpy().copy(), node.name)
        if isinstance(o, torch.Size):
            return tuple(int(d) for d in o)
        return o

    return torch.fx.node.map_aggregate(out, to_ir)


# --------------------------------------------------------------------------- activations


def _unary(op_type: str, **attrs: Any) -> FunctionLowering:
    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Any:
        return ctx.op(op_type, as_tensor(ctx, arg_at(args, kwargs, 0, "input")), **attrs)

    return lower


def _module(fn: FunctionLowering) -> ModuleLowering:
    """A module lowering that only needs the call's arguments (ReLU, Sigmoid, Flatten...)."""
    return lambda ctx, m, args, kwargs: fn(ctx, args, kwargs)


def _identity(ctx: Lowering, args: tuple, kwargs: dict) -> Any:
    return args[0]


def _clip(ctx: Lowering, x: Value, low: float, high: float) -> Value:
    return ctx.op("Clip", x, ctx.scalar(low, x), ctx.scalar(high, x))


def _relu6(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    return _clip(ctx, as_tensor(ctx, args[0]), 0.0, 6.0)


def _hardtanh_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    low, high = arg_at(args, kwargs, 1, "min_val", -1.0), arg_at(args, kwargs, 2, "max_val", 1.0)
    return _clip(ctx, as_tensor(ctx, args[0]), low, high)


def _hardtanh(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    return _clip(ctx, as_tensor(ctx, args[0]), m.min_val, m.max_val)


def _silu(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    return ctx.op("Mul", x, ctx.op("Sigmoid", x))


def _gelu(ctx: Lowering, x: Value, approximate: str) -> Value:
    """The exact (erf) GELU as the ONNX exporter writes it at opset 17."""
    if approximate != "none":
        raise ctx.fail(f"GELU(approximate={approximate!r}) has no lowering (only 'none')")
    erf = ctx.op("Erf", ctx.op("Div", x, ctx.scalar(math.sqrt(2.0), x)))
    return ctx.op(
        "Mul", ctx.op("Mul", x, ctx.op("Add", erf, ctx.scalar(1.0, x))), ctx.scalar(0.5, x)
    )


def _gelu_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    return _gelu(ctx, as_tensor(ctx, args[0]), arg_at(args, kwargs, 1, "approximate", "none"))


def _leaky_relu(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    return ctx.op("LeakyRelu", as_tensor(ctx, args[0]), alpha=float(m.negative_slope))


def _leaky_relu_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    slope = float(arg_at(args, kwargs, 1, "negative_slope", 0.01))
    return ctx.op("LeakyRelu", as_tensor(ctx, args[0]), alpha=slope)


def _clamp(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    low, high = arg_at(args, kwargs, 1, "min", None), arg_at(args, kwargs, 2, "max", None)
    bounds = [b if b is None or isinstance(b, Value) else ctx.scalar(b, x) for b in (low, high)]
    return ctx.op("Clip", x, *bounds)


def _matmul(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    a, b = (as_tensor(ctx, arg_at(args, kwargs, i, n)) for i, n in enumerate(("input", "other")))
    return ctx.op("MatMul", a, b)


def _softmax_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    dim = arg_at(args, kwargs, 1, "dim", None)
    if dim is None:
        raise ctx.fail("softmax without an explicit dim")
    return ctx.op("Softmax", x, axis=norm_axis(ctx, x, dim))


def _softmax(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    return _softmax_fn(ctx, (args[0], m.dim), {})


def _pow(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x, exponent = as_tensor(ctx, args[0]), arg_at(args, kwargs, 1, "exponent")
    if not isinstance(exponent, Value):
        exponent = ctx.scalar(float(exponent), x)
    return ctx.op("Pow", x, exponent)


def _cast(ctx: Lowering, x: Value, target: int) -> Value:
    return x if ctx.dtype(x) == target else ctx.op("Cast", x, to=target)


def _to(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``.to(dtype)`` is a Cast; device moves and copies are the identity."""
    import torch

    x = as_tensor(ctx, args[0])
    dtypes = [a for a in (*args[1:], kwargs.get("dtype")) if isinstance(a, torch.dtype)]
    if any(isinstance(a, Value) for a in args[1:]):
        raise ctx.fail(".to(tensor) has no lowering (use .type_as)")
    return _cast(ctx, x, torch_dtype(dtypes[0])) if dtypes else x


def _float(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    return _cast(ctx, as_tensor(ctx, args[0]), onnx.TensorProto.FLOAT)


def _type_as(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    return _cast(ctx, as_tensor(ctx, args[0]), ctx.dtype(as_tensor(ctx, args[1])))


# --------------------------------------------------------------------------- arithmetic


def _binary(op_type: str) -> FunctionLowering:
    """Tensor arithmetic (Add/Sub/Mul/Div with broadcasting), or run-time int arithmetic.
    Mixed element types (torch promotes, ONNX does not), integer true division and tensor floor
    division are refused."""

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Any:
        a, b = arg_at(args, kwargs, 0, "input"), arg_at(args, kwargs, 1, "other")
        if kwargs.get("alpha", 1) != 1 or kwargs.get("rounding_mode") is not None:
            raise ctx.fail(f"{op_type} with alpha/rounding_mode has no lowering")
        if isinstance(a, SymInt) or isinstance(b, SymInt):
            return _int_binary(ctx, op_type, a, b)
        if not isinstance(a, Value) and not isinstance(b, Value):
            raise ctx.fail(f"{op_type} of {type(a).__name__} and {type(b).__name__}")
        if not isinstance(a, Value):
            a = ctx.scalar(a, b)
        if not isinstance(b, Value):
            b = ctx.scalar(b, a)
        if ctx.dtype(a) != ctx.dtype(b):
            raise ctx.fail(f"{op_type} of tensors with different element types")
        if op_type == "FloorDiv" or (op_type == "Div" and ctx.dtype(a) in _INTEGER):
            raise ctx.fail(f"{op_type} of integer tensors has no lowering")
        return ctx.op(op_type, a, b)

    return lower


def _int_binary(ctx: Lowering, op_type: str, a: Any, b: Any) -> SymInt:
    if op_type == "Div":
        raise ctx.fail("true division of a run-time shape value (use //)")

    def as_value(v: Any) -> Value:
        if isinstance(v, SymInt):
            return v.value
        if isinstance(v, int):
            return ctx.ints(v, f"{ctx.where}_int")
        raise ctx.fail(f"integer arithmetic on {type(v).__name__}")

    kind = "Div" if op_type == "FloorDiv" else op_type
    return SymInt(ctx.op(kind, as_value(a), as_value(b)))


# --------------------------------------------------------------------------- conv and linear


def _param(ctx: Lowering, module: Any, attr: str) -> Value | None:
    tensor = getattr(module, attr, None)
    if tensor is None:
        return None
    return ctx.param(f"{ctx.where}.{attr}", tensor.detach().cpu().numpy().copy())


def _conv_pads(ctx: Lowering, m: Any) -> list[int]:
    n = len(m.kernel_size)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return [0] * 2 * n
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    return list(m.padding) * 2


def _conv(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    pads = _conv_pads(ctx, m)
    if m.padding_mode != "zeros":
        modes = {"reflect": "reflect", "replicate": "edge"}
        if m.padding_mode not in modes:
            raise ctx.fail(f"Conv padding_mode={m.padding_mode!r} has no lowering")
        x = shp.pad_op(
            ctx, x, list(m._reversed_padding_repeated_twice), modes[m.padding_mode], None
        )
        pads = [0] * len(pads)
    return ctx.op(
        "Conv", x, _param(ctx, m, "weight"), _param(ctx, m, "bias"),
        dilations=list(m.dilation), group=int(m.groups), kernel_shape=list(m.kernel_size),
        pads=pads, strides=list(m.stride),
    )  # fmt: skip


def _conv_transpose(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    if len(args) > 1 or kwargs.get("output_size") is not None:
        raise ctx.fail("ConvTranspose called with output_size has no lowering")
    if m.padding_mode != "zeros":
        raise ctx.fail(f"ConvTranspose padding_mode={m.padding_mode!r} has no lowering")
    return ctx.op(
        "ConvTranspose", as_tensor(ctx, args[0]), _param(ctx, m, "weight"), _param(ctx, m, "bias"),
        dilations=list(m.dilation), group=int(m.groups), kernel_shape=list(m.kernel_size),
        output_padding=list(m.output_padding), pads=list(m.padding) * 2, strides=list(m.stride),
    )  # fmt: skip


def _linear_op(ctx: Lowering, x: Value, weight: Value, bias: Value | None) -> Value:
    """Gemm for 2-D inputs, MatMul (by the transposed weight) + Add otherwise, as exported."""
    if ctx.rank(x) == 2:
        return ctx.op("Gemm", x, weight, bias, alpha=1.0, beta=1.0, transB=1)
    if weight.const is None:
        raise ctx.fail("linear with a run-time weight on a >2-D input")
    transposed = ctx.const(np.ascontiguousarray(weight.const.T), f"{weight.name}_T")
    y = ctx.op("MatMul", x, transposed)
    return y if bias is None else ctx.op("Add", bias, y)


def _linear(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    weight = _param(ctx, m, "weight")
    if weight is None:
        raise ctx.fail("Linear without a weight")
    return _linear_op(ctx, as_tensor(ctx, args[0]), weight, _param(ctx, m, "bias"))


def _linear_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    return _linear_op(
        ctx, x, arg_at(args, kwargs, 1, "weight"), arg_at(args, kwargs, 2, "bias", None)
    )


# --------------------------------------------------------------------------- normalization


def _affine(ctx: Lowering, m: Any, attr: str, fill: float, shape: tuple[int, ...]) -> Value:
    value = _param(ctx, m, attr)
    return value if value is not None else ctx.const(np.full(shape, fill, np.float32), attr)


def _batch_norm(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    if m.running_mean is None or m.running_var is None:
        raise ctx.fail(f"{type(m).__name__}(track_running_stats=False) has no inference form")
    n = (m.num_features,)
    momentum = None if m.momentum is None else 1.0 - float(m.momentum)
    return ctx.op(
        "BatchNormalization", as_tensor(ctx, args[0]), _affine(ctx, m, "weight", 1.0, n),
        _affine(ctx, m, "bias", 0.0, n), _param(ctx, m, "running_mean"),
        _param(ctx, m, "running_var"), epsilon=float(m.eps), momentum=momentum,
    )  # fmt: skip


def _layer_norm(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    shape = tuple(m.normalized_shape)
    return ctx.op(
        "LayerNormalization", as_tensor(ctx, args[0]), _affine(ctx, m, "weight", 1.0, shape),
        _affine(ctx, m, "bias", 0.0, shape), axis=-len(shape), epsilon=float(m.eps),
    )  # fmt: skip


def _instance_norm(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    if m.track_running_stats:
        raise ctx.fail(f"{type(m).__name__}(track_running_stats=True) has no lowering")
    x = as_tensor(ctx, args[0])
    n = (ctx.shape(x)[1],)
    return ctx.op(
        "InstanceNormalization", x, _affine(ctx, m, "weight", 1.0, n),
        _affine(ctx, m, "bias", 0.0, n), epsilon=float(m.eps),
    )  # fmt: skip


def _group_norm(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    weight = m.weight.detach().numpy() if m.affine else None
    bias = m.bias.detach().numpy() if m.affine else None
    return group_norm_op(ctx, as_tensor(ctx, args[0]), int(m.num_groups), weight, bias, m.eps)


def group_norm_op(
    ctx: Lowering, x: Value, groups: int, weight: Any, bias: Any, eps: float
) -> Value:
    """As the exporter writes it: Reshape to (N, G, -1), InstanceNormalization, Reshape back,
    per-channel Mul and Add (``weight`` / ``bias``: numpy arrays or None)."""
    grouped = ctx.op("Reshape", x, ctx.ints([0, groups, -1]))
    ones, zeros = np.ones(groups, np.float32), np.zeros(groups, np.float32)
    normed = ctx.op(
        "InstanceNormalization", grouped, ctx.const(ones), ctx.const(zeros), epsilon=float(eps)
    )
    y = ctx.op("Reshape", normed, ctx.op("Shape", x))
    if weight is None or bias is None:
        return y
    trailing = (ctx.shape(x)[1],) + (1,) * (ctx.rank(x) - 2)
    scale = ctx.const(np.asarray(weight).reshape(trailing), f"{ctx.where}.weight")
    shift = ctx.const(np.asarray(bias).reshape(trailing), f"{ctx.where}.bias")
    return ctx.op("Add", ctx.op("Mul", y, scale), shift)


# --------------------------------------------------------------------------- pooling


def _max_pool_op(
    ctx: Lowering, x: Value, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil: bool
) -> Value:
    n = ctx.rank(x) - 2
    return ctx.op(
        "MaxPool", x, ceil_mode=int(bool(ceil)), dilations=per_dim(dilation, n),
        kernel_shape=per_dim(kernel, n), pads=per_dim(padding, n) * 2,
        strides=per_dim(stride if stride else kernel, n),
    )  # fmt: skip


def _max_pool(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    if m.return_indices:
        raise ctx.fail("MaxPool(return_indices=True) has no lowering")
    x = as_tensor(ctx, args[0])
    return _max_pool_op(ctx, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def _max_pool_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    if arg_at(args, kwargs, 6, "return_indices", False):
        raise ctx.fail("max_pool(return_indices=True) has no lowering")
    x = as_tensor(ctx, args[0])
    kernel, stride = arg_at(args, kwargs, 1, "kernel_size"), arg_at(args, kwargs, 2, "stride", None)
    padding, dilation = (
        arg_at(args, kwargs, 3, "padding", 0),
        arg_at(args, kwargs, 4, "dilation", 1),
    )
    ceil = arg_at(args, kwargs, 5, "ceil_mode", False)
    return _max_pool_op(ctx, x, kernel, stride, padding, dilation, ceil)


def _avg_pool_op(
    ctx: Lowering, x: Value, kernel: Any, stride: Any, padding: Any, ceil: bool, include: bool
) -> Value:
    n = ctx.rank(x) - 2
    return ctx.op(
        "AveragePool", x, ceil_mode=int(bool(ceil)), count_include_pad=int(bool(include)),
        kernel_shape=per_dim(kernel, n), pads=per_dim(padding, n) * 2,
        strides=per_dim(stride if stride else kernel, n),
    )  # fmt: skip


def _avg_pool(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    if getattr(m, "divisor_override", None):
        raise ctx.fail("AvgPool(divisor_override=...) has no lowering")
    x = as_tensor(ctx, args[0])
    return _avg_pool_op(
        ctx, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad
    )


def _avg_pool_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    if arg_at(args, kwargs, 6, "divisor_override", None):
        raise ctx.fail("avg_pool(divisor_override=...) has no lowering")
    x = as_tensor(ctx, args[0])
    kernel, stride = arg_at(args, kwargs, 1, "kernel_size"), arg_at(args, kwargs, 2, "stride", None)
    padding, ceil = (
        arg_at(args, kwargs, 3, "padding", 0),
        arg_at(args, kwargs, 4, "ceil_mode", False),
    )
    include = arg_at(args, kwargs, 5, "count_include_pad", True)
    return _avg_pool_op(ctx, x, kernel, stride, padding, ceil, include)


def _adaptive_op(ctx: Lowering, x: Value, output_size: Any, kind: str) -> Value:
    """GlobalXPool for output 1, else XPool with kernel = stride = input / output."""
    spatial = ctx.shape(x)[2:]
    wanted = per_dim(output_size, len(spatial))
    sizes = [s if o is None else int(o) for s, o in zip(spatial, wanted, strict=True)]
    if all(o == 1 for o in sizes):
        return ctx.op(f"Global{kind}Pool", x)
    if any(s % o for s, o in zip(spatial, sizes, strict=True)):
        raise ctx.fail(f"adaptive pooling {tuple(spatial)} -> {tuple(sizes)} (not a divisor)")
    kernel = [s // o for s, o in zip(spatial, sizes, strict=True)]
    if kind == "Average":
        return ctx.op("AveragePool", x, kernel_shape=kernel, strides=kernel)
    return ctx.op("MaxPool", x, kernel_shape=kernel, strides=kernel)


def _adaptive_avg(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    return _adaptive_op(ctx, as_tensor(ctx, args[0]), m.output_size, "Average")


def _adaptive_max(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    if m.return_indices:
        raise ctx.fail("AdaptiveMaxPool(return_indices=True) has no lowering")
    return _adaptive_op(ctx, as_tensor(ctx, args[0]), m.output_size, "Max")


def _adaptive_avg_fn(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    size = arg_at(args, kwargs, 1, "output_size")
    return _adaptive_op(ctx, as_tensor(ctx, args[0]), size, "Average")


def _reduce(op_type: str) -> FunctionLowering:
    """mean / sum over dims (all dims when none are given); ReduceMean takes axes as an
    attribute at opset 17, ReduceSum as an input."""

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        x = as_tensor(ctx, args[0])
        dims = arg_at(args, kwargs, 1, "dim", None)
        keep = int(bool(arg_at(args, kwargs, 2, "keepdim", False)))
        if kwargs.get("dtype") is not None:
            raise ctx.fail(f"{op_type}(dtype=...) has no lowering")
        axes = None if dims is None else norm_axes(ctx, x, dims)
        if op_type == "ReduceMean":
            return ctx.op(op_type, x, axes=axes, keepdims=keep)
        return ctx.op(op_type, x, None if axes is None else ctx.ints(axes), keepdims=keep)

    return lower


# --------------------------------------------------------------------------- the table


@functools.cache
def table() -> Table:
    """Built on first use (torch imported here, not at module import)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from irprune.frontends import fx_functional  # its rules reuse this module's

    relu, sigmoid, tanh = _unary("Relu"), _unary("Sigmoid"), _unary("Tanh")
    hardswish, hardsigmoid = _unary("HardSwish"), _unary("HardSigmoid", alpha=1 / 6, beta=0.5)
    add, sub, mul, div = _binary("Add"), _binary("Sub"), _binary("Mul"), _binary("Div")
    mean, total = _reduce("ReduceMean"), _reduce("ReduceSum")
    reflect, constant = shp.pad_module("reflect"), shp.pad_module("constant")
    modules: dict[type, ModuleLowering] = {
        nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
        nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose,
        nn.ConvTranspose3d: _conv_transpose,
        nn.Linear: _linear,
        nn.BatchNorm1d: _batch_norm, nn.BatchNorm2d: _batch_norm, nn.BatchNorm3d: _batch_norm,
        nn.LayerNorm: _layer_norm, nn.GroupNorm: _group_norm,
        nn.InstanceNorm1d: _instance_norm, nn.InstanceNorm2d: _instance_norm,
        nn.InstanceNorm3d: _instance_norm,
        nn.ReLU: _module(relu), nn.ReLU6: _module(_relu6), nn.Hardtanh: _hardtanh,
        nn.Sigmoid: _module(sigmoid), nn.Tanh: _module(tanh), nn.SiLU: _module(_silu),
        nn.Hardswish: _module(hardswish), nn.Hardsigmoid: _module(hardsigmoid),
        nn.GELU: lambda ctx, m, a, k: _gelu(ctx, as_tensor(ctx, a[0]), m.approximate),
        nn.LeakyReLU: _leaky_relu, nn.Softmax: _softmax,
        nn.Identity: _module(_identity), nn.Dropout: _module(_identity),
        nn.Dropout1d: _module(_identity), nn.Dropout2d: _module(_identity),
        nn.MaxPool1d: _max_pool, nn.MaxPool2d: _max_pool, nn.MaxPool3d: _max_pool,
        nn.AvgPool1d: _avg_pool, nn.AvgPool2d: _avg_pool, nn.AvgPool3d: _avg_pool,
        nn.AdaptiveAvgPool1d: _adaptive_avg, nn.AdaptiveAvgPool2d: _adaptive_avg,
        nn.AdaptiveAvgPool3d: _adaptive_avg, nn.AdaptiveMaxPool2d: _adaptive_max,
        nn.Flatten: shp.flatten_module, nn.Upsample: shp.upsample,
        nn.ReflectionPad1d: reflect, nn.ReflectionPad2d: reflect,
        nn.ReplicationPad2d: shp.pad_module("edge"), nn.ZeroPad2d: constant,
        nn.ConstantPad1d: constant, nn.ConstantPad2d: constant,
    }  # fmt: skip
    functions: dict[Any, FunctionLowering] = {
        operator.add: add, operator.iadd: add, torch.add: add,
        operator.sub: sub, operator.isub: sub, torch.sub: sub,
        operator.mul: mul, operator.imul: mul, torch.mul: mul,
        operator.truediv: div, torch.div: div, operator.floordiv: _binary("FloorDiv"),
        operator.getitem: shp.getitem, getattr: shp.get_attribute,
        torch.relu: relu, F.relu: relu, torch.sigmoid: sigmoid, F.sigmoid: sigmoid,
        torch.tanh: tanh, F.tanh: tanh, F.relu6: _relu6, F.hardtanh: _hardtanh_fn,
        F.silu: _silu, F.gelu: _gelu_fn, F.hardswish: hardswish, F.hardsigmoid: hardsigmoid,
        torch.softmax: _softmax_fn, F.softmax: _softmax_fn,
        torch.sqrt: _unary("Sqrt"), torch.exp: _unary("Exp"), torch.pow: _pow,
        torch.abs: _unary("Abs"), torch.neg: _unary("Neg"), operator.neg: _unary("Neg"),
        torch.clamp: _clamp, torch.clip: _clamp, F.leaky_relu: _leaky_relu_fn,
        torch.matmul: _matmul, operator.matmul: _matmul, torch.bmm: _matmul,
        F.dropout: _identity, F.linear: _linear_fn,
        torch.flatten: shp.flatten_fn, torch.reshape: shp.view,
        torch.cat: shp.cat, torch.concat: shp.cat, torch.stack: shp.stack,
        torch.clone: _identity,
        torch.chunk: shp.chunk, torch.split: shp.split, torch.transpose: shp.transpose,
        torch.permute: shp.permute, torch.unsqueeze: shp.unsqueeze, torch.squeeze: shp.squeeze,
        torch.mean: mean, torch.sum: total,
        F.max_pool1d: _max_pool_fn, F.max_pool2d: _max_pool_fn, F.avg_pool2d: _avg_pool_fn,
        F.adaptive_avg_pool1d: _adaptive_avg_fn, F.adaptive_avg_pool2d: _adaptive_avg_fn,
        F.interpolate: shp.interpolate, F.pad: shp.pad_fn,
    }  # fmt: skip
    methods: dict[str, FunctionLowering] = {
        "add": add, "add_": add, "sub": sub, "mul": mul, "mul_": mul, "div": div,
        "relu": relu, "relu_": relu, "sigmoid": sigmoid, "tanh": tanh, "sqrt": _unary("Sqrt"),
        "pow": _pow, "softmax": _softmax_fn, "exp": _unary("Exp"), "abs": _unary("Abs"),
        "neg": _unary("Neg"), "clamp": _clamp, "clip": _clamp, "matmul": _matmul,
        "view": shp.view, "reshape": shp.view, "flatten": shp.flatten_fn,
        "size": shp.size_of, "dim": shp.ndim,
        "chunk": shp.chunk, "split": shp.split, "transpose": shp.transpose, "permute": shp.permute,
        "unsqueeze": shp.unsqueeze, "squeeze": shp.squeeze, "mean": mean, "sum": total,
        "contiguous": _identity, "clone": _identity, "detach": _identity,
        "float": _float, "to": _to, "type_as": _type_as, "expand_as": shp.expand_as,
    }  # fmt: skip
    modules.update(fx_functional.modules())
    functions.update(fx_functional.functions())
    methods.update(fx_functional.methods())
    return Table(modules, functions, methods)
