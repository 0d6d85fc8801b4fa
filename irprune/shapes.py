"""The concrete input shape every measurement is taken at (the deployment shape).

A model's graph inputs may have symbolic dims (``[N, 3, H, W]``). Costs and targets, the
reference run, synthesis, fidelity and latency need numbers, and a silent 1 would cost an image
model as a 1x1 image. The shape is resolved once, in this order:

1. ``--input-shape NAME:D0,D1,...`` (API ``input_shapes={name: dims}``): taken as given;
2. else the calibration data's shapes, batch aside;
3. else the batch: axis 0 of an input, when symbolic, is the batch and counts 1 (costs are per
   sample), as does every other dim with the same symbolic name (``state: [2, batch, 128]``).

A symbolic name is one dim wherever it appears: binding ``H`` in one input binds it in all.
A dim still unknown after that is an error (``InputShapeError``, exit 2) that names it and the
option; it is never guessed.

``InputShapes.feed_shapes(batch)`` gives the shapes of random feeds with the batch dims at
``batch``; ``InputShapes.second()`` a second shape for verification: every symbolic non-batch dim
``d`` grown by the largest power of two dividing it (320 -> 384, 416 -> 448, 1 -> 2, so the
strides a model divides by still divide it), and the batch at 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from irprune.errors import UsageError

Declared = tuple[int | str | None, ...]  # an input's dims as the file declares them
_ANONYMOUS = ("", "?")  # dim_params that name no size (paddle2onnx writes "?")


class InputShapeError(UsageError):
    """A graph input dim that no given shape, calibration array or batch rule fixes, or a
    given shape that contradicts the model."""


@dataclass(frozen=True)
class InputShapes:
    """The concrete per-sample shape of each graph input (``sample``), the axes of each input
    that are the batch (symbolic in the model), and those that are otherwise symbolic."""

    sample: Mapping[str, tuple[int, ...]]
    batch_axes: Mapping[str, tuple[int, ...]]
    symbolic_axes: Mapping[str, tuple[int, ...]]  # symbolic, not the batch
    source: Mapping[str, str]  # per input: "given", "calibration", "batch" or "static"

    def feed_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The sample shapes with every batch axis at ``batch``."""
        return {name: self._with(name, batch, {}) for name in self.sample}

    def second(self) -> dict[str, tuple[int, ...]] | None:
        """A second shape (see the module docstring); None when no dim is symbolic."""
        if not any(self.batch_axes.values()) and not any(self.symbolic_axes.values()):
            return None
        grown = {
            (name, axis): _grow(self.sample[name][axis])
            for name, axes in self.symbolic_axes.items()
            for axis in axes
        }
        return {name: self._with(name, 2, grown) for name in self.sample}

    def describe(self) -> str:
        """``x:1x3x48x320`` for each input, as the report states the shape."""
        return ", ".join(f"{n}:{'x'.join(map(str, s)) or 'scalar'}" for n, s in self.sample.items())

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": {name: list(shape) for name, shape in self.sample.items()},
            "source": dict(self.source),
        }

    def _with(self, name: str, batch: int, grown: Mapping[tuple[str, int], int]) -> tuple[int, ...]:
        dims = list(self.sample[name])
        for axis in self.batch_axes.get(name, ()):
            dims[axis] = batch
        for axis in self.symbolic_axes.get(name, ()):
            dims[axis] = grown.get((name, axis), dims[axis])
        return tuple(dims)


def _grow(d: int) -> int:
    return d + (d & -d)


def declared_inputs(model: onnx.ModelProto) -> dict[str, Declared]:
    """The non-initializer graph inputs and their dims (ints, symbolic names, None unnamed;
    a non-positive dim_value, as paddle2onnx writes -1, counts as unnamed)."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, Declared] = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims: list[int | str | None] = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif d.HasField("dim_param") and d.dim_param not in _ANONYMOUS:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out[vi.name] = tuple(dims)
    return out


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:D0,D1,...`` (the name may itself contain colons: the last one splits)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise UsageError(f"--input-shape {text!r}: expected NAME:D0,D1,... (e.g. x:1,3,224,224)")
    try:
        values = tuple(int(d) for d in re.split(r"[,x]", dims.strip())) if dims.strip() else ()
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: dims must be integers") from None
    if any(d < 1 for d in values):
        raise UsageError(f"--input-shape {text!r}: dims must be positive")
    return name, values


def resolve(
    declared: Mapping[str, Declared],
    given: Mapping[str, Sequence[int]] | None = None,
    calibration: Mapping[str, Sequence[int]] | None = None,
) -> InputShapes:
    """The deployment shape of every input (see the module docstring).

    ``calibration`` holds the calibration arrays' shapes (batch on axis 0, which is ignored).
    """
    wanted = {k: tuple(int(d) for d in v) for k, v in (given or {}).items()}
    unknown = sorted(set(wanted) - set(declared))
    if unknown:
        raise InputShapeError(
            f"--input-shape names {unknown}, which are not inputs of the model "
            f"(its inputs: {sorted(declared)})"
        )
    names: dict[str, int] = {}
    dims: dict[str, list[int | None]] = {}
    source: dict[str, str] = {}
    for name, decl in declared.items():
        if name in wanted:
            dims[name] = list(_given(name, decl, wanted[name]))
            source[name] = "given"
        elif calibration is not None and name in calibration:
            dims[name] = _from_calibration(decl, tuple(calibration[name]))
            source[name] = "calibration"
        else:
            dims[name] = [d if isinstance(d, int) else None for d in decl]
            source[name] = "static"
        _bind(names, name, decl, dims[name])
    batch_names = {decl[0] for decl in declared.values() if decl and isinstance(decl[0], str)}
    for name, decl in declared.items():
        if decl and not isinstance(decl[0], int) and dims[name][0] is None:
            dims[name][0] = names.get(decl[0], 1) if isinstance(decl[0], str) else 1
            source[name] = "batch" if source[name] == "static" else source[name]
        for axis, d in enumerate(decl):
            if isinstance(d, str) and dims[name][axis] is None:
                dims[name][axis] = names.get(d, 1 if d in batch_names else None)
        _bind(names, name, decl, dims[name])
    _check_complete(declared, dims)
    batch_axes, symbolic_axes = _axes(declared, batch_names)
    sample = {name: tuple(int(d) for d in ds if d is not None) for name, ds in dims.items()}
    return InputShapes(sample, batch_axes, symbolic_axes, source)


def _given(name: str, decl: Declared, dims: tuple[int, ...]) -> tuple[int, ...]:
    if len(dims) != len(decl):
        raise InputShapeError(
            f"--input-shape {name}: {len(dims)} dims given, the model's input has {len(decl)} "
            f"({_show(decl)})"
        )
    for axis, (d, g) in enumerate(zip(decl, dims, strict=True)):
        if isinstance(d, int) and d != g:
            raise InputShapeError(
                f"--input-shape {name}: dim {axis} is {d} in the model, {g} given ({_show(decl)})"
            )
    return dims


def _from_calibration(decl: Declared, shape: tuple[int, ...]) -> list[int | None]:
    if len(shape) != len(decl):
        return [d if isinstance(d, int) else None for d in decl]  # check_inputs reports it
    batch = decl[0] if decl and isinstance(decl[0], int) else None
    return [batch if axis == 0 else int(s) for axis, s in enumerate(shape)]


def _bind(names: dict[str, int], name: str, decl: Declared, dims: list[int | None]) -> None:
    for d, value in zip(decl, dims, strict=True):
        if not isinstance(d, str) or value is None:
            continue
        if names.setdefault(d, value) != value:
            raise InputShapeError(
                f"the symbolic dim {d!r} is {names[d]} in one input and {value} in {name!r}: "
                "a name stands for one size"
            )


def _check_complete(declared: Mapping[str, Declared], dims: Mapping[str, list[int | None]]) -> None:
    missing = [
        (name, axis, declared[name][axis])
        for name, ds in dims.items()
        for axis, d in enumerate(ds)
        if d is None
    ]
    if not missing:
        return
    where = "; ".join(f"{n!r} dim {a} ({p!r})" if p else f"{n!r} dim {a}" for n, a, p in missing)
    example = " ".join(
        f"--input-shape {n}:{','.join('?' if d is None else str(d) for d in dims[n])}"
        for n in dict.fromkeys(n for n, _, _ in missing)
    )
    raise InputShapeError(
        f"the model's input shape is symbolic in {where}: costs, targets and verification need "
        f"the shape you deploy at; pass it with {example} (API input_shapes=) or calibration "
        "data of that shape"
    )


def _show(decl: Declared) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in decl) + "]"


def _axes(
    declared: Mapping[str, Declared], batch_names: set[Any]
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    batch: dict[str, tuple[int, ...]] = {}
    symbolic: dict[str, tuple[int, ...]] = {}
    for name, decl in declared.items():
        is_batch = [
            not isinstance(d, int) and (axis == 0 or d in batch_names)
            for axis, d in enumerate(decl)
        ]
        batch[name] = tuple(a for a, b in enumerate(is_batch) if b)
        symbolic[name] = tuple(
            a for a, d in enumerate(decl) if not isinstance(d, int) and not is_batch[a]
        )
    return batch, symbolic
