"""IR -> ONNX, verification and atomic writes."""

from irprune.emit.onnx import to_model
from irprune.emit.verify import atomic_write, verify

__all__ = ["atomic_write", "to_model", "verify"]
