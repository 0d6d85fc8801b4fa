"""Property-based fuzzing (fast profile): random valid graphs, pruned with random settings.

Derandomized, so CI sees the same examples every run; ``benchmarks/fuzz.py --examples N`` runs
the long profile with fresh randomness.
"""

from __future__ import annotations

import onnx
import pytest
from hypothesis import HealthCheck, given, settings

from irprune.emit import verify
from irprune.emit.verify import random_inputs, session
from tests.fuzz.graphs import Case, onnx_graphs
from tests.fuzz.properties import Settings, check, prune_settings

FAST = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FAST
@given(case=onnx_graphs())
def test_generated_graphs_are_valid(case: Case) -> None:
    """The generator itself: every graph passes the checker and runs in onnxruntime."""
    onnx.checker.check_model(case.model, full_check=True)
    verify(case.model, random_inputs(session(case.model), shapes=case.feed_shape(2)))


@FAST
@given(case=onnx_graphs(), s=prune_settings())
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_pruned_graphs_keep_every_property(case: Case, s: Settings) -> None:
    check(case, s)
