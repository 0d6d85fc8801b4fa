"""The slice-by-slice sweep gives the values a whole-graph run gives, runs each node once, and
sees changes made to nodes that have not run yet."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from irprune.frontends.onnx import import_model
from irprune.passes.calibration import iterate_exposed, levels
from irprune.passes.sweep import Sweep
from tests.helpers import make_model

RNG = np.random.default_rng(0)


def _chain(depth: int = 6):
    """x -> (Conv -> Relu) x depth, with a residual Add every second block and a Shape-driven
    Reshape at the end (a value whose content depends on the batch size)."""
    nodes, inits, prev = [], {}, "x"
    for i in range(depth):
        inits[f"w{i}"] = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        out = f"r{i}"
        if i % 2 == 1:
            nodes.append(helper.make_node("Add", [out, prev], [f"a{i}"]))
            out = f"a{i}"
        prev = out
    nodes.append(helper.make_node("Shape", ["x"], ["shape"], end=1))
    inits["minus1"] = np.array([-1], dtype=np.int64)
    nodes.append(helper.make_node("Concat", ["shape", "minus1"], ["target"], axis=0))
    nodes.append(helper.make_node("Reshape", [prev, "target"], ["y"]))
    model = make_model(nodes, [("x", ["N", 4, 5, 5])], [("y", ["N", 100])], inits)
    return import_model(model)


def _feeds(n: int = 40) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((n, 4, 5, 5)).astype(np.float32)}


def _whole(graph, names, feeds):
    got: dict[str, list[np.ndarray]] = {}
    for arrays in iterate_exposed(graph, names, feeds, batch=16):
        for k, a in arrays.items():
            got.setdefault(k, []).append(a)
    return got


def test_slices_equal_the_whole_graph_run_and_run_each_node_once():
    graph = _chain()
    feeds = _feeds()  # 40 rows in batches of 16: the last batch is partial
    steps = [["c0"], ["c2", "r1"], ["a3"], ["a3"], ["y"]]
    whole = _whole(graph, [n for s in steps for n in s], feeds)
    with Sweep(graph, feeds, batch=16) as sweep:
        for names in steps:
            got: dict[str, list[np.ndarray]] = {}
            for arrays in sweep.run(names):
                for k, a in arrays.items():
                    got.setdefault(k, []).append(a)
            for name in names:
                assert len(got[name]) == 3
                for a, b in zip(got[name], whole[name], strict=True):
                    np.testing.assert_array_equal(a, b)
        assert sweep.executed == len(graph.nodes)  # every node once, none twice
        assert sweep.sessions == 4  # "a3" was held the second time: no slice for it


def test_a_node_changed_before_it_runs_is_seen_downstream():
    graph = _chain()
    feeds = _feeds(8)
    with Sweep(graph, feeds, batch=8) as sweep:
        (before,) = list(sweep.run(["r1"]))
        conv = graph.values["c2"].producer
        w = conv.required(1)
        w.const = np.zeros_like(w.const)  # what a refit does to the next level
        (after,) = list(sweep.run(["a3"]))
    # c2 = 0 -> r2 = 0 -> c3 = 0 -> r3 = 0 -> a3 = r3 + r2 = 0
    assert not after["a3"].any()
    assert before["r1"].any()


def test_a_value_no_longer_held_is_an_error_not_a_stale_array():
    graph = _chain()
    with Sweep(graph, _feeds(8), batch=8) as sweep:
        list(sweep.run(["a3"]))
        with pytest.raises(KeyError, match="c3"):  # read only by r3, which has run
            list(sweep.run(["c3"]))


def test_spilled_frontier_gives_the_same_values():
    graph = _chain()
    feeds = _feeds()
    with (
        Sweep(graph, feeds, batch=16) as held,
        Sweep(graph, feeds, batch=16, spill_bytes=0) as spilt,
    ):
        for names in (["r0"], ["a3"], ["y"]):
            for a, b in zip(held.run(names), spilt.run(names), strict=True):
                for name in names:
                    np.testing.assert_array_equal(a[name], b[name])
        assert spilt.store.files > 0 and held.store.files == 0


def test_frontier_is_released_once_every_reader_ran():
    graph = _chain()
    with Sweep(graph, _feeds(8), batch=8) as sweep:
        list(sweep.run(["a5"]))
        # x is still read by Shape, a5 by the Reshape; nothing else is held
        assert set(sweep.store.arrays) == {"x", "a5"}
        list(sweep.run(["y"]))
        assert set(sweep.store.arrays) == set()


def test_levels_follow_a_subgraph_s_outer_reads():
    """An If branch that reads a value from the outer graph depends on it: the consumer after
    the If is a level below the one that makes that value (else the sweep runs the first
    consumer before it is refit, and the fuzzer found the crash)."""
    w = RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["b"])],
        "branch",
        [],
        [helper.make_tensor_value_info("b", 1, None)],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("If", ["cond"], ["i"], then_branch=branch, else_branch=branch),
        helper.make_node("Conv", ["i", "w2"], ["y"]),
    ]
    model = make_model(
        nodes,
        [("x", ["N", 4, 3, 3])],
        [("y", ["N", 4, 3, 3])],
        {"w1": w, "w2": w, "cond": np.array(True)},
    )
    graph = import_model(model)
    first, second = (graph.values[n].producer for n in ("c1", "y"))
    assert levels(graph, [first, second]) == [[first], [second]]
    feeds = {"x": RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)}
    with Sweep(graph, feeds, batch=4) as sweep:
        list(sweep.run(["x"]))
        (got,) = list(sweep.run(["i"]))  # runs c1, r and the If
    assert got["i"].shape == (4, 4, 3, 3)
