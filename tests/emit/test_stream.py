"""Large models: lazily mapped external weights, the streaming emitter, verification from a path.

Small models stand in for large ones: the streaming path is forced by external data in the input
or by ``stream_threshold``; the result must equal the eager, in-memory path bit for bit."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from irprune import prune
from irprune.demo import build_demo_model
from irprune.emit.stream import stage
from irprune.emit.verify import session, verify
from irprune.errors import InvalidModelError, VerificationError
from irprune.frontends.onnx import import_model, map_external, read_source
from irprune.ir.mapped import is_mapped, release
from tests.conftest import CliRun
from tests.helpers import stored_as

FEEDS = {"input": np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)}


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    """Save a copy with every tensor in one external file (onnx.save edits the proto it gets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save(
        copy,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


MODELS = {
    "fp32": build_demo_model,
    "fp16-stored": lambda: stored_as(build_demo_model(), TensorProto.FLOAT16),
    "bf16-stored": lambda: stored_as(build_demo_model(), TensorProto.BFLOAT16),
}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_external_weights_are_mapped_read_only(tmp_path: Path) -> None:
    model = build_demo_model()
    src = _save_external(model, tmp_path / "m.onnx")
    lazy, eager = import_model(src), import_model(model)
    big = [v for v in lazy.constants() if v.const is not None and v.const.size > 512]
    assert len(big) >= 8
    for v in big:
        assert isinstance(v.const, np.memmap) and not v.const.flags.writeable, v.name
        np.testing.assert_array_equal(v.const, eager.values[v.name].const)
    small = [v for v in lazy.constants() if v.const is not None and v.const.size <= 512]
    assert small and not any(is_mapped(v.const) for v in small)  # read when the model is read


@pytest.mark.parametrize("kind", MODELS)
def test_lazy_prune_writes_external_data_equal_to_the_eager_path(kind: str, tmp_path: Path) -> None:
    model = MODELS[kind]()
    inline = tmp_path / "inline.onnx"
    onnx.save(model, str(inline))
    src = _save_external(model, tmp_path / "ext" / "m.onnx")
    eager = prune(inline, target_flops=0.5, measure_latency=False)
    lazy = prune(src, target_flops=0.5, measure_latency=False)
    assert eager.staged is None and lazy.staged is not None
    eager.save(tmp_path / "eager.onnx")
    (tmp_path / "out").mkdir()
    lazy.save(tmp_path / "out" / "p.onnx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.onnx", "p.onnx.data"]
    stored = onnx.load(str(tmp_path / "out" / "p.onnx"), load_external_data=False)
    locations = {e.value for t in stored.graph.initializer for e in t.external_data}
    assert "p.onnx.data" in locations
    want, got = _initializers(tmp_path / "eager.onnx"), _initializers(tmp_path / "out" / "p.onnx")
    assert want.keys() == got.keys()
    for name, array in want.items():
        assert array.dtype == got[name].dtype and np.array_equal(array, got[name]), name
    (a,) = session(tmp_path / "eager.onnx").run(None, FEEDS)
    (b,) = session(tmp_path / "out" / "p.onnx").run(None, FEEDS)
    assert np.array_equal(a, b)
    assert lazy.report["cost"] == eager.report["cost"]
    assert lazy.report["fidelity"] == eager.report["fidelity"]


def test_streaming_is_forced_by_the_threshold(tmp_path: Path) -> None:
    model = build_demo_model()
    plain = prune(model, target_flops=0.5, measure_latency=False)
    streamed = prune(
        model, target_flops=0.5, stream_threshold=0, stage_dir=tmp_path, latency_threads=1
    )
    assert plain.staged is None and streamed.staged is not None
    assert streamed.report["latency"]["interleaved"] is False  # over the threshold: one by one
    staging = streamed.staged.folder
    assert staging is not None and staging.parent == tmp_path
    out = streamed.save(tmp_path / "s.onnx")
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx", "s.onnx.data"]
    stored = onnx.load(str(out), load_external_data=False)
    offsets = [
        int(e.value) for t in stored.graph.initializer for e in t.external_data if e.key == "offset"
    ]
    assert len(offsets) >= 8 and all(o % 4096 == 0 for o in offsets)
    streamed.save(tmp_path / "again.onnx")  # a second save copies the published files
    assert (tmp_path / "s.onnx.data").is_file() and (tmp_path / "again.onnx.data").is_file()
    (want,) = session(plain.model).run(None, FEEDS)
    for path in (out, tmp_path / "again.onnx"):
        (got,) = session(path).run(None, FEEDS)
        assert np.array_equal(want, got)


def test_an_unpublished_stage_is_removed(tmp_path: Path) -> None:
    graph = import_model(build_demo_model())
    staged = stage(graph, tmp_path)
    folder = staged.folder
    assert folder is not None and staged.data_path.stat().st_size > 100_000
    verify(staged.model_path, FEEDS)
    del staged
    gc.collect()
    assert not folder.exists() and list(tmp_path.iterdir()) == []


def test_verification_from_a_path_refuses_a_broken_model(tmp_path: Path) -> None:
    graph = import_model(build_demo_model())
    staged = stage(graph, tmp_path)
    model = onnx.load(str(staged.model_path), load_external_data=False)
    model.graph.node[0].input[1] = "nowhere"
    staged.model_path.write_bytes(model.SerializeToString())
    with pytest.raises(VerificationError, match=r"onnx\.checker"):
        verify(staged.model_path)


def test_mapped_tensor_must_fit_its_file(tmp_path: Path) -> None:
    src = _save_external(build_demo_model(), tmp_path / "m.onnx")
    loaded = read_source(src)
    assert loaded.lazy and loaded.folder == tmp_path.resolve()
    tensor = next(t for t in loaded.model.graph.initializer if t.external_data)
    for key, value in (("offset", str(1 << 40)), ("location", "../m.onnx")):
        bad = onnx.TensorProto()
        bad.CopyFrom(tensor)
        next(e for e in bad.external_data if e.key == key).value = value
        with pytest.raises(InvalidModelError, match=str(tensor.name)):
            map_external(bad, tmp_path.resolve())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_release_drops_the_pages_of_one_tensor_and_keeps_values(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    data = np.random.default_rng(0).standard_normal(8 << 20).astype(np.float32)  # 32 MB
    data.tofile(path)
    whole = np.memmap(path, dtype=np.uint8, mode="r")  # as the frontend maps a data file
    first, second = (whole[k << 24 : (k + 1) << 24].view(np.float32) for k in (0, 1))
    before = _rss_file_kb()
    sums = [float(t.sum(dtype=np.float64)) for t in (first, second)]
    touched = _rss_file_kb()
    release(first[::2])  # a strided view: the pages under the tensor it views
    released = _rss_file_kb()
    assert touched - before > 28_000
    assert 12_000 < touched - released < 20_000  # the first 16 MB only
    assert [float(t.sum(dtype=np.float64)) for t in (first, second)] == sums
    release(data)  # in-memory data: nothing happens


def _rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_in_place_replaces_the_weights_the_input_was_mapped_from(
    tmp_path: Path, cli: CliRun
) -> None:
    """m.onnx + m.onnx.data pruned in place: the new data file is renamed over the mapped one."""
    model = build_demo_model()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    src = tmp_path / "m.onnx"
    onnx.save(copy, str(src), save_as_external_data=True, location="m.onnx.data")
    before = (tmp_path / "m.onnx.data").stat().st_size
    code, _, err = cli(src, "--target-flops", "0.5", "--in-place", "--no-latency")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size < 0.75 * before
    (want,) = session(prune(model, target_flops=0.5, measure_latency=False).model).run(None, FEEDS)
    (got,) = session(src).run(None, FEEDS)
    assert np.array_equal(want, got)
