"""The properties every pruned fuzz graph must have, shared by the test and benchmarks/fuzz.py.

For each generated graph and random settings, ``irprune.prune`` either raises ``TargetError``
with a message that names the target, or returns a model that

- passes ``onnx.checker`` (full check) and runs in onnxruntime;
- has the same graph inputs and outputs (names, dtypes, shapes) and opsets;
- costs a MAC (or parameter) ratio in [target - 0.02, target], counted by tests/oracles.py
  (no shared code);
- for ``drop``: equals the masked original (tests/helpers.py) within 1e-4 relative.

Graphs with symbolic H and W are pruned at their deployment shape (``input_shapes``, or the
calibration data's shape), costed there by the oracle, and must run at a second size wherever
the original does, with the original's output shapes.

Any other exception is a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import strategies as st

from irprune.api import prune
from irprune.emit.verify import random_inputs, session
from irprune.errors import TargetError, UnsupportedOpError
from irprune.passes.importance import DATA_DRIVEN, DATA_FREE
from irprune.passes.importance.gradient import GRADIENT
from tests.fuzz.graphs import Case
from tests.helpers import rel_diff, run
from tests.oracles import count_macs, count_params
from tests.reference_mask import masked_reference

WINDOW = 0.02
MASKED_TOL = 1e-4


@dataclass(frozen=True)
class Settings:
    metric: str  # "flops" or "params"
    target: float
    criterion: str
    strategy: str
    rewrite: str
    calib: bool
    round_to: int
    max_prune: float
    seed: int


@st.composite
def prune_settings(draw: st.DrawFn) -> Settings:
    calib = draw(st.booleans())
    criteria = [*DATA_FREE, *(DATA_DRIVEN if calib else ())]
    strategies = ["global", "uniform", *(["sensitivity"] if calib else [])]
    rewrites = ["drop", "merge", "compensate", *(["reconstruct"] if calib else [])]
    return Settings(
        metric=draw(st.sampled_from(("flops", "flops", "params"))),
        target=draw(st.floats(0.2, 1.0, exclude_min=True, allow_nan=False)),
        criterion=draw(st.sampled_from(criteria)),
        strategy=draw(st.sampled_from(strategies)),
        rewrite=draw(st.sampled_from(rewrites)),
        calib=calib,
        round_to=draw(st.sampled_from((1, 1, 2, 4, 8, 16))),
        max_prune=draw(st.sampled_from((0.9, 0.9, 0.5, 1.0))),
        seed=draw(st.integers(0, 1000)),
    )


def _calib(case: Case, seed: int) -> dict[str, np.ndarray]:
    return _feeds(case, 8, seed + 1)


def _feeds(case: Case, batch: int, seed: int, scale: int = 1) -> dict[str, np.ndarray]:
    (shape,) = case.feed_shape(batch).values()
    if scale != 1:
        shape = (*shape[:2], *(d * scale for d in shape[2:]))
    return random_inputs(session(case.model), shapes={"input": shape}, seed=seed)


def _second_size(case: Case, pruned: onnx.ModelProto, seed: int) -> None:
    """Symbolic H and W: where the original runs at twice the size, so does the pruned model,
    with the same output shapes."""
    feeds = _feeds(case, 2, seed, scale=2)
    try:
        expected = run(case.model, feeds)
    except Exception:  # onnxruntime: the original itself is fixed to its size (e.g. Flatten->Gemm)
        return
    got = run(pruned, feeds)
    assert [g.shape for g in got] == [e.shape for e in expected], "second size: shapes differ"


def _check_target_error(text: str, target: float) -> None:
    """One line naming the target, and its claim is consistent: the floor costs more than the
    target, or the closest achievable ratios fall on either side of the window."""
    assert "\n" not in text and f"target {target:g}" in text, text
    floor = re.search(r"the model keeps (\d+\.\d+)", text)
    land = re.search(r"the closest widths give (\d+\.\d+)(?: or (\d+\.\d+))?", text)
    assert floor or land, text
    if floor:
        assert float(floor.group(1)) >= target - 5e-4, text  # printed to 3 decimals
    if land:
        assert float(land.group(1)) < target - WINDOW + 5e-5, text
        if land.group(2):
            assert float(land.group(2)) > target - 5e-5, text


def per_sample(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with a fixed batch dim set to 1, for tests/oracles.py.

    The oracle counts Conv per sample but Gemm/MatMul over their whole leading dim, so on a graph
    with a fixed batch of 2 its ratio mixes per-sample and per-batch terms. The generator builds
    every Reshape with a copied (0) batch dim, so rebinding the batch is safe here.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in (*out.graph.input, *out.graph.output):
        dim = vi.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            dim.dim_value = 1
    return out


def check(case: Case, s: Settings) -> str:
    """Prune ``case`` with ``s`` and assert every property.

    Returns the outcome: pruned, pruned-masked-checked (drop) or target-error.
    """
    model = case.model
    calib = _calib(case, s.seed) if s.calib else None
    # without data the deployment shape is given; with data it comes from the data's shape
    shapes = {"input": case.deploy} if case.deploy is not None and calib is None else None
    try:
        result = prune(
            model,
            target_flops=s.target if s.metric == "flops" else None,
            target_params=s.target if s.metric == "params" else None,
            criterion=s.criterion,
            strategy=s.strategy,
            rewrite=s.rewrite,
            calib=calib,
            round_to=s.round_to,
            max_prune=s.max_prune,
            seed=s.seed,
            measure_latency=False,
            input_shapes=shapes,
        )
    except TargetError as exc:
        _check_target_error(str(exc), s.target)
        return "target-error"
    except UnsupportedOpError as exc:
        # gradient criteria run the whole graph in torch: an op the backend lacks is named
        assert s.criterion in GRADIENT and "\n" not in str(exc), str(exc)
        return "unsupported-op"
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    assert list(pruned.graph.input) == list(model.graph.input), "graph inputs changed"
    assert list(pruned.graph.output) == list(model.graph.output), "graph outputs changed"
    assert list(pruned.opset_import) == list(model.opset_import), "opsets changed"
    feeds = _feeds(case, 2, s.seed + 2)
    got = run(pruned, feeds)
    assert all(np.isfinite(o).all() for o in got), "non-finite outputs"
    if case.deploy is not None:
        _second_size(case, pruned, s.seed + 3)
        assert result.report["input_shapes"]["inputs"]["input"][2:] == list(case.deploy[2:])
    deploy = {"input": (1, *case.deploy[1:])} if case.deploy is not None else None
    if s.metric == "flops":
        ratio = count_macs(per_sample(pruned), deploy) / count_macs(per_sample(model), deploy)
    else:
        ratio = count_params(per_sample(pruned)) / count_params(per_sample(model))
    assert s.target - WINDOW - 1e-9 <= ratio <= s.target + 1e-9, (
        f"{s.metric} ratio {ratio:.4f} (oracle) outside [{s.target - WINDOW:.4f}, {s.target:.4f}]"
    )
    if s.rewrite == "drop" and result.plan is not None:
        expected = run(masked_reference(model, result.analysis, result.plan), feeds)
        for e, g in zip(expected, got, strict=True):
            assert e.shape == g.shape
            err = rel_diff(e, g)
            assert err <= MASKED_TOL, f"masked equivalence violated: {err:.3g}"
        return "pruned-masked-checked"
    return "pruned"
