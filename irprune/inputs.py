"""The data a user hands to ``prune``: calibration and training arrays, checked against the
model's inputs (names, one common batch on axis 0, dtypes, fixed dims), and the inputs of the
reference run (calibration data, else seeded random inputs at the deployment shape).

An input with no batch axis is given whole, the same value for every batch: a scalar (silero-vad's
``sr``, the sample rate that picks an If branch), or an array whose axis 0 the model fixes at a
size other than 1 and which has that size (a state ``[2, ?, 128]``). Every run on the data feeds
it whole (``emit.verify.run_batched``, ``passes.calibration.batches``). Without data, an integer
scalar input is a control value (a rate, a count, an index) that random values would only guess:
the reference run refuses it and asks for it in the calibration file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from irprune.emit.verify import random_inputs
from irprune.errors import CalibrationError
from irprune.ir import Graph
from irprune.shapes import InputShapes


def load_calibration(path: str | Path, graph: Graph) -> dict[str, np.ndarray]:
    """Arrays keyed by graph input name, batch on axis 0, checked against the model's inputs."""
    arrays = read_npz(path)
    check_inputs(arrays, graph, str(path))
    return arrays


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a readable .npz file ({exc})") from exc


def check_inputs(arrays: Mapping[str, np.ndarray], graph: Graph, where: str) -> None:
    """``arrays`` are exactly the graph's inputs, with one batch on axis 0 and their dtypes;
    inputs with no batch axis (``whole_inputs``) are exempt from the batch."""
    inputs = {v.name: v for v in graph.inputs if not v.is_const}
    if set(arrays) != set(inputs):
        raise CalibrationError(
            f"{where}: arrays {sorted(arrays)} do not match the model inputs {sorted(inputs)}"
        )
    whole = whole_inputs(arrays, graph)
    for name, arr in arrays.items():
        expected = onnx.helper.tensor_dtype_to_np_dtype(inputs[name].dtype)
        if arr.dtype != expected:
            raise CalibrationError(
                f"{where}: {name!r} is {arr.dtype}, the model expects {expected}"
            )
        shape = inputs[name].shape or ()
        skip = 0 if name in whole else 1
        if arr.ndim != len(shape) or any(
            isinstance(d, int) and d != s
            for d, s in zip(shape[skip:], arr.shape[skip:], strict=True)
        ):
            raise CalibrationError(
                f"{where}: {name!r} has shape {arr.shape}, model expects {shape}"
            )
    sizes = {k: a.shape[0] for k, a in arrays.items() if k not in whole}
    if not sizes:
        raise CalibrationError(f"{where}: only scalars given; the data needs a batch on axis 0")
    if len(set(sizes.values())) != 1 or min(sizes.values()) < 1:
        shown = ", ".join(f"{k!r} {n}" for k, n in sizes.items())
        raise CalibrationError(
            f"{where}: arrays need one common, non-empty batch on axis 0 (axis 0: {shown}; "
            "scalars, and inputs whose axis 0 the model fixes at a size other than 1 given at "
            "that size, are taken whole, the same for every batch)"
        )


def whole_inputs(arrays: Mapping[str, np.ndarray], graph: Graph) -> set[str]:
    """The inputs with no batch axis, fed whole to every run: scalars, and arrays whose axis 0
    the model fixes at a size other than 1 (``state: [2, ?, 128]``) at that size, when some
    other array carries the batch (else a fixed batch of that size, ``run_batched``)."""
    declared = {v.name: v.shape or () for v in graph.inputs}
    scalars = {k for k, a in arrays.items() if a.ndim == 0 or not declared.get(k)}
    fixed = {
        k
        for k, a in arrays.items()
        if k not in scalars and isinstance(d := declared[k][0], int) and d > 1 and a.shape[0] == d
    }
    rest = set(arrays) - scalars - fixed
    return scalars | fixed if rest else scalars


def batch_size(arrays: Mapping[str, np.ndarray], graph: Graph) -> int:
    """The common batch of checked ``arrays`` (axis 0 of those not taken whole)."""
    whole = whole_inputs(arrays, graph)
    return next(a.shape[0] for k, a in arrays.items() if k not in whole)


def read_calibration(calib: Any) -> dict[str, np.ndarray] | None:
    """Calibration arrays from a mapping or an .npz path, not yet checked; None: none."""
    if calib is None:
        return None
    if isinstance(calib, Mapping):
        return {k: np.asarray(v) for k, v in calib.items()}
    return read_npz(calib)


def array_shapes(arrays: Mapping[str, np.ndarray] | None) -> dict[str, tuple[int, ...]] | None:
    return None if arrays is None else {k: tuple(v.shape) for k, v in arrays.items()}


def calib_feeds(graph: Graph, calib: Any, where: str | None = None) -> dict[str, np.ndarray] | None:
    """Calibration arrays from a mapping or an .npz path, checked against the model's inputs
    (``where`` names them in errors); None: none."""
    arrays = read_calibration(calib)
    if arrays is not None:
        origin = "calibration data" if isinstance(calib, Mapping) else str(calib)
        check_inputs(arrays, graph, where or origin)
    return arrays


def training_data(
    graph: Graph, data: str | Path | Mapping[str, np.ndarray], labels: str = "labels"
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Training data (an .npz path or arrays): the model's inputs as for calibration, plus
    optional integer class labels under the key ``labels`` (one per sample)."""
    source = str(data) if not isinstance(data, Mapping) else "data"
    arrays = read_npz(data) if not isinstance(data, Mapping) else dict(data)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    y = arrays.pop(labels, None)
    check_inputs(arrays, graph, source)
    n = batch_size(arrays, graph)
    if y is not None and (y.shape != (n,) or not np.issubdtype(y.dtype, np.integer)):
        raise CalibrationError(f"{source}: {labels!r} must be {n} integer class labels")
    return arrays, y


def run_feeds(
    sess: Any, calib_feeds: dict[str, np.ndarray] | None, seed: int, shapes: InputShapes
) -> dict[str, np.ndarray]:
    """Inputs of the reference run: the calibration data, else seeded random inputs at the
    deployment shape (4 of them where the batch is symbolic)."""
    if calib_feeds is None:
        guessed = [
            f"{inp.name!r} ({inp.type.removeprefix('tensor(').rstrip(')')})"
            for inp in sess.get_inputs()
            if not inp.shape and inp.type in _INTEGER_TYPES
        ]
        if guessed:
            raise CalibrationError(
                f"integer scalar input {', '.join(guessed)}: a control value (a rate, a count, "
                "an index) that random inputs would only guess (the model may refuse them); pass "
                "the value the model runs with in a calibration file (--calib FILE.npz, API "
                "calib=: a 0-d array, taken whole, beside the other inputs' arrays, batch on "
                "axis 0)"
            )
        return random_inputs(sess, shapes=shapes.feed_shapes(4), seed=seed)
    return calib_feeds


_INTEGER_TYPES = frozenset(
    f"tensor({t})"
    for t in ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8")
)


def first_sample(feeds: Mapping[str, np.ndarray], shapes: InputShapes) -> dict[str, np.ndarray]:
    """The first sample of ``feeds`` at the deployment shape: every batch axis cut to 1
    (``state: [2, batch, 128]`` along its axis 1), and a model whose batch is fixed (declared 1)
    given its first sample, not the calibration set's 128 at once."""
    out = {}
    for name, array in feeds.items():
        index = [slice(None)] * array.ndim
        for axis in shapes.batch_axes.get(name, ()):
            if axis < array.ndim:
                index[axis] = slice(0, 1)
        sample = shapes.sample.get(name)
        if sample is not None and len(sample) == array.ndim:
            for axis, size in enumerate(sample):
                if array.shape[axis] > size:
                    index[axis] = slice(0, size)
        out[name] = array[tuple(index)]
    return out
