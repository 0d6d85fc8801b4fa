"""The data-free default is honest: a poor fidelity figure gets a warning that says what to pass."""

from __future__ import annotations

import pytest

import irprune
from irprune.api import poor_fidelity
from tests.test_input_shapes import DEPLOY, recognizer


def test_close_outputs_get_no_warning() -> None:
    fid = {"cosine": 0.99, "rel_l2": 0.1, "max_abs_diff": 0.1, "top1_agreement": 0.95}
    assert poor_fidelity(fid, "random inputs") is None


@pytest.mark.parametrize(
    ("fid", "inputs", "says"),
    [
        ({"cosine": 0.6, "rel_l2": 0.9, "top1_agreement": None}, "random inputs", "--calib"),
        ({"cosine": 0.99, "rel_l2": 0.1, "top1_agreement": 0.5}, "random inputs", "top-1 0.50"),
        ({"cosine": 0.8, "rel_l2": 0.6, "top1_agreement": None}, "calibration data", "finetune"),
    ],
)
def test_poor_outputs_are_named_with_the_figure_and_the_remedy(
    fid: dict, inputs: str, says: str
) -> None:
    text = poor_fidelity(fid, inputs)
    assert text is not None and says.replace("top-1 0.50", "top-1 agreement 0.50") in text
    assert f"cosine {fid['cosine']:.3f}" in text


def test_a_deep_cut_without_data_warns() -> None:
    result = irprune.prune(
        recognizer(), target_flops=0.2, measure_latency=False, rewrite="compensate",
        input_shapes=DEPLOY, round_to=1, max_prune=0.95,
    )  # fmt: skip
    cosine = result.report["fidelity"]["cosine"]
    assert cosine < 0.95  # a fifth of the MACs on random weights: far from the original
    assert "pass --calib FILE.npz" in result.report["fidelity_warning"]
    assert f"cosine {cosine:.3f}" in result.report["fidelity_warning"]
