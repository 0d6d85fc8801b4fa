"""The result of a pruning run (``irprune.prune``, ``Plan.apply``): the verified model, its
report, and where its weights live."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from irprune import plans
from irprune.backends import missing_torch
from irprune.emit import atomic_write
from irprune.emit.stream import Staged
from irprune.errors import UsageError
from irprune.passes.allocation import Plan
from irprune.passes.analysis.channels import ChannelAnalysis


@dataclass
class Result:
    model: onnx.ModelProto
    report: dict[str, Any]
    analysis: ChannelAnalysis = field(repr=False)
    plan: Plan | None = field(default=None, repr=False)
    serialized: bytes | None = field(default=None, repr=False)
    external_data: bool = False  # the input kept its weights in external data
    source: Path | None = None  # the input file, when given as a path
    source_data: frozenset[Path] = frozenset()  # the input's external-data files, resolved
    # a streamed model (large, or its input kept external data): written and verified in a
    # staging folder; ``model`` then holds references to its data file instead of the weights
    staged: Staged | None = field(default=None, repr=False)

    def save(self, path: str | Path) -> Path:
        """Write atomically; weights go to ``<path>.data`` when the input kept them in external
        data or the model is too large for one protobuf file. The input's own data files are
        only replaced when ``path`` is the input itself (in place)."""
        path = Path(path)
        data = path.with_name(path.name + ".data").resolve()
        in_place = self.source is not None and self.source.resolve() == path.resolve()
        if data in self.source_data and not in_place:
            raise UsageError(f"{data} holds the input's weights; choose another output name")
        if self.staged is not None:
            return self.staged.publish(path)
        external = True if self.external_data else None
        return atomic_write(self.serialized or self.model, path, external_data=external)

    def plan_document(self) -> dict[str, Any]:
        """The plan this result applied as a plan document (:mod:`irprune.plans`): review it,
        edit it, and apply it again with ``prune(..., from_plan=...)`` or ``irprune --plan``."""
        if self.plan is None:
            raise UsageError("this result holds no plan")
        settings = {**self.report.get("settings", {}), "target": self.report.get("target")}
        document = plans.to_dict(
            self.plan,
            self.analysis,
            fingerprint=self.report["fingerprint"],
            settings=settings,
            model_name=self.source.name if self.source is not None else "model",
        )
        if self.report.get("blocks_removed"):
            from irprune.stages.depth import document_blocks

            document["blocks"] = document_blocks(self.report["blocks_removed"])
        return document

    def to_torch(self) -> Any:
        """The model as a trainable ``irprune.backends.torch.GraphModule`` (torch extra);
        ``irprune.backends.torch.save`` writes a trained one back through emit + verify."""
        try:
            from irprune.backends.torch import from_onnx
        except ImportError as exc:
            raise missing_torch("Result.to_torch()", exc) from exc
        if self.staged is not None:  # streamed: the weights are in its data file
            return from_onnx(onnx.load(str(self.staged.model_path)), input_shapes=self._shapes())
        return from_onnx(self.model, input_shapes=self._shapes())

    def _shapes(self) -> dict[str, tuple[int, ...]] | None:
        """The deployment shape the model was pruned at (from the report)."""
        inputs = self.report.get("input_shapes", {}).get("inputs")
        return {k: tuple(v) for k, v in inputs.items()} if inputs else None
