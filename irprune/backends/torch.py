"""The torch backend: an IR graph as a trainable ``torch.nn.Module``, and back.

``GraphModule(graph)`` interprets the graph node by node with the ONNX semantics of
``torch_ops.OPS``. Its constants become tensors:

- **parameters** (trainable): float constants in a weight role (Conv/ConvTranspose/Gemm/MatMul
  weights and biases, BatchNormalization/LayerNormalization/InstanceNormalization/
  GroupNormalization scale and bias, PRelu slopes, Gather tables such as embeddings), and float
  constants of more than one element read by elementwise arithmetic (per-channel scales and
  biases, layer scale, position embeddings). ``is_weight`` is the rule; pass ``trainable=`` to
  choose differently;
- **buffers**: everything else (integer and shape constants, scalars such as epsilons and the
  GELU constants, BatchNormalization running statistics: BN runs in its inference form, in
  ``train()`` mode too, like the ONNX graph it came from, unless ``train_batch_norm()`` asks
  for batch statistics in ``train()`` mode, which also updates the running ones).

Parameters and buffers are found by the IR value name: ``module.tensor(name)``,
``module.named_weights()``. ``module.to_graph()`` returns a copy of the graph holding the
module's current values, so a trained module goes back to ONNX through the normal emitter
(``to_onnx``) and verifier (``save``). ``from_onnx(model)`` builds a module from a file or
``onnx.ModelProto``, imported and constant-folded exactly as ``irprune.prune`` imports it.

This module imports torch; nothing in the core imports it (``Result.to_torch`` and the gradient
criteria import it when called).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from irprune.backends.torch_ops import OPS, Call, OpFn, batch_norm_training
from irprune.emit import atomic_write, to_model, verify
from irprune.errors import UnsupportedOpError, UsageError
from irprune.frontends.onnx import ModelSource, import_model, load_model
from irprune.ir import Graph, Node, Value
from irprune.ir.copy import copy_structure
from irprune.passes.fold import fold_constants

log = logging.getLogger(__name__)

# (domain, op) -> input indices whose float constants are weights
WEIGHT_ROLES: Mapping[tuple[str, str], frozenset[int]] = {
    ("", "Conv"): frozenset({1, 2}),
    ("", "ConvTranspose"): frozenset({1, 2}),
    ("", "Gemm"): frozenset({0, 1, 2}),
    ("", "MatMul"): frozenset({0, 1}),
    ("", "Einsum"): frozenset(range(8)),
    ("", "BatchNormalization"): frozenset({1, 2}),
    ("", "InstanceNormalization"): frozenset({1, 2}),
    ("", "LayerNormalization"): frozenset({1, 2}),
    ("", "GroupNormalization"): frozenset({1, 2}),
    ("", "PRelu"): frozenset({1}),
    ("", "LSTM"): frozenset({1, 2, 3, 7}),  # W, R, B, peepholes
    ("", "Gather"): frozenset({0}),
}
_BN = ("", "BatchNormalization")
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "Mean", "Max", "Min", "Where"})
_FLOATS = frozenset({1, 10, 11, 16})  # float, float16, double, bfloat16

Trainable = Callable[[Graph, Value], bool]


def is_weight(graph: Graph, value: Value) -> bool:
    """The default parameter rule (see the module docstring)."""
    if value.const is None or value.dtype not in _FLOATS:
        return False
    for node, index in value.uses:
        if index in WEIGHT_ROLES.get(node.key, ()):
            return True
        if node.key[0] == "" and node.op_type in ELEMENTWISE and value.const.size > 1:
            return True
    return False


@dataclass(frozen=True)
class _Step:
    fn: OpFn
    call: Call
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]
    free: tuple[str, ...]  # values read for the last time by this step


class GraphModule(nn.Module):
    """An IR graph as a ``torch.nn.Module`` (see the module docstring)."""

    def __init__(self, graph: Graph, *, trainable: Trainable | None = None) -> None:
        super().__init__()
        missing = sorted({_op_name(n) for n in graph.nodes if n.key not in OPS})
        if missing:
            raise UnsupportedOpError(
                f"the torch backend has no implementation of {', '.join(missing)}"
            )
        self._graph = copy_structure(graph)
        self.input_names = [v.name for v in graph.inputs if not v.is_const]
        self.output_names = [v.name for v in graph.outputs]
        self.weights = nn.ParameterDict()
        self._keys: dict[str, tuple[bool, str]] = {}  # value name -> (is parameter, key)
        self._objects: dict[str, np.ndarray] = {}  # non-numeric constants (strings)
        rule = trainable or is_weight
        for value in graph.constants():
            self._add_constant(value, rule(graph, value))
        self._steps = _plan(graph)
        self.batch_norm_statistics = False
        # replaces every BatchNormalization's function, in any mode (statistics passes)
        self.batch_norm_override: OpFn | None = None

    def train_batch_norm(self, enabled: bool = True) -> GraphModule:
        """In ``train()`` mode, run BatchNormalization on batch statistics and update its running
        statistics (standard fine-tuning); off by default, and never in ``eval()`` mode."""
        self.batch_norm_statistics = enabled
        return self

    # --- constants --------------------------------------------------------------------------------
    def _add_constant(self, value: Value, trainable: bool) -> None:
        assert value.const is not None
        if value.const.dtype == object:
            self._objects[value.name] = value.const
            return
        key = _unique_key(value.name, {k for _, k in self._keys.values()})
        tensor = torch.from_numpy(np.array(value.const, copy=True))
        if trainable:
            self.weights[key] = nn.Parameter(tensor)
        else:
            self.register_buffer(f"const_{key}", tensor)
        self._keys[value.name] = (trainable, key)

    def tensor(self, name: str) -> Tensor:
        """The parameter or buffer holding the IR constant ``name``."""
        if name not in self._keys:
            raise KeyError(f"{name!r} is not a constant of this graph")
        trainable, key = self._keys[name]
        return self.weights[key] if trainable else getattr(self, f"const_{key}")

    def named_weights(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(IR value name, parameter) of every trainable constant."""
        for name, (trainable, key) in self._keys.items():
            if trainable:
                yield name, self.weights[key]

    @property
    def constant_names(self) -> list[str]:
        return list(self._keys)

    # --- running ----------------------------------------------------------------------------------
    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Inputs positionally (graph input order) or by name; one output or a tuple."""
        if len(args) > len(self.input_names):
            raise UsageError(f"the graph has {len(self.input_names)} inputs, got {len(args)}")
        feeds = dict(zip(self.input_names, args, strict=False))
        feeds.update(kwargs)
        outs = self.run(feeds)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run(self, feeds: Mapping[str, Tensor | np.ndarray]) -> list[Tensor]:
        """The graph outputs for inputs keyed by name (numpy arrays or tensors)."""
        unknown = set(feeds) - set(self.input_names)
        absent = [n for n in self.input_names if n not in feeds]
        if unknown or absent:
            raise UsageError(
                f"inputs {sorted(feeds)} do not match the graph inputs {self.input_names}"
            )
        env: dict[str, Any] = {
            k: v if isinstance(v, Tensor) else torch.from_numpy(np.asarray(v))
            for k, v in feeds.items()
        }
        bn_batch = self.training and self.batch_norm_statistics
        for step in self._steps:
            fn = step.fn
            if fn is OPS[_BN]:
                fn = self.batch_norm_override or (batch_norm_training if bn_batch else fn)
            args = [None if name is None else self._read(env, name) for name in step.inputs]
            result = fn(step.call, args)
            outs = result if isinstance(result, tuple) else (result,)
            for name, out in zip(step.outputs, outs, strict=False):
                env[name] = out
            for name in step.free:
                env.pop(name, None)
        return [self._read(env, name) for name in self.output_names]

    def _read(self, env: dict[str, Any], name: str) -> Tensor:
        if name in env:
            return env[name]  # type: ignore[no-any-return]
        if name in self._keys:
            return self.tensor(name)
        if name in self._objects:
            raise UnsupportedOpError(f"the torch backend cannot hold the string constant {name!r}")
        raise UsageError(f"value {name!r} is read before it is computed")

    # --- back to the IR ---------------------------------------------------------------------------
    def to_graph(self) -> Graph:
        """A copy of the graph whose constants hold the module's current values."""
        graph = copy_structure(self._graph)
        update_graph(graph, self)
        return graph


def _op_name(node: Node) -> str:
    return f"{node.domain or 'ai.onnx'}::{node.op_type}"


def _unique_key(name: str, taken: set[str]) -> str:
    base = "v_" + re.sub(r"\W", "_", name)  # prefixed: never an nn.Module attribute
    key, k = base, 0
    while key in taken:
        k += 1
        key = f"{base}_{k}"
    return key


def _plan(graph: Graph) -> list[_Step]:
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and not v.is_const:
                last[v.name] = i
    keep = {v.name for v in graph.outputs}
    steps = []
    for i, node in enumerate(graph.nodes):
        frees = {v.name for v in node.inputs if v is not None and last.get(v.name) == i}
        opset = graph.opset_imports.get(node.key[0], 0)
        steps.append(
            _Step(
                fn=OPS[node.key],
                call=Call.of(node, opset),
                inputs=tuple(v.name if v is not None else None for v in node.inputs),
                outputs=tuple(v.name for v in node.outputs),
                free=tuple(sorted(frees - keep)),
            )
        )
    return steps


def update_graph(graph: Graph, module: GraphModule) -> None:
    """Write the module's parameter and buffer values into ``graph``'s constants of the same
    name (same shapes and dtypes); names the graph does not have are an error."""
    for name in module.constant_names:
        value = graph.values.get(name)
        if value is None or value.const is None:
            raise UsageError(f"{name!r} is not a constant of the graph being updated")
        data = module.tensor(name).detach().cpu().numpy()
        if data.shape != value.const.shape:
            raise UsageError(f"{name!r} has shape {data.shape}, the graph {value.const.shape}")
        value.const = data.astype(value.const.dtype, copy=True)


def from_graph(graph: Graph, *, trainable: Trainable | None = None) -> GraphModule:
    return GraphModule(graph, trainable=trainable)


def import_graph(
    model: str | Path | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    data_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Graph:
    """The IR of an ONNX model as ``irprune.prune`` sees it: imported at ``input_shapes`` (the
    deployment shape, needed where a non-batch input dim is symbolic), else at the shapes of
    the data it will run on (``data_shapes``, batch on axis 0), constants folded."""
    source = ModelSource(load_model(model)).with_shapes(input_shapes, data_shapes)
    graph = import_model(source)
    fold_constants(graph)
    return graph


def from_onnx(
    model: str | Path | onnx.ModelProto,
    *,
    trainable: Trainable | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> GraphModule:
    """A trainable module of an ONNX model (a path or a ModelProto, pruned or not);
    ``input_shapes`` as for ``irprune.prune`` where the model's input dims are symbolic."""
    return GraphModule(import_graph(model, input_shapes), trainable=trainable)


def to_onnx(module: GraphModule) -> onnx.ModelProto:
    """The module's graph with its current weights as an ONNX model (not yet verified)."""
    return to_model(module.to_graph())


def save(
    module: GraphModule,
    path: str | Path,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Verify (checker, shape inference, an onnxruntime run) and write atomically."""
    data = to_onnx(module).SerializeToString()
    verify(data, feeds)
    return atomic_write(data, path)


def outputs_numpy(module: GraphModule, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The module's outputs as numpy arrays, without recording gradients."""
    with torch.no_grad():
        return [t.detach().cpu().numpy() for t in module.run(feeds)]


__all__: Sequence[str] = [
    "GraphModule",
    "from_graph",
    "from_onnx",
    "import_graph",
    "is_weight",
    "outputs_numpy",
    "save",
    "to_onnx",
    "update_graph",
]
