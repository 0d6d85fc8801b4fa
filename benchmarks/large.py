"""A model over 2 GB, pruned end to end with its weights memory-mapped (issue #6, "Scale").

The model is a GPT-style pre-LayerNorm decoder written with ``onnx.helper``: token and position
embeddings, ``--layers`` blocks of multi-head causal self-attention (separate q/k/v projections,
heads split by Reshape [0, T, H, D]) and a GELU MLP, a final LayerNorm and an untied LM head.
Weights are drawn per tensor from a seeded generator and streamed straight into one external
data file, so building it holds one tensor at a time (the default config: 634M parameters,
2.54 GB of fp32 weights). It is cached under ``/tmp/irprune-bench`` (key: the config).

The CLI (``python -m irprune MODEL --target-flops 0.5``, its defaults otherwise) runs in a
fresh process under a small wrapper that samples the child's RSS (``/proc/PID/status``) and
reads its peak (``ru_maxrss`` from ``wait4``). Reported: wall time, peak RSS, weight bytes, the
ratio peak / weight bytes (target < 1.5), the RSS curve, and the MAC ratio of the written file
by a counter in this file (MatMul/Gemm on ONNX-inferred shapes; no code shared with irprune).

Usage: ``python benchmarks/large.py [--layers 10 --width 2048 ...] [--out results.json]
[-- extra irprune options]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

CACHE = Path(os.environ.get("IRPRUNE_BENCH_CACHE", "/tmp/irprune-bench"))
ALIGN = 4096  # external tensors start on page boundaries (onnxruntime maps them)


@dataclass(frozen=True)
class Config:
    width: int = 2048
    layers: int = 10
    heads: int = 16
    hidden: int = 8192
    vocab: int = 32000
    seq: int = 16
    seed: int = 0

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


class _Writer:
    """Nodes, small inline constants and large external tensors of the decoder being built."""

    def __init__(self, data: Path, rng: np.random.Generator) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.location = data.name
        self.file = data.open("wb")
        self.rng = rng
        self.count = 0
        self.weight_bytes = 0

    def random(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> str:
        array = self.rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(std)
        array += np.float32(mean)
        return self.external(name, array)

    def external(self, name: str, array: np.ndarray) -> str:
        pad = -self.file.tell() % ALIGN
        self.file.write(b"\0" * pad)
        offset = self.file.tell()
        self.file.write(array.tobytes())
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.location),
            ("offset", offset),
            ("length", array.nbytes),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        self.inits.append(tensor)
        self.weight_bytes += array.nbytes
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(onnx.numpy_helper.from_array(array, name))
        self.weight_bytes += array.nbytes
        return name

    def op(self, op: str, inputs: list[str], name: str = "", **attrs: Any) -> str:
        self.count += 1
        out = f"{name or op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name or None, **attrs))
        return out

    def linear(self, x: str, name: str, cin: int, cout: int, std: float = 0.02) -> str:
        h = self.op("MatMul", [x, self.random(f"{name}.weight", (cin, cout), std)], name)
        return self.op("Add", [h, self.random(f"{name}.bias", (cout,), std)])

    def layer_norm(self, x: str, name: str, width: int) -> str:
        scale = self.random(f"{name}.weight", (width,), 0.02, mean=1.0)
        bias = self.random(f"{name}.bias", (width,), 0.02)
        return self.op("LayerNormalization", [x, scale, bias], name, axis=-1)


def _attention(b: _Writer, x: str, p: str, c: Config) -> str:
    head = c.width // c.heads
    q, k, v = (b.linear(x, f"{p}attn.{n}", c.width, c.width) for n in "qkv")
    split = b.const(f"{p}attn.split", np.array([0, c.seq, c.heads, head], dtype=np.int64))
    qh = b.op("Transpose", [b.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
    kt = b.op("Transpose", [b.op("Reshape", [k, split])], perm=[0, 2, 3, 1])
    vh = b.op("Transpose", [b.op("Reshape", [v, split])], perm=[0, 2, 1, 3])
    scores = b.op("MatMul", [qh, kt], f"{p}attn.scores")
    scale = b.const(f"{p}attn.scale", np.array(head**-0.5, dtype=np.float32))
    masked = b.op("Add", [b.op("Mul", [scores, scale]), "causal_mask"])
    probs = b.op("Softmax", [masked], axis=-1)
    ctx = b.op("Transpose", [b.op("MatMul", [probs, vh], f"{p}attn.context")], perm=[0, 2, 1, 3])
    merge = b.const(f"{p}attn.merge", np.array([0, c.seq, c.width], dtype=np.int64))
    return b.linear(b.op("Reshape", [ctx, merge]), f"{p}attn.out", c.width, c.width)


def _mlp(b: _Writer, x: str, p: str, c: Config) -> str:
    up = b.linear(x, f"{p}mlp.up", c.width, c.hidden)
    root2 = b.const(f"{p}mlp.sqrt2", np.array(2**0.5, dtype=np.float32))
    one = b.const(f"{p}mlp.one", np.array(1.0, dtype=np.float32))
    half = b.const(f"{p}mlp.half", np.array(0.5, dtype=np.float32))
    erf = b.op("Add", [b.op("Erf", [b.op("Div", [up, root2])]), one])
    gelu = b.op("Mul", [b.op("Mul", [up, erf]), half])
    return b.linear(gelu, f"{p}mlp.down", c.hidden, c.width)


def build_decoder(c: Config, path: Path) -> int:
    """Write the decoder to ``path`` (+ ``path.data``) tensor by tensor; returns weight bytes."""
    data = path.with_name(path.name + ".data")
    b = _Writer(data, np.random.default_rng(c.seed))
    try:
        mask = np.triu(np.full((c.seq, c.seq), -1e4, dtype=np.float32), k=1)
        b.const("causal_mask", mask)
        tokens = b.op("Gather", [b.random("wte", (c.vocab, c.width), 0.02), "input_ids"], axis=0)
        h = b.op("Add", [tokens, b.random("wpe", (c.seq, c.width), 0.01)])
        for i in range(c.layers):
            p = f"h{i}."
            h = b.op("Add", [h, _attention(b, b.layer_norm(h, f"{p}ln1", c.width), p, c)])
            h = b.op("Add", [h, _mlp(b, b.layer_norm(h, f"{p}ln2", c.width), p, c)])
        final = b.layer_norm(h, "ln_f", c.width)
        logits = b.op("MatMul", [final, b.random("lm_head", (c.width, c.vocab), 0.02)], "lm_head")
        b.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    finally:
        b.file.close()
    graph = helper.make_graph(
        b.nodes,
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", c.seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c.seq, c.vocab])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path.write_bytes(model.SerializeToString())
    return b.weight_bytes


def cached_decoder(c: Config) -> Path:
    folder = CACHE / f"decoder_{c.key}"
    path = folder / "decoder.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        staged = Path(tmp) / path.name
        build_decoder(c, staged)
        os.replace(staged.with_name(path.name + ".data"), path.with_name(path.name + ".data"))
        os.replace(staged, path)
    return path


def weight_bytes(path: Path) -> int:
    """Bytes of every initializer (external or inline), from the model's tensor headers."""
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        count = int(np.prod(t.dims)) if t.dims else 1
        total += count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total


def count_macs(path: Path) -> int:
    """MatMul / Gemm MACs per sample on ONNX-inferred shapes (symbolic dims count as 1)."""
    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    macs = 0
    for node in inferred.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            k = a[-1] if not (node.op_type == "Gemm" and _attr(node, "transA")) else a[0]
            macs += int(np.prod(out)) * k
    return macs


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


_WRAPPER = """
import json, os, subprocess, sys, time
stats, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
proc = subprocess.Popen(cmd)
curve = []
while True:
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid:
        break
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        curve.append((round(time.perf_counter() - start, 2), rss))
    except (OSError, StopIteration):
        pass
    time.sleep(0.25)
wall = time.perf_counter() - start
rc = os.waitstatus_to_exitcode(status)
cpu = usage.ru_utime + usage.ru_stime
out = {"rc": rc, "wall_s": wall, "maxrss_kb": usage.ru_maxrss, "cpu_s": cpu, "curve": curve}
open(stats, "w").write(json.dumps(out))
"""


def run_cli(model: Path, out_dir: Path, extra: list[str]) -> dict[str, Any]:
    output, report = out_dir / "decoder.pruned.onnx", out_dir / "report.json"
    cmd = [sys.executable, "-m", "irprune", str(model), "--target-flops", "0.5"]
    cmd += ["-o", str(output), "--report", str(report), *extra]
    stats = out_dir / "stats.json"
    subprocess.run([sys.executable, "-c", _WRAPPER, str(stats), *cmd], check=True)
    measured = json.loads(stats.read_text())
    if measured["rc"] != 0:
        raise SystemExit(f"irprune exited with {measured['rc']}")
    measured["report"] = json.loads(report.read_text())
    measured["output"] = str(output)
    return measured


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    for name in ("width", "layers", "heads", "hidden", "vocab", "seq", "seed"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the pruned model (else deleted)")
    p.add_argument("extra", nargs="*", help="more irprune options (after --)")
    args = p.parse_args(argv)
    config = Config(**{k: getattr(args, k) for k in asdict(defaults)})
    model = cached_decoder(config)
    weights = weight_bytes(model)
    with tempfile.TemporaryDirectory(dir=model.parent) as tmp:
        run = run_cli(model, Path(tmp), args.extra)
        output = Path(run["output"])
        ratio = count_macs(output) / count_macs(model)
        out_weights = weight_bytes(output)
        files = sorted(f.name for f in Path(tmp).iterdir())
        if args.keep:
            for f in Path(tmp).iterdir():
                os.replace(f, model.parent / f.name)
    peak = run["maxrss_kb"] * 1024
    result = {
        "config": asdict(config),
        "params": weights // 4,
        "weight_bytes": weights,
        "pruned_weight_bytes": out_weights,
        "wall_s": run["wall_s"],
        "cpu_s": run["cpu_s"],
        "peak_rss_bytes": peak,
        "peak_over_weights": peak / weights,
        "mac_ratio": ratio,
        "files": files,
        "timings_s": run["report"].get("timings_s"),
        "latency": run["report"].get("latency"),
        "rss_curve_kb": run["curve"],
    }
    print(f"model: {model} ({weights / 1e9:.2f} GB of weights, {weights // 4 / 1e6:.0f}M params)")
    print(f"wall {run['wall_s']:.1f} s (cpu {run['cpu_s']:.1f} s), peak RSS {peak / 1e9:.2f} GB")
    print(f"peak / weight bytes: {peak / weights:.3f}   (target < 1.5)")
    print(f"MAC ratio (independent count): {ratio:.4f}; written weights {out_weights / 1e9:.2f} GB")
    print("timings:", json.dumps(result["timings_s"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
