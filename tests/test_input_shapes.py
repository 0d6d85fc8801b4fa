"""The shape contract end to end (DESIGN.md section 1, "Shapes"): costs at the deployment shape,
symbolic dims kept, no value_info that contradicts the graph, verification at a second shape.

The model is a CTC-recognizer in miniature: ``x: [N, 3, H, W]`` through strided convs, then a
Reshape to ``[N, C, H' * W']`` whose target is computed at run time (so shape inference cannot
type it and irprune probes it), a Transpose and a MatMul head. At W = 1 and W = 2 the strided
width is 1 both times: a probe at placeholder sizes would pin it, and the written value_info
would contradict every real run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import irprune
from irprune.emit.verify import SecondShape, captured_warnings, verify
from irprune.errors import VerificationError
from irprune.shapes import InputShapeError
from tests.helpers import make_model, run
from tests.oracles import count_macs

RNG = np.random.default_rng(0)
DEPLOY = {"x": (1, 3, 32, 64)}


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


def _ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def recognizer() -> onnx.ModelProto:
    strided = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 4]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], "c1", **strided),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2"], ["b"], "c2", **strided),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("Shape", ["br"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"]),
        helper.make_node("Gather", ["s", "i2"], ["h"]),
        helper.make_node("Gather", ["s", "i3"], ["wd"]),
        helper.make_node("Mul", ["h", "wd"], ["hw"]),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Unsqueeze", ["hw", "ax0"], ["hw1"]),
        helper.make_node("Concat", ["n1", "c", "hw1"], ["target"], axis=0),
        helper.make_node("Reshape", ["br", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "head"], ["out"], "head"),
    ]
    inits = {
        "w1": _w(64, 3, 3, 3),
        "w2": _w(32, 64, 3, 3),
        "head": _w(32, 7),
        "i0": np.array(0, dtype=np.int64),
        "i2": np.array(2, dtype=np.int64),
        "i3": np.array(3, dtype=np.int64),
        "ax0": _ints(0),
        "c": _ints(32),
    }
    return make_model(nodes, [("x", ["N", 3, "H", "W"])], [("out", ["N", "L", 7])], inits)


def declared_dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in vi.type.tensor_type.shape.dim
    ]


def assert_value_info_holds(
    model: onnx.ModelProto, shapes: Sequence[Mapping[str, tuple[int, ...]]]
) -> None:
    """Every static dim the model declares for a value (value_info, outputs) is the size that
    value has in an onnxruntime run at each of ``shapes``."""
    declared = {vi.name: declared_dims(vi) for vi in (*model.graph.value_info, *model.graph.output)}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in declared if n not in outputs)
    for at in shapes:
        feeds = {k: RNG.standard_normal(v).astype(np.float32) for k, v in at.items()}
        got = dict(zip([o.name for o in probe.graph.output], run(probe, feeds), strict=True))
        for name, dims in declared.items():
            actual = got[name].shape
            assert len(dims) == len(actual), name
            for d, a in zip(dims, actual, strict=True):
                assert not isinstance(d, int) or d == a, f"{name}: declared {dims}, ran {actual}"


def test_without_a_shape_a_symbolic_spatial_dim_is_an_error(cli) -> None:
    with pytest.raises(InputShapeError, match=r"--input-shape x:1,3,\?,\?"):
        irprune.prune(recognizer(), target_flops=0.5, measure_latency=False)


def test_cli_exits_2_naming_the_option(cli, tmp_path: Path) -> None:
    path = tmp_path / "rec.onnx"
    onnx.save(recognizer(), path)
    code, _, err = cli(path, "--target-flops", "0.5", "--no-latency")
    assert code == 2 and "'x' dim 2 ('H')" in err and "--input-shape" in err
    assert not (tmp_path / "rec.pruned.onnx").exists()
    code, out, _ = cli("inspect", path, "--input-shape", "x:1,3,32,64")
    assert code == 0 and "at x:1x3x32x64" in out


def test_costs_and_target_hold_at_the_deployment_shape_by_the_independent_counter() -> None:
    model = recognizer()
    result = irprune.prune(
        model,
        target_flops=0.5,
        measure_latency=False,
        rewrite="drop",
        input_shapes=DEPLOY,
        round_to=1,
    )
    before, after = count_macs(model, DEPLOY), count_macs(result.model, DEPLOY)
    assert result.report["cost"]["before"]["macs"] == before
    assert 0.475 <= after / before <= 0.5
    assert result.report["input_shapes"]["inputs"] == {"x": [1, 3, 32, 64]}
    assert result.report["input_shapes"]["second"] == "x:2x3x64x128"
    # at 1x1 (the old silent default) the model costs 1/50 of this: the counts must differ
    assert count_macs(model, {"x": (1, 3, 1, 1)}) < before / 40


@pytest.mark.parametrize("rewrite", ["drop", "compensate", "reconstruct"])
def test_written_model_keeps_symbolic_dims_and_runs_at_other_sizes(rewrite: str) -> None:
    model = recognizer()
    calib = (
        {"x": RNG.standard_normal((16, 3, 32, 64)).astype(np.float32)}
        if rewrite == "reconstruct"
        else None
    )
    result = irprune.prune(
        model, target_flops=0.5, measure_latency=False, rewrite=rewrite, calib=calib,
        input_shapes=None if calib else DEPLOY, round_to=1,
    )  # fmt: skip
    pruned = result.model
    assert declared_dims(pruned.graph.input[0]) == ["N", 3, "H", "W"]
    assert declared_dims(pruned.graph.output[0]) == ["N", "L", 7]
    if calib is not None:  # the calibration data's shape, batch aside
        assert result.report["input_shapes"]["inputs"] == {"x": [1, 3, 32, 64]}
    sizes = [(1, 3, 32, 64), (3, 3, 16, 200), (2, 3, 64, 8)]
    assert_value_info_holds(pruned, [{"x": s} for s in sizes])
    with captured_warnings() as warned:
        from irprune.emit.verify import session

        sess = session(pruned.SerializeToString(), warnings=True)
        for s in sizes:
            (out,) = sess.run(None, {"x": RNG.standard_normal(s).astype(np.float32)})
            assert out.shape == (s[0], -(-s[2] // 4) * -(-s[3] // 16), 7)
    assert warned == []


def test_value_info_that_contradicts_the_graph_fails_verification() -> None:
    """The check is real: a model whose value_info pins the strided width (what a probe at
    placeholder sizes wrote) runs, but onnxruntime warns at a second shape; verify refuses it."""
    model = recognizer()
    model.graph.value_info.append(helper.make_tensor_value_info("t", 1, ["N", 1, 32]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", 1, ["N", 1, 7]))
    feeds = {"x": RNG.standard_normal((1, 3, 1, 1)).astype(np.float32)}
    second = {"x": RNG.standard_normal((2, 3, 64, 128)).astype(np.float32)}
    verify(model, feeds)  # at 1x1 the pinned dims happen to hold
    with pytest.raises(VerificationError, match="declared shapes do not hold"):
        verify(model, feeds, second=SecondShape(second, ((2, 128, 7),)))


def test_second_shape_output_mismatch_fails_verification() -> None:
    model = recognizer()
    second = {"x": RNG.standard_normal((2, 3, 64, 128)).astype(np.float32)}
    with pytest.raises(VerificationError, match="the original's"):
        verify(model, second=SecondShape(second, ((2, 64, 7),)))


def test_report_json_names_the_shape(cli, tmp_path: Path) -> None:
    path = tmp_path / "rec.onnx"
    onnx.save(recognizer(), path)
    code, out, _ = cli(
        path, "--target-flops", "0.5", "--no-latency", "--rewrite", "drop", "--round-to", "1",
        "--input-shape", "x:1,3,32,64", "--report", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, out
    assert "costs at input shape x:1x3x32x64; also verified at x:2x3x64x128" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input_shapes"]["source"] == {"x": "given"}
    written = onnx.load(tmp_path / "rec.pruned.onnx")
    ratio = count_macs(written, DEPLOY) / count_macs(recognizer(), DEPLOY)
    assert ratio == pytest.approx(report["cost"]["ratio"]["macs"])


def _set_dim(vi: onnx.ValueInfoProto, axis: int, value: int) -> None:
    dim = vi.type.tensor_type.shape.dim[axis]
    dim.Clear()
    dim.dim_value = value


def test_paddle_minus_one_dims_on_inputs_and_outputs() -> None:
    """paddle2onnx's classifier: input ``[-1, 3, '?', '?']``, output ``[-1, 2]`` (dim_value -1):
    refused as an "impossible shape" before; pruned at the given shape now, declarations kept."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], "c1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2"], ["b"], "c2", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["b"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["out"], "fc", transB=1),
    ]
    inits = {"w1": _w(64, 3, 3, 3), "w2": _w(32, 64, 3, 3), "fc": _w(2, 32)}
    model = make_model(nodes, [("x", [1, 3, "?", "?"])], [("out", [1, 2])], inits)
    _set_dim(model.graph.input[0], 0, -1)
    _set_dim(model.graph.output[0], 0, -1)
    with pytest.raises(InputShapeError, match=r"'x' dim 2; 'x' dim 3"):
        irprune.prune(model, target_flops=0.5, measure_latency=False)
    shapes = {"x": (1, 3, 48, 192)}
    result = irprune.prune(
        model, target_flops=0.5, measure_latency=False, input_shapes=shapes, round_to=1
    )
    assert declared_dims(result.model.graph.output[0]) == [-1, 2]
    assert declared_dims(result.model.graph.input[0]) == [-1, 3, "?", "?"]
    ratio = count_macs(result.model, shapes) / count_macs(model, shapes)
    assert 0.475 <= ratio <= 0.5
    assert result.report["input_shapes"]["second"] == "x:2x3x64x256"


def test_an_original_that_misdeclares_its_output_still_prunes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ddddocr's recognizer declares its output ``[1, seqlen]`` and returns ``[T, 1, C]``:
    onnxruntime warns on the original too. The pruned model keeps that declaration (outputs
    survive unchanged) and is not refused for the original's own warning, only for new ones."""
    model = recognizer()
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", 1, ["N", 1, 7]))
    result = irprune.prune(
        model, target_flops=0.5, measure_latency=False, input_shapes=DEPLOY, round_to=1
    )
    assert declared_dims(result.model.graph.output[0]) == ["N", 1, 7]
    assert "declares shapes its own runs contradict (out)" in caplog.text


def test_a_fixed_batch_model_takes_calibration_data_sample_by_sample() -> None:
    """ddddocr and most detectors declare batch 1: calibration data (batch on axis 0) is run in
    chunks the model accepts, for the reference run, the repair and verification alike."""
    model = recognizer()
    _set_dim(model.graph.input[0], 0, 1)
    calib = {"x": RNG.standard_normal((6, 3, 32, 64)).astype(np.float32)}
    with pytest.raises(Exception, match=r"(?i)invalid dimensions|index: 0"):
        run(model, calib)  # onnxruntime itself refuses the whole batch
    result = irprune.prune(model, target_flops=0.5, measure_latency=False, calib=calib, round_to=1)
    assert result.report["input_shapes"]["inputs"] == {"x": [1, 3, 32, 64]}
    assert result.report["fidelity"]["cosine"] > 0.9
    expected = np.concatenate(
        [run(result.model, {"x": calib["x"][k : k + 1]})[0] for k in range(6)]
    )
    from irprune.emit.verify import run_batched, session

    (got,) = run_batched(session(result.model), None, calib)
    np.testing.assert_array_equal(got, expected)


def test_a_fixed_batch_model_is_timed_at_its_one_sample() -> None:
    """The latency measurement takes the deployment shape too: batch 1, not the calibration
    set (ddddocr and PP-OCR det failed there with 'index: 0 Got: 128 Expected: 1')."""
    model = recognizer()
    _set_dim(model.graph.input[0], 0, 1)
    calib = {"x": RNG.standard_normal((6, 3, 32, 64)).astype(np.float32)}
    result = irprune.prune(model, target_flops=0.5, calib=calib, round_to=1)
    assert result.report["latency"]["batch"] == 1
    assert result.report["latency"]["after_ms"] > 0


def test_torch_backend_and_finetune_take_the_shape_from_the_prune_or_the_data() -> None:
    """``Result.to_torch()`` builds the module at the shape the model was pruned at, and
    ``irprune.finetune`` at its training data's shape: neither asks again."""
    torch = pytest.importorskip("torch")
    result = irprune.prune(
        recognizer(), target_flops=0.5, measure_latency=False, input_shapes=DEPLOY, round_to=1
    )
    x = RNG.standard_normal((2, 3, 32, 64)).astype(np.float32)
    module = result.to_torch()
    with torch.no_grad():
        (got,) = module.run({"x": x})
    (expected,) = run(result.model, {"x": x})
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    tuned = irprune.finetune(result.model, {"x": x}, teacher=recognizer(), epochs=1, batch=2)
    assert declared_dims(tuned.model.graph.input[0]) == ["N", 3, "H", "W"]
