"""Hostile and odd inputs through the CLI, and the safety of what irprune writes.

Every case ends one of two ways, in bounded time: a correct, verified result (exit 0; the
written model passes the checker, runs, keeps its interface, meets the target by the independent
MAC counter, and, where a masked original can be built, equals it), or one clean stderr line
``irprune: error: ...`` with the documented exit code (2 bad input files, 3 unreadable model,
4 target cannot be met), no traceback and no file written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from irprune.api import prune
from irprune.cli import main
from irprune.demo import build_demo_model
from irprune.emit import verify
from tests.helpers import IR_VERSION, feeds_for, rel_diff, run, stored_as
from tests.oracles import count_macs
from tests.reference_mask import masked_reference

TIME_LIMIT_S = 10.0
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``irprune`` in-process within the time limit; returns (exit code, stdout, stderr)."""

    def call(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        start = time.perf_counter()
        code = main([str(a) for a in argv])
        elapsed = time.perf_counter() - start
        out, err = capsys.readouterr()
        assert elapsed < TIME_LIMIT_S, f"took {elapsed:.1f} s"
        return code, out, err

    return call


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())  # onnx.save would check nothing either
    return path


def _error_lines(err: str) -> list[str]:
    """stderr without irprune's warnings (logged before an error, on lines of their own)."""
    return [line for line in err.splitlines() if not line.startswith("irprune: WARNING:")]


def _refused(cli: Cli, src: Path, code: int, *mentions: str, out_name: str = "out.onnx") -> str:
    """Prune ``src``; assert one clean error line with ``code``, naming ``mentions``, no file."""
    before = _files(src.parent)
    got, out, err = cli(src, "--target-flops", "0.5", "-o", src.parent / out_name)
    assert "Traceback" not in out + err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("irprune: error:"), err
    assert got == code, lines[0]
    for text in mentions:
        assert text in lines[0], lines[0]
    assert _files(src.parent) == before
    return lines[0]


def _pruned(
    cli: Cli, src: Path, target: float, *extra: str, oracle: bool = True
) -> tuple[onnx.ModelProto, dict]:
    """Prune ``src`` with drop; assert a verified, drop-in result meeting the target (by the
    independent MAC counter; by the report where ONNX shape inference, which the counter
    uses, cannot see through the graph)."""
    out, report = src.parent / "out.onnx", src.parent / "r.json"
    code, stdout, err = cli(
        src, "--target-flops", str(target), "-o", out, "--report", report,
        "--rewrite", "drop", "--round-to", "1", "--no-latency", *extra,
    )  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in stdout + err
    original, pruned = onnx.load(str(src)), onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    verify(pruned)
    assert list(pruned.graph.input) == list(original.graph.input)
    assert list(pruned.graph.output) == list(original.graph.output)
    data = json.loads(report.read_text())
    ratio = count_macs(pruned) / count_macs(original) if oracle else data["cost"]["ratio"]["macs"]
    assert target - 0.02 - 1e-9 <= ratio <= target + 1e-9
    return pruned, data


def _masked_equal(
    model: onnx.ModelProto, target: float, known: tuple[onnx.ValueInfoProto, ...] = ()
) -> None:
    """The API with the CLI's settings above: the pruned model equals the masked original
    (``known``: shapes the helper's shape inference cannot find, e.g. after a Loop)."""
    result = prune(model, target_flops=target, rewrite="drop", round_to=1, measure_latency=False)
    assert result.plan is not None and result.plan.kept
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    bare.graph.ClearField("value_info")  # the helper reads ranks by shape inference
    bare.graph.value_info.extend(known)
    masked = masked_reference(bare, result.analysis, result.plan)
    feeds = feeds_for(model, batch=1, seed=3)
    for e, g in zip(run(masked, feeds), run(result.model, feeds), strict=True):
        assert rel_diff(e.astype(np.float32), g.astype(np.float32)) <= 1e-4


def _frozen(report: dict) -> list[str]:
    return [r for g in report["groups"] for r in g["frozen"]]


def _pruned_groups(report: dict) -> int:
    return sum(1 for g in report["groups"] if g["kept"] < g["size"])


# --- small models -----------------------------------------------------------------------------

_RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return (_RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _vi(name: str, shape: list | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes: list, inits: dict, *, batch: int | str = "N", opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "hostile",
        [_vi("input", [batch, 3, 8, 8])],
        [_vi("logits", [batch, 4])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )


def _chain(x: str, pre: str, cin: int, widths: list[int], inits: dict, nodes: list) -> str:
    """Conv -> Relu units; returns the last output name."""
    for i, w in enumerate(widths):
        inits[f"{pre}w{i}"], inits[f"{pre}b{i}"] = _w(w, cin, 3, 3), np.zeros(w, np.float32)
        nodes += [
            helper.make_node("Conv", [x, f"{pre}w{i}", f"{pre}b{i}"], [f"{pre}c{i}"], pads=[1] * 4),
            helper.make_node("Relu", [f"{pre}c{i}"], [f"{pre}r{i}"]),
        ]
        x, cin = f"{pre}r{i}", w
    return x


def _head(x: str, c: int, inits: dict, nodes: list) -> None:
    inits["fcw"], inits["fcb"] = _w(4, c), np.zeros(4, np.float32)
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fcw", "fcb"], ["logits"], transB=1),
    ]


def _around(middle: Callable[[str, dict, list], str], batch: int | str = "N") -> onnx.ModelProto:
    """Two conv units, ``middle`` on their 16-channel output, two conv units, a head."""
    inits: dict = {}
    nodes: list = []
    x = _chain("input", "a", 3, [16, 16], inits, nodes)
    x = middle(x, inits, nodes)
    _head(_chain(x, "b", 16, [16, 16], inits, nodes), 16, inits, nodes)
    return _model(nodes, inits, batch=batch)


def _plain() -> onnx.ModelProto:
    return _around(lambda x, inits, nodes: x)


# --- unreadable files -------------------------------------------------------------------------


def test_corrupted_protobuf(tmp_path: Path, cli: Cli) -> None:
    """Byte flips anywhere: unparseable, inconsistent after parsing, or (flips inside weights)
    still a valid model. Each outcome is clean: a verified output, or one error line (exit 3/4)."""
    data = build_demo_model(seed=0).SerializeToString()
    outcomes = set()
    for seed in range(16):
        corrupt = bytearray(data)
        for i in np.random.default_rng(seed).integers(0, len(data), 1 + seed % 4 * 16):
            corrupt[i] ^= 0xFF
        src, out = tmp_path / f"c{seed}.onnx", tmp_path / f"c{seed}.out.onnx"
        src.write_bytes(bytes(corrupt))
        code, stdout, err = cli(src, "--target-flops", "0.5", "-o", out, "--no-latency")
        assert "Traceback" not in stdout + err
        if code == 0:
            onnx.checker.check_model(str(out), full_check=True)
        else:
            assert code in (3, 4) and len(_error_lines(err)) == 1, err
            assert _error_lines(err)[0].startswith("irprune: error:") and not out.exists()
        outcomes.add(code)
    assert 3 in outcomes  # most flips break the model


def test_truncated_file(tmp_path: Path, cli: Cli) -> None:
    data = build_demo_model(seed=0).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) * 2 // 3])
    _refused(cli, tmp_path / "cut.onnx", 3, "cut.onnx", "not a readable ONNX model")


# --- inconsistent graphs ----------------------------------------------------------------------


def test_missing_initializer(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    kept = [t for t in model.graph.initializer if t.name != "bw0"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "'bw0'", "missing initializer")


def test_wrong_shapes_in_value_info_are_not_trusted(tmp_path: Path, cli: Cli) -> None:
    """Shapes are inferred, not read from the file; the output records the right ones."""
    model = _plain()
    model.graph.value_info.extend([_vi("ac0", [1, 99, 3, 3]), _vi("ar0", [7])])
    src = _save(model, tmp_path / "m.onnx")
    pruned, report = _pruned(cli, src, 0.5)
    assert _pruned_groups(report) >= 2
    shapes = {vi.name: vi for vi in pruned.graph.value_info}
    width = next(t.dims[0] for t in pruned.graph.initializer if t.name == "aw0")
    assert [d.dim_value for d in shapes["ac0"].type.tensor_type.shape.dim][1:] == [width, 8, 8]
    _masked_equal(model, 0.5)


def test_duplicate_value_names(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    model.graph.node[1].output[0] = model.graph.node[0].output[0]  # Relu writes over Conv's 'ac0'
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "'ac0'", "defined twice")


def test_duplicate_node_names(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    for node in model.graph.node:
        node.name = "same"
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "same node name")


def test_cycle(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    model.graph.node[0].input[0] = model.graph.node[3].output[0]  # conv0 reads relu1's output
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "cycle")


def test_cycle_of_two_nodes_beside_the_graph(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    model.graph.node.extend(
        [
            helper.make_node("Relu", ["loop_b"], ["loop_a"]),
            helper.make_node("Relu", ["loop_a"], ["loop_b"]),
        ]
    )
    model.graph.output.append(_vi("loop_b", None))
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "'loop_b'", "cycle")


# --- adversarial attribute values -------------------------------------------------------------


def _set_attr(model: onnx.ModelProto, name: str, values: list[int]) -> onnx.ModelProto:
    conv = model.graph.node[0]
    conv.attribute.extend([helper.make_attribute(name, values)])
    return model


def test_huge_kernel_shape(tmp_path: Path, cli: Cli) -> None:
    model = _set_attr(_plain(), "kernel_shape", [10**9, 10**9])
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "impossible shape", "'ac0'")


def test_huge_pads(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    for a in model.graph.node[0].attribute:
        if a.name == "pads":
            a.ints[:] = [10**5] * 4  # a 200008 x 200008 map: 6.4e11 elements, never allocated
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "elements per sample", "'ac0'")


def test_pads_that_overflow_int64_math(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    for a in model.graph.node[0].attribute:
        if a.name == "pads":
            a.ints[:] = [2**62] * 4
    src = _save(model, tmp_path / "m.onnx")
    before = _files(tmp_path)
    code, out, err = cli(src, "--target-flops", "0.5", "-o", tmp_path / "o.onnx")
    lines = _error_lines(err)
    assert code in (3, 4) and len(lines) == 1 and lines[0].startswith("irprune: error:")
    assert "Traceback" not in out + err
    assert _files(tmp_path) == before


# --- opsets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [6, 99])
def test_opset_outside_the_supported_range(opset: int, tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    model.opset_import[0].version = opset
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, f"opset {opset}", "supported range")


# --- quantized models -------------------------------------------------------------------------


def _qdq(x: str, inits: dict, nodes: list) -> str:
    """QuantizeLinear -> DequantizeLinear on the activation, int8 weights dequantized, Conv."""
    inits.update(
        xs=np.float32(0.05), xz=np.int8(0), ws=np.float32(0.02), wz=np.int8(0),
        qw=_RNG.integers(-100, 100, (16, 16, 3, 3)).astype(np.int8), qb=np.zeros(16, np.float32),
    )  # fmt: skip
    nodes += [
        helper.make_node("QuantizeLinear", [x, "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"]),
        helper.make_node("DequantizeLinear", ["qw", "ws", "wz"], ["wdq"]),
        helper.make_node("Conv", ["xdq", "wdq", "qb"], ["qc"], pads=[1] * 4),
        helper.make_node("Relu", ["qc"], ["qr"]),
    ]
    return "qr"


def _qlinear(x: str, inits: dict, nodes: list) -> str:
    inits.update(
        xs=np.float32(0.05), xz=np.uint8(128), ws=np.float32(0.02), wz=np.int8(0),
        ys=np.float32(0.1), yz=np.uint8(128), qb=np.zeros(16, np.int32),
        qw=_RNG.integers(-100, 100, (16, 16, 3, 3)).astype(np.int8),
    )  # fmt: skip
    inputs = ["xq", "xs", "xz", "qw", "ws", "wz", "ys", "yz", "qb"]
    nodes += [
        helper.make_node("QuantizeLinear", [x, "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", inputs, ["yq"], pads=[1] * 4),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["ydq"]),
    ]
    return "ydq"


@pytest.mark.parametrize("middle", [_qdq, _qlinear], ids=["qdq", "qlinearconv"])
def test_quantized_part_is_frozen_and_the_float_part_pruned(
    middle: Callable[[str, dict, list], str], tmp_path: Path, cli: Cli
) -> None:
    model = _around(middle)
    _, report = _pruned(cli, _save(model, tmp_path / "m.onnx"), 0.6)
    assert any("QuantizeLinear" in r for r in _frozen(report))
    assert _pruned_groups(report) >= 2
    _masked_equal(model, 0.6)


# --- control flow -----------------------------------------------------------------------------


def _if(x: str, inits: dict, nodes: list) -> str:
    then_g = helper.make_graph([helper.make_node("Relu", [x], ["t"])], "then", [], [_vi("t", None)])
    else_g = helper.make_graph(
        [helper.make_node("Sigmoid", [x], ["e"])], "else", [], [_vi("e", None)]
    )
    inits["cond"] = np.array(True)
    nodes.append(
        helper.make_node("If", ["cond"], ["if_out"], then_branch=then_g, else_branch=else_g)
    )
    return "if_out"


def _loop(x: str, inits: dict, nodes: list) -> str:
    """Two iterations of acc += x, x read from the outer scope."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("Add", ["acc_in", x], ["acc_out"]),
        ],
        "body",
        [
            _vi("i", [], TensorProto.INT64),
            _vi("c_in", [], TensorProto.BOOL),
            _vi("acc_in", None),
        ],
        [_vi("c_out", [], TensorProto.BOOL), _vi("acc_out", None)],
    )
    inits["trip"], inits["cond"] = np.array(2, np.int64), np.array(True)
    nodes.append(helper.make_node("Loop", ["trip", "cond", x], ["loop_out"], body=body))
    return "loop_out"


def _scan(x: str, inits: dict, nodes: list) -> str:
    """A running sum over the rows of the map."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "row"], ["s_out"]),
            helper.make_node("Identity", ["s_out"], ["row_out"]),
        ],
        "body",
        [_vi("s_in", None), _vi("row", None)],
        [_vi("s_out", None), _vi("row_out", None)],
    )
    inits["s0"] = np.zeros((1, 16, 8), np.float32)
    nodes.append(
        helper.make_node(
            "Scan",
            ["s0", x],
            ["final", "scan_out"],
            body=body,
            num_scan_inputs=1,
            scan_input_axes=[2],
            scan_output_axes=[2],
        )
    )
    return "scan_out"


@pytest.mark.parametrize(
    ("middle", "op", "target"), [(_if, "If", 0.5), (_loop, "Loop", 0.46), (_scan, "Scan", 0.5)]
)
def test_control_flow_freezes_its_channels_and_prunes_the_rest(
    middle: Callable[[str, dict, list], str], op: str, target: float, tmp_path: Path, cli: Cli
) -> None:
    model = _around(middle, batch=1 if op == "Scan" else "N")
    # ONNX shape inference cannot type the Loop's output: the oracle cannot count after it
    _, report = _pruned(cli, _save(model, tmp_path / "m.onnx"), target, oracle=op != "Loop")
    assert any(op in r for r in _frozen(report)), _frozen(report)
    assert _pruned_groups(report) >= 2
    _masked_equal(model, target, (_vi(f"{op.lower()}_out", ["N", 16, 8, 8]),))


# --- fp16 and bf16 ----------------------------------------------------------------------------


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    return model


def test_fp16_model_is_pruned_in_fp16(tmp_path: Path, cli: Cli) -> None:
    model = _to_fp16(_around(lambda x, inits, nodes: x))
    pruned, report = _pruned(cli, _save(model, tmp_path / "m.onnx"), 0.5)
    assert _pruned_groups(report) >= 2
    assert {t.data_type for t in pruned.graph.initializer} == {TensorProto.FLOAT16}
    _masked_equal(model, 0.5)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16], ids=["fp16", "bf16"])
def test_weights_stored_narrow_stay_narrow(dtype: int, tmp_path: Path, cli: Cli) -> None:
    """fp16/bf16 weights cast to float at run time: pruned, and still stored narrow."""
    model = stored_as(_plain(), dtype)
    src = _save(model, tmp_path / "m.onnx")
    pruned, report = _pruned(cli, src, 0.5)
    assert _pruned_groups(report) >= 2
    float_inits = [t for t in pruned.graph.initializer if t.data_type == TensorProto.FLOAT]
    assert not float_inits, [t.name for t in float_inits]
    assert (tmp_path / "out.onnx").stat().st_size < 0.75 * src.stat().st_size
    _masked_equal(model, 0.5)


def test_bf16_compute_onnxruntime_cannot_run_is_refused(tmp_path: Path, cli: Cli) -> None:
    model = _plain()
    for t in model.graph.initializer:
        array = numpy_helper.to_array(t).astype(helper.tensor_dtype_to_np_dtype(16))
        t.CopyFrom(numpy_helper.from_array(array, t.name))
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.BFLOAT16
    model.opset_import[0].version = 22  # Conv accepts bfloat16 from opset 22
    onnx.checker.check_model(model, full_check=True)
    _refused(cli, _save(model, tmp_path / "m.onnx"), 3, "onnxruntime cannot load the input model")


# --- nothing to prune -------------------------------------------------------------------------


def test_no_prunable_group(tmp_path: Path, cli: Cli) -> None:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"], pads=[1] * 4)],
        "one-conv",
        [_vi("input", ["N", 3, 8, 8])],
        [_vi("logits", ["N", 8, 8, 8])],
        [numpy_helper.from_array(_w(8, 3, 3, 3), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    line = _refused(cli, _save(model, tmp_path / "m.onnx"), 4, "0 prunable groups")
    assert "reaches graph output 'logits'" in line


# --- safety of writes -------------------------------------------------------------------------


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_input_is_never_written_without_in_place(tmp_path: Path, cli: Cli) -> None:
    src = _save(_plain(), tmp_path / "m.onnx")
    digest, before = _sha(src), _files(tmp_path)
    code, _, err = cli(src, "--target-flops", "0.5", "-o", src, "--no-latency")
    assert code == 2 and "--in-place" in err
    code, _, err = cli(src, "--target-flops", "0.5", "--no-latency")
    assert code == 0, err
    assert _sha(src) == digest
    assert _files(tmp_path) == before | {"m.pruned.onnx"}


def test_in_place_replaces_the_input_atomically(tmp_path: Path, cli: Cli) -> None:
    src = _save(_plain(), tmp_path / "m.onnx")
    original, inode = onnx.load(str(src)), src.stat().st_ino
    code, out, err = cli(src, "--target-flops", "0.5", "--in-place", "--no-latency")
    assert code == 0, err
    assert f"wrote {src}" in out
    assert _files(tmp_path) == {"m.onnx"}  # no temp file left, no second model
    assert src.stat().st_ino != inode  # renamed over, not rewritten in place
    pruned = onnx.load(str(src))
    onnx.checker.check_model(pruned, full_check=True)
    assert 0.48 <= count_macs(pruned) / count_macs(original) <= 0.5


def test_in_place_that_fails_leaves_the_input_alone(tmp_path: Path, cli: Cli) -> None:
    src = _save(_plain(), tmp_path / "m.onnx")
    digest = _sha(src)
    code, _, err = cli(src, "--target-flops", "0.05", "--max-prune", "0.5", "--in-place")
    assert code == 4 and _error_lines(err)[0].startswith("irprune: error:")
    code, _, err = cli(src, "--target-flops", "0.5", "--in-place", "-o", tmp_path / "x.onnx")
    assert code == 2 and "--in-place" in err
    assert _sha(src) == digest and _files(tmp_path) == {"m.onnx"}


def _external(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(
        model,
        str(folder / name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return folder / name


def test_external_data_is_read_from_the_model_folder_and_written_next_to_the_output(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _external(_plain(), tmp_path / "in")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")  # relative locations resolve against the model's folder
    code, _, err = cli(src, "--target-flops", "0.5", "-o", "p.onnx", "--no-latency")
    assert code == 0, err
    assert _files(tmp_path / "out") == {"p.onnx", "p.onnx.data"}
    assert _files(tmp_path / "in") == {"m.onnx", "weights.bin"}
    stored = onnx.load(str(tmp_path / "out" / "p.onnx"), load_external_data=False)
    locations = {
        e.value for t in stored.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {"p.onnx.data"}
    pruned = onnx.load(str(tmp_path / "out" / "p.onnx"))
    onnx.checker.check_model(pruned, full_check=True)
    verify(pruned)
    assert 0.48 <= count_macs(pruned) / count_macs(onnx.load(str(src))) <= 0.5


def test_large_output_gets_external_data(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    emit = importlib.import_module("irprune.emit.verify")  # the package exports a same-named fn
    src = _save(_plain(), tmp_path / "m.onnx")
    monkeypatch.setattr(emit, "EXTERNAL_DATA_THRESHOLD", 4096)
    code, _, err = cli(src, "--target-flops", "0.5", "-o", tmp_path / "p.onnx", "--no-latency")
    assert code == 0, err
    assert _files(tmp_path) == {"m.onnx", "p.onnx", "p.onnx.data"}
    assert (tmp_path / "p.onnx").stat().st_size < 4096
    verify(onnx.load(str(tmp_path / "p.onnx")))


def _point_to(src: Path, location: str) -> None:
    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    src.write_bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("../../etc/passwd", "outside the model's folder"),
        ("../secret.bin", "outside the model's folder"),
        ("/etc/passwd", "absolute path"),
        ("link.bin", "outside the model's folder"),  # a symlink inside, pointing out
        ("nosuch.bin", "missing"),
    ],
)
def test_external_data_location_escaping_the_folder_is_refused(
    location: str, says: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _external(_plain(), tmp_path / "in")
    (tmp_path / "secret.bin").write_bytes(bytes(1 << 16))
    (tmp_path / "in" / "link.bin").symlink_to(tmp_path / "secret.bin")
    _point_to(src, location)

    def opened(*args: object) -> None:
        raise AssertionError("external data was opened before the guard ran")

    monkeypatch.setattr(
        "irprune.frontends.onnx.external_data_helper.load_external_data_for_model", opened
    )
    _refused(cli, src, 3, says, repr(location))


def test_output_data_file_that_is_the_input_weights_is_refused(tmp_path: Path, cli: Cli) -> None:
    """-o p.onnx would write p.onnx.data: refused when that is where the input keeps its weights."""
    src = _external(_plain(), tmp_path)
    _point_to(src, "p.onnx.data")
    (tmp_path / "weights.bin").rename(tmp_path / "p.onnx.data")
    digest = _sha(tmp_path / "p.onnx.data")
    _refused(cli, src, 2, "p.onnx.data", "input's weights", out_name="p.onnx")
    assert _sha(tmp_path / "p.onnx.data") == digest
