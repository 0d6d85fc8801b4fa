"""The torch.fx table's functional forms: ``torch.nn.functional`` calls and the tensor methods
that libraries built on plain modules (timm's BatchNormAct2d, LayerNorm2d, SqueezeExcite,
create_act, Linear, ClassifierHead, ViT attention) call instead of torch.nn layers.

Each rule lowers one op family, with ONNX opset-17 semantics as the TorchScript exporter
writes it; where the ATen table (:mod:`export_ops`) lowers an op with the same argument
order, that lowering is reused:

- ``batch_norm(x, mean, var, w, b, training, momentum, eps)`` in inference form
  (running statistics) -> BatchNormalization; ``instance_norm`` -> InstanceNormalization;
  ``layer_norm`` -> LayerNormalization over the trailing dims; ``group_norm`` ->
  Reshape / InstanceNormalization / Reshape, then the per-channel affine.
- ``conv{1,2,3}d`` -> Conv (string or symmetric padding), ``conv_transpose{1,2,3}d`` ->
  ConvTranspose; ``scaled_dot_product_attention`` = Softmax(q k^T s + mask) v.
- activations: ``gelu`` (erf or tanh form), ``mish`` = x tanh(softplus(x)),
  ``softplus(x, beta)`` = Softplus(beta x) / beta, ``elu`` / ``celu`` / ``selu`` ->
  Elu / Celu / Selu, ``prelu(x, a)`` -> PRelu (a broadcast over the channel dim),
  ``glu(x, d)`` = a sigmoid(b) for the halves of d, ``log_softmax`` -> LogSoftmax,
  ``erf`` / ``rsqrt`` / ``log`` / ``square`` / ``sin`` / ``cos``.
- ``normalize(x, p=2, dim, eps)`` = x / max(||x||_2, eps); ``norm(x, 2, dim)`` -> ReduceL2;
  ``addcmul(x, a, b, value=v)`` = x + v a b; ``zeros/ones/full`` of run-time sizes ->
  ConstantOfShape, ``arange`` -> Range; ``adaptive_max_pool{1,2}d`` ->
  GlobalMaxPool (or MaxPool with kernel = stride = input / output); every dropout -> identity
  (eval), torchvision's ``stochastic_depth`` too; ``x ** y`` -> Pow; ``where(c, a, b)`` ->
  Where; ``a % b`` of run-time sizes -> Mod.
- tensor methods: ``unbind`` (Split + Squeeze), ``expand`` (Expand; -1 keeps a dim),
  ``reshape_as`` / ``view_as`` (Reshape to the other's Shape), ``clamp_min`` / ``clamp_max``
  (Clip with one bound), ``repeat`` / ``tile`` (Tile, run-time counts allowed), and the
  in-place spellings of lowered ops (``sigmoid_``, ``div_``...).

Module types timm builds with (``nn.Mish``, ``nn.PReLU``, ``nn.ELU``, ...) are here too.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np

from irprune.frontends import export_ops as ato
from irprune.frontends import fx_ops as fxo
from irprune.frontends import fx_shapes as shp
from irprune.frontends.fx import FunctionLowering, Lowering, ModuleLowering
from irprune.frontends.fx_shapes import arg_at, as_tensor, norm_axis
from irprune.ir import Value

# --------------------------------------------------------------------------- normalization


def _batch_norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``."""
    names = ("input", "running_mean", "running_var", "weight", "bias")
    x, mean, var, weight, bias = (
        arg_at(args, kwargs, i, n, None) for i, n in enumerate(names)
    )  # fmt: skip
    training = arg_at(args, kwargs, 5, "training", False)
    momentum = arg_at(args, kwargs, 6, "momentum", 0.1)
    eps = arg_at(args, kwargs, 7, "eps", 1e-5)
    momentum = 0.1 if momentum is None else momentum
    return ato._batch_norm(ctx, (x, weight, bias, mean, var, training, momentum, eps), {})


def _instance_norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, ...)``."""
    names = ("input", "running_mean", "running_var", "weight", "bias")
    x, mean, var, weight, bias = (arg_at(args, kwargs, i, n, None) for i, n in enumerate(names))
    stats = arg_at(args, kwargs, 5, "use_input_stats", True)
    eps = arg_at(args, kwargs, 7, "eps", 1e-5)
    return ato._instance_norm(ctx, (x, weight, bias, mean, var, stats, 0.1, eps), {})


def _layer_norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``F.layer_norm(x, normalized_shape, w, b, eps)``; the shape must equal x's trailing dims,
    so a run-time entry (``(x.shape[-1],)``) is read off the example shape."""
    x = as_tensor(ctx, args[0])
    n = len(shp.per_dim(arg_at(args, kwargs, 1, "normalized_shape"), 1))
    rest = [arg_at(args, kwargs, i, name, None) for i, name in ((2, "weight"), (3, "bias"))]
    eps = arg_at(args, kwargs, 4, "eps", 1e-5)
    return ato._layer_norm(ctx, (x, list(ctx.shape(x)[-n:]), *rest, eps), {})


# --------------------------------------------------------------------------- activations


def _gelu(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    return ato._gelu(ctx, (args[0], arg_at(args, kwargs, 1, "approximate", "none")), {})


def _gelu_module(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    return ato._gelu(ctx, (args[0], m.approximate), {})


def _softplus_op(ctx: Lowering, x: Value, beta: float) -> Value:
    if beta == 1:
        return ctx.op("Softplus", x)
    scaled = ctx.op("Softplus", ctx.op("Mul", x, ctx.scalar(float(beta), x)))
    return ctx.op("Div", scaled, ctx.scalar(float(beta), x))


def _softplus(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    beta = arg_at(args, kwargs, 1, "beta", 1.0)
    return _softplus_op(ctx, as_tensor(ctx, args[0]), beta)


def _mish(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    return ctx.op("Mul", x, ctx.op("Tanh", ctx.op("Softplus", x)))


def _elu_like(op_type: str, default_alpha: float) -> FunctionLowering:
    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        alpha = float(arg_at(args, kwargs, 1, "alpha", default_alpha))
        return ctx.op(op_type, as_tensor(ctx, args[0]), alpha=alpha)

    return lower


def _prelu_op(ctx: Lowering, x: Value, weight: Value) -> Value:
    """PRelu broadcasts the slope from the trailing dims: (C,) becomes (C, 1, ..., 1)."""
    if weight.const is None:
        raise ctx.fail("prelu with a run-time slope has no lowering")
    slope = weight.const.reshape(-1)
    if slope.size > 1 and ctx.rank(x) > 2:
        slope = slope.reshape((-1,) + (1,) * (ctx.rank(x) - 2))
    return ctx.op("PRelu", x, ctx.const(np.ascontiguousarray(slope), weight.name))


def _prelu(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x, weight = as_tensor(ctx, args[0]), as_tensor(ctx, arg_at(args, kwargs, 1, "weight"))
    return _prelu_op(ctx, x, weight)


def _prelu_module(ctx: Lowering, m: Any, args: tuple, kwargs: dict) -> Value:
    weight = fxo._param(ctx, m, "weight")
    if weight is None:
        raise ctx.fail("PReLU without a weight")
    return _prelu_op(ctx, as_tensor(ctx, args[0]), weight)


def _glu(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    axis = norm_axis(ctx, x, arg_at(args, kwargs, 1, "dim", -1))
    half = ctx.shape(x)[axis] // 2
    a, b = shp.split_op(ctx, x, [half, half], axis)
    return ctx.op("Mul", a, ctx.op("Sigmoid", b))


def _log_softmax(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    dim = arg_at(args, kwargs, 1, "dim", None)
    if dim is None:
        raise ctx.fail("log_softmax without an explicit dim")
    return ctx.op("LogSoftmax", x, axis=norm_axis(ctx, x, dim))


def _square(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    return ctx.op("Mul", x, x)


def _clamp_bound(which: int) -> FunctionLowering:
    """``clamp_min(x, v)`` (which 0) / ``clamp_max(x, v)`` (which 1): Clip with one bound."""

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        bound = arg_at(args, kwargs, 1, "min" if which == 0 else "max")
        bounds: list[Any] = [None, None]
        bounds[which] = bound
        return fxo._clamp(ctx, (args[0], *bounds), {})

    return lower


# --------------------------------------------------------------------------- pooling, misc


def _adaptive_max(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    if arg_at(args, kwargs, 2, "return_indices", False):
        raise ctx.fail("adaptive_max_pool(return_indices=True) has no lowering")
    size = arg_at(args, kwargs, 1, "output_size")
    return fxo._adaptive_op(ctx, as_tensor(ctx, args[0]), size, "Max")


def _normalize(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x = as_tensor(ctx, args[0])
    p, dim = arg_at(args, kwargs, 1, "p", 2.0), arg_at(args, kwargs, 2, "dim", 1)
    eps = float(arg_at(args, kwargs, 3, "eps", 1e-12))
    if p != 2 or kwargs.get("out") is not None:
        raise ctx.fail(f"normalize(p={p!r}) has no lowering (only p=2)")
    norm = ctx.op("ReduceL2", x, axes=[norm_axis(ctx, x, dim)], keepdims=1)
    return ctx.op("Div", x, ctx.op("Clip", norm, ctx.scalar(eps, x)))


def _expand(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``x.expand(a, b, ...)`` / ``x.expand((a, b, ...))``."""
    items = shp.shape_items(args[1:]) if len(args) > 1 else kwargs["size"]
    return ato._expand(ctx, (args[0], list(items)), {})


def _reshape_as(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    x, other = as_tensor(ctx, args[0]), as_tensor(ctx, arg_at(args, kwargs, 1, "other"))
    return ctx.op("Reshape", x, ctx.op("Shape", other))


def _where(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    if len(args) != 3:
        raise ctx.fail("where(condition) without both branches has no lowering")
    return ato._where(ctx, args, kwargs)


def _addcmul(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``addcmul(x, a, b, value=v)`` = x + v a b."""
    x, a, b = (as_tensor(ctx, arg_at(args, kwargs, i, n)) for i, n in
               enumerate(("input", "tensor1", "tensor2")))  # fmt: skip
    product = ctx.op("Mul", a, b)
    value = kwargs.get("value", 1)
    if value != 1:
        product = ctx.op("Mul", product, ctx.scalar(value, x))
    return ctx.op("Add", x, product)


def _norm(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """``x.norm(p=2, dim, keepdim)`` / ``torch.norm``: ReduceL2 (all dims without ``dim``)."""
    x = as_tensor(ctx, args[0])
    p, dim = arg_at(args, kwargs, 1, "p", "fro"), arg_at(args, kwargs, 2, "dim", None)
    keep = int(bool(arg_at(args, kwargs, 3, "keepdim", False)))
    if p not in (2, 2.0, "fro") or kwargs.get("dtype") is not None:
        raise ctx.fail(f"norm(p={p!r}) has no lowering (only the 2-norm)")
    axes = None if dim is None else shp.norm_axes(ctx, x, dim)
    return ctx.op("ReduceL2", x, axes=axes, keepdims=keep)


def _factory(fill: float | None) -> FunctionLowering:
    """``zeros/ones(*size)``, ``full(size, v)`` with run-time sizes: ConstantOfShape."""
    lowering = ato._full(0, fill)

    def lower(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
        if fill is None:
            return lowering(ctx, (args[0], arg_at(args, kwargs, 1, "fill_value")), kwargs)
        size = args if len(args) != 1 else args[0]
        return lowering(ctx, (list(shp.shape_items((size,))),), kwargs)

    return lower


def _stochastic_depth(ctx: Lowering, args: tuple, kwargs: dict) -> Value:
    """torchvision's ``stochastic_depth(x, p, mode, training)``: the identity in eval."""
    if arg_at(args, kwargs, 3, "training", True):
        raise ctx.fail("stochastic_depth(training=True) has no lowering")
    return as_tensor(ctx, args[0])


def _mod(ctx: Lowering, args: tuple, kwargs: dict) -> Any:
    """``a % b`` of run-time sizes: ONNX Mod (fmod=0) floors like Python's ``%``."""
    return fxo._int_binary(ctx, "Mod", args[0], args[1])


# --------------------------------------------------------------------------- the table part


def functions() -> dict[Any, FunctionLowering]:
    """Function -> lowering, merged into :func:`fx_ops.table`'s functions."""
    import torch
    import torch.nn.functional as F

    dropouts = (F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
    conv = (F.conv1d, F.conv2d, F.conv3d)
    conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
    table: dict[Any, FunctionLowering] = {
        F.batch_norm: _batch_norm, F.instance_norm: _instance_norm,
        F.layer_norm: _layer_norm, F.group_norm: ato._group_norm,
        F.scaled_dot_product_attention: ato._attention,
        F.gelu: _gelu, F.mish: _mish, F.softplus: _softplus, F.glu: _glu,
        F.elu: _elu_like("Elu", 1.0), F.celu: _elu_like("Celu", 1.0), F.selu: fxo._unary("Selu"),
        F.prelu: _prelu, F.log_softmax: _log_softmax, torch.log_softmax: _log_softmax,
        torch.erf: fxo._unary("Erf"), torch.rsqrt: ato._rsqrt, torch.log: fxo._unary("Log"),
        torch.square: _square,
        F.normalize: _normalize, F.adaptive_max_pool1d: _adaptive_max,
        F.adaptive_max_pool2d: _adaptive_max, F.max_pool3d: fxo._max_pool_fn,
        F.avg_pool1d: fxo._avg_pool_fn, F.avg_pool3d: fxo._avg_pool_fn,
        torch.clamp_min: _clamp_bound(0), torch.clamp_max: _clamp_bound(1),
        operator.pow: fxo._pow, operator.mod: _mod, torch.where: _where,
        torch.addcmul: _addcmul, torch.norm: _norm, torch.arange: ato._arange,
        torch.tile: shp.tile, torch.sin: fxo._unary("Sin"), torch.cos: fxo._unary("Cos"),
        torch.zeros: _factory(0.0), torch.ones: _factory(1.0), torch.full: _factory(None),
    }  # fmt: skip
    table.update({f: ato._conv for f in conv})
    table.update({f: ato._conv_transpose for f in conv_t})
    table.update({f: fxo._identity for f in dropouts})
    # torchvision's, where torchvision is loaded (never imported here: its wheel may not load)
    depth = sys.modules.get("torchvision.ops.stochastic_depth")
    if depth is not None:
        table[depth.stochastic_depth] = _stochastic_depth
    return table


def methods() -> dict[str, FunctionLowering]:
    """Tensor method name -> lowering, merged into :func:`fx_ops.table`'s methods."""
    return {
        "unbind": ato._unbind, "expand": _expand, "reshape_as": _reshape_as,
        "view_as": _reshape_as, "clamp_min": _clamp_bound(0), "clamp_max": _clamp_bound(1),
        "clamp_": fxo._clamp, "sigmoid_": fxo._unary("Sigmoid"), "tanh_": fxo._unary("Tanh"),
        "div_": fxo._binary("Div"), "sub_": fxo._binary("Sub"), "erf": fxo._unary("Erf"),
        "rsqrt": ato._rsqrt, "log": fxo._unary("Log"), "square": _square,
        "log_softmax": _log_softmax, "masked_fill": ato._masked_fill, "bmm": fxo._matmul,
        "norm": _norm, "addcmul": _addcmul, "repeat": shp.repeat, "tile": shp.tile,
        "sin": fxo._unary("Sin"), "cos": fxo._unary("Cos"),
    }  # fmt: skip


def modules() -> dict[type, ModuleLowering]:
    """Module type -> lowering, merged into :func:`fx_ops.table`'s modules."""
    from torch import nn

    def call(fn: FunctionLowering) -> ModuleLowering:
        return lambda ctx, m, args, kwargs: fn(ctx, args, kwargs)

    return {
        nn.GELU: _gelu_module, nn.Mish: call(_mish), nn.PReLU: _prelu_module,
        nn.Softplus: lambda ctx, m, a, k: _softplus_op(ctx, as_tensor(ctx, a[0]), m.beta),
        nn.ELU: lambda ctx, m, a, k: ctx.op("Elu", as_tensor(ctx, a[0]), alpha=float(m.alpha)),
        nn.CELU: lambda ctx, m, a, k: ctx.op("Celu", as_tensor(ctx, a[0]), alpha=float(m.alpha)),
        nn.SELU: call(fxo._unary("Selu")), nn.LogSoftmax: lambda ctx, m, a, k: _log_softmax(
            ctx, (a[0], m.dim), {}
        ),
        nn.Dropout3d: call(fxo._identity), nn.AlphaDropout: call(fxo._identity),
        nn.AdaptiveMaxPool1d: fxo._adaptive_max,
    }  # fmt: skip
