"""The load stage: the ONNX model to prune, and the IR every pass works on."""

from __future__ import annotations

from typing import Any

from irprune.emit import to_model
from irprune.errors import UsageError
from irprune.frontends import fx
from irprune.frontends.onnx import ModelSource, import_model, read_source
from irprune.ir import Graph
from irprune.passes.fold import fold_constants


def load_model(model: Any, example_inputs: Any, tracer: str) -> ModelSource:
    """The ONNX model to prune: read from a file (external weights lazily), passed in, or
    lowered from a torch module (``tracer``: "auto", "fx" or "export")."""
    if fx.is_torch_module(model):
        if example_inputs is None:
            raise UsageError("a torch.nn.Module needs example_inputs= (a tensor or tensor tuple)")
        graph = fx.lower(model, example_inputs, tracer=tracer)
        return ModelSource(to_model(graph), tracer=fx.lowered_by(graph))
    if example_inputs is not None:
        raise UsageError("example_inputs= is only used with a torch.nn.Module model")
    return read_source(model)


def import_graph(model: ModelSource) -> Graph:
    """The IR every pass works on: imported, with constant computations folded. Every copy of
    the original a pass needs is made by this one function, so node order and names agree."""
    graph = import_model(model)
    fold_constants(graph)
    return graph
