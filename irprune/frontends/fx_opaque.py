"""Opaque lowering: a torch leaf module without a lowering, as an ONNX model-local function.

The module alone is exported with ``torch.onnx.export`` (TorchScript exporter, opset 17, batch
dim symbolic) on the inputs it saw in the example run; its graph becomes a ``FunctionProto`` in
the :data:`DOMAIN` domain (weights as ``Constant`` nodes inside the body) and the call site one
node of that function. The analysis has no channel rule for the domain, so every channel space
that touches the node is frozen with a reason naming it, while the emitted model still runs in
onnxruntime (which inlines local functions). A module the exporter cannot handle fails closed.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx

from irprune.frontends.fx import OPSET, Lowering
from irprune.ir import Value

log = logging.getLogger(__name__)

DOMAIN = "irprune.opaque"


def lower_opaque(ctx: Lowering, module: Any, args: tuple, kwargs: dict, example: Any) -> Any:
    """One node calling ``module`` exported as a local function; its outputs as IR values."""
    if kwargs or not all(isinstance(a, Value) for a in args):
        raise ctx.fail(
            f"no lowering for module type {type(module).__name__}, and it cannot be kept "
            "opaque (it is called with non-tensor arguments)"
        )
    name = _function_name(ctx, type(module).__name__)
    function = export_function(ctx, module, example, name)
    ctx.functions.append(function)
    log.info("%s (%s) kept opaque as local function %s", ctx.where, type(module).__name__, name)
    return ctx.op(name, *args, outputs=len(function.output), domain=DOMAIN)


def _function_name(ctx: Lowering, base: str) -> str:
    taken = {f.name for f in ctx.functions}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def export_function(ctx: Lowering, module: Any, example: Any, name: str) -> onnx.FunctionProto:
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
            f"no lowering for module type {type(module).__name__}, and torch.onnx.export "
            f"cannot export it to keep it opaque: {text}"
        ) from exc
    if model.functions:
        raise ctx.fail(f"the export of {type(module).__name__} has local functions of its own")
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
