"""The scoring stage: ``Analysis.score(criterion, calib=...) -> Scores``, one importance per
channel of every prunable group (higher = keep); read-only on the model."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from irprune.errors import UsageError
from irprune.ir.mapped import release_constants
from irprune.passes import importance
from irprune.passes.importance import Scores as ChannelScores
from irprune.stages.options import ScoreOptions

if TYPE_CHECKING:
    from irprune.stages.analysis import Analysis


@dataclass(frozen=True, eq=False)
class Scores:
    """Per-channel importance of the prunable groups of one analysed model: ``by_group`` maps a
    group id to one read-only score per unit of the group. ``criterion`` is the criterion that
    scored (``auto`` resolved); ``options`` what was asked."""

    criterion: str
    by_group: Mapping[int, np.ndarray] = field(repr=False)
    fingerprint: str  # the model's (``Analysis.fingerprint``): plans check it
    options: ScoreOptions = field(default_factory=ScoreOptions)
    timings: Mapping[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        frozen = {int(k): _read_only(v) for k, v in self.by_group.items()}
        object.__setattr__(self, "by_group", MappingProxyType(frozen))
        object.__setattr__(self, "timings", MappingProxyType(dict(self.timings)))

    @classmethod
    def custom(
        cls, analysis: Analysis, by_group: Mapping[int, Any], criterion: str = "custom"
    ) -> Scores:
        """Your own scores: per group id, one number per unit of the group (higher = keep);
        groups not given keep their first channels when a plan shrinks them."""
        for gid, values in by_group.items():
            if not 0 <= gid < len(analysis.channels.groups):
                raise UsageError(f"group {gid}: no such group in this model")
            size = analysis.channels.groups[gid].size
            if np.shape(values) != (size,):
                raise UsageError(f"group {gid}: {size} scores expected, got {np.shape(values)}")
        arrays = {gid: np.asarray(v, dtype=np.float64) for gid, v in by_group.items()}
        return cls(criterion, arrays, analysis.fingerprint)

    def internal(self) -> ChannelScores:
        """The scores as the allocation passes read them (made by the class itself, so a test
        that swaps ``importance.Scores`` to plant a criterion sees it applied once)."""
        return ChannelScores(self.criterion, self.by_group)


def _read_only(values: Any) -> np.ndarray:
    array = np.array(values, copy=True)
    array.setflags(write=False)
    return array


def score(analysis: Analysis, options: ScoreOptions, calib: Any, labels: Any = None) -> Scores:
    """Score every prunable group of ``analysis`` (see ``Analysis.score``)."""
    model = analysis.loaded
    calibration = model.calibration(calib, analysis.cost, seed=options.seed, auto=False)
    model.release_session()  # the original's session goes before the weights are read
    t = time.perf_counter()
    # ``auto`` measures on the user's data only, not on data synthesised from the model
    synthetic_auto = options.criterion == importance.AUTO and calibration.synthetic
    data = None if synthetic_auto else calibration.arrays()
    graph = model.graph()
    scores = importance.score(
        graph, analysis.channels, options.criterion, seed=options.seed, calib=data, labels=labels
    )
    release_constants(graph)  # mapped weights the criterion read leave the resident set
    seconds = time.perf_counter() - t
    return Scores(
        scores.criterion, scores.by_group, analysis.fingerprint, options, {"importance": seconds}
    )
