"""`atlas-kd prune`: channels out, KD fine-tuning, a run folder the rest of the pipeline takes unchanged."""
import json
import shutil

import pytest
import torch

from atlas.cli import main
from atlas.errors import UserError
from sshd_util import running_board
from training import checkpoint
from training.models import build_model, make_arch


@pytest.fixture(scope="module")
def pruned_run(demo_run, tmp_path_factory):
    run = shutil.copytree(demo_run, tmp_path_factory.mktemp("prune") / "demo")
    assert main(["prune", "--run", str(run), "--channels", "0.5", "--epochs", "1"]) == 0
    return run


def test_prune_writes_a_smaller_checkpoint_and_a_before_after_report(pruned_run):
    report = json.loads((pruned_run / "pruned" / "prune.json").read_text())
    before, after = report["before"], report["after"]
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    assert report["ratios"]["onnx_bytes"] <= 0.6  # >= 40 % smaller
    assert report["align"] == 1 and report["removed_fraction"] == pytest.approx(0.5, abs=0.02)
    blocks = report["npu_blocks"]  # what the Ascend Cube's 16-channel blocks make of the thinning
    assert [layer["width"][0] for layer in blocks["layers"]] == [8, 16, 32]
    assert after["macs"] < after["macs_c0"] <= before["macs_c0"]
    assert set(before["latency_ms"]) == {"batch_1", "batch_64"} and all(v > 0 for v in after["latency_ms"].values())
    for batch, spread in report["latency_ratio_rounds"].items():  # the median ratio lies within its rounds' range
        assert spread["rounds"] == 9 and spread["min"] <= report["ratios"][f"latency_{batch}"] <= spread["max"]
        assert spread["spans_1"] == (spread["min"] <= 1 <= spread["max"])
    assert report["finetune"]["epochs"] == 1 and len(report["finetune"]["history"]) == 1
    model, payload = checkpoint.load_model(pruned_run / "pruned" / "student.pt", expect_arch="tinycnn")
    assert payload["arch"]["kwargs"]["stages"] == report["arch_after"]["kwargs"]["stages"]
    assert payload["normalization"] == {"mean": [0.1307], "std": [0.3081]}


def test_pruned_model_goes_through_export_lint_om_deploy_and_verify_unchanged(pruned_run, tmp_path, capsys):
    run = pruned_run / "pruned"
    assert main(["export", "--run", str(run)]) == 0
    assert main(["lint", str(run / "model.onnx")]) == 0
    assert main(["om", "--run", str(run), "--sim"]) == 0
    with running_board(tmp_path / "state", name="prune-board") as board:
        assert main(["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config)]) == 0
    assert main(["verify", "--run", str(run)]) == 0
    verdict = json.loads((run / "verify.json").read_text())["boards"][0]["metrics"]
    assert verdict["top1_agreement"] >= 0.999 and verdict["count"] == 1000
    unpruned, pruned = (json.loads((d / "export.json").read_text())["onnx"]["bytes"] for d in (pruned_run, run))
    assert pruned < 0.6 * unpruned  # the simplified ONNX the board gets is >= 40 % smaller too


def test_a_pruned_run_can_be_pruned_again_with_kd(pruned_run, tmp_path):
    first = pruned_run / "pruned"
    assert (first / "teacher.pt").read_bytes() == (pruned_run / "teacher.pt").read_bytes()
    out = tmp_path / "again"
    assert main(["prune", "--run", str(first), "--channels", "0", "--fc-sparsity", "0.5", "--epochs", "1",
                 "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["arch_before"] == json.loads((first / "prune.json").read_text())["arch_after"]
    assert report["fc_sparsity"]["measured"] == pytest.approx(0.5, abs=1e-3) and (out / "teacher.pt").exists()


def test_no_teacher_is_needed_without_fine_tuning(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    (run / "teacher.pt").unlink()
    assert main(["prune", "--run", str(run), "--epochs", "1"]) == 2
    assert "has no teacher.pt, which KD fine-tuning needs" in _error(capsys) and not (run / "pruned").exists()
    assert main(["prune", "--run", str(run), "--epochs", "0"]) == 0
    assert not (run / "pruned" / "teacher.pt").exists()


def test_align_16_keeps_whole_blocks_and_says_so(demo_run, tmp_path, capsys):
    out = tmp_path / "aligned"
    assert main(["prune", "--run", str(demo_run), "--channels", "0.5", "--align", "16", "--epochs", "0",
                 "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["align"] == 16
    widths = [layer["width"][1] for layer in report["npu_blocks"]["layers"]]
    assert widths == [8, 16, 16]  # layers of one block are left whole: thinning them buys the NPU nothing
    assert report["npu_blocks"]["unchanged"] == []
    assert "16-channel blocks per conv" in capsys.readouterr().out


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atlas-kd prune: error:"), lines
    return lines[0]


def test_run_without_a_student_is_one_line(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(demo_run / "config.json", run / "config.json")
    assert main(["prune", "--run", str(run)]) == 2
    assert "student.pt not found" in _error(capsys)


def _run_with_student(demo_run, tmp_path, model: str):
    """A copy of the demo run whose student is an untrained `model`."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    arch = make_arch(model, (1, 28, 28), 10)
    payload = checkpoint.load(run / "student.pt")
    checkpoint.save(run / "student.pt", {**payload, "arch": arch, "state_dict": build_model(arch).state_dict()})
    config = json.loads((run / "config.json").read_text())
    config["student"]["model"] = model  # as `train --student-model MODEL` would have written it
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_residual_student_is_refused(demo_run, tmp_path, capsys):
    run = _run_with_student(demo_run, tmp_path, "resnet20")
    assert main(["prune", "--run", str(run)]) == 2
    assert "residual blocks" in _error(capsys)
    assert not (run / "pruned").exists()


def test_a_student_without_convs_takes_fc_sparsity_but_not_channel_pruning(demo_run, tmp_path, capsys):
    run = _run_with_student(demo_run, tmp_path, "mlp50")
    assert main(["prune", "--run", str(run), "--channels", "0.5"]) == 2
    assert "no conv channels to remove" in _error(capsys) and not (run / "pruned").exists()
    assert main(["prune", "--run", str(run), "--channels", "0", "--fc-sparsity", "0.8", "--epochs", "0"]) == 0
    assert "no convs: the Ascend Cube's channel blocks do not apply" in capsys.readouterr().out
    report = json.loads((run / "pruned" / "prune.json").read_text())
    assert report["fc_sparsity"]["measured"] == pytest.approx(0.8, abs=1e-4) and report["npu_blocks"]["layers"] == []


def test_align_below_one_is_one_line(demo_run, capsys):
    assert main(["prune", "--run", str(demo_run), "--align", "0"]) == 2
    assert "--align" in _error(capsys)
    assert not (demo_run / "pruned").exists()


@pytest.mark.parametrize("option, value", [("--channels", "1"), ("--channels", "1.5"), ("--channels", "-0.1"),
                                           ("--fc-sparsity", "1"), ("--fc-sparsity", "-0.5")])
def test_fraction_outside_zero_one_is_one_line(demo_run, option, value, capsys):
    assert main(["prune", "--run", str(demo_run), option, value]) == 2
    assert f"{option} must be a fraction in [0, 1)" in _error(capsys)
    assert not (demo_run / "pruned").exists()


def test_nothing_to_prune_and_an_unknown_fc_scope_are_one_line(demo_run, capsys):
    assert main(["prune", "--run", str(demo_run), "--channels", "0"]) == 2
    assert "nothing to prune" in _error(capsys)
    assert main(["prune", "--run", str(demo_run), "--fc-sparsity", "0.5", "--compress-fc-scope", "row"]) == 2
    assert "--fc-scope must be 'global' or 'layer'" in _error(capsys)
    assert not (demo_run / "pruned").exists()


def _fc_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_fc_sparsity_alone_zeroes_that_fraction_of_fc_weights_and_fine_tuning_keeps_them_zero(demo_run, tmp_path,
                                                                                                capsys):
    out = tmp_path / "sparse"
    assert main(["prune", "--run", str(demo_run), "--channels", "0", "--fc-sparsity", "0.9", "--epochs", "1",
                 "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    model, payload = checkpoint.load_model(out / "student.pt")
    (weight,) = _fc_weights(model)  # tinycnn: one Linear, 10 x 288
    assert int((weight == 0).sum()) == round(0.9 * weight.numel())  # still after a fine-tuning epoch
    assert report["fc_sparsity"] == {"target": 0.9, "scope": "global", "measured": pytest.approx(0.9),
                                     "kept_from_earlier": False}
    assert payload["arch"] == report["arch_before"] == report["arch_after"] and report["removed_fraction"] == 0
    before, after = report["before"], report["after"]
    assert before["params"] == after["params"] and after["nonzero_params"] <= before["nonzero_params"] - 2592
    assert before["onnx_bytes"] == after["onnx_bytes"]  # unstructured zeros: the ONNX keeps its size
    assert "FC weights 90.0 % zero (global magnitude)" in capsys.readouterr().out


def test_channels_and_fc_sparsity_together_per_layer(demo_run, tmp_path):
    out = tmp_path / "both"
    assert main(["prune", "--run", str(demo_run), "--channels", "0.5", "--fc-sparsity", "0.5", "--fc-scope", "layer",
                 "--epochs", "0", "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    model, _ = checkpoint.load_model(out / "student.pt")
    (weight,) = _fc_weights(model)
    assert weight.shape[1] == 9 * report["arch_after"]["kwargs"]["stages"][-1][0]  # the channel surgery happened
    assert int((weight == 0).sum()) == round(0.5 * weight.numel()) and report["fc_sparsity"]["scope"] == "layer"
    assert report["before"]["onnx_bytes"] > report["after"]["onnx_bytes"]


def test_align_that_leaves_nothing_to_remove_is_one_line(demo_run, tmp_path, capsys):
    out = tmp_path / "nothing"
    assert main(["prune", "--run", str(demo_run), "--channels", "0.1", "--align", "32", "--out", str(out)]) == 2
    assert "nothing would be removed" in _error(capsys)
    assert not out.exists()


def test_diverged_fine_tuning_is_one_line_and_writes_nothing(demo_run, tmp_path, capsys):
    out = tmp_path / "diverged"
    assert main(["prune", "--run", str(demo_run), "--epochs", "1", "--compress-finetune-lr", "1e4",
                 "--out", str(out)]) == 2
    assert "fine-tuning diverged" in _error(capsys)
    assert not out.exists()


def test_a_fraction_too_small_to_remove_a_channel_is_one_line(demo_run, tmp_path, capsys):
    out = tmp_path / "none"
    assert main(["prune", "--run", str(demo_run), "--channels", "0.005", "--out", str(out)]) == 2
    assert "--channels 0.005 removes no channel of [8, 16, 32]" in _error(capsys)
    assert not out.exists()


def test_a_start_at_chance_level_is_not_called_diverged():
    from training.prune_stage import _refuse_diverged

    _refuse_diverged([{"train_loss": 0.6}], 0.14, 0.115, 10, 0.02)  # undertrained, not diverged: no error
    with pytest.raises(UserError, match="diverged"):
        _refuse_diverged([{"train_loss": 0.6}], 0.90, 0.10, 10, 0.02)
    with pytest.raises(UserError, match="diverged"):
        _refuse_diverged([{"train_loss": float("nan")}], 0.14, 0.10, 10, 0.02)


def test_out_never_overwrites_the_run_or_foreign_files(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    before = (run / "student.pt").read_bytes()
    for out in (run, run.parent):
        assert main(["prune", "--run", str(run), "--epochs", "0", "--out", str(out)]) == 2
        assert "is (or holds) the run being pruned" in _error(capsys)
    (tmp_path / "afile").write_text("x")
    assert main(["prune", "--run", str(run), "--epochs", "0", "--out", str(tmp_path / "afile")]) == 2
    assert "exists and is not a folder" in _error(capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["prune", "--run", str(run), "--epochs", "0", "--out", str(tmp_path / "other")]) == 2
    assert "holds other files and no prune.json" in _error(capsys)
    assert (run / "student.pt").read_bytes() == before and (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_pruning_again_into_an_earlier_output_replaces_it_whole(demo_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", "--run", str(demo_run), "--epochs", "0", "--out", str(out)]) == 0
    (out / "model.onnx").write_bytes(b"stale export of the earlier student")
    assert main(["prune", "--run", str(demo_run), "--channels", "0.3", "--epochs", "0", "--out", str(out)]) == 0
    assert not (out / "model.onnx").exists() and "replaced the earlier prune output" in capsys.readouterr().out
    assert json.loads((out / "prune.json").read_text())["fraction"] == 0.3
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "prune.json", "student.pt", "teacher.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


@pytest.mark.parametrize("sparsity, message", [("0.9999", "would zero all of classifier.1.weight: use a smaller "
                                                           "fraction or --fc-scope layer"),
                                               ("1e-9", "zeroes no weight of 2,880")])
def test_fc_sparsity_that_empties_a_layer_or_zeroes_nothing_is_one_line(demo_run, tmp_path, sparsity, message,
                                                                       capsys):
    out = tmp_path / "x"
    assert main(["prune", "--run", str(demo_run), "--channels", "0", "--fc-sparsity", sparsity, "--epochs", "0",
                 "--out", str(out)]) == 2
    assert message in _error(capsys) and not out.exists()


def test_channel_pruning_an_fc_sparse_run_keeps_its_zeros(demo_run, tmp_path, capsys):
    sparse = tmp_path / "sparse"
    assert main(["prune", "--run", str(demo_run), "--channels", "0", "--fc-sparsity", "0.8", "--epochs", "0",
                 "--out", str(sparse)]) == 0
    out = tmp_path / "both"
    assert main(["prune", "--run", str(sparse), "--channels", "0.3", "--epochs", "1", "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    (weight,) = _fc_weights(checkpoint.load_model(out / "student.pt")[0])
    zeros = int((weight == 0).sum()) / weight.numel()
    assert report["fc_sparsity"]["kept_from_earlier"] and report["fc_sparsity"]["measured"] == pytest.approx(zeros)
    assert zeros > 0.7  # ~0.8 of the columns the surgery kept; fine-tuning did not regrow them
    history = checkpoint.load(out / "student.pt")["metrics"]["pruning_history"]
    assert [(h["fraction"], h["fc_sparsity"]) for h in history] == [(0.0, 0.8), (0.3, 0.0)]
    assert "(kept from an earlier pruning)" in capsys.readouterr().out


@pytest.mark.parametrize("lr", ["-1", "nan", "0"])
def test_a_bad_fine_tuning_lr_is_one_line_before_any_work(demo_run, tmp_path, lr, capsys):
    assert main(["prune", "--run", str(demo_run), "--compress-finetune-lr", lr, "--out", str(tmp_path / "x")]) == 2
    assert "compress.finetune_lr must be a number > 0" in _error(capsys)


def test_a_junk_student_checkpoint_and_a_bad_option_value_are_one_line(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    (run / "student.pt").write_text("junk\n")
    assert main(["prune", "--run", str(run)]) == 2
    assert "not a PyTorch checkpoint" in _error(capsys)
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--run", str(run), "--fc-scope", "rows"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "invalid choice: 'rows'" in err[0] and "--help" in err[0]


def test_another_data_set_than_the_students_is_one_line(demo_run, tmp_path, capsys):
    assert main(["prune", "--run", str(demo_run), "--data-dataset", "cifar10", "--out", str(tmp_path / "x")]) == 2
    assert "was trained on mnist-sample, not cifar10" in _error(capsys) and not (tmp_path / "x").exists()


def test_prune_fine_tunes_on_the_given_device_and_refuses_one_it_lacks(demo_run, pruned_run, tmp_path, capsys):
    assert json.loads((pruned_run / "pruned" / "prune.json").read_text())["finetune"]["device"] == "cpu"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal below needs one without")
    assert main(["prune", "--run", str(demo_run), "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert "CUDA is not available (use --device cpu)" in _error(capsys) and not (tmp_path / "x").exists()


@pytest.mark.parametrize("option", ["--compress-pmw-strength", "--compress-slim"])
def test_training_only_options_are_refused_not_ignored(demo_run, option, capsys):
    with pytest.raises(SystemExit) as exit_:  # prune fine-tunes with plain SGD and no L1 term
        main(["prune", "--run", str(demo_run), option, "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and f"unrecognized arguments: {option} 3" in err[0], err


def test_widths_choose_each_layers_kept_channels(demo_run, tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["prune", "--run", str(demo_run), "--widths", "2,16,10", "--epochs", "0", "--out", str(out)]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["arch_after"]["kwargs"]["stages"] == [[2], [16], [10]] and report["widths_requested"] == [2, 16, 10]
    assert report["removed_fraction"] == pytest.approx(0.5) and report["align"] == 1
    assert "removed 50% of the conv channels: widths [8, 16, 32] -> [2, 16, 10]" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--widths", "2,16"], "--widths: tinycnn has 3 conv layers ([8, 16, 32]); give 3 widths, got 2"),
    (["--widths", "2,16,10", "--channels", "0.5"], "drop --channels and --align"),
    (["--widths", "2,16,10", "--align", "16"], "drop --channels and --align"),
    (["--widths", "8,16,32"], "keeps every channel of [8, 16, 32]"),
])
def test_widths_that_do_not_fit_or_contradict_other_options_are_one_line(demo_run, tmp_path, args, message, capsys):
    assert main(["prune", "--run", str(demo_run), "--epochs", "0", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in _error(capsys) and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["prune", "--run", str(demo_run), "--widths", "2,x,10"])
    assert "expected comma-separated channel counts" in capsys.readouterr().err


def test_a_ratio_whose_rounds_hold_1_is_called_no_clear_change():
    from training.prune_stage import _ratio_with_spread

    assert _ratio_with_spread(0.91, {"min": 0.67, "max": 1.06}) == "0.91 (0.67-1.06: no clear change)"
    assert _ratio_with_spread(0.70, {"min": 0.69, "max": 0.74}) == "0.70 (0.69-0.74)"


def test_atomic_dir_replaces_whole_or_not_at_all_and_follows_a_symlink(tmp_path):
    from atlas.fileio import atomic_dir

    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("the work failed half-way")
    assert [p.name for p in target.iterdir()] == ["old.txt"]  # untouched
    link = tmp_path / "link"
    link.symlink_to(target)
    with atomic_dir(link) as tmp:
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]  # no temp or old folder left


def test_out_refusals_that_protect_nested_runs_and_writes_into_the_current_folder(demo_run, tmp_path, monkeypatch,
                                                                                 capsys):
    out = tmp_path / "out"
    assert main(["prune", "--run", str(demo_run), "--epochs", "0", "--out", str(out)]) == 0
    assert main(["prune", "--run", str(out), "--epochs", "0"]) == 0  # out/pruned, a further pruned run
    assert main(["prune", "--run", str(demo_run), "--epochs", "0", "--out", str(out)]) == 2
    assert "holds a further pruned run (pruned)" in _error(capsys) and (out / "pruned" / "student.pt").exists()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # `--out .` in an empty folder: filled in place, the folder itself stays
    assert main(["prune", "--run", str(demo_run), "--epochs", "0", "--out", "."]) == 0
    assert (here / "prune.json").exists() and here.samefile(".")


def test_fc_sparsity_not_above_the_zeros_already_there_is_one_line(demo_run, tmp_path, capsys):
    sparse = tmp_path / "sparse"
    assert main(["prune", "--run", str(demo_run), "--channels", "0", "--fc-sparsity", "0.5", "--epochs", "0",
                 "--out", str(sparse)]) == 0
    assert main(["prune", "--run", str(sparse), "--channels", "0", "--fc-sparsity", "0.2", "--epochs", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "is not above the 50.0 % of FC weights already zero" in _error(capsys)


def test_a_teacher_for_another_task_is_one_line_before_any_work(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    payload = checkpoint.load(run / "teacher.pt")
    checkpoint.save(run / "teacher.pt", {**payload, "num_classes": 5})
    assert main(["prune", "--run", str(run), "--epochs", "1"]) == 2
    assert "teacher.pt does not match the student: num_classes 5 vs 10" in _error(capsys)


def test_atomic_dir_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    import os

    from atlas import fileio

    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename, calls = os.rename, []

    def flaky_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder into place
            raise OSError(16, "Device or resource busy")
        real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", flaky_rename)
    with pytest.raises(UserError, match="cannot write .*target: Device or resource busy"):  # OSError -> one line
        with fileio.atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["old.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["target"]
