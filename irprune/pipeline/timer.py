"""The per-stage wall-clock times of one ``prune`` run (the report's ``timings_s``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Timer:
    times: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - since
        return now
