"""Fast tests of the digits data, architectures and export (no training here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from models import digits  # noqa: E402
from models.reference import randomize_batchnorm  # noqa: E402


@pytest.fixture(scope="module")
def split() -> digits.DigitsSplit:
    return digits.load_digits_split(seed=0)


def test_split_is_deterministic(split: digits.DigitsSplit) -> None:
    again = digits.load_digits_split(seed=0)
    for field in ("x_train", "y_train", "x_test", "y_test", "train_index", "test_index"):
        np.testing.assert_array_equal(getattr(split, field), getattr(again, field))
    other = digits.load_digits_split(seed=1)
    assert not np.array_equal(split.test_index, other.test_index)


def test_split_is_stratified_and_disjoint(split: digits.DigitsSplit) -> None:
    assert (len(split.y_train), len(split.y_test)) == (1347, 450)
    assert not set(split.train_index) & set(split.test_index)
    assert len(set(split.train_index) | set(split.test_index)) == 1797
    train_frac = np.bincount(split.y_train, minlength=10) / len(split.y_train)
    test_frac = np.bincount(split.y_test, minlength=10) / len(split.y_test)
    np.testing.assert_allclose(train_frac, test_frac, atol=0.005)


def test_shapes_dtypes_and_normalisation(split: digits.DigitsSplit) -> None:
    assert split.x_train.shape == (1347, 3, 32, 32)
    assert split.x_test.shape == (450, 3, 32, 32)
    assert split.x_train.dtype == split.x_test.dtype == np.float32
    assert split.y_train.dtype == split.y_test.dtype == np.int64
    assert set(np.unique(split.y_test)) == set(range(10))
    assert abs(float(split.x_train.mean())) < 1e-4
    assert abs(float(split.x_train.std()) - 1.0) < 1e-4
    assert abs(float(split.x_test.mean())) < 0.1  # test split uses the training statistics
    np.testing.assert_array_equal(split.x_train[:, 0], split.x_train[:, 2])  # repeated grey


def test_npz_files_calib_from_train_only(split: digits.DigitsSplit, tmp_path: Path) -> None:
    calib_path, test_path = digits.digits_npz(split, tmp_path)
    with np.load(calib_path) as calib, np.load(test_path) as test:
        assert list(calib) == ["input"]
        x_calib = calib["input"]
        np.testing.assert_array_equal(test["input"], split.x_test)
        np.testing.assert_array_equal(test["labels"], split.y_test)
    assert x_calib.shape == (256, 3, 32, 32) and x_calib.dtype == np.float32
    rows = digits.calib_subset(split)
    np.testing.assert_array_equal(x_calib, split.x_train[rows])
    calib_images = {x.tobytes() for x in x_calib}
    assert len(calib_images) == 256
    assert not calib_images & {x.tobytes() for x in split.x_test}
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("name", list(digits.ARCHITECTURES))
def test_architecture_forward(name: str) -> None:
    model = digits.build(name).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert digits.count_macs(model) > 1_000_000


def test_architecture_structure() -> None:
    resnet = digits.build("resnet20")
    blocks = [m for m in resnet.modules() if isinstance(m, digits.BasicBlock)]
    assert len(blocks) == 9
    assert sum(b.shortcut is not None for b in blocks) == 2  # option-B projections
    mbv2 = digits.build("mobilenetv2_small")
    inverted = [m for m in mbv2.modules() if isinstance(m, digits.InvertedResidual)]
    assert len(inverted) == 9 and sum(b.residual for b in inverted) == 4


def test_build_is_seeded() -> None:
    a, b = digits.build("vgg_small", seed=3), digits.build("vgg_small", seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.fixture(scope="module")
def untrained_resnet20(split: digits.DigitsSplit) -> torch.nn.Module:
    """Untrained resnet20 with non-identity BatchNorm (random params, calibrated stats)."""
    model = digits.build("resnet20", seed=0)
    gen = torch.Generator().manual_seed(1)
    randomize_batchnorm(model, torch.from_numpy(split.x_train[:32]), gen)
    return model.eval()


@pytest.mark.parametrize("style", ["folded", "explicit"])
def test_export_untrained_resnet20(
    style: str, split: digits.DigitsSplit, untrained_resnet20: torch.nn.Module, tmp_path: Path
) -> None:
    sample = split.x_test[:16]
    path = digits.export_digits(untrained_resnet20, tmp_path / "r.onnx", style, sample)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 13
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Add") == 9  # every residual add is a real Add node
    assert ops.count("BatchNormalization") == (0 if style == "folded" else 21)
    assert digits._check_against_torch(path, untrained_resnet20, split.x_test[16:48]) <= 1e-4
    with torch.no_grad():
        expected = untrained_resnet20(torch.from_numpy(sample)).argmax(1).numpy()
    assert digits.accuracy(path, sample, expected, batch=5) == 1.0
    assert digits.accuracy(model, sample, expected) == 1.0
