import json

import numpy as np
import pytest

from atlas.cli import main
from atlas.config import VerifyConfig
from atlas.errors import UserError
from atlas.verify import compare, judge
from conftest import run_cli_as_nobody


def _run(tmp_path, outputs, reference, labels):
    (tmp_path / "golden").mkdir(parents=True, exist_ok=True)
    (tmp_path / "board").mkdir(exist_ok=True)
    np.save(tmp_path / "golden" / "reference.npy", reference)
    np.save(tmp_path / "golden" / "labels.npy", labels)
    np.save(tmp_path / "board" / "outputs.npy", outputs)
    return tmp_path


@pytest.fixture
def golden():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(1000, 10)).astype(np.float32)
    reference[np.arange(1000), rng.integers(0, 10, 1000)] += 5  # clear winners
    return reference, reference.argmax(1).astype(np.int64)


def test_identical_outputs_pass_with_cosine_one(golden):
    reference, labels = golden
    m = compare(reference.copy(), reference, labels)
    assert m["cosine_min"] == pytest.approx(1.0) and m["max_abs_error"] == 0 and m["top1_agreement"] == 1.0
    assert m["accuracy_board"] == m["accuracy_reference"] == 1.0
    assert judge(m, VerifyConfig()) == []


def test_float16_rounding_passes(golden):
    reference, labels = golden
    m = compare(reference.astype(np.float16).astype(np.float32), reference, labels)
    assert m["cosine_min"] > 0.9999 and 0 < m["max_abs_error"] < 1e-2 and judge(m, VerifyConfig()) == []


def test_one_flip_in_1000_is_exactly_the_99_9_percent_boundary_and_two_fail(golden):
    reference, labels = golden
    outputs = reference.copy()
    outputs[0] = np.roll(outputs[0], 1)  # a different top-1 for one image
    m = compare(outputs, reference, labels)
    assert m["top1_agreement"] == 0.999 and m["top1_disagreements"] == 1
    assert not any("top-1" in f for f in judge(m, VerifyConfig(min_cosine=0.0)))
    outputs[1] = np.roll(outputs[1], 1)
    failed = judge(compare(outputs, reference, labels), VerifyConfig(min_cosine=0.0))
    assert failed and "2 of 1000 images differ" in failed[0]


def test_nan_outputs_fail(golden):
    reference, labels = golden
    outputs = reference.copy()
    outputs[3, 2] = np.nan
    m = compare(outputs, reference, labels)
    failed = judge(m, VerifyConfig())
    assert m["non_finite_rows"] == 1 and any("NaN" in f for f in failed) and any("min cosine" in f for f in failed)


def test_shape_mismatch_is_an_error(golden):
    reference, labels = golden
    with pytest.raises(UserError, match="not outputs of the same model"):
        compare(reference[:10], reference, labels)


def test_cli_pass_writes_report_and_confusion_png(tmp_path, golden, capsys):
    reference, labels = golden
    run = _run(tmp_path, reference.copy(), reference, labels)
    assert main(["verify", "--run", str(run)]) == 0
    report = json.loads((run / "verify.json").read_text())
    assert report["passed"] and report["boards"][0]["metrics"]["count"] == 1000
    assert sum(map(sum, report["boards"][0]["confusion_matrix"])) == 1000
    assert (run / "board" / "confusion.png").stat().st_size > 1000
    text = (run / "report.md").read_text()
    assert "# " in text and "PASS" in text and "confusion" in text
    assert "PASS" in capsys.readouterr().out


def test_cli_fail_exits_1_naming_the_threshold(tmp_path, golden, capsys):
    reference, labels = golden
    outputs = reference.copy()
    outputs[:5] = np.roll(outputs[:5], 1, axis=1)
    run = _run(tmp_path, outputs, reference, labels)
    assert main(["verify", "--run", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("atlas-kd verify: error: verification FAILED") and "top-1 agreement 99.50 %" in err
    assert json.loads((run / "verify.json").read_text())["passed"] is False


def test_thresholds_come_from_the_config(tmp_path, golden, capsys):
    reference, labels = golden
    outputs = reference.copy()
    outputs[:5] = np.roll(outputs[:5], 1, axis=1)
    run = _run(tmp_path, outputs, reference, labels)
    assert main(["verify", "--run", str(run), "--verify-min-top1-agreement", "0.99", "--verify-min-cosine", "-1"]) == 0


@pytest.mark.parametrize("missing, stage", [("board/outputs.npy", "make deploy"), ("golden/reference.npy", "make onnx"),
                                            ("golden/labels.npy", "make onnx")])
def test_missing_inputs_are_one_line_naming_the_stage(tmp_path, golden, capsys, missing, stage):
    reference, labels = golden
    run = _run(tmp_path, reference.copy(), reference, labels)
    (run / missing).unlink()
    assert main(["verify", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing.split("/")[-1] in err[0] and stage in err[0]


def test_a_failed_last_deploy_is_not_verified_against_older_outputs(tmp_path, golden, capsys):
    # board/ still holds an earlier deploy's outputs; deploy.json says the last one failed
    reference, labels = golden
    run = _run(tmp_path, reference.copy(), reference, labels)
    (run / "deploy.json").write_text(json.dumps({"boards": [{"board": "b", "status": "error", "local_dir": "board",
                                                             "error": "the app failed", "exit_code": 1}]}))
    assert main(["verify", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the last deploy failed" in err[0]
    assert not (run / "verify.json").exists()
    assert main(["verify", "--run", str(run), "--board-dir", str(run / "board")]) == 0


def test_hand_edited_records_that_are_not_objects_do_not_crash_the_report(tmp_path, golden, capsys):
    reference, labels = golden
    run = _run(tmp_path, reference.copy(), reference, labels)
    for name in ("export.json", "deploy.json", "train.json"):
        (run / name).write_text("[1, 2]")
    assert main(["verify", "--run", str(run)]) == 0
    assert "PASS" in (run / "report.md").read_text()


def test_an_unwritable_run_folder_is_one_line_and_nothing_is_written(golden, public_tmp):
    reference, labels = golden
    run = _run(public_tmp / "run", reference.copy(), reference, labels)
    for path in (run, run / "golden", run / "board"):
        path.chmod(0o755)
    for path in (run / "golden" / "reference.npy", run / "golden" / "labels.npy", run / "board" / "outputs.npy"):
        path.chmod(0o644)
    done = run_cli_as_nobody("verify", "--run", str(run))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"atlas-kd verify: error: {run} is not writable: verify writes "
                                                "verify.json, report.md and confusion.png there; fix its permissions"]
    assert not (run / "board" / "confusion.png").exists()
