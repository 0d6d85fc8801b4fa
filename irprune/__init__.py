"""irprune: a structured-pruning compiler for ONNX graphs."""

from irprune.api import Result, prune
from irprune.finetune import FinetuneResult, finetune

__version__ = "0.1.0"
__all__ = ["FinetuneResult", "Result", "__version__", "finetune", "prune"]
