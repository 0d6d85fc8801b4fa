"""Synthetic calibration data: asked for, or chosen data-free when the user gave no data."""

from __future__ import annotations

from typing import Any

from irprune.ir import Graph
from irprune.ir.copy import copy_structure
from irprune.passes import synthesize
from irprune.passes.analysis.cost import CostModel
from irprune.passes.synthesize import (
    Synthesis,
    Workload,
    activation_elements,
    data_free_calibration,
    parse_spec,
)


def synthetic_calibration(
    graph: Graph, cost: CostModel, calib: Any, seed: int, *, auto: bool = False
) -> Synthesis | None:
    """Synthetic calibration data: asked for with ``calib="synthetic[:N]"``, or, with ``auto``
    (the user gave neither data nor a rewrite, and this is no dry run, which rewrites nothing),
    chosen by ``data_free_calibration`` where that is affordable."""
    options = parse_spec(calib)
    auto = auto and calib is None and synthesize.AUTO_SYNTHESIS
    if options is None and not auto:
        return None
    # the synthesis extends a structural copy of the pipeline's graph (constants shared, not
    # read again: a lazily read file stays mapped)
    if options is not None:
        return synthesize.synthesize(copy_structure(graph), options, seed=seed)
    work = Workload(cost.evaluate().macs, activation_elements(graph))
    return data_free_calibration(lambda: copy_structure(graph), work, seed)
