"""training/split.py: the sub-models, the students' targets, the record's summary, and its refusals."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_one_line_error, run_cli
from training.split import make_targets, sub_model_masks, summarize


# --- sub-models and targets -----------------------------------------------------------------------------

def test_sub_model_a_keeps_the_largest_weights_and_lies_within_b():
    weight = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    mask_a, mask_b = sub_model_masks(weight, 0.95, 0.85)
    assert int(mask_a.sum()) == 32 and int(mask_b.sum()) == 96  # 5 % and 15 % of 640
    assert bool((mask_b | ~mask_a).all())  # A's kept weights are B's too
    assert weight.abs()[mask_a].min() >= weight.abs()[~mask_a].max()


def test_a_and_the_part_of_b_not_in_a_add_up_to_sub_model_b():
    g = torch.Generator().manual_seed(1)
    weight, bias, h = torch.randn(10, 32, generator=g), torch.randn(10, generator=g), torch.randn(2, 50, 32, generator=g)
    mask_a, mask_b = sub_model_masks(weight, 0.9, 0.5)
    t = make_targets(h, torch.zeros(2, 50, 10), weight, bias, mask_a, mask_b)
    assert t.z_a.shape == t.z_ba.shape == (2, 50, 10)
    torch.testing.assert_close(t.z_a + t.z_ba, h @ (weight * mask_b).T + bias)


def test_the_summary_says_when_the_trend_does_not_hold():
    holds = [{"a_alone": 0.70, "a_plus_b": 0.78, "a_plain": 0.74, "a_kd": 0.74}] * 2
    broken = holds[:1] + [{"a_alone": 0.76, "a_plus_b": 0.78, "a_plain": 0.74, "a_kd": 0.74}]  # A alone above KD
    assert summarize(holds)["trend_holds"] and not summarize(broken)["trend_holds"]
    assert summarize(holds)["a_plus_b_over_a_kd_pts"]["mean"] == pytest.approx(4.0)


def test_split_of_a_run_without_a_teacher_is_one_line(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"name": "r"}')
    assert_one_line_error(run_cli("split", "--run", str(tmp_path / "r"), "--no-progress"), 2, "teacher.pt")


def test_bad_sparsities_are_refused_before_any_work(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"name": "r"}')
    result = run_cli("split", "--run", str(tmp_path / "r"), "--split-sparsity-a", "0.5", "--split-sparsity-b", "0.8")
    assert_one_line_error(result, 2, "sparsity")
