"""The report stage: the report's figures for one plan (target, shapes, settings, costs, groups,
timings), the poor-fidelity warning, and the prunable share of a model's MACs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from irprune.emit.verify import SecondShape
from irprune.passes.allocation import Plan, Target
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.cost import CostModel
from irprune.pipeline.timer import Timer
from irprune.shapes import InputShapes


def build_report(
    analysis: ChannelAnalysis,
    cost: CostModel,
    plan: Plan,
    target: Target | None,
    settings: dict[str, Any],
    timer: Timer,
    shapes: InputShapes,
    second: SecondShape | None,
) -> dict[str, Any]:
    before, after = cost.evaluate(), cost.evaluate(plan.widths)
    groups = [
        {
            "id": g.id,
            "size": g.size,
            "kept": int(plan.widths[g.id]),
            "sources": [s.node for s in g.sources],
            "members": len(g.members),
            "frozen": list(g.frozen),
        }
        for g in analysis.groups
    ]
    return {
        "target": None
        if target is None
        else {"metric": target.metric, "fraction": target.fraction},
        "input_shapes": {
            **shapes.as_json(),
            "second": None if second is None else second.describe(),
        },
        "settings": settings,
        "cost": {
            "before": vars(before),
            "after": vars(after),
            "ratio": vars(after.ratio(before)),
            "prunable_macs_share": prunable_share(analysis, cost),
            "unknown_dims": list(cost.unknown),
        },
        "groups": groups,
        "timings_s": dict(timer.times),
    }


POOR_COSINE = 0.95  # fidelity below this (or top-1 agreement below POOR_TOP1) gets a warning
POOR_TOP1 = 0.9


def poor_fidelity(fidelity: Mapping[str, float | None], inputs: str) -> str | None:
    """A warning when the pruned model's outputs are far from the original's on the inputs the
    report used, with the figure and what to pass instead; None when they are close."""
    cosine, top1 = fidelity["cosine"], fidelity.get("top1_agreement")
    if (cosine is None or cosine >= POOR_COSINE) and (top1 is None or top1 >= POOR_TOP1):
        return None
    figure = f"cosine {cosine:.3f}, relative L2 {fidelity['rel_l2']:.3f}" + (
        f", top-1 agreement {top1:.2f}" if top1 is not None else ""
    )
    if inputs == "calibration data":
        advice = (
            "a milder target, or `irprune finetune --teacher` with the original on more "
            "unlabeled inputs, recovers more"
        )
    else:
        advice = (
            "pass --calib FILE.npz with about 128 unlabeled inputs from the task (arrays keyed "
            "by input name, batch on axis 0): the repair is then fitted on real activations"
        )
    return (
        f"the pruned model's outputs are far from the original's on {inputs} ({figure}); {advice}"
    )


def prunable_share(analysis: ChannelAnalysis, cost: CostModel) -> float:
    """The fraction of MACs that depends on at least one prunable group."""
    total = cost.macs_at(cost.base_widths)
    w = cost.base_widths.copy()
    for g in analysis.prunable:
        w[g.id] = 0.0
    return 1.0 - cost.macs_at(w) / total if total else 0.0
