"""torch.export tracing for the fx frontend: what ``torch.fx.symbolic_trace`` cannot trace.

``torch.export.export`` runs the module on fake tensors with the batch dim of every input
symbolic, so Python control flow on static sizes, iteration and optional-argument handling
(the ``transformers`` models) resolve while tracing, and sizes that follow the batch stay
run-time values (``aten.sym_size``). The exported program is unlifted
(``ExportedProgram.module()``: parameters, buffers and lifted constants are ``get_attr`` nodes,
which the fx driver turns into constants) and its ATen graph is lowered node by node through
ONE table keyed by ATen op (:mod:`irprune.frontends.export_ops`), by the same driver as the
symbolic trace (:func:`irprune.frontends.fx.lower`): example shapes from one run on the
example inputs, symbolic batch on the graph inputs and on the outputs that follow it.

The module is exported in eval mode (restored afterwards). An example batch of 1 is repeated
to 2 for the export only: torch.export specialises sizes 0 and 1.

torch is imported lazily: importing this module does not import torch.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from irprune.errors import UnsupportedModelError
from irprune.frontends.fx import BATCH
from irprune.ir import Value

log = logging.getLogger(__name__)


def export_graph(module: Any, inputs: tuple[Any, ...]) -> Any:
    """``module`` exported with a dynamic batch dim, unlifted to an fx ``GraphModule`` whose
    placeholders are the example inputs in order."""
    import torch

    wide = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in inputs)
    batch = torch.export.Dim("batch", min=1)
    shapes = torch.export.ShapesCollection()
    for x in wide:
        shapes[x] = {0: batch}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                module, wide, dynamic_shapes=shapes.dynamic_shapes(module, wide), strict=False
            )
    except Exception as exc:  # export raises UserError, GuardOnDataDependentSymNode, ...
        text = " ".join(str(exc).split())[:300]
        raise UnsupportedModelError(
            f"torch.export cannot export {type(module).__name__} with a dynamic batch: "
            f"{type(exc).__name__}: {text}"
        ) from exc
    finally:
        module.train(was_training)
    log.info("%s exported by torch.export (dynamic batch)", type(module).__name__)
    return program.module()


def annotate_shapes(gm: Any, env: dict[str, Any]) -> None:
    """The export's symbolic shapes on the lowered values (emitted as value_info, as the
    TorchScript exporter writes it): static dims, the batch dim named ``batch``, other run-time
    dims unknown. Shape inference alone loses dims behind run-time reshapes (``flatten(2)`` of a
    batch-symbolic tensor), which the channel analysis needs to follow heads and tokens."""
    import torch

    batch = {
        str(n.meta["val"].shape[0])
        for n in gm.graph.nodes
        if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
    }
    for node in gm.graph.nodes:
        val, value = node.meta.get("val"), env.get(node.name)
        if not isinstance(val, torch.Tensor) or not isinstance(value, Value):
            continue
        if value.const is None and value.shape is None:
            value.shape = tuple(_dim(d, batch) for d in val.shape)


def _dim(d: Any, batch: set[str]) -> int | str | None:
    if isinstance(d, int):
        return d
    return BATCH if str(d) in batch else None
