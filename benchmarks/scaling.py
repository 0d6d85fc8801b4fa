"""How irprune's own run time grows with graph size (issue #6: "Speed of irprune itself").

Synthetic ONNX graphs are built from code (``onnx.helper``) with tiny channel counts, so the
weights are small and the graph structure dominates:

* ``resnet``: a deep residual conv net of N blocks (Conv-BN-Relu-Conv-BN-Add-Relu), a projection
  shortcut every 16 blocks, GlobalAveragePool-Flatten-Gemm head;
* ``splitcat``: ShuffleNet-like blocks (Split in two, Conv-BN-Relu on one half, Concat, 1x1
  Conv-BN-Relu), so every block cuts and re-joins channel groups;
* ``resnet_old`` (not run by default): ``resnet`` with every weight also listed as a graph
  input, as old exporters write them;
* ``transformer``: pre-LN transformer blocks (LayerNorm, Q/K/V MatMuls whose weights are read
  through a Transpose that constant folding removes, Reshape into heads, Transpose, attention
  MatMuls, Softmax, output projection, residual Add, MLP).

For each kind and size (about 1k, 2.5k, 5k, 10k, 20k nodes) one fresh process (``--worker``)
builds the model, times the stages separately and reports its peak RSS (``ru_maxrss``):

* ``import``, ``fold``, ``analysis``, ``cost`` -- ``import_model``, ``fold_constants``,
  ``analyze``, ``build_cost_model`` called directly (``irprune.prune`` reports import+fold as
  ``load`` and analysis+cost as ``analysis``);
* ``importance``, ``allocation``, ``reference``, ``rewrite``, ``emit``, ``verify`` -- the report's
  ``timings_s`` of ``irprune.prune(model, target_flops=0.5, round_to=1, rewrite="compensate",
  measure_latency=False)``
  (``reference`` and ``verify`` are onnxruntime / onnx.checker time, not irprune's);
* ``total`` -- the wall time of that ``prune`` call;
* ``cpu_s`` -- the same stages run again by the same calls (``staged_cpu``), timed in CPU seconds
  of this process, which other processes on a shared machine disturb far less than wall time.

It prints, per kind, the seconds per 1k nodes of each stage at every size and the fitted
exponent (slope of log time against log nodes; 1.0 is linear), CPU then wall, and writes
``benchmarks/results/scaling.json``. ``--zoo`` adds the five reference models (test size,
explicit BN) for comparison.

Usage: ``python benchmarks/scaling.py [--kinds resnet splitcat transformer]
[--sizes 1000 2500 5000 10000 20000] [--zoo] [--out benchmarks/results/scaling.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("resnet", "splitcat", "transformer")
SIZES = (1000, 2500, 5000, 10000, 20000)
FINE = ("import", "fold", "analysis", "cost")
FROM_REPORT = ("importance", "allocation", "reference", "rewrite", "emit", "verify")
STAGES = (*FINE, *FROM_REPORT, "total")
OPSET = 17


class _Builder:
    """Accumulates nodes and initializers with unique names and seeded random weights."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array: np.ndarray, base: str = "w") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, *shape: int) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        data = self.rng.standard_normal(shape) / math.sqrt(max(fan_in, 1))
        return self.const(data.astype(np.float32))

    def transposed(self, rows: int, cols: int) -> str:
        """A [rows, cols] weight stored as [cols, rows] and read through a Transpose (folded)."""
        return self.one("Transpose", [self.weight(cols, rows)], perm=[1, 0])

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        return self.op(op_type, inputs, **attrs)[0]

    def conv_bn(self, x: str, c_in: int, c_out: int, k: int = 3, relu: bool = True) -> str:
        y = self.one("Conv", [x, self.weight(c_out, c_in, k, k)], pads=[k // 2] * 4)
        bn = [
            self.const((1 + 0.1 * self.rng.standard_normal(c_out)).astype(np.float32)),
            self.const((0.1 * self.rng.standard_normal(c_out)).astype(np.float32)),
            self.const((0.1 * self.rng.standard_normal(c_out)).astype(np.float32)),
            self.const((1 + 0.1 * self.rng.random(c_out)).astype(np.float32)),
        ]
        y = self.one("BatchNormalization", [y, *bn])
        return self.one("Relu", [y]) if relu else y

    def model(self, x: onnx.ValueInfoProto, y: str, out_shape: list[Any]) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)
        graph = helper.make_graph(self.nodes, "scaling", [x], [out], self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def resnet(blocks: int, width: int = 8) -> onnx.ModelProto:
    b = _Builder()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    h, c = b.conv_bn("x", 3, width), width
    for i in range(blocks):
        c_out = c if i % 16 != 15 else (2 * width if c == width else width)
        y = b.conv_bn(b.conv_bn(h, c, c_out), c_out, c_out, relu=False)
        short = h if c_out == c else b.conv_bn(h, c, c_out, k=1, relu=False)
        h, c = b.one("Relu", [b.one("Add", [y, short])]), c_out
    pooled = b.one("Flatten", [b.one("GlobalAveragePool", [h])])
    logits = b.one("Gemm", [pooled, b.weight(10, c), b.weight(10)], transB=1)
    return b.model(x, logits, ["N", 10])


def splitcat(blocks: int, width: int = 16) -> onnx.ModelProto:
    b = _Builder()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    h = b.conv_bn("x", 3, width)
    half = width // 2
    split = b.const(np.asarray([half, half], dtype=np.int64), "split")
    for _ in range(blocks):
        left, right = b.op("Split", [h, split], n_out=2, axis=1)
        right = b.conv_bn(right, half, half)
        h = b.conv_bn(b.one("Concat", [left, right], axis=1), width, width, k=1)
    pooled = b.one("Flatten", [b.one("GlobalAveragePool", [h])])
    logits = b.one("Gemm", [pooled, b.weight(10, width), b.weight(10)], transB=1)
    return b.model(x, logits, ["N", 10])


def transformer(blocks: int, dim: int = 16, heads: int = 4, tokens: int = 4) -> onnx.ModelProto:
    b = _Builder()
    d_in, head_dim = 8, dim // heads
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, d_in])
    h = b.one("MatMul", ["x", b.weight(d_in, dim)])
    split_heads = b.const(np.asarray([0, tokens, heads, head_dim], dtype=np.int64), "shape")
    merge_heads = b.const(np.asarray([0, tokens, dim], dtype=np.int64), "shape")
    scale = b.const(np.asarray(1.0 / math.sqrt(head_dim), dtype=np.float32), "scale")

    def layer_norm(v: str) -> str:
        gamma, beta = np.ones(dim, np.float32), np.zeros(dim, np.float32)
        return b.one("LayerNormalization", [v, b.const(gamma), b.const(beta)], axis=-1)

    for _ in range(blocks):
        n = layer_norm(h)
        q, k, v = (  # weights stored [out, in] behind a Transpose, as some exporters do
            b.one("Reshape", [b.one("MatMul", [n, b.transposed(dim, dim)]), split_heads])
            for _ in range(3)
        )
        q = b.one("Transpose", [q], perm=[0, 2, 1, 3])
        k = b.one("Transpose", [k], perm=[0, 2, 3, 1])
        v = b.one("Transpose", [v], perm=[0, 2, 1, 3])
        att = b.one("Softmax", [b.one("Mul", [b.one("MatMul", [q, k]), scale])], axis=-1)
        ctx = b.one("Transpose", [b.one("MatMul", [att, v])], perm=[0, 2, 1, 3])
        ctx = b.one("Reshape", [ctx, merge_heads])
        h = b.one("Add", [h, b.one("MatMul", [ctx, b.weight(dim, dim)])])
        mlp = b.one("Relu", [b.one("MatMul", [layer_norm(h), b.weight(dim, 2 * dim)])])
        h = b.one("Add", [h, b.one("MatMul", [mlp, b.weight(2 * dim, dim)])])
    logits = b.one("MatMul", [layer_norm(h), b.weight(dim, 10)])
    return b.model(x, logits, ["N", tokens, 10])


def weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer also listed as a graph input, as old exporters (IR < 4) write them."""
    for init in model.graph.initializer:
        vi = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        model.graph.input.append(vi)
    return model


NODES_PER_BLOCK = {"resnet": 7.2, "splitcat": 8, "transformer": 26, "resnet_old": 7.2}
BUILDERS = {
    "resnet": resnet,
    "splitcat": splitcat,
    "transformer": transformer,
    "resnet_old": lambda blocks: weights_as_inputs(resnet(blocks)),
}


def build(kind: str, nodes: int) -> onnx.ModelProto:
    """A ``kind`` graph of about ``nodes`` nodes (``resnet_old``: resnet, weights as inputs)."""
    return BUILDERS[kind](max(1, round(nodes / NODES_PER_BLOCK[kind])))


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def staged_cpu(model: onnx.ModelProto) -> dict[str, float]:
    """CPU seconds (``time.process_time``, all threads of this process) of each stage, by the
    same calls ``irprune.prune`` makes in the same order (defaults: l1, global, compensate from
    BN statistics, random feeds). CPU time is what other processes on a shared machine disturb
    least; wall time is in ``times_s``."""
    from irprune import api, inputs
    from irprune.emit import to_model, verify
    from irprune.frontends.onnx import import_model
    from irprune.passes.allocation import Target, allocate
    from irprune.passes.analysis.channels import analyze
    from irprune.passes.analysis.cost import build_cost_model
    from irprune.passes.fold import fold_constants
    from irprune.passes.importance import score

    cpu: dict[str, float] = {}
    clock = time.process_time

    def lap(stage: str, since: float) -> float:
        now = clock()
        cpu[stage] = now - since
        return now

    t0 = t = clock()
    graph = import_model(model)
    t = lap("import", t)
    fold_constants(graph)
    t = lap("fold", t)
    analysis = analyze(graph)
    t = lap("analysis", t)
    cost = build_cost_model(graph, analysis)
    t = lap("cost", t)
    scores = score(graph, analysis, "l1")
    t = lap("importance", t)
    plan = allocate(analysis, cost, scores, Target("macs", 0.5), round_to=1)
    t = lap("allocation", t)
    reference = api._original_session(model.SerializeToString())
    feeds = inputs.run_feeds(reference, None, 0)
    reference.run(None, feeds)
    del reference
    t = lap("reference", t)
    api._rewrite(graph, model, analysis, plan, "compensate", None, 0)
    graph.verify()
    t = lap("rewrite", t)
    data = to_model(graph).SerializeToString()
    t = lap("emit", t)
    verify(data, feeds)
    lap("verify", t)
    cpu["total"] = clock() - t0
    return cpu


def measure(model: onnx.ModelProto) -> dict[str, Any]:
    """Stage times of one model in this process (see the module docstring)."""
    from irprune.api import prune
    from irprune.frontends.onnx import import_model
    from irprune.passes.analysis.channels import analyze
    from irprune.passes.analysis.cost import build_cost_model
    from irprune.passes.fold import fold_constants

    times: dict[str, float] = {}
    graph, times["import"] = _timed(import_model, model)
    _, times["fold"] = _timed(fold_constants, graph)
    analysis, times["analysis"] = _timed(analyze, graph)
    _, times["cost"] = _timed(build_cost_model, graph, analysis)
    start = time.perf_counter()
    # compensate: the default without data would synthesise calibration data on small graphs
    result = prune(model, target_flops=0.5, round_to=1, rewrite="compensate", measure_latency=False)
    times["total"] = time.perf_counter() - start
    for stage in FROM_REPORT:
        times[stage] = float(result.report["timings_s"].get(stage, 0.0))
    return {
        "nodes": len(model.graph.node),
        "groups": len(analysis.groups),
        "prunable": len(analysis.prunable),
        "mac_ratio": result.report["cost"]["ratio"]["macs"],
        "times_s": times,
        "cpu_s": staged_cpu(model),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def worker_main(kind: str, size: str) -> None:
    """``--worker KIND SIZE|PATH``: prints one JSON line with the measurements."""
    model = onnx.load(size) if kind == "file" else build(kind, int(size))
    print(json.dumps(measure(model)))


def run_worker(kind: str, size: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, size]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["(no message)"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(rows: list[dict[str, Any]], stage: str, key: str = "cpu_s") -> float | None:
    """Least-squares slope of log(seconds) on log(nodes); None with < 2 usable points."""
    pts = [(r["nodes"], r[key][stage]) for r in rows if r[key].get(stage, 0) > 0]
    if len(pts) < 2:
        return None
    xs, ys = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(xs, ys, 1)[0])


def table(kind: str, rows: list[dict[str, Any]], key: str = "cpu_s") -> str:
    what = "CPU" if key == "cpu_s" else "wall"
    head = f"{'nodes':>6} " + " ".join(f"{s[:7]:>7}" for s in STAGES) + f" {'peakMB':>7}"
    lines = [f"== {kind}: {what} seconds per 1k nodes (last row: log-log slope)", head]
    for r in rows:
        per_k = [r[key][s] / r["nodes"] * 1000 for s in STAGES]
        lines.append(
            f"{r['nodes']:>6} " + " ".join(f"{v:7.4f}" for v in per_k) + f" {r['peak_mb']:7.0f}"
        )
    slopes = [slope(rows, s, key) for s in STAGES]
    lines.append(
        f"{'slope':>6} " + " ".join(f"{'-':>7}" if v is None else f"{v:7.2f}" for v in slopes)
    )
    return "\n".join(lines)


def zoo_table(rows: list[dict[str, Any]]) -> str:
    """Seconds per stage of each reference model (sizes differ too little to fit a slope)."""
    head = f"{'model':>14} {'nodes':>6} " + " ".join(f"{s[:7]:>7}" for s in STAGES)
    lines = ["== reference models (test size, explicit BN): CPU seconds per stage", head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:>14} error: {r['error']}")
            continue
        times = " ".join(f"{r['cpu_s'][s]:7.3f}" for s in STAGES)
        lines.append(f"{r['model']:>14} {r['nodes']:>6} {times}")
    return "\n".join(lines)


def zoo_rows() -> list[dict[str, Any]]:
    from models.export import cached_export
    from tests.conftest import CACHE, REFERENCE

    rows = []
    for name in REFERENCE:
        path = cached_export(name, "explicit", CACHE)
        rows.append({"model": name, **run_worker("file", str(path))})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=list(BUILDERS), default=list(KINDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--zoo", action="store_true", help="also the five reference models")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"stages": STAGES, "kinds": {}}
    for kind in args.kinds:
        rows = []
        for size in args.sizes:
            row = run_worker(kind, str(size))
            if "error" in row:
                print(f"{kind} {size}: {row['error']}", flush=True)
                continue
            rows.append(row)
            total = row["times_s"]["total"]
            print(f"{kind} {row['nodes']} nodes: total {total:.2f} s", flush=True)
        slopes = {s: slope(rows, s) for s in STAGES}
        wall = {s: slope(rows, s, "times_s") for s in STAGES}
        results["kinds"][kind] = {"rows": rows, "cpu_slopes": slopes, "wall_slopes": wall}
        print(table(kind, rows), flush=True)
        print(table(kind, rows, "times_s"), flush=True)
    if args.zoo:
        results["zoo"] = zoo_rows()
        print(zoo_table(results["zoo"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
