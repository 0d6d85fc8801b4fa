"""What an analysis loaded and hands on to the later stages: the ONNX source, its IR, the
original's onnxruntime session, the calibration data and the reference run.

The stage results are frozen; ``LoadedModel`` is the one mutable part behind them, a cache whose
contents never change what a stage returns: the analysed IR is handed to the first rewrite (a
later reader gets a fresh import), the session is dropped before any pass reads the weights (a
large model's weights are then never in memory twice), and the reference run is made once per
calibration data and seed."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from irprune import inputs
from irprune.emit.verify import SecondShape, captured_warnings
from irprune.frontends.onnx import ModelSource
from irprune.ir import Graph
from irprune.passes.analysis.cost import CostModel
from irprune.passes.synthesize import parse_spec
from irprune.pipeline.calibration import synthetic_calibration
from irprune.pipeline.load import import_graph
from irprune.pipeline.reference import original_session, original_warnings, run_original
from irprune.pipeline.reference import second_shape as second_shape_of
from irprune.shapes import InputShapes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Calibration data resolved for one model: arrays keyed by input name, checked against its
    inputs (or synthesised from the model, ``synthetic``), or none (``feeds`` None). Pass it to
    ``score``, ``plan`` and ``apply`` to read (or synthesise) the data once."""

    feeds: Mapping[str, np.ndarray] | None = field(repr=False)
    synthetic: bool = False
    synthesis: Mapping[str, Any] | None = field(default=None, repr=False)  # its report
    seconds: float = 0.0  # synthesis time

    @property
    def kind(self) -> str:
        """What the report's fidelity was measured on, given this data."""
        if self.synthetic:
            return "synthetic data"
        return "calibration data" if self.feeds is not None else "random inputs"

    def arrays(self) -> dict[str, np.ndarray] | None:
        return None if self.feeds is None else dict(self.feeds)


NO_DATA = Calibration(None)


@dataclass(frozen=True)
class Reference:
    """The original model's run on the feeds (calibration data, else seeded random inputs):
    its outputs and its output shapes at a second input shape (both None for feeds only), and
    the values whose declared shapes its own run contradicts."""

    feeds: dict[str, np.ndarray] = field(repr=False)
    outputs: list[np.ndarray] | None = field(repr=False)
    second: SecondShape | None
    tolerated: frozenset[str]
    seconds: float


class LoadedModel:
    """The loaded model behind one ``Analysis`` (see the module docstring)."""

    def __init__(
        self, given: Any, source: ModelSource, graph: Graph, original_bytes: bytes | Path,
        session: Any, calib: tuple[Any, dict[str, np.ndarray] | None],
    ) -> None:  # fmt: skip
        self.given = given  # the ``model`` argument (a path, a ModelProto, a module)
        self.source = source
        self.original_bytes = original_bytes  # the input file, or serialised once
        self._graph: Graph | None = graph
        self._session = session
        self._calib = calib  # the calibration argument ``analyze`` read, and its arrays
        self._references: list[tuple[Calibration, int, Reference]] = []

    @property
    def shapes(self) -> InputShapes:
        assert self.source.shapes is not None
        return self.source.shapes

    def graph(self) -> Graph:
        """The IR to read (never mutate): the analysed one, or a fresh import once a rewrite
        took it."""
        if self._graph is None:
            self._graph = import_graph(self.source)
        return self._graph

    def take_graph(self) -> Graph:
        """The IR for a rewrite to mutate; later readers get a fresh import."""
        graph, self._graph = self.graph(), None
        return graph

    def release_session(self) -> None:
        self._session = None

    def calibration(self, calib: Any, cost: CostModel, *, seed: int, auto: bool) -> Calibration:
        """``calib`` (a ``Calibration``, an .npz path, arrays, ``"synthetic[:N]"`` or None)
        resolved; with ``auto`` and no data, synthesised where ``data_free_calibration`` finds
        that affordable."""
        if isinstance(calib, Calibration):
            return calib
        t = time.perf_counter()
        graph = self.graph()
        synthesis = synthetic_calibration(graph, cost, calib, seed, auto=auto and calib is None)
        if synthesis is not None:
            return Calibration(synthesis.feeds, True, synthesis.report, time.perf_counter() - t)
        if calib is None:
            return NO_DATA
        arrays = self._calib[1] if calib is self._calib[0] else inputs.read_calibration(calib)
        where = str(calib) if isinstance(calib, str | Path) else None
        return Calibration(inputs.calib_feeds(graph, arrays, where))

    def reference(self, calibration: Calibration, seed: int, *, run: bool = True) -> Reference:
        """The reference run on ``calibration`` (made once per data and seed); ``run`` False:
        the feeds only. The original's session is dropped afterwards."""
        for made_for, made_seed, ref in self._references:
            if (
                made_for is calibration
                and made_seed == seed
                and (ref.outputs is not None or not run)
            ):
                return ref
        t = time.perf_counter()
        session = self._session
        if session is None:
            with captured_warnings():
                session = original_session(self.original_bytes)
        self._session = None
        feeds = inputs.run_feeds(session, calibration.arrays(), seed, self.shapes)
        with captured_warnings() as warned:
            outputs = run_original(session, feeds) if run else None
            second = second_shape_of(session, self.shapes, seed, feeds, outputs) if run else None
        del session
        tolerated = original_warnings(warned)
        ref = Reference(feeds, outputs, second, tolerated, time.perf_counter() - t)
        self._references.append((calibration, seed, ref))
        return ref


def read_given_calibration(calib: Any) -> dict[str, np.ndarray] | None:
    """The arrays of calibration data given at analysis (for their shapes); None for none or
    a synthesis spec."""
    if isinstance(calib, Calibration):
        return calib.arrays()
    return None if parse_spec(calib) is not None else inputs.read_calibration(calib)
