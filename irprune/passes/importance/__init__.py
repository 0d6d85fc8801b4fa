"""Importance criteria: one score per channel of each group, comparable across groups."""

from irprune.passes.importance.magnitude import CRITERIA, Scores, score

__all__ = ["CRITERIA", "Scores", "score"]
