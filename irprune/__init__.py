"""irprune: a structured-pruning compiler for ONNX graphs."""

from irprune.api import Result, prune

__version__ = "0.1.0"
__all__ = ["Result", "__version__", "prune"]
