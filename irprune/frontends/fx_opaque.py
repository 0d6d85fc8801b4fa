"""Opaque lowering: a torch leaf module, function or method without a lowering, as an ONNX
model-local function.

The module (a call is wrapped in a small module with its python arguments bound) is exported
alone with ``torch.onnx.export`` (TorchScript exporter, opset 17, batch dim symbolic) on the
inputs it saw in the example run; its graph becomes a ``FunctionProto`` in the :data:`DOMAIN`
domain (weights as ``Constant`` nodes inside the body) and the call site one node of that
function. The analysis has no channel rule for the domain, so every channel space that touches
the node is frozen with a reason naming it, while the emitted model still runs in onnxruntime
(which inlines local functions). What the exporter cannot handle, or a call whose arguments
are not plain tensors and python values, fails closed.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx

from irprune.frontends.fx import OPSET, Lowering, SymInt, SymShape
from irprune.ir import Value

log = logging.getLogger(__name__)

DOMAIN = "irprune.opaque"


def opaque_module(ctx: Lowering, module: Any, args: tuple, kwargs: dict, example: Any) -> Any:
    """A leaf module without a lowering, called on tensors only."""
    what = f"module type {type(module).__name__}"
    if kwargs or not all(isinstance(a, Value) for a in args):
        raise ctx.fail(f"no lowering for {what}, and it is called with non-tensor arguments")
    return _opaque(ctx, what, type(module).__name__, module, list(args), tuple(example))


def opaque_call(
    ctx: Lowering, node: Any, what: str, args: tuple, kwargs: dict, example: Any
) -> Any:
    """A function or method without a lowering: the call, with its python arguments bound,
    wrapped in a module. Tensors must be top-level arguments; run-time shape values refuse."""
    positions = [i for i, a in enumerate(args) if isinstance(a, Value)]
    rest = [a for i, a in enumerate(args) if i not in positions] + list(kwargs.values())
    if not positions or not _static(rest):
        raise ctx.fail(f"no lowering for {what}, and its arguments cannot be kept opaque")
    module = _call_module(node.op, node.target, args, kwargs, positions)
    name = str(getattr(node.target, "__name__", node.target))
    tensors = [args[i] for i in positions]
    return _opaque(ctx, what, name, module, tensors, tuple(example[i] for i in positions))


def _static(values: Any) -> bool:
    """Only python values (no IR values, no run-time shape values) anywhere in ``values``."""
    if isinstance(values, tuple | list):
        return all(_static(v) for v in values)
    if isinstance(values, dict):
        return all(_static(v) for v in values.values())
    return not isinstance(values, Value | SymInt | SymShape)


def _call_module(kind: str, target: Any, args: tuple, kwargs: dict, positions: list[int]) -> Any:
    import torch

    class Call(torch.nn.Module):
        def forward(self, *tensors: Any) -> Any:
            full = list(args)
            for i, t in zip(positions, tensors, strict=True):
                full[i] = t
            if kind == "call_method":
                return getattr(full[0], target)(*full[1:], **kwargs)
            return target(*full, **kwargs)

    return Call().eval()


def _opaque(
    ctx: Lowering, what: str, base: str, module: Any, inputs: list[Value], example: tuple
) -> Any:
    name = _function_name(ctx, base)
    function = export_function(ctx, what, module, example, name)
    ctx.functions.append(function)
    log.info("%s (%s) kept opaque as local function %s", ctx.where, what, name)
    return ctx.op(name, *inputs, outputs=len(function.output), domain=DOMAIN)


def _function_name(ctx: Lowering, base: str) -> str:
    """A unique identifier-like name (``<lambda>`` -> ``_lambda_``)."""
    taken = {f.name for f in ctx.functions}
    base = re.sub(r"\W", "_", base) or "call"
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def export_function(
    ctx: Lowering, what: str, module: Any, example: tuple, name: str
) -> onnx.FunctionProto:
    """``module`` exported on ``example`` (its real inputs) as a FunctionProto named ``name``."""
    import torch

    inputs = [f"input_{i}" for i in range(len(example))]
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
            path = Path(tmp) / "opaque.onnx"
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(example),
                path,
                dynamo=False,
                opset_version=OPSET,
                input_names=inputs,
                dynamic_axes={n: {0: "batch"} for n in inputs},
                training=torch.onnx.TrainingMode.EVAL,
            )
            model = onnx.load(path)
    except Exception as exc:  # the exporter raises many untyped errors
        text = " ".join(str(exc).split())[:200]
        raise ctx.fail(
            f"no lowering for {what}, and torch.onnx.export cannot export it to keep it "
            f"opaque: {text}"
        ) from exc
    if model.functions:
        raise ctx.fail(f"no lowering for {what}, and its export has local functions of its own")
    constants = [
        onnx.helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer
    ]
    return onnx.helper.make_function(
        DOMAIN,
        name,
        inputs=[i.name for i in model.graph.input],
        outputs=[o.name for o in model.graph.output],
        nodes=[*constants, *model.graph.node],
        opset_imports=list(model.opset_import),
    )


def template(functions: list[onnx.FunctionProto], ir_version: int) -> bytes:
    """The emitter's model template: opsets (default and opaque domain) and the functions."""
    model = onnx.ModelProto(ir_version=ir_version)
    model.opset_import.extend(
        [onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid(DOMAIN, 1)]
    )
    model.functions.extend(functions)
    return model.SerializeToString()
