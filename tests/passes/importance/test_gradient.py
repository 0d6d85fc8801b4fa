"""Gradient criteria (taylor, hessian) on graphs where the right answer is known, and end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from irprune.errors import CalibrationError, MissingDependencyError, UsageError
from irprune.frontends.onnx import import_model
from irprune.passes.analysis.channels import analyze
from irprune.passes.importance import score
from tests.helpers import make_model

pytest.importorskip("torch")

RNG = np.random.default_rng(0)
C = 6


def _two_convs(w1: np.ndarray, w2: np.ndarray, b1: np.ndarray | None = None) -> onnx.ModelProto:
    inputs = ["x", "w1", "b1"] if b1 is not None else ["x", "w1"]
    nodes = [
        helper.make_node("Conv", inputs, ["a"], "c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["out"], "c2"),
    ]
    inits = {"w1": w1, "w2": w2} | ({"b1": b1} if b1 is not None else {})
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("out", ["N", 4, 6, 6])], inits)


def _calib(n: int = 24, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)}


def _scores(model: onnx.ModelProto, criterion: str, **kw) -> np.ndarray:  # type: ignore[no-untyped-def]
    graph = import_model(model)
    analysis = analyze(graph)
    (group,) = [g for g in analysis.prunable if g.sources[0].node == "c1"]
    calib = kw.pop("calib", _calib())
    return np.asarray(score(graph, analysis, criterion, calib=calib, **kw).by_group[group.id])


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_channel_the_output_ignores_scores_zero(criterion: str) -> None:
    w1 = RNG.standard_normal((C, 3, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((4, C, 1, 1)).astype(np.float32)
    w2[:, 2] = 0.0  # removing channel 2 cannot change the output
    s = _scores(_two_convs(w1, w2, RNG.standard_normal(C).astype(np.float32)), criterion)
    assert s[2] == 0.0
    assert np.all(np.delete(s, 2) > 0)


@pytest.mark.parametrize(("criterion", "power"), [("taylor", 1), ("hessian", 2)])
def test_scores_follow_how_much_the_output_uses_a_channel(criterion: str, power: int) -> None:
    """Identical filters, consumer columns scaled by s_c: every channel's gradient is s_c times
    the same one, so taylor ~ s_c and hessian ~ s_c^2, exactly."""
    w1 = np.repeat(RNG.standard_normal((1, 3, 3, 3)), C, axis=0).astype(np.float32)
    column = RNG.standard_normal((4, 1, 1, 1)).astype(np.float32)
    scale = np.array([1.0, 3.0, 0.5, 2.0, 4.0, 1.5], dtype=np.float32)
    w2 = (column * scale.reshape(1, C, 1, 1)).astype(np.float32)
    s = _scores(_two_convs(w1, w2), criterion)
    expected = scale.astype(np.float64) ** power
    np.testing.assert_allclose(s / s[0], expected / expected[0], rtol=1e-4)


def _bn_pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The same function with BatchNormalization explicit, and folded into the conv."""
    w1 = RNG.standard_normal((C, 3, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((4, C, 1, 1)).astype(np.float32)
    gamma, beta = RNG.uniform(0.5, 2, C), RNG.standard_normal(C)
    mean, var = RNG.standard_normal(C), RNG.uniform(0.5, 2, C)
    factor = gamma / np.sqrt(var + 1e-5)
    folded = _two_convs(
        (w1 * factor.reshape(C, 1, 1, 1)).astype(np.float32),
        w2,
        (beta - mean * factor).astype(np.float32),
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], "c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["out"], "c2"),
    ]
    params = {"g": gamma, "b": beta, "m": mean, "v": var}
    inits = {"w1": w1, "w2": w2} | {k: v.astype(np.float32) for k, v in params.items()}
    explicit = make_model(nodes, [("x", ["N", 3, 6, 6])], [("out", ["N", 4, 6, 6])], inits)
    return explicit, folded


def test_folded_and_explicit_bn_score_the_same_taylor() -> None:
    """sum(w * g) over BN's scale and bias equals it over the folded conv's filter and bias."""
    explicit, folded = _bn_pair()
    np.testing.assert_allclose(_scores(explicit, "taylor"), _scores(folded, "taylor"), rtol=1e-5)


def _classifier() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], "c1", transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["logits"], "c2", transB=1),
    ]
    inits = {
        "w1": RNG.standard_normal((C, 5)).astype(np.float32),
        "b1": RNG.standard_normal(C).astype(np.float32),
        "w2": RNG.standard_normal((3, C)).astype(np.float32),
    }
    return make_model(nodes, [("x", ["N", 5])], [("logits", ["N", 3])], inits)


def test_labels_give_a_task_loss_and_are_checked() -> None:
    model = _classifier()
    calib = {"x": RNG.standard_normal((32, 5)).astype(np.float32)}
    labels = np.random.default_rng(2).integers(0, 3, 32)
    with_labels = _scores(model, "taylor", calib=calib, labels=labels)
    distilled = _scores(model, "taylor", calib=calib)
    assert with_labels.shape == distilled.shape == (C,)
    assert not np.allclose(with_labels, distilled)
    again = _scores(model, "taylor", calib=calib, labels=labels)
    np.testing.assert_array_equal(with_labels, again)  # seeded and deterministic
    with pytest.raises(CalibrationError, match="rows"):
        _scores(model, "taylor", calib=calib, labels=labels[:10])
    with pytest.raises(UsageError, match="gradient criteria only"):
        _scores(model, "apoz", calib=calib, labels=labels)


def test_gradient_criteria_need_calibration_data() -> None:
    graph = import_model(_classifier())
    with pytest.raises(UsageError, match="needs calibration data"):
        score(graph, analyze(graph), "taylor")


def test_missing_torch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "irprune.backends.torch", None)
    with pytest.raises(MissingDependencyError, match=r"irprune\[torch\]"):
        _scores(_classifier(), "hessian", calib={"x": np.zeros((4, 5), np.float32)})


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_cli_end_to_end(tmp_path: Path, criterion: str, capsys: pytest.CaptureFixture) -> None:
    from irprune.cli import main
    from irprune.demo import build_demo_model
    from tests.helpers import run

    model_path = tmp_path / "demo.onnx"
    onnx.save(build_demo_model(seed=0, explicit_bn=True), model_path)
    calib = tmp_path / "calib.npz"
    x = np.random.default_rng(3).standard_normal((32, 3, 32, 32)).astype(np.float32)
    np.savez(calib, input=x)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    argv = [str(model_path), "--target-flops", "0.5", "--criterion", criterion]
    code = main([*argv, "--calib", str(calib), "-o", str(out), "--report", str(report)])
    assert code == 0
    import json

    data = json.loads(report.read_text())
    assert data["settings"]["criterion"] == criterion
    assert 0.48 <= data["cost"]["ratio"]["macs"] <= 0.5
    assert run(onnx.load(out), {"input": x[:2]})[0].shape == (2, 10)
    assert main([*argv, "-o", str(tmp_path / "x.onnx")]) == 2
    assert "needs calibration data" in capsys.readouterr().err


def test_auto_is_taylor_with_data_and_l1_without() -> None:
    """``auto`` (the default criterion): taylor's known answer with calibration data (a channel
    the output ignores scores 0, which l1 cannot see), l1's without."""
    w1 = RNG.standard_normal((C, 3, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((4, C, 1, 1)).astype(np.float32)
    w2[:, 2] = 0.0
    model = _two_convs(w1, w2, RNG.standard_normal(C).astype(np.float32))
    graph = import_model(model)
    analysis = analyze(graph)
    with_data = score(graph, analysis, "auto", calib=_calib())
    assert with_data.criterion == "taylor"
    (gid,) = with_data.by_group
    assert with_data.by_group[gid][2] == 0.0
    without = score(graph, analysis, "auto")
    assert without.criterion == "l1" and without.by_group[gid][2] > 0
    np.testing.assert_array_equal(without.by_group[gid], score(graph, analysis, "l1").by_group[gid])


def test_auto_falls_back_to_l1_where_torch_cannot_run_the_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from irprune.errors import UnsupportedOpError
    from irprune.passes.importance import gradient

    def no_backend(*args: object, **kwargs: object) -> None:
        raise UnsupportedOpError("the torch backend has no implementation of ai.onnx::LSTM")

    monkeypatch.setattr(gradient, "scores", no_backend)
    model = _two_convs(
        RNG.standard_normal((C, 3, 3, 3)).astype(np.float32),
        RNG.standard_normal((4, C, 1, 1)).astype(np.float32),
    )
    graph = import_model(model)
    analysis = analyze(graph)
    assert score(graph, analysis, "auto", calib=_calib()).criterion == "l1"
    with pytest.raises(UnsupportedOpError):
        score(graph, analysis, "taylor", calib=_calib())


def test_prune_reports_the_criterion_auto_chose() -> None:
    import irprune

    model = _two_convs(
        RNG.standard_normal((8, 3, 3, 3)).astype(np.float32),
        RNG.standard_normal((4, 8, 1, 1)).astype(np.float32),
    )
    kw = dict(target_flops=0.625, measure_latency=False, round_to=1)
    calibrated = irprune.prune(model, calib=_calib(), **kw)
    assert calibrated.report["settings"]["criterion"] == "taylor"
    assert calibrated.report["settings"]["criterion_asked"] == "auto"
    assert irprune.prune(model, rewrite="drop", **kw).report["settings"]["criterion"] == "l1"
