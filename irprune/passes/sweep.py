"""Run a graph over calibration data one slice at a time, so level-by-level repairs stay linear.

The calibrated rewrites measure a graph level by level: level k's inputs are measured only after
the nodes of levels < k were changed. Running the whole graph from its inputs for every level
costs O(levels x graph). A ``Sweep`` instead runs each node once: ``run(names)`` executes only
the nodes that the requested values need and that have not run yet (one onnxruntime session over
that slice), and keeps, per calibration batch, every value that a node still to run will read
(the frontier). Nodes downstream of the requested values have not run, so a repair may still
change them before the next ``run``; a node that has run must not change afterwards.

A model whose inputs fix a batch smaller than ``batch`` is swept in batches of that size: a
slice run on more samples would be split into runs of that size by ``run_batched``, and values
that are not batch-major (shape vectors, a recurrent node's [seq, batch, ...]) cannot be joined.

Memory: the frontier of every batch is kept (one batch at a time is only possible when every
level re-runs the graph from its inputs). Arrays beyond ``spill_bytes`` in total go to ``.npy``
files in a temporary folder, read back memory-mapped.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from irprune import progress
from irprune.emit.onnx import slice_model
from irprune.emit.verify import run_batched, session
from irprune.ir import Graph, Node, Value
from irprune.passes.calibration import batches, limit_batch

log = logging.getLogger(__name__)

SPILL_BYTES = 1 << 30


class _Store:
    """Per-batch arrays by value name; past a byte budget they are spilled to disk."""

    def __init__(self, spill_bytes: int) -> None:
        self.arrays: dict[str, list[np.ndarray]] = {}
        self.budget = spill_bytes
        self.held = 0
        self.folder: tempfile.TemporaryDirectory[str] | None = None
        self.files = 0

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if self.held + array.nbytes > self.budget and array.nbytes > 0:
            array = self._spill(array)
        else:
            self.held += array.nbytes
        self.arrays.setdefault(name, []).append(array)

    def _spill(self, array: np.ndarray) -> np.ndarray:
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="irprune-sweep-")
        self.files += 1
        path = Path(self.folder.name) / f"{self.files}.npy"
        np.save(path, array)
        return np.load(path, mmap_mode="r")

    def drop(self, name: str) -> None:
        for array in self.arrays.pop(name, []):
            if not isinstance(array, np.memmap):
                self.held -= array.nbytes

    def close(self) -> None:
        self.arrays.clear()
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None


class Sweep:
    """One forward pass of ``graph`` over ``feeds``, advanced in slices by ``run``."""

    def __init__(
        self,
        graph: Graph,
        feeds: Mapping[str, np.ndarray],
        *,
        batch: int = 32,
        threads: int = 2,
        spill_bytes: int = SPILL_BYTES,
    ) -> None:
        self.graph = graph
        self.threads = threads
        self.store = _Store(spill_bytes)
        self.batches = 0
        for chunk in batches(feeds, limit_batch(graph, batch)):
            self.batches += 1
            for name, array in chunk.items():
                self.store.add(name, array)
        self.ran: set[int] = set()
        self.position = {id(n): i for i, n in enumerate(graph.nodes)}
        self.sessions = 0  # slices run so far: one per call with work to do
        self.executed = 0  # nodes run so far: each node at most once

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def run(
        self, names: list[str], *, label: str = "calibration"
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch, the requested values (those with a known dtype) by name.
        Consume the whole iterator: the slice counts as run once the first batch is asked for."""
        values = [self.graph.values[n] for n in dict.fromkeys(names)]
        values = [v for v in values if v.dtype and not v.is_const]
        todo = self._slice(values)
        produced = {id(o) for n in todo for o in n.outputs}
        outputs = [v for v in values if id(v) in produced]
        for node in todo:  # marked first: a value read only inside the slice is not kept
            self.ran.add(id(node))
        keep = [o for n in todo for o in n.outputs if self._needed_later(o)]
        outputs += [v for v in keep if all(v is not o for o in outputs)]
        sess = self._session(todo, produced, outputs)
        out_names = [v.name for v in outputs]
        inputs = [i.name for i in sess.get_inputs()] if sess is not None else []
        for k in progress.track(range(self.batches), label, total=self.batches):
            fresh: dict[str, np.ndarray] = {}
            if sess is not None:
                feeds = {name: self.store.arrays[name][k] for name in inputs}
                fresh = dict(zip(out_names, run_batched(sess, out_names, feeds), strict=True))
            for v in keep:
                self.store.add(v.name, fresh[v.name])
            yield {v.name: fresh[v.name] if v.name in fresh else self._held(v, k) for v in values}
        self._evict(todo)

    def _held(self, value: Value, k: int) -> np.ndarray:
        arrays = self.store.arrays.get(value.name)
        if arrays is None:
            raise KeyError(f"{value.name!r} was not kept by the sweep")
        return np.asarray(arrays[k])

    def _slice(self, values: list[Value]) -> list[Node]:
        """The nodes not run yet that the values need, in graph order."""
        found: dict[int, Node] = {}
        stack = [v.producer for v in values if v.producer is not None]
        while stack:
            node = stack.pop()
            if id(node) in self.ran or id(node) in found:
                continue
            found[id(node)] = node
            for v in (*node.inputs, *node.implicit_inputs):
                if v is not None and v.producer is not None and v.name not in self.store.arrays:
                    stack.append(v.producer)
        if any(id(n) not in self.position for n in found.values()):
            self.position = {id(n): i for i, n in enumerate(self.graph.nodes)}
        return sorted(found.values(), key=lambda n: self.position[id(n)])

    def _needed_later(self, value: Value) -> bool:
        return any(id(node) not in self.ran for node in self.graph.consumers(value))

    def _session(
        self, todo: list[Node], inside: set[int], outputs: list[Value]
    ) -> ort.InferenceSession | None:
        """A session over the slice: reads from outside it (not ``inside``) are its inputs."""
        if not todo:
            return None
        inputs: dict[str, Value] = {}
        for node in todo:
            for v in (*node.inputs, *node.implicit_inputs):
                if v is not None and not v.is_const and id(v) not in inside:
                    inputs[v.name] = v
        self.sessions += 1
        self.executed += len(todo)
        model = slice_model(self.graph, todo, list(inputs.values()), outputs)
        return session(model, threads=self.threads)

    def _evict(self, todo: list[Node]) -> None:
        for node in todo:
            for v in (*node.inputs, *node.implicit_inputs):
                if v is not None and v.name in self.store.arrays and not self._needed_later(v):
                    self.store.drop(v.name)
