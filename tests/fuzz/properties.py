"""The properties every pruned fuzz graph must have, shared by the test and benchmarks/fuzz.py.

For each generated graph and random settings, ``irprune.prune`` either raises ``TargetError``
with a message that names the target, or returns a model that

- passes ``onnx.checker`` (full check) and runs in onnxruntime;
- has the same graph inputs and outputs (names, dtypes, shapes) and opsets;
- costs a MAC (or parameter) ratio in [target - 0.02, target], counted by tests/oracles.py
  (no shared code);
- equals the masked original (tests/reference_mask.py, an independent oracle) within 1e-4
  relative: for ``drop`` the returned model itself; for the rewrites that change weights
  (``merge``, ``compensate``, ``reconstruct``) the same plan dropped once more
  (``irprune.passes.rewrite.drop`` on a fresh import), which also must be a valid model.
  Where the oracle has no taint rule for an op it raises ``ReferenceUnsupported``; the example
  is then counted as such (``Outcome.unsupported``), not as checked.

The target is mostly drawn from what the drawn graph can reach: a dry run at a tiny target
reports the floor (the cost with every prunable group at its floor), and the target is drawn
in (floor, 1]. About one example in five keeps a target drawn in (0.2, 1] regardless, so refusals
stay exercised; every refusal must name the target and be consistent (``_check_target_error``).

Graphs with symbolic H and W are pruned at their deployment shape (``input_shapes``, or the
calibration data's shape), costed there by the oracle, and must run at a second size wherever
the original does, with the original's output shapes.

Any other exception is a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st

from irprune.api import prune
from irprune.emit import to_model
from irprune.emit.verify import random_inputs, session
from irprune.errors import TargetError, UnsupportedOpError
from irprune.frontends.onnx import import_model
from irprune.passes.fold import fold_constants
from irprune.passes.importance import DATA_DRIVEN, DATA_FREE
from irprune.passes.importance.gradient import GRADIENT
from irprune.passes.rewrite.drop import drop
from tests.fuzz.graphs import Case
from tests.helpers import rel_diff, run
from tests.oracles import count_macs, count_params
from tests.reference_mask import ReferenceUnsupported, masked_reference

WINDOW = 0.02
MASKED_TOL = 1e-4


@dataclass(frozen=True)
class Settings:
    metric: str  # "flops" or "params"
    target: float  # absolute target (with ``reach`` None), else unused
    reach: float | None  # the target's place in (floor, 1]; None: ``target`` as drawn
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
        # about one in five: the absolute target, reachable or not (refusals stay exercised);
        # middle values, as hypothesis favours the ends of a range
        reach=None if draw(st.integers(0, 7)) in (2, 5) else draw(st.floats(0.0, 1.0)),
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


@dataclass(frozen=True)
class Outcome:
    """How one example ended: ``kind`` is pruned, target-error or unsupported-op; a pruned one
    says whether the masked-equivalence oracle checked it (``masked``: on the returned model for
    ``drop``, on a drop of the same plan otherwise) or, if not, why (``unsupported``: the
    oracle's ``ReferenceUnsupported`` message)."""

    kind: str
    target: float
    floor: float | None = None  # the reachable floor the target was drawn above
    masked: bool = False
    unsupported: str | None = None
    refusal: str | None = None  # a target error's message


TINY = 1e-6  # a target no graph reaches: the dry run's refusal states the floor


def _prune(case: Case, s: Settings, target: float, calib: Any, **extra: Any) -> Any:
    # without data the deployment shape is given; with data it comes from the data's shape
    shapes = {"input": case.deploy} if case.deploy is not None and calib is None else None
    return prune(
        case.model,
        target_flops=target if s.metric == "flops" else None,
        target_params=target if s.metric == "params" else None,
        criterion=s.criterion,
        calib=calib,
        round_to=s.round_to,
        max_prune=s.max_prune,
        seed=s.seed,
        measure_latency=False,
        input_shapes=shapes,
        **extra,
    )


def reachable_floor(case: Case, s: Settings, calib: Any) -> float:
    """The lowest cost ratio the allocation can reach on this graph with these floors, from a
    dry run at a tiny target (planning only; the sensitivity strategy's curves are not needed
    for the floor, so the dry run plans globally)."""
    try:
        _prune(case, s, TINY, calib, strategy="global", rewrite="drop", dry_run=True)
    except TargetError as exc:
        _check_target_error(str(exc), TINY)
        floor = re.search(r"the model keeps (\d+\.\d+)", str(exc))
        assert floor, str(exc)
        return float(floor.group(1))
    return 0.0


def _target(case: Case, s: Settings, calib: Any) -> tuple[float, float | None]:
    if s.reach is None:
        return s.target, None
    floor = reachable_floor(case, s, calib)
    # printed to 3 decimals: 1e-3 above it is reachable by the floor itself
    return min(1.0, floor + 1e-3 + s.reach * (1.0 - floor)), floor


def _masked_check(
    case: Case, s: Settings, result: Any, calib: Any, got: list[np.ndarray], feeds: Any
) -> str | None:
    """Compare with the independent masked original; the oracle's refusal, or None."""
    try:
        reference = masked_reference(case.model, result.analysis, result.plan)
    except ReferenceUnsupported as exc:
        return str(exc)
    if s.rewrite != "drop":
        # the same plan, dropped: what the weight-changing rewrites start from
        shapes = {"input": case.deploy} if case.deploy is not None else None
        if calib is not None:
            shapes = {"input": next(iter(calib.values())).shape}
        graph = import_model(case.model, input_shapes=shapes)
        fold_constants(graph)
        drop(graph, result.analysis, result.plan)
        dropped = to_model(graph)
        onnx.checker.check_model(dropped, full_check=True)
        got = run(dropped, feeds)
    expected = run(reference, feeds)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        err = rel_diff(e, g)
        assert err <= MASKED_TOL, f"masked equivalence violated ({s.rewrite}): {err:.3g}"
    return None


def check(case: Case, s: Settings) -> Outcome:
    """Prune ``case`` with ``s`` and assert every property; how it ended."""
    model = case.model
    calib = _calib(case, s.seed) if s.calib else None
    try:
        target, floor = _target(case, s, calib)
        result = _prune(case, s, target, calib, strategy=s.strategy, rewrite=s.rewrite)
    except TargetError as exc:
        _check_target_error(str(exc), target)
        return Outcome("target-error", target, floor, refusal=str(exc))
    except UnsupportedOpError as exc:
        # gradient criteria run the whole graph in torch: an op the backend lacks is named
        assert s.criterion in GRADIENT and "\n" not in str(exc), str(exc)
        return Outcome("unsupported-op", s.target)
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
    assert target - WINDOW - 1e-9 <= ratio <= target + 1e-9, (
        f"{s.metric} ratio {ratio:.4f} (oracle) outside [{target - WINDOW:.4f}, {target:.4f}]"
    )
    if result.plan is None:
        return Outcome("pruned", target, floor)
    unsupported = _masked_check(case, s, result, calib, got, feeds)
    return Outcome("pruned", target, floor, masked=unsupported is None, unsupported=unsupported)
