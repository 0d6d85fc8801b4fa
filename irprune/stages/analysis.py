"""The analysis stage: ``irprune.analyze(model, input_shapes=...) -> Analysis``, the first of
the staged API (``analyze -> Analysis.score -> Analysis.plan -> Plan.apply``, composed by
``irprune.prune``). An ``Analysis`` is frozen: the channel groups, their members, why each
frozen group is frozen, each group's share of the MACs, the model's fingerprint; it never
changes the model it was given."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from irprune import inputs, plans
from irprune.emit.stream import weight_bytes
from irprune.emit.verify import captured_warnings
from irprune.passes.allocation import Target, unit_channels
from irprune.passes.analysis.blocks import BlockAnalysis
from irprune.passes.analysis.channels import ChannelAnalysis
from irprune.passes.analysis.channels import analyze as analyze_channels
from irprune.passes.analysis.cost import CostModel, build_cost_model
from irprune.pipeline.load import import_graph, load_model
from irprune.pipeline.reference import original_session
from irprune.pipeline.report import prunable_share
from irprune.shapes import InputShapes
from irprune.stages.depth import BlockInfo, RejectedAdd, block_candidates
from irprune.stages.model import Calibration, LoadedModel, read_given_calibration
from irprune.stages.options import (
    DEFAULT_MAX_PRUNE,
    DEFAULT_ROUND_TO,
    AnalyzeOptions,
    PlanOptions,
    ScoreOptions,
    make_target,
)
from irprune.stages.plan import Plan
from irprune.stages.plan import plan as make_plan
from irprune.stages.scores import Scores
from irprune.stages.scores import score as score_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupInfo:
    """One channel group: ``size`` units of ``unit`` tensor channels each, the nodes whose
    weights create it (``sources``), every value axis it spans (``members``, ``value[axis]``),
    why it is frozen (empty: prunable) and the share of the model's MACs that depends on it."""

    id: int
    size: int
    unit: int
    sources: tuple[str, ...]
    members: tuple[str, ...]
    frozen: tuple[str, ...]
    macs_share: float

    @property
    def prunable(self) -> bool:
        return not self.frozen


@dataclass(frozen=True, eq=False)
class Analysis:
    """The analysed model (see the module docstring). ``groups`` and ``frozen`` describe the
    channel groups; ``blocks`` the removable residual blocks depth pruning plans
    (``stages.depth``), ``rejected_blocks`` the residual Adds that are not, with the reason;
    ``channels``, ``cost`` and ``block_analysis`` are what the passes read; ``loaded`` the
    model the later stages use (private)."""

    model_name: str
    fingerprint: str  # plans.fingerprint of the imported graph: plan files are checked by it
    input_shapes: Mapping[str, tuple[int, ...]]  # the deployment shape costs are taken at
    macs: float
    params: float
    weight_bytes: int
    options: AnalyzeOptions
    channels: ChannelAnalysis = field(repr=False)
    cost: CostModel = field(repr=False)
    loaded: LoadedModel = field(repr=False)
    timings: Mapping[str, float] = field(default_factory=dict, repr=False)
    blocks: tuple[BlockInfo, ...] = ()
    rejected_blocks: tuple[RejectedAdd, ...] = ()
    block_analysis: BlockAnalysis = field(default=BlockAnalysis((), ()), repr=False)

    @cached_property
    def groups(self) -> tuple[GroupInfo, ...]:
        total = self.cost.macs_at(self.cost.base_widths)
        return tuple(_group_info(self, g.id, total) for g in self.channels.groups)

    @property
    def frozen(self) -> Mapping[int, tuple[str, ...]]:
        """Why each frozen group is frozen, by group id."""
        return MappingProxyType({g.id: g.frozen for g in self.channels.groups if g.frozen})

    @cached_property
    def prunable_macs_share(self) -> float:
        """The fraction of MACs that depends on at least one prunable group."""
        return prunable_share(self.channels, self.cost)

    @property
    def shapes(self) -> InputShapes:
        return self.loaded.shapes

    def calibration(self, calib: Any, *, seed: int = 0) -> Calibration:
        """Calibration data (an .npz path, arrays keyed by input name, or
        ``"synthetic[:N]"``: synthesised from the model, torch extra) checked against this
        model's inputs, to hand to ``score``, ``plan`` and ``apply`` so it is read once."""
        return self.loaded.calibration(calib, self.cost, seed=seed, auto=False)

    def score(
        self, criterion: str = "auto", *, calib: Any = None, labels: Any = None, seed: int = 0
    ) -> Scores:
        """Score every channel of every prunable group (``ScoreOptions``); data-driven
        criteria need ``calib`` (a ``Calibration``, .npz path, arrays or "synthetic[:N]");
        ``labels`` give the gradient criteria a task loss. Read-only on the model."""
        return score_groups(self, ScoreOptions(criterion, seed), calib, labels)

    def plan(
        self, target: float | Target | Mapping[str, float], scores: Scores | None = None, *,
        strategy: str = "global", round_to: int = DEFAULT_ROUND_TO,
        strict_rounding: bool = False, max_prune: float = DEFAULT_MAX_PRUNE,
        ignore: Sequence[str | int] = (), calib: Any = None, seed: int = 0,
        latency_threads: int = 1, depth: str = "off", max_blocks: int | None = None,
    ) -> Plan:  # fmt: skip
        """Allocate widths to meet ``target`` (a MAC fraction, ``Target(metric, F)`` or
        ``{"params": F}``) on ``scores`` (default: ``self.score()``), by ``PlanOptions``;
        ``calib`` for the sensitivity strategy (and the block scores and candidate plans of
        ``depth`` ``auto`` / ``only``, see ``stages.depth``). Raises ``TargetError`` when it
        cannot be met."""
        options = PlanOptions(
            strategy, round_to, strict_rounding, max_prune, tuple(ignore), seed, latency_threads,
            depth, max_blocks,
        )  # fmt: skip
        goal = make_target(target)
        return make_plan(self, goal, scores if scores is not None else self.score(), options, calib)

    def plan_from_widths(self, widths: Mapping[int, int], scores: Scores | None = None) -> Plan:
        """``Plan.from_widths(self, widths, scores)``."""
        return Plan.from_widths(self, widths, scores)

    def load_plan(
        self, document: str | Path | Mapping[str, Any], target: Target | None = None
    ) -> Plan:
        """``Plan.from_document(self, document, target)``: a plan file made for this model."""
        return Plan.from_document(self, document, target)


def analyze(
    model: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None, calib: Any = None,
    example_inputs: Any = None, tracer: str = "auto",
) -> Analysis:  # fmt: skip
    """Load ``model`` (a path, an ``onnx.ModelProto``, or a ``torch.nn.Module`` with
    ``example_inputs``) and find its channel groups and cost at the deployment shape:
    ``input_shapes``, else the shapes of ``calib`` (calibration data, batch aside; only its
    shapes are read here), else the batch rule of :mod:`irprune.shapes`. The caller's model
    is never changed."""
    options = AnalyzeOptions(
        None if input_shapes is None else {k: tuple(v) for k, v in input_shapes.items()},
        example_inputs,
        tracer,
    )
    return run_analysis(model, options, calib)


def run_analysis(model: Any, options: AnalyzeOptions, calib: Any = None) -> Analysis:
    """``analyze`` with its options as one object."""
    t = time.perf_counter()
    source = load_model(model, options.example_inputs, options.tracer)
    arrays = read_given_calibration(calib)
    source = source.with_shapes(options.input_shapes, inputs.array_shapes(arrays))
    graph = import_graph(source)
    original_bytes = source.runnable()  # the input file, or serialised once
    with captured_warnings():  # a model onnxruntime cannot load fails here
        session = original_session(original_bytes)
    loaded = LoadedModel(model, source, graph, original_bytes, session, (calib, arrays))
    load_s, t = time.perf_counter() - t, time.perf_counter()
    channels, cost = _channels_and_cost(graph)  # reads shapes and small constants, not weights
    found, blocks, rejected = block_candidates(graph, float(cost.evaluate().macs))
    fingerprint = plans.fingerprint(graph)
    times = {"load": load_s, "analysis": time.perf_counter() - t}
    assert source.shapes is not None
    return Analysis(
        model_name=Path(model).name if isinstance(model, str | Path) else "model",
        fingerprint=fingerprint,
        input_shapes=MappingProxyType({k: tuple(v) for k, v in source.shapes.sample.items()}),
        macs=float(cost.evaluate().macs),
        params=float(cost.evaluate().params),
        weight_bytes=int(weight_bytes(graph)),
        options=options,
        channels=channels,
        cost=cost,
        loaded=loaded,
        timings=MappingProxyType(times),
        blocks=blocks,
        rejected_blocks=rejected,
        block_analysis=found,
    )


def _channels_and_cost(graph: Any) -> tuple[ChannelAnalysis, CostModel]:
    """The channel groups and the cost model (read-only on ``graph``)."""
    channels = analyze_channels(graph)
    cost = build_cost_model(graph, channels)
    if cost.unknown:
        log.warning(
            "MACs of %d values have dims shape inference cannot see (counted as 1): %s",
            len(cost.unknown),
            ", ".join(cost.unknown[:5]),
        )
    return channels, cost


def _group_info(analysis: Analysis, gid: int, total: float) -> GroupInfo:
    group, cost = analysis.channels.groups[gid], analysis.cost
    widths = cost.base_widths.copy()
    widths[gid] = 0.0
    return GroupInfo(
        id=gid,
        size=group.size,
        unit=unit_channels(analysis.channels, gid),
        sources=tuple(s.node for s in group.sources),
        members=tuple(f"{m.value}[{m.axis}]" for m in group.members),
        frozen=tuple(group.frozen),
        macs_share=1.0 - cost.macs_at(widths) / total if total else 0.0,
    )
