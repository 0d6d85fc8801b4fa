"""irprune: a structured-pruning compiler for ONNX graphs."""

__version__ = "0.1.0"
