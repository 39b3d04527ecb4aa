"""training/split.py: the sub-models, the students' targets, the record's summary, and its refusals."""
from __future__ import annotations

import pytest
import torch

from conftest import SPLIT_TINY_CONFIG, assert_one_line_error, run_cli
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


# --- --resume keeps only seeds of the same recipe ----------------------------------------------------------



@pytest.fixture(scope="module")
def split_once(tmp_path_factory):
    """A one-epoch teacher and its split (one seed): the kept seed --resume is asked to reuse."""
    from atlas.cli import main

    root = tmp_path_factory.mktemp("split-resume")
    (root / "split.toml").write_text(SPLIT_TINY_CONFIG)
    run = root / "parent"
    assert main(["train", "--config", str(root / "split.toml"), "--run", str(run), "--no-progress"]) == 0
    assert main(["split", "--run", str(run), "--no-progress"]) == 0
    return run


def test_resume_with_the_same_settings_keeps_the_seed(split_once, capsys):
    from atlas.cli import main

    kept = split_once / "split-state" / "seed-0.pt"
    before = kept.read_bytes()
    assert main(["split", "--run", str(split_once), "--resume", "--no-progress"]) == 0
    assert "seed 0 already done" in capsys.readouterr().out
    assert kept.read_bytes() == before


def test_resume_refuses_a_seed_trained_with_other_settings(split_once):
    state = split_once / "split-state" / "seed-0.pt"
    before = state.read_bytes()
    result = run_cli("split", "--run", str(split_once), "--resume", "--no-progress", "--split-sparsity-a", "0.9")
    assert_one_line_error(result, 2, "seed-0.pt was trained with other settings", "split.sparsity_a 0.95 -> 0.9",
                          "without --resume")
    assert state.read_bytes() == before  # nothing trained, nothing overwritten


def test_resume_refuses_a_seed_of_another_teacher_or_one_that_records_no_settings(split_once, tmp_path):
    import shutil

    from training import checkpoint
    from training.split import STATE_FORMAT_V1

    run = shutil.copytree(split_once, tmp_path / "parent")
    state_path = run / "split-state" / "seed-0.pt"
    state = checkpoint.load(state_path, expect_format="atlas-kd.split-seed.v2")
    checkpoint.save(state_path, {**state, "settings": {**state["settings"], "teacher_sha256": "0" * 64}})
    assert_one_line_error(run_cli("split", "--run", str(run), "--resume", "--no-progress"), 2, "teacher.pt changed")
    old = {k: v for k, v in state.items() if k != "settings"}
    checkpoint.save(state_path, {**old, "format": STATE_FORMAT_V1})
    assert_one_line_error(run_cli("split", "--run", str(run), "--resume", "--no-progress"), 2,
                          "does not record the settings")


def test_resume_counts_a_split_key_added_since_the_seed_was_kept_with_its_default(split_once, tmp_path, capsys):
    import shutil

    from atlas.cli import main
    from training import checkpoint

    run = shutil.copytree(split_once, tmp_path / "parent")
    state_path = run / "split-state" / "seed-0.pt"
    state = checkpoint.load(state_path, expect_format="atlas-kd.split-seed.v2")
    older = {k: v for k, v in state["settings"]["split"].items() if k != "b_channels"}  # before split.b_channels
    checkpoint.save(state_path, {**state, "settings": {**state["settings"], "split": older}})
    assert main(["split", "--run", str(run), "--resume", "--no-progress"]) == 0  # default 6,16: the same recipe
    assert "seed 0 already done" in capsys.readouterr().out
    result = run_cli("split", "--run", str(run), "--resume", "--no-progress", "--split-b-channels", "8,24")
    assert_one_line_error(result, 2, "split.b_channels [6, 16] -> [8, 24]")


def test_a_larger_b_changes_b_only(split_once, tmp_path, capsys):
    import json
    import shutil

    import onnx

    from atlas.cli import main
    from training import checkpoint

    run = shutil.copytree(split_once, tmp_path / "parent")
    assert main(["split", "--run", str(run), "--no-progress", "--split-b-channels", "8,24"]) == 0
    assert "A's baselines for seed 0 reused" in capsys.readouterr().out  # A's baselines do not depend on B
    b = checkpoint.load(run / "split" / "B" / "student.pt")
    assert b["arch"]["kwargs"]["channels"] == [8, 24] and b["arch"]["kwargs"]["nodes"] == 50
    assert b["state_dict"]["features.0.weight"].shape[0] == 8
    a = checkpoint.load(run / "split" / "A" / "student.pt")
    assert a["arch"] == checkpoint.load(split_once / "split" / "A" / "student.pt")["arch"]  # A as it was
    graph = onnx.load(run / "split" / "B" / "sub_model.onnx").graph
    assert [o.name for o in graph.output] == ["nodes"]
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [50]  # what A's board joins
    assert json.loads((run / "split" / "split.json").read_text())["students"]["b"]["arch"]["kwargs"]["channels"] == [8, 24]


@pytest.mark.parametrize("channels", ["6", "6,16,32", "0,16"])
def test_b_channels_other_than_two_counts_are_refused_before_any_work(tmp_path, channels):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"name": "r"}')
    result = run_cli("split", "--run", str(tmp_path / "r"), "--split-b-channels", channels)
    assert_one_line_error(result, 2, "split.b_channels must be two channel counts")


def test_split_json_reports_what_each_cut_of_the_fc_layer_costs(split_once):
    import json

    curve = json.loads((split_once / "split" / "split.json").read_text())["teacher"]["sparsity_curve"]
    assert [c["sparsity"] for c in curve] == sorted(c["sparsity"] for c in curve)
    kept = [c["kept_weights"] for c in curve]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1] > 0
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in curve)


def test_split_cifar_variant_runs_beside_the_defaults_without_touching_them(split_once):
    import json
    import subprocess
    import sys

    from conftest import REPO

    def script(*args):
        return subprocess.run([sys.executable, str(REPO / "scripts" / "split_cifar.py"), "--run", str(split_once),
                               "--config", str(split_once.parent / "split.toml"), "--seeds", "1", "--no-progress",
                               *args], capture_output=True, text=True, timeout=300, cwd=REPO)

    before = (split_once / "split" / "split.json").read_bytes()
    result = script("--variant", "s90", "--split-sparsity-a", "0.9")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["sparsity_a"] == 0.9 and figures["run"].endswith("parent+s90")
    assert (split_once.parent / "parent+s90" / "teacher.pt").read_bytes() == (split_once / "teacher.pt").read_bytes()
    assert (split_once / "split" / "split.json").read_bytes() == before  # the defaults' run is left as it was
    base = json.loads(before)["seeds"][0]
    assert "A's baselines for seed 0 reused" in result.stdout  # sparsity_a does not change them
    assert figures["a_kd"] == [base["a_kd"]] and figures["a_plain"] == [base["a_plain"]]
    other = script("--variant", "n20", "--split-nodes-a", "20")  # another A: its baselines are trained anew
    assert other.returncode == 0, other.stderr
    assert "reused" not in other.stdout and json.loads(other.stdout.strip().splitlines()[-1])["nodes"] == [20, 50]
    bad = script("--variant", "../elsewhere")
    assert bad.returncode == 2 and "--variant" in bad.stderr and "Traceback" not in bad.stderr
