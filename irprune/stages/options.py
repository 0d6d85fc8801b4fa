"""Each stage's options, as small frozen dataclasses (the stage methods take them as keyword
arguments): what loads and analyses the model, what scores it, what allocates the widths and
what rewrites and verifies it. ``irprune.prune`` takes all of them flat, for the CLI's sake."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from irprune.errors import UsageError
from irprune.passes.allocation import STRATEGIES, Target
from irprune.passes.importance import CRITERIA
from irprune.pipeline.rewrite import CALIBRATED_REWRITES, REWRITES

DEFAULT_ROUND_TO = 16  # measured: benchmarks/spine.py, see docs/benchmarks.md
DEFAULT_MAX_PRUNE = 0.9
TRACERS = ("auto", "fx", "export")
DEPTH_MODES = ("off", "auto", "only")  # stages.depth
TARGET_NAMES = {"flops": "macs", "macs": "macs", "params": "params", "latency": "latency"}

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class AnalyzeOptions:
    """How the model is loaded: the deployment shape, and for a torch module its example
    inputs and tracer (``"auto"``: torch.fx, else torch.export)."""

    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    example_inputs: Any = None
    tracer: str = "auto"

    def __post_init__(self) -> None:
        check_choice("tracer", self.tracer, TRACERS)
        if self.input_shapes is not None:
            shapes = {str(k): tuple(int(d) for d in v) for k, v in self.input_shapes.items()}
            object.__setattr__(self, "input_shapes", MappingProxyType(shapes))


@dataclass(frozen=True)
class ScoreOptions:
    """The importance criterion (``auto``: taylor with calibration data where the torch backend
    runs the graph, else l1) and the seed of the ``random`` criterion."""

    criterion: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("criterion", self.criterion, CRITERIA)


@dataclass(frozen=True)
class PlanOptions:
    """How the widths are allocated: the strategy, rounding (``strict_rounding``: no finer
    rounding of narrow groups), the per-group cap on the fraction removed, the groups left
    alone (group ids or node names), the seed and the threads latency is timed with; and
    depth pruning (``depth``: ``off``, ``auto`` for blocks and widths together, ``only`` for
    blocks alone; at most ``max_blocks`` blocks removed, None: no cap; ``stages.depth``)."""

    strategy: str = "global"
    round_to: int = DEFAULT_ROUND_TO
    strict_rounding: bool = False
    max_prune: float = DEFAULT_MAX_PRUNE
    ignore: tuple[str | int, ...] = ()
    seed: int = 0
    latency_threads: int = 1
    depth: str = "off"
    max_blocks: int | None = None

    def __post_init__(self) -> None:
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("depth", self.depth, DEPTH_MODES)
        if self.round_to < 1 or not 0 < self.max_prune <= 1:
            raise UsageError("round_to must be >= 1 and max_prune in (0, 1]")
        if self.max_blocks is not None and self.max_blocks < 0:
            raise UsageError(f"max_blocks must be >= 0, got {self.max_blocks}")
        object.__setattr__(self, "ignore", tuple(self.ignore))


@dataclass(frozen=True)
class Csgd:
    """C-SGD training of the clusters before ``rewrite="merge"`` (torch extra): ``data`` is an
    .npz path or arrays keyed by input name, with optional integer ``labels``."""

    epochs: int
    data: str | Path | Arrays
    lr: float = 0.01
    epsilon: float = 0.05
    temporary_bn: bool = True  # temporary BN after unnormalised producers (backends.tempnorm)


@dataclass(frozen=True)
class ApplyOptions:
    """How a plan is applied: the rewrite (None: reconstruct with calibration data, else
    compensate), the seed, the latency measurement, C-SGD training, and where a streamed
    (large) model is staged (``stage_dir``) above ``stream_threshold`` bytes of weights."""

    rewrite: str | None = None
    seed: int = 0
    measure_latency: bool = True
    latency_threads: int = 1
    csgd: Csgd | None = None
    stage_dir: str | Path | None = None
    stream_threshold: int | None = None

    def __post_init__(self) -> None:
        if self.rewrite is not None:
            check_choice("rewrite", self.rewrite, REWRITES)
        if self.csgd is not None and self.csgd.epochs and self.rewrite != "merge":
            raise UsageError("C-SGD training (--csgd-epochs) needs --rewrite merge and --data")

    def resolved_rewrite(self, calibrated: bool) -> str:
        """The rewrite this applies: as asked, else ``reconstruct`` with calibration data and
        ``compensate`` without; a calibrated rewrite without data is refused."""
        rewrite = self.rewrite or ("reconstruct" if calibrated else "compensate")
        if rewrite in CALIBRATED_REWRITES and not calibrated:
            raise UsageError(
                f"--rewrite {rewrite} needs calibration data (--calib FILE.npz, or --calib "
                "synthetic)"
            )
        return rewrite


def check_choice(what: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def make_target(target: float | Target | Mapping[str, float]) -> Target:
    """A target as ``Analysis.plan`` takes it: a MAC fraction, a ``Target``, or one of
    ``{"flops" | "params" | "latency": F}``; F in (0, 1]."""
    if isinstance(target, Target):
        metric, value = target.metric, target.fraction
    elif isinstance(target, Mapping):
        if len(target) != 1 or next(iter(target)) not in TARGET_NAMES:
            raise UsageError(f"give one target of {', '.join(TARGET_NAMES)}, got {dict(target)}")
        name, value = next(iter(target.items()))
        metric = TARGET_NAMES[name]
    elif isinstance(target, int | float) and not isinstance(target, bool):
        metric, value = "macs", target
    else:
        raise UsageError(f"a target is a fraction or a Target, got {target!r}")
    if metric not in ("macs", "params", "latency"):
        raise UsageError(f"unknown target metric {metric!r}")
    if not 0 < value <= 1:
        raise UsageError(f"target must be in (0, 1], got {value:g}")
    return Target(metric, float(value))


def shapes_option(
    shapes: Mapping[str, Sequence[int]] | None,
) -> Mapping[str, tuple[int, ...]] | None:
    return None if shapes is None else {k: tuple(v) for k, v in shapes.items()}
