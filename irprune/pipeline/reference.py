"""The reference run: the original model's onnxruntime session, its outputs on the feeds and at
a second input shape, and the output declarations its own runs contradict."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from irprune.emit.verify import (
    RUN_THREADS,
    SecondShape,
    random_inputs,
    run_batched,
    session,
    warned_values,
)
from irprune.errors import InvalidModelError
from irprune.shapes import InputShapes

log = logging.getLogger(__name__)


def original_warnings(lines: list[str]) -> frozenset[str]:
    """The values whose declared shapes onnxruntime finds wrong in the original itself: the
    written model keeps the original's output declarations, so it may warn on them too."""
    names = warned_values(lines)
    for line in lines:
        log.info("onnxruntime (original model): %s", line)
    if names:
        log.warning(
            "the input model declares shapes its own runs contradict (%s): kept as they are",
            ", ".join(sorted(names)[:5]),
        )
    return names


def original_session(original: bytes | Path) -> Any:
    try:
        # one run: packing would cost more than it saves; warnings (captured) name the values
        # whose declared shapes the original contradicts
        return session(original, prepack=False, warnings=True, threads=RUN_THREADS)
    except Exception as exc:  # onnxruntime raises untyped errors
        text = " ".join(str(exc).split())
        raise InvalidModelError(f"onnxruntime cannot load the input model: {text}") from exc


def second_shape(
    sess: Any,
    shapes: InputShapes,
    seed: int,
    feeds: Mapping[str, np.ndarray] | None = None,
    outputs: list[np.ndarray] | None = None,
) -> SecondShape | None:
    """Random inputs at the second shape and the original's output shapes on them; None when
    no input dim is symbolic, or the original does not run there (then the result is verified
    at the deployment shape only). Scalar inputs of the reference ``feeds`` (a sample rate that
    picks a branch) keep their given value there.

    Where the reference run itself (``feeds``, ``outputs``) already differs from the deployment
    shape in every dim the second shape changes (random inputs are 4 samples where only the
    batch is symbolic), that run is the second shape: verification checks the output shapes
    of its main run and makes no second one."""
    at = shapes.second()
    if at is None:
        return None
    if feeds is not None and outputs is not None and _run_is_second(sess, shapes, at, feeds):
        return SecondShape(dict(feeds), _shapes_of(outputs))
    given = {k: v for k, v in (feeds or {}).items() if np.ndim(v) == 0}
    grown = {**random_inputs(sess, shapes=at, seed=seed + 1), **given}
    try:
        outputs = sess.run(None, grown)
    except Exception as exc:  # onnxruntime raises untyped errors
        log.warning(
            "the original model does not run at a second input shape (%s): the result is "
            "verified at %s only",
            " ".join(str(exc).split())[:200],
            shapes.describe(),
        )
        return None
    return SecondShape(grown, _shapes_of(outputs))


def _shapes_of(outputs: list[np.ndarray]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(d) for d in np.shape(a)) for a in outputs)


def _run_is_second(
    sess: Any, shapes: InputShapes, at: Mapping[str, tuple[int, ...]], feeds: Mapping[str, Any]
) -> bool:
    """``feeds`` ran in one run (``run_batched`` made no chunks) and differ from the deployment
    shape wherever the second shape ``at`` does."""
    total = max((np.shape(a)[0] for a in feeds.values() if np.ndim(a)), default=0)
    fixed = [
        inp.shape[0]
        for inp in sess.get_inputs()
        if inp.name in feeds and np.ndim(feeds[inp.name]) and inp.shape
        and isinstance(inp.shape[0], int)
    ]  # fmt: skip
    if any(0 < d < total for d in fixed):
        return False  # run in chunks of a fixed batch
    for name, second in at.items():
        if name not in feeds:
            return False
        deployed, fed = shapes.sample[name], np.shape(feeds[name])
        if len(fed) != len(second):
            return False
        for axis, size in enumerate(second):
            if size != deployed[axis] and fed[axis] == deployed[axis]:
                return False
    return True


def run_original(sess: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return run_batched(sess, None, feeds)
    except Exception as exc:  # onnxruntime raises untyped errors
        text = " ".join(str(exc).split())
        raise InvalidModelError(f"onnxruntime cannot run the input model: {text}") from exc
