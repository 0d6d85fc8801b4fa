"""Shared pieces of the torch op table: the call context every op function sees, its types,
the ONNX -> torch dtype map, and helpers for reading attributes that moved to inputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from onnx import AttributeProto, numpy_helper
from torch import Tensor

from irprune.errors import InvalidModelError, UnsupportedOpError
from irprune.ir import Node, Opaque

Args = Sequence[Tensor | None]
Out = Tensor | tuple[Tensor, ...]

# ONNX TensorProto element type -> torch dtype (the types torch can hold)
DTYPES: Mapping[int, torch.dtype] = MappingProxyType(
    {
        1: torch.float32,
        2: torch.uint8,
        3: torch.int8,
        4: torch.uint16,
        5: torch.int16,
        6: torch.int32,
        7: torch.int64,
        9: torch.bool,
        10: torch.float16,
        11: torch.float64,
        12: torch.uint32,
        13: torch.uint64,
        16: torch.bfloat16,
    }
)


@dataclass(frozen=True)
class Call:
    """What an op function sees of its node: a copy, so later graph edits cannot reach it."""

    op_type: str
    domain: str
    name: str
    attrs: Mapping[str, Any]
    n_outputs: int
    opset: int

    @classmethod
    def of(cls, node: Node, opset: int) -> Call:
        return cls(node.op_type, node.domain, node.name, dict(node.attrs), len(node.outputs), opset)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def text(self, name: str, default: str) -> str:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    def unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"the torch backend does not support {self.domain or 'ai.onnx'}::{self.op_type} "
            f"with {what} (node {self.name!r})"
        )


OpFn = Callable[[Call, Args], Out]


# --- helpers --------------------------------------------------------------------------------------
def arg(a: Args, i: int = 0) -> Tensor:
    t = a[i] if i < len(a) else None
    if t is None:
        raise InvalidModelError(f"required input {i} is missing")
    return t


def opt(a: Args, i: int) -> Tensor | None:
    return a[i] if i < len(a) else None


def ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def from_input_or_attr(call: Call, a: Args, index: int, name: str) -> list[int] | None:
    t = opt(a, index)
    if t is not None:
        return ints(t)
    value = call.attr(name)
    return None if value is None else [int(v) for v in value]


def tensor_attr(value: Any) -> np.ndarray:
    """The numpy value of a TENSOR attribute (kept serialized by the frontend)."""
    if isinstance(value, Opaque):
        proto = AttributeProto.FromString(value.data)
        if proto.type == AttributeProto.TENSOR:
            return numpy_helper.to_array(proto.t)
    if isinstance(value, np.ndarray):
        return value
    raise InvalidModelError(f"expected a tensor attribute, got {type(value).__name__}")


def spatial(call: Call, name: str, nd: int, default: int) -> list[int]:
    value = call.attr(name)
    return [int(v) for v in value] if value else [default] * nd


def pads(
    call: Call,
    size: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dil: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(begin, end) padding per spatial axis, from ``pads`` or ``auto_pad``."""
    nd = len(size)
    auto = call.text("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = spatial(call, "pads", 2 * nd, 0)
        return pads[:nd], pads[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dil, strict=True):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin, end


def torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX (begin..., end...) for the trailing axes -> F.pad's (last_begin, last_end, ...)."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [a % rank if rank else 0 for a in axes]
