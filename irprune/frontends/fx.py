"""torch.fx frontend: a ``torch.nn.Module`` -> IR graph with ONNX operator semantics.

The module is traced with ``torch.fx.symbolic_trace`` (torch.nn layers stay leaf calls), run
once on the example inputs to learn every intermediate shape and dtype, and each fx node is
lowered through ONE table (:mod:`irprune.frontends.fx_ops`): module type -> lowering,
function -> lowering, method name -> lowering. The result uses opset 17 ops only (Conv,
BatchNormalization in inference form, Gemm / MatMul+Add, pools, Concat, Split, Reshape, ...),
the module's parameters and buffers become constants, and the graph inputs and outputs are named
and typed from the example inputs with a symbolic ``batch`` dimension, as the ONNX exports have.

Shape arithmetic (``x.size()``, ``x.shape[:2]``, ``c // groups``) is lowered at run time (Shape,
Gather, Div, Concat), so the lowered graph stays valid for any batch. Calls whose inputs are all
constants (``self.weight[:, None, None]``) are evaluated once in torch and become constants.

Nothing is guessed. A torch leaf module, function or method without a lowering
(``nn.PixelShuffle``, ``torch.cumsum``, ...) is kept opaque: exported on its own by
``torch.onnx.export`` as an ONNX model-local function (:mod:`irprune.frontends.fx_opaque`), so
the analysis freezes every channel that touches it (the reason names it) and the emitted model
still runs. What cannot be kept opaque (the exporter fails, run-time shape arguments) fails
closed with :class:`~irprune.errors.UnsupportedModelError` naming it; with ``tracer="auto"`` (the
default) the module then goes through torch.export instead (:mod:`irprune.frontends.export`),
as it does when ``symbolic_trace`` fails, and the reason is logged at INFO.

``forward`` parameters past the example inputs that have defaults (``attn_mask=None``) are bound
to them while tracing, and input guards (``torch._assert(H == 224, ...)``) are dropped: the example
run satisfied them, and torch.export drops its own.

torch is imported lazily: importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import operator
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from irprune.emit import to_model
from irprune.emit.onnx import DEFAULT_IR_VERSION
from irprune.errors import UnsupportedModelError, UsageError
from irprune.frontends.onnx import import_model
from irprune.ir import Graph, Node, Value

log = logging.getLogger(__name__)

OPSET = 17
BATCH = "batch"
TRACERS = ("auto", "fx", "export")


def is_torch_module(obj: object) -> bool:
    """True for a ``torch.nn.Module``; never imports torch (a module implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of one tensor at the example batch."""

    shape: tuple[int, ...]
    dtype: int  # ONNX element type


@dataclass(frozen=True)
class SymInt:
    """A run-time integer read off a shape (``x.size(0)``): a 0-d int64 value."""

    value: Value


@dataclass(frozen=True)
class SymShape:
    """A run-time shape (``x.shape``, ``x.size()``, slices of them): a 1-d int64 value."""

    value: Value
    length: int


@dataclass
class Lowering:
    """What a lowering function sees: the graph being built and the example shapes."""

    graph: Graph
    meta: dict[str, Any] = field(default_factory=dict)  # IR value name -> TensorMeta
    where: str = ""  # the fx node being lowered, for names and messages
    examples: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # opaque calls' inputs
    functions: list[onnx.FunctionProto] = field(default_factory=list)  # opaque modules
    env_output: Any = None  # what the traced forward returns, lowered
    _node_names: set[str] = field(default_factory=set)

    # --- building -------------------------------------------------------------------------------
    def const(self, array: Any, base: str = "const") -> Value:
        arr = np.asarray(array)
        name = self.graph.unique_name(base)
        return self.graph.add_value(Value(name, onnx_dtype(arr.dtype), arr.shape, const=arr))

    def ints(self, values: Any, base: str = "const") -> Value:
        return self.const(np.asarray(values, dtype=np.int64), base)

    def param(self, name: str, array: np.ndarray) -> Value:
        """A named constant (a parameter or buffer); one value per name, shared by every use."""
        existing = self.graph.values.get(name)
        if existing is not None and existing.is_const:
            return existing
        return self.const(array, name)

    def scalar(self, number: float | int, like: Value) -> Value:
        """A 0-d constant with the element type of ``like`` (float32 when unknown)."""
        dtype = _NP_OF.get(self.dtype(like), np.float32)
        if not np.issubdtype(dtype, np.floating) and number != int(number):
            raise self.fail(f"{number!r} with an integer tensor (torch would promote it)")
        return self.const(np.asarray(number, dtype=dtype), f"{self.where}_scalar")

    def op(
        self, op_type: str, *inputs: Value | None, outputs: int = 1, names: Sequence[str] = (),
        domain: str = "", **attrs: Any,
    ) -> Any:  # fmt: skip
        """Add one ONNX node; returns its output value (a tuple when ``outputs`` > 1)."""
        ins = list(inputs)
        while ins and ins[-1] is None:
            ins.pop()
        outs = []
        for i in range(outputs):
            name = names[i] if i < len(names) else self.graph.unique_name(f"{self.where}_{op_type}")
            outs.append(self.graph.add_value(Value(name)))
        node_name = f"{self.where}/{op_type}"
        k = 0
        while node_name in self._node_names:
            k += 1
            node_name = f"{self.where}/{op_type}_{k}"
        self._node_names.add(node_name)
        clean = {k: v for k, v in attrs.items() if v is not None}
        node = Node(op_type, domain, node_name, attrs=clean, inputs=tuple(ins), outputs=tuple(outs))
        self.graph.add_node(node)
        return outs[0] if outputs == 1 else tuple(outs)

    # --- example shapes -------------------------------------------------------------------------
    def shape(self, value: Value) -> tuple[int, ...]:
        """The static shape of a tensor at the example batch."""
        if value.const is not None:
            return tuple(value.const.shape)
        meta = self.meta.get(value.name)
        if meta is None:
            raise UnsupportedModelError(f"{self.where}: shape of {value.name!r} is unknown")
        return meta.shape

    def rank(self, value: Value) -> int:
        return len(self.shape(value))

    def dtype(self, value: Value) -> int:
        if value.const is not None:
            return onnx_dtype(value.const.dtype)
        meta = self.meta.get(value.name)
        return meta.dtype if meta is not None else onnx.TensorProto.FLOAT

    def fail(self, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"torch.fx frontend: {self.where}: {what}")


ModuleLowering = Callable[[Lowering, Any, tuple[Any, ...], dict[str, Any]], Any]
FunctionLowering = Callable[[Lowering, tuple[Any, ...], dict[str, Any]], Any]

_NP_OF: dict[int, type] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


def onnx_dtype(dtype: Any) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


# --------------------------------------------------------------------------- public entry points


def import_module(
    module: Any,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    tracer: str = "auto",
) -> Graph:
    """The IR of ``module`` with every shape inferred, as the ONNX frontend returns it."""
    return import_model(to_onnx(module, example_inputs, input_names, output_names, tracer))


def to_onnx(
    module: Any,
    example_inputs: Any,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    tracer: str = "auto",
) -> onnx.ModelProto:
    """``module`` lowered to an ONNX model (opset 17, symbolic batch, weights as initializers)."""
    graph = lower(
        module, example_inputs, input_names=input_names, output_names=output_names, tracer=tracer
    )
    return to_model(graph)


def lowered_by(graph: Graph) -> str | None:
    """Which tracer ``lower`` used for ``graph`` ("fx" or "export"); None: not lowered."""
    return graph.meta.get("tracer")


def lower(
    module: Any,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    tracer: str = "auto",
) -> Graph:
    """Trace ``module`` and lower it to an IR graph (shapes known only at the boundary).

    ``tracer``: ``"fx"`` (``torch.fx.symbolic_trace``, torch module/function/method table),
    ``"export"`` (``torch.export``, ATen table: :mod:`irprune.frontends.export`), or
    ``"auto"``: fx, and torch.export wherever the fx path fails (the module cannot be traced,
    or a call in it can be neither lowered nor kept opaque); the reason is logged at INFO."""
    import torch

    from irprune.frontends import fx_ops

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if tracer not in TRACERS:
        raise UsageError(f"tracer must be one of {', '.join(TRACERS)}, got {tracer!r}")
    inputs = _example_tuple(example_inputs)
    name = type(module).__name__
    if module.training:
        log.warning("%s is in training mode; lowering its eval behaviour", name)
    if tracer == "export":
        return _lower_exported(module, inputs, input_names, output_names)
    try:
        with _eval_mode(module):
            gm = _trace(module, len(inputs))
            graph = _lower_traced(gm, fx_ops.table(), module, inputs, input_names, output_names)
    except UnsupportedModelError as exc:
        if tracer == "fx":
            raise
        log.info("torch.fx path cannot lower %s, falling back to torch.export: %s", name, exc)
        return _lower_exported(module, inputs, input_names, output_names, fx_error=exc)
    log.info("%s traced by torch.fx.symbolic_trace and lowered", name)
    graph.meta["tracer"] = "fx"
    return graph


def _lower_exported(
    module: Any,
    inputs: tuple[Any, ...],
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    fx_error: Exception | None = None,
) -> Graph:
    """``module`` through torch.export and the ATen table; where the fx path failed first
    (``fx_error``) and this fails too, the error gives both reasons."""
    from irprune.frontends import export, export_ops

    try:
        gm = export.export_graph(module, inputs)
        graph = _lower_traced(
            gm, export_ops.table(), module, inputs, input_names, output_names,
            export.annotate_shapes,
        )  # fmt: skip
    except UnsupportedModelError as exc:
        if fx_error is None:
            raise
        raise UnsupportedModelError(f"{fx_error}; {exc}") from exc
    graph.meta["tracer"] = "export"
    return graph


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """Traced and run in eval mode (the lowering is of the eval behaviour: the example run must
    not update BatchNorm statistics, and ``self.training`` branches take their eval side)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _lower_traced(
    gm: Any,
    table: Any,
    module: Any,
    inputs: tuple[Any, ...],
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    annotate: Callable[[Any, dict[str, Any]], None] | None = None,
) -> Graph:
    """A traced graph module lowered through ``table`` (the fx or the ATen one); ``annotate``
    sees the lowered value of every node (the export path adds its symbolic shapes)."""
    from irprune.frontends import fx_opaque

    names = _input_names(gm, module, inputs, input_names)
    ctx = Lowering(Graph(name=type(module).__name__))
    ctx.graph.opset_imports[""] = OPSET
    opaque = {n.name for n in gm.graph.nodes if table.is_opaque(gm, n)}
    metas = _example_metas(gm, inputs, opaque, ctx.examples)
    env = _lower_nodes(ctx, gm, table, metas, names)
    if annotate is not None:
        annotate(gm, env)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    dims = _output_dims(gm, inputs, metas[output.name])
    _add_outputs(ctx, ctx.env_output, dims, output_names)
    if ctx.functions:
        ctx.graph.opset_imports[fx_opaque.DOMAIN] = 1
        ctx.graph.meta["template"] = fx_opaque.template(ctx.functions, DEFAULT_IR_VERSION)
    ctx.graph.verify()
    return ctx.graph


def _lower_nodes(
    ctx: Lowering, gm: Any, table: Any, metas: dict[str, Any], names: list[str]
) -> dict[str, Any]:
    """Every fx node in order; the value(s) the output node returns go to ``ctx.env_output``.
    Returns what each node was lowered to, by node name."""
    env: dict[str, Any] = {}
    for node in gm.graph.nodes:
        ctx.where = str(node.target) if node.op == "call_module" else node.name
        if node.op == "placeholder":
            env[node.name] = _add_input(ctx, names[len(ctx.graph.inputs)], metas[node.name])
        elif node.op == "get_attr":
            env[node.name] = _get_attr(ctx, gm, str(node.target))
        elif node.op == "output":
            ctx.env_output = _resolve(node.args[0], env)
        else:
            args, kwargs = _resolve(node.args, env), _resolve(node.kwargs, env)
            result = _lower_call(ctx, table, gm, node, args, kwargs)
            _record(ctx, result, metas[node.name])
            env[node.name] = result
    return env


def _lower_call(ctx: Lowering, table: Any, gm: Any, node: Any, args: Any, kwargs: Any) -> Any:
    """One call through ``table``; a lowering that meets arguments it does not handle (a
    run-time size where it reads a python int, say) fails closed naming the node."""
    try:
        return table.lower(ctx, gm, node, args, kwargs)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise ctx.fail(f"cannot lower {node.target!r}: {type(exc).__name__}: {text}") from exc


def _input_names(
    gm: Any, module: Any, inputs: tuple[Any, ...], given: Sequence[str] | None
) -> list[str]:
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise UsageError(
            f"{type(module).__name__}.forward takes {len(placeholders)} inputs, "
            f"example_inputs has {len(inputs)}"
        )
    names = list(given or placeholders)
    if len(names) != len(inputs) or len(set(names)) != len(names):
        raise UsageError(f"input_names {names} must be {len(inputs)} distinct names")
    return names


# --------------------------------------------------------------------------- driver helpers


def _example_tuple(example_inputs: Any) -> tuple[Any, ...]:
    import torch

    inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise UsageError("example_inputs must be a tensor or a tuple of tensors")
    if any(x.dim() == 0 or x.shape[0] < 1 for x in inputs):
        raise UsageError("every example input needs a non-empty batch dimension (axis 0)")
    return tuple(inputs)


def _trace(module: Any, n_inputs: int) -> Any:
    """``torch.fx.symbolic_trace`` with the forward's defaulted parameters past the example
    inputs bound to their defaults (``attn_mask=None``), then the input guards dropped."""
    import torch.fx

    bound = _defaults_past(module, n_inputs)
    try:
        gm = torch.fx.symbolic_trace(module, concrete_args=bound or None)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
        text = " ".join(str(exc).split())[:300]
        raise UnsupportedModelError(
            f"torch.fx cannot trace {type(module).__name__}: {type(exc).__name__}: {text}"
        ) from exc
    _drop_guards(gm, n_inputs)
    return gm


def _defaults_past(module: Any, n_inputs: int) -> dict[str, Any]:
    """The forward's parameters after the first ``n_inputs`` that have defaults."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params[: n_inputs + 1]):
        return {}
    named = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return {p.name: p.default for p in named[n_inputs:] if p.default is not p.empty}


def _drop_guards(gm: Any, n_inputs: int) -> None:
    """Remove the input guards (``torch._assert``: the example run satisfied them; torch.export
    drops its own too), the placeholders bound to defaults, and the size reads and comparisons
    that only fed them."""
    import torch
    import torch.fx._symbolic_trace as st

    guards = {torch._assert, getattr(st, "_assert_is_none", None)} - {None}
    pure = {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
            operator.getitem, operator.not_, getattr}  # fmt: skip
    graph = gm.graph
    bound = [n for n in graph.nodes if n.op == "placeholder"][n_inputs:]
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in guards and not node.users:
            graph.erase_node(node)
    for node in reversed(list(graph.nodes)):
        dead = node.op == "call_function" and node.target in pure
        dead = dead or (node.op == "call_method" and node.target in ("size", "dim"))
        if not node.users and (dead or node in bound):
            graph.erase_node(node)
    gm.recompile()


def _describe(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(int(d) for d in value.shape), torch_dtype(value.dtype))
    if isinstance(value, torch.Size):
        return tuple(int(d) for d in value)
    if isinstance(value, tuple | list):
        return tuple(_describe(v) for v in value)
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    return value


def torch_dtype(dtype: Any) -> int:
    import torch

    table = {
        torch.float32: onnx.TensorProto.FLOAT,
        torch.float64: onnx.TensorProto.DOUBLE,
        torch.float16: onnx.TensorProto.FLOAT16,
        torch.int64: onnx.TensorProto.INT64,
        torch.int32: onnx.TensorProto.INT32,
        torch.bool: onnx.TensorProto.BOOL,
    }
    if dtype not in table:
        raise UnsupportedModelError(f"torch.fx frontend: tensors of {dtype} are not supported")
    return table[dtype]


def _example_metas(
    gm: Any, inputs: tuple[Any, ...], capture: set[str], captured: dict[str, tuple[Any, ...]]
) -> dict[str, Any]:
    """Every fx node's result on the example inputs, described (shapes, dtypes, python values);
    the real inputs of the nodes in ``capture`` go to ``captured``."""
    import torch
    import torch.fx

    metas: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            if n.name in capture:
                captured[n.name] = self.fetch_args_kwargs_from_env(n)[0]
            out = super().run_node(n)
            metas[n.name] = _describe(out)
            return out

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return metas


def _flat_outputs(result: Any) -> list[Any]:
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, tuple | list):
        return [leaf for item in result for leaf in _flat_outputs(item)]
    return [result]


def _output_dims(gm: Any, inputs: tuple[Any, ...], described: Any) -> list[tuple[int | str, ...]]:
    """Output shapes with the dims that follow the batch made symbolic: ``described`` are the
    outputs at the example batch; the module runs once more at that batch + 1."""
    import torch

    grown = tuple(torch.cat([x, x[:1]]) for x in inputs)
    batch = inputs[0].shape[0]
    with torch.no_grad():
        second = _flat_outputs(gm(*grown))
    dims: list[tuple[int | str, ...]] = []
    for k, (a, b) in enumerate(zip(_flat_outputs(described), second, strict=True)):
        if not isinstance(a, TensorMeta) or not isinstance(b, torch.Tensor):
            raise UnsupportedModelError("torch.fx frontend: every model output must be a tensor")
        shape: list[int | str] = []
        for i, (da, db) in enumerate(zip(a.shape, b.shape, strict=True)):
            if da == db:
                shape.append(int(da))
            else:
                shape.append(BATCH if (da, db) == (batch, batch + 1) else f"output{k}_dim{i}")
        dims.append(tuple(shape))
    return dims


def _resolve(arg: Any, env: dict[str, Any]) -> Any:
    import torch.fx

    return torch.fx.node.map_aggregate(
        arg, lambda a: env[a.name] if isinstance(a, torch.fx.Node) else a
    )


def _add_input(ctx: Lowering, name: str, meta: TensorMeta) -> Value:
    shape: tuple[int | str, ...] = (BATCH, *meta.shape[1:])
    value = ctx.graph.add_value(Value(name, meta.dtype, shape))
    ctx.graph.inputs.append(value)
    ctx.meta[name] = meta
    return value


def _get_attr(ctx: Lowering, gm: Any, target: str) -> Any:
    import torch

    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, torch.Tensor):
        return ctx.param(target, obj.detach().cpu().numpy().copy())
    return obj


def _record(ctx: Lowering, result: Any, meta: Any) -> None:
    """Remember the example shape of every tensor a node produced (its lowering reads them)."""
    if isinstance(result, Value):
        if result.const is None and isinstance(meta, TensorMeta):
            ctx.meta.setdefault(result.name, meta)
            if not result.dtype:
                result.dtype = meta.dtype
    elif isinstance(result, tuple | list) and isinstance(meta, tuple):
        for r, m in zip(result, meta, strict=False):
            _record(ctx, r, m)


def _add_outputs(
    ctx: Lowering,
    result: Any,
    dims: list[tuple[int | str, ...]],
    output_names: Sequence[str] | None,
) -> None:
    values = _flat_outputs(result)
    if output_names is not None and len(output_names) != len(values):
        raise UsageError(f"{len(values)} model outputs, {len(output_names)} output_names given")
    default = ["output"] if len(values) == 1 else [f"output_{i}" for i in range(len(values))]
    names = list(output_names or default)
    ctx.where = "output"
    for value, name, shape in zip(values, names, dims, strict=True):
        if not isinstance(value, Value):
            raise UnsupportedModelError(f"torch.fx frontend: output {name!r} is not a tensor")
        if name in ctx.graph.values:
            raise UsageError(f"output name {name!r} is already used by another value")
        out = ctx.op("Identity", value, names=[name])
        out.dtype, out.shape = ctx.dtype(value), shape
        ctx.graph.outputs.append(out)
