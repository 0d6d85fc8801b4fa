"""Training a graph with temporary normalisation (``backends.tempnorm``), torch side.

``prepare(graph, data)`` returns the module to train: the graph's own when nothing needs a
temporary BN (or ``enabled`` is False), else the training copy's, with each inserted BN set to
the identity from the statistics of its producer's output on ``data`` (one inference pass).
Train it with ``train_batch_norm(True)``; then ``finish(graph, module, normalised, data)``
writes the result into ``graph``: without temporary BNs the trained constants as they are;
with them, the running statistics of every BN are re-estimated on ``data`` with the final
weights (one pass in training form, each batch weighted equally, the way frameworks
recalibrate BN), and the temporary BNs are folded into their producers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from irprune.backends.tempnorm import EPSILON, Normalised, insert
from irprune.backends.torch import GraphModule, from_graph, update_graph
from irprune.backends.torch_call import Args, Call, OpFn, Out
from irprune.backends.torch_ops import OPS
from irprune.ir import Graph
from irprune.passes.calibration import limit_batch

log = logging.getLogger(__name__)

_BN = OPS[("", "BatchNormalization")]


def prepare(
    graph: Graph,
    data: Mapping[str, np.ndarray],
    *,
    enabled: bool = True,
    new_params: bool = True,
    batch: int = 128,
) -> tuple[GraphModule, Normalised | None]:
    """The module to train and the temporary normalisation (None: none was needed)."""
    normalised = insert(graph, new_params=new_params) if enabled else None
    if normalised is None:
        return from_graph(graph), None
    module = from_graph(normalised.graph)
    measure(module, normalised, data, limit_batch(graph, batch))
    return module, normalised


def finish(
    graph: Graph,
    module: GraphModule,
    normalised: Normalised | None,
    data: Mapping[str, np.ndarray],
    *,
    batch: int = 256,
) -> None:
    """Write the trained module into ``graph`` (see the module docstring)."""
    if normalised is None:
        update_graph(graph, module)
        return
    reestimate(module, data, limit_batch(graph, batch))
    update_graph(normalised.graph, module)
    normalised.fold_into(graph)


def _batches(data: Mapping[str, np.ndarray], batch: int) -> Iterator[dict[str, torch.Tensor]]:
    rows = len(next(iter(data.values())))
    for start in range(0, rows, batch):
        chunk = {k: np.ascontiguousarray(v[start : start + batch]) for k, v in data.items()}
        yield {k: torch.from_numpy(v) for k, v in chunk.items()}


def measure(
    module: GraphModule, normalised: Normalised, data: Mapping[str, np.ndarray], batch: int = 128
) -> None:
    """Set every temporary BN to the identity with its input's statistics on ``data``: running
    (mean, var), ``gamma = sqrt(var + eps)``, ``beta = mean``. The BNs pass their input through
    while measuring, and the graph's own BNs run in inference form."""
    temp = {id(module.tensor(n.mean)): n for n in normalised.norms}
    sums: dict[int, list[torch.Tensor]] = {}
    counts: dict[int, int] = {}

    def observe(call: Call, a: Args) -> Out:
        x, mean = a[0], a[3]
        assert x is not None and mean is not None
        if id(mean) not in temp:
            return _BN(call, a)
        dims = [0, *range(2, x.dim())]
        xd = x.detach().double()
        total = sums.setdefault(id(mean), [torch.zeros(()), torch.zeros(())])
        total[0] = total[0] + xd.sum(dims)
        total[1] = total[1] + (xd * xd).sum(dims)
        counts[id(mean)] = counts.get(id(mean), 0) + x.numel() // x.shape[1]
        return x

    _pass(module, data, batch, observe, train=False)
    with torch.no_grad():
        for key, norm in temp.items():
            mean = sums[key][0] / counts[key]
            var = (sums[key][1] / counts[key] - mean**2).clamp_min(0.0).float()
            module.tensor(norm.mean).copy_(mean.float())
            module.tensor(norm.var).copy_(var)
            module.tensor(norm.scale).copy_(torch.sqrt(var + torch.tensor(EPSILON)))
            module.tensor(norm.shift).copy_(mean.float())


def reestimate(module: GraphModule, data: Mapping[str, np.ndarray], batch: int = 256) -> None:
    """Every BN's running statistics: the average over one pass of ``data`` of its batch
    statistics (training form), with the module's current weights."""
    seen: dict[int, int] = {}

    def cumulative(call: Call, a: Args) -> Out:
        x, scale, bias, mean, var = a[:5]
        assert x is not None and mean is not None
        k = seen[id(mean)] = seen.get(id(mean), 0) + 1
        eps = float(call.attr("epsilon", 1e-5))
        return F.batch_norm(x, mean, var, scale, bias, True, 1.0 / k, eps)

    _pass(module, data, batch, cumulative, train=True)
    log.info("re-estimated the statistics of %d BatchNormalization nodes", len(seen))


def _pass(
    module: GraphModule, data: Mapping[str, np.ndarray], batch: int, fn: OpFn, *, train: bool
) -> None:
    was_training = module.training
    module.train(train)
    module.batch_norm_override = fn
    try:
        with torch.no_grad():
            for feeds in _batches(data, batch):
                module.run(feeds)
    finally:
        module.batch_norm_override = None
        module.train(was_training)
