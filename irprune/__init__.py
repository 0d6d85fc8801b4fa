"""irprune: a structured-pruning compiler for ONNX graphs."""

from irprune.api import Result, prune
from irprune.finetune import FinetuneResult, finetune
from irprune.stages import Analysis, Calibration, Plan, Scores, Target, analyze

__version__ = "0.1.0"
__all__ = [
    "Analysis",
    "Calibration",
    "FinetuneResult",
    "Plan",
    "Result",
    "Scores",
    "Target",
    "__version__",
    "analyze",
    "finetune",
    "prune",
]
