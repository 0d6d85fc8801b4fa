"""Training on several processes with torch's own engine (``torchrun``), for fine-tuning.

Under ``torchrun --nproc-per-node N -m irprune finetune ...`` every process (rank) reads the
same data and runs the same seeded shuffle; each step's global batch of B rows is cut into N
contiguous shards (``np.array_split``), rank r trains on shard r inside
``DistributedDataParallel``, which averages the gradients over the ranks during the backward
pass. With shards of equal size that average is the gradient of the global batch's mean loss,
so N processes take the steps one process takes, up to floating-point order.
Everything that decides (held-out losses, the epoch kept, the retry) is computed identically on
every rank; only rank 0 logs progress and writes files. BN layers that train on batch
statistics use the global batch's (``synced_batch_norm``: per-channel sums of x and x^2 and the
row count all-reduced, differentiably), so they see what one process sees too.

The process group is the one ``torchrun`` describes in the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, nccl where CUDA is present.
Without those variables (or with one process) nothing here does anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of one global batch's rows."""
        if not self.distributed:
            return rows
        return np.array_split(rows, self.size)[self.rank]


def world(torch: Any) -> World:
    """This process's rank and the number of processes; joins the process group that torchrun
    set up in the environment (once)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        log.info("rank %d of %d joined the %s process group", dist.get_rank(), size, backend)
    return World(dist.get_rank(), dist.get_world_size())


def wrap(torch: Any, module: Any, where: World) -> Any:
    """The module to call for training steps: itself, or inside DistributedDataParallel
    (parameters and buffers broadcast from rank 0 first, gradients averaged)."""
    if not where.distributed:
        return module
    parallel = torch.nn.parallel.DistributedDataParallel
    return parallel(module, find_unused_parameters=True)


def mean(torch: Any, value: float, where: World) -> float:
    """``value`` averaged over the ranks (each rank's training loss, for the log)."""
    if not where.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return float(tensor[0]) / where.size


def synced_batch_norm(torch: Any, module: Any) -> Any:
    """A BatchNormalization for ``module.batch_norm_override``: while the module trains on
    batch statistics, mean and (biased) variance per channel over the global batch, from
    all-reduced sums (``torch.distributed.nn``: gradients flow back to every rank's rows), the
    running statistics updated with the unbiased variance as torch's BN does; otherwise the
    inference form."""
    from torch.distributed.nn.functional import all_reduce

    from irprune.backends.torch_ops import OPS

    inference = OPS[("", "BatchNormalization")]

    def batch_norm(call: Any, a: Any) -> Any:
        if not (module.training and module.batch_norm_statistics):
            return inference(call, a)
        x, scale, bias, running_mean, running_var = a[:5]
        dims = [0, *range(2, x.dim())]
        channels = x.shape[1]
        rows = torch.tensor([x.numel() / channels], dtype=x.dtype)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), rows]))
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels : 2 * channels] / count - mean * mean).clamp_min(0.0)
        eps = float(call.attr("epsilon", 1e-5))
        momentum = 1.0 - float(call.attr("momentum", 0.9))
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            unbiased = var * count / (count - 1).clamp_min(1.0)
            running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        norm = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
        return norm * scale.reshape(shape) + bias.reshape(shape)

    return batch_norm
