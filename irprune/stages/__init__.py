"""The staged API (issue #18), ``irprune.prune`` is its composition::

    analysis = irprune.analyze("model.onnx", input_shapes={"x": (1, 3, 224, 224)})
    scores = analysis.score("l1")                    # Scores, one per channel per group
    plan = analysis.plan(0.5, scores)                # Plan: widths and kept channels
    plan.save("plan.json")                           # a plan file (irprune.plans)
    result = plan.apply(rewrite="compensate")        # Result: the verified model, its report

Every stage's result is frozen and leaves the caller's model alone; only ``apply`` rewrites,
on a copy. Each stage's options are its keyword arguments (``AnalyzeOptions``,
``ScoreOptions``, ``PlanOptions``, ``ApplyOptions`` document them)."""

from irprune.passes.allocation import Target
from irprune.stages.analysis import Analysis, GroupInfo, analyze, run_analysis
from irprune.stages.model import Calibration
from irprune.stages.options import AnalyzeOptions, ApplyOptions, Csgd, PlanOptions, ScoreOptions
from irprune.stages.plan import Plan
from irprune.stages.result import Result
from irprune.stages.scores import Scores

__all__ = [
    "Analysis",
    "AnalyzeOptions",
    "ApplyOptions",
    "Calibration",
    "Csgd",
    "GroupInfo",
    "Plan",
    "PlanOptions",
    "Result",
    "ScoreOptions",
    "Scores",
    "Target",
    "analyze",
    "run_analysis",
]
