"""C-SGD training (Ding et al. 2019): make each channel cluster identical, then merge exactly.

The clusters are the merge rewrite's (``passes.rewrite.merge.cluster_groups``): one k-means per
channel group, so every layer coupled through residual adds shares one clustering. Training runs
the graph as a torch module (``backends.torch``) and, for every parameter that follows a
shrinking group's channels (producer filters, biases, BN scale and shift, depthwise filters, per
channel constants; not the consumers' input weights), changes plain SGD into the centripetal
update: with ``C(i)`` the cluster of row ``i`` along the channel axis,

    g_i <- mean over j in C(i) of g_j                      (members take the same step)
    w_i <- w_i - lr * g_i                                   (SGD, momentum on the averaged g)
    w_i <- w_i + eps * (mean over j in C(i) of w_j - w_i)   (pull toward the cluster centre)

so the differences inside a cluster shrink by ``(1 - eps)`` every step while the centres follow
the loss. The loss is cross-entropy on ``labels`` when given, else distillation against the
model's own outputs before training (KL divergence of the softmax for 2-D outputs, MSE
otherwise), so unlabeled inputs suffice. BatchNormalization trains as it does in torch, with
batch statistics (updating the running ones): members whose filters have become identical get
identical statistics, and the differences left in the running ones decay by the BN momentum
every step. After training the merge rewrite (same clusters) keeps one channel per cluster; the
closer the members, the closer the merge is to lossless.

A graph whose Conv/Gemm outputs are not normalised (a BN-folded export) trains with temporary
BatchNormalization nodes after them (``backends.tempnorm``, on by default: ``normalise``),
folded back into the producers afterwards (producers with a bias only: the merge works from
the analysis of the untrained graph, so no value may be added). Their scale and shift follow the
producer's output channels, so they are tied to its clusters like the producer's bias: members
stay identical through the fold and the merge stays exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from irprune import distributed
from irprune.backends import torch_norm
from irprune.backends.tempnorm import Normalised
from irprune.backends.torch import GraphModule
from irprune.errors import TrainingError
from irprune.finetune import batch_bounds
from irprune.ir import Graph
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.rewrite.merge import consumer_spaces, group_members
from irprune.progress import track

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class CsgdReport:
    epochs: int
    steps: int
    final_loss: float
    spread: float  # largest member-to-centre distance / centre norm over all clusters, at the end
    temporary_norms: int = 0  # BatchNormalization nodes added for training and folded back


@dataclass(frozen=True)
class _Tie:
    """One parameter's rows along one axis, labelled by cluster (unclustered rows: own label)."""

    name: str
    axis: int
    labels: Tensor  # [axis length] int64
    count: Tensor  # [number of labels] members per label


def ties(
    graph: Graph,
    analysis: ChannelAnalysis,
    clusters: Mapping[int, list[np.ndarray]],
    trainable: set[str],
) -> list[_Tie]:
    """The cluster labels of every trainable follower parameter of the clustered groups."""
    consumers = consumer_spaces(graph)
    labels: dict[tuple[str, int], np.ndarray] = {}
    for gid, group_clusters in clusters.items():
        for space, pos in group_members(graph, analysis, gid):
            if space in consumers or space.value not in trainable:
                continue
            key = (space.value, space.axis)
            if key not in labels:
                n = graph.values[space.value].const.shape[space.axis]  # type: ignore[union-attr]
                labels[key] = np.arange(n)
            rows = labels[key]
            for c in group_clusters:
                block = pos[:, c, :]  # [outer, members, inner]
                rows[block] = block[:, :1, :]  # every member row takes its first member's label
    out = []
    for (name, axis), rows in labels.items():
        _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
        out.append(_Tie(name, axis, torch.from_numpy(inverse), torch.from_numpy(counts)))
    return out


def _centre(x: Tensor, tie: _Tie) -> Tensor:
    """Each row replaced by the mean of its cluster, along ``tie.axis``."""
    moved = x.movedim(tie.axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    sums = torch.zeros((len(tie.count), flat.shape[1]), dtype=x.dtype).index_add_(
        0, tie.labels, flat
    )
    means = (sums / tie.count[:, None].to(x.dtype))[tie.labels]
    return means.reshape(moved.shape).movedim(0, tie.axis)


def _loss(out: Tensor, target: Tensor, labelled: bool) -> Tensor:
    if labelled:
        return F.cross_entropy(out, target)
    if out.ndim == 2 and out.shape[1] > 1:
        return F.kl_div(F.log_softmax(out, 1), F.log_softmax(target, 1), log_target=True,
                        reduction="batchmean")  # fmt: skip
    return F.mse_loss(out, target)


def train(
    graph: Graph,
    analysis: ChannelAnalysis,
    clusters: Mapping[int, list[np.ndarray]],
    data: Mapping[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    epochs: int = 5,
    lr: float = 0.01,
    epsilon: float = 0.05,
    batch: int = 64,
    seed: int = 0,
    normalise: bool = True,
    progress: Progress | None = None,
) -> CsgdReport:
    """Centripetal training of ``graph`` in place (its constants are updated, no value is
    added), see the module doc. ``data``: arrays keyed by graph input name, batch on axis 0."""
    torch.manual_seed(seed)
    # No new biases: the merge that follows works from the analysis of the untrained graph.
    module, normalised = torch_norm.prepare(graph, data, enabled=normalise, new_params=False)
    module.eval()
    targets = torch.from_numpy(labels) if labels is not None else _teacher(module, data, batch)
    module.train()
    module.train_batch_norm(True)
    params = dict(module.named_weights())
    tied = ties(graph, analysis, clusters, set(params))
    tied += _norm_ties(tied, normalised)
    n = len(next(iter(data.values())))
    opt = torch.optim.SGD(list(params.values()), lr=lr, momentum=0.9)
    bounds = batch_bounds(n, batch)
    steps_per_epoch = len(bounds)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    loss_value = float("nan")
    where = distributed.world(torch)  # under torchrun: each rank its share of every batch
    trainer = distributed.wrap(torch, module, where)
    if where.distributed:
        module.batch_norm_override = distributed.synced_batch_norm(torch, module)
    for epoch in range(epochs):
        order = rng.permutation(n)
        label = f"C-SGD epoch {epoch + 1}/{epochs}"
        for a, b in track(bounds, label) if where.main else bounds:
            idx = where.shard(order[a:b])
            feeds = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in data.items()}
            out = trainer(**feeds)
            first = out[0] if isinstance(out, tuple) else out
            loss = _loss(first, targets[idx], labels is not None)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"C-SGD training diverged at epoch {epoch + 1} (loss {float(loss.detach())}): "
                    "use a smaller learning rate (--csgd-lr)"
                )
            opt.zero_grad()
            loss.backward()
            _step(opt, params, tied, epsilon)
            sched.step()
            loss_value = distributed.mean(torch, float(loss.detach()), where)
        if progress is not None and where.main:
            progress(epoch + 1, epochs, loss_value)
        log.info("C-SGD epoch %d/%d: loss %.4f", epoch + 1, epochs, loss_value)
    module.batch_norm_override = None
    spread = _spread(params, tied)
    torch_norm.finish(graph, module, normalised, data)
    return CsgdReport(
        epochs, epochs * steps_per_epoch, loss_value, spread,
        0 if normalised is None else len(normalised.norms),
    )  # fmt: skip


def _norm_ties(tied: list[_Tie], normalised: Normalised | None) -> list[_Tie]:
    """The temporary BNs' scale and shift take the labels of their producer's output rows."""
    if normalised is None:
        return []
    by_row = {(t.name, t.axis): t for t in tied}
    out = []
    for norm in normalised.norms:
        tie = by_row.get((norm.weight, norm.axis))
        if tie is not None:
            out += [_Tie(name, 0, tie.labels, tie.count) for name in (norm.scale, norm.shift)]
    return out


def _teacher(module: GraphModule, data: Mapping[str, np.ndarray], batch: int) -> Tensor:
    n = len(next(iter(data.values())))
    with torch.no_grad():
        outs = [
            module.run({k: v[i : i + batch] for k, v in data.items()})[0]
            for i in range(0, n, batch)
        ]
    return torch.cat(outs).detach()


def _step(
    opt: torch.optim.Optimizer, params: Mapping[str, Tensor], tied: list[_Tie], epsilon: float
) -> None:
    with torch.no_grad():
        for tie in tied:
            p = params[tie.name]
            if p.grad is not None:
                p.grad.copy_(_centre(p.grad, tie))
    opt.step()
    with torch.no_grad():
        for tie in tied:
            p = params[tie.name]
            p.add_(epsilon * (_centre(p, tie) - p))


def _spread(params: Mapping[str, Tensor], tied: list[_Tie]) -> float:
    worst = 0.0
    with torch.no_grad():
        for tie in tied:
            p = params[tie.name]
            centre = _centre(p, tie)
            scale = float(centre.abs().max()) or 1.0
            worst = max(worst, float((p - centre).abs().max()) / scale)
    return worst
