"""Run a graph on calibration data with intermediate values exposed, reducing as it goes.

The graph is emitted with the requested values added as graph outputs and run by onnxruntime in
batches; each batch's arrays go to a reducer and are dropped, so memory stays at one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import helper

from irprune import progress
from irprune.emit import to_model
from irprune.emit.verify import run_batched, session
from irprune.ir import Graph, Node

Reducer = Callable[[str, np.ndarray], None]


def exposed(graph: Graph, names: Iterable[str]) -> onnx.ModelProto:
    """The graph as a model whose outputs also include ``names``."""
    model = to_model(graph)
    present = {o.name for o in model.graph.output}
    for name in names:
        v = graph.values[name]
        if name in present or v.shape is None or not v.dtype:
            continue
        model.graph.output.append(helper.make_tensor_value_info(name, v.dtype, list(v.shape)))
    return model


def levels(graph: Graph, targets: Iterable[Node]) -> list[list[Node]]:
    """``targets`` grouped by dependency level: no target has another target of its own level
    upstream, so one level can be measured in one pass after the levels before it were changed.
    (Measuring a node whose upstream target is changed in the same pass gives stale inputs: in a
    residual block the errors compound.)"""
    wanted = {id(n) for n in targets}
    depth: dict[int, int] = {}  # value id -> number of target levels upstream of it
    by_level: dict[int, list[Node]] = {}
    for node in graph.nodes:
        reads = (*node.inputs, *node.implicit_inputs)  # a subgraph's outer reads count too
        upstream = max((depth.get(id(v), 0) for v in reads if v is not None), default=0)
        if id(node) in wanted:
            by_level.setdefault(upstream, []).append(node)
            upstream += 1
        for out in node.outputs:
            depth[id(out)] = upstream
    return [by_level[k] for k in sorted(by_level)]


def fixed_batch(graph: Graph) -> int | None:
    """The batch a model's inputs fix on axis 0 (ddddocr and many detectors declare 1), which
    every run on calibration data must be chunked to; None when the batch is symbolic."""
    fixed = [
        v.shape[0]
        for v in graph.inputs
        if not v.is_const and v.shape and isinstance(v.shape[0], int) and v.shape[0] > 0
    ]
    return min(fixed) if fixed else None


def limit_batch(graph: Graph, batch: int) -> int:
    """``batch``, or the model's fixed batch where that is smaller."""
    fixed = fixed_batch(graph)
    return batch if fixed is None else min(batch, fixed)


def _total(feeds: Mapping[str, np.ndarray]) -> int:
    """The batch: the longest axis 0 (as ``run_batched`` takes it)."""
    return max((np.shape(v)[0] for v in feeds.values() if np.ndim(v)), default=0)


def batch_count(feeds: Mapping[str, np.ndarray], size: int) -> int:
    return -(-_total(feeds) // size)


def batches(feeds: Mapping[str, np.ndarray], size: int) -> Iterable[dict[str, np.ndarray]]:
    """``feeds`` in batches of ``size`` along axis 0; inputs given whole (a scalar, or an array
    whose axis 0 is not the batch: ``inputs.whole_inputs``) go whole into every batch."""
    total = _total(feeds)
    for start in range(0, total, size):
        yield {
            k: v[start : start + size] if np.ndim(v) and np.shape(v)[0] == total else v
            for k, v in feeds.items()
        }


def iterate_exposed(
    graph: Graph,
    names: list[str],
    feeds: Mapping[str, np.ndarray],
    *,
    batch: int = 32,
    threads: int = 2,
    label: str = "calibration",
    callback: progress.Callback | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration batch, the requested values by name (one batch in memory at a time).
    Progress (one unit per batch) goes to ``callback`` and any display the caller enabled."""
    names = list(dict.fromkeys(names))
    sess = session(exposed(graph, names), threads=threads)
    outputs = {o.name for o in sess.get_outputs()}
    wanted = [n for n in names if n in outputs]
    chunks = progress.track(
        batches(feeds, batch), label, total=batch_count(feeds, batch), callback=callback
    )
    if not wanted:  # onnxruntime would return every output for an empty list
        for _ in chunks:
            yield {}
        return
    for chunk in chunks:
        yield dict(
            zip(wanted, (np.asarray(a) for a in run_batched(sess, wanted, chunk)), strict=True)
        )


def run_exposed(
    graph: Graph,
    names: list[str],
    feeds: Mapping[str, np.ndarray],
    reduce: Reducer,
    *,
    batch: int = 32,
    threads: int = 2,
    label: str = "calibration",
    callback: progress.Callback | None = None,
) -> None:
    """Call ``reduce(name, array)`` for every requested value on every calibration batch."""
    arrays_by_batch = iterate_exposed(
        graph, names, feeds, batch=batch, threads=threads, label=label, callback=callback
    )
    for arrays in arrays_by_batch:
        for name, array in arrays.items():
            reduce(name, array)
