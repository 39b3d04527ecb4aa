import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from atlas.cli import main
from atlas.config import load_config
from export import lint

STUDENTS = [("mnist-sample", "mlp50"), ("mnist-sample", "lenet5"), ("mnist-sample", "tinycnn")]


def _train_tiny(run_dir, dataset, student, **extra):
    from training.train import train

    cfg = load_config(None, {"data.dataset": dataset, "data.train_limit": "256", "data.test_limit": "200",
                             "teacher.model": "mlp50", "teacher.epochs": "1", "student.model": student,
                             "student.epochs": "1", "distill.baseline": "false", "export.golden_count": "150",
                             "name": "t", **extra})
    train(cfg, run_dir, progress=False, log=lambda s: None)
    return cfg


@pytest.fixture(scope="module")
def student_runs(tmp_path_factory):
    runs = {}
    for dataset, student in STUDENTS:
        run = tmp_path_factory.mktemp(f"{student}")
        _train_tiny(run, dataset, student)
        runs[student] = run
    return runs


def _export(run, *args):
    return main(["export", "--run", str(run), *args])


@pytest.mark.parametrize("student", [s for _, s in STUDENTS])
def test_every_student_exports_faithfully_and_lints_clean(student_runs, student, capsys):
    run = student_runs[student]
    assert _export(run) == 0, capsys.readouterr().err
    report = json.loads((run / "export.json").read_text())
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["parity"]["top1_identical"]
    assert report["lint"]["summary"]["errors"] == 0
    assert not lint.has_errors(lint.lint_file(run / "model.onnx"))
    model = onnx.load(str(run / "model.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [11]
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 28, 28]
    assert not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    inputs = np.load(run / "golden" / "inputs.npy")
    assert inputs.dtype == np.float32 and inputs.shape == (150, 1, 28, 28)
    assert np.load(run / "golden" / "labels.npy").dtype == np.int64
    assert np.load(run / "golden" / "reference.npy").shape == (150, 10)
    assert report["board_input"] == {"path": "golden/inputs.npy", "dtype": "float32", "layout": "NCHW", "aipp": False}


def test_golden_inputs_are_the_training_normalisation(student_runs):
    from training.data import load_dataset, normalize

    run = student_runs["tinycnn"]
    assert _export(run) == 0
    d = load_dataset("mnist-sample")
    np.testing.assert_array_equal(np.load(run / "golden" / "inputs.npy"), normalize(d.test_images[:150], [0.1307], [0.3081]))


def test_batch_from_config_is_static_in_the_onnx(student_runs, tmp_path):
    run = student_runs["lenet5"]
    assert _export(run, "--export-batch", "8") == 0
    report = json.loads((run / "export.json").read_text())
    assert report["input"]["shape"] == [8, 1, 28, 28] and report["parity"]["top1_identical"]
    assert _export(run) == 0  # back to batch 1 for the other tests


def test_cifar_student_exports(tmp_path):
    from datagen import make_cifar_bin_dir

    folder, _ = make_cifar_bin_dir(tmp_path / "c", n_per_batch=20)
    _train_tiny(tmp_path / "run", "cifar10", "lenet5", **{"data.dir": str(folder), "data.augment": "false"})
    assert _export(tmp_path / "run", "--export-golden-count", "20") == 0
    report = json.loads((tmp_path / "run" / "export.json").read_text())
    assert report["input"]["shape"] == [1, 3, 32, 32] and report["parity"]["top1_identical"]


def test_aipp_golden_inputs_are_uint8_nhwc(student_runs):
    run = student_runs["tinycnn"]
    try:
        assert _export(run, "--om-aipp", "true") == 0
        report = json.loads((run / "export.json").read_text())
        assert report["board_input"] == {"path": "golden/inputs.npy", "dtype": "uint8", "layout": "NHWC", "aipp": True}
        assert np.load(run / "golden" / "inputs.npy").shape == (150, 28, 28, 1)
    finally:
        assert _export(run) == 0


def test_users_own_onnx_goes_through_the_same_stage(student_runs, tmp_path, capsys):
    src = student_runs["mlp50"] / "model.onnx"
    out = tmp_path / "mine"
    assert main(["export", "--onnx", str(src), "--run", str(out), "--data-dataset", "mnist-sample"]) == 0, capsys.readouterr().err
    report = json.loads((out / "export.json").read_text())
    assert report["parity"] is None and report["source"] == {"onnx": str(src)}
    np.testing.assert_allclose(np.load(out / "golden" / "reference.npy")[:150],
                               np.load(student_runs["mlp50"] / "golden" / "reference.npy"), atol=1e-6)


# --- bad input ------------------------------------------------------------------------------------------------

def _assert_error(capsys, code, expected_code, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected_code, err
    assert err and err[-1].startswith("atlas-kd export: error:")
    for f in fragments:
        assert f in err[-1], err[-1]


def _fresh_run(student_runs, tmp_path, student="tinycnn"):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((student_runs[student] / "config.json").read_text())
    return run


def _nothing_written(run):
    return not any((run / name).exists() for name in ("model.onnx", "model.raw.onnx", "golden", "export.json"))


def test_missing_checkpoint(student_runs, tmp_path, capsys):
    run = _fresh_run(student_runs, tmp_path)
    _assert_error(capsys, _export(run), 2, "student.pt not found")
    assert _nothing_written(run)


def test_truncated_checkpoint(student_runs, tmp_path, capsys):
    run = _fresh_run(student_runs, tmp_path)
    (run / "student.pt").write_bytes((student_runs["tinycnn"] / "student.pt").read_bytes()[:3000])
    _assert_error(capsys, _export(run), 2, "truncated or not a PyTorch checkpoint")
    assert _nothing_written(run)


def test_checkpoint_of_another_architecture(student_runs, tmp_path, capsys):
    run = _fresh_run(student_runs, tmp_path)
    (run / "student.pt").write_bytes((student_runs["lenet5"] / "student.pt").read_bytes())
    _assert_error(capsys, _export(run), 2, "holds a 'lenet5' but the config names 'tinycnn'")
    assert _nothing_written(run)


def _user_onnx(capsys, tmp_path, path):
    out = tmp_path / "out"
    code = main(["export", "--onnx", str(path), "--run", str(out)])
    return code, out


def test_non_onnx_file(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a model at all")
    code, out = _user_onnx(capsys, tmp_path, bad)
    _assert_error(capsys, code, 2, "model.onnx")
    assert not out.exists() or _nothing_written(out)


def test_truncated_onnx(student_runs, tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes((student_runs["tinycnn"] / "model.onnx").read_bytes()[:20000])
    code, out = _user_onnx(capsys, tmp_path, bad)
    _assert_error(capsys, code, 2, "truncated")
    assert not out.exists() or _nothing_written(out)


def test_external_data_outside_the_folder(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10, 784])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", str(4 * 7840))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)],
                              "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(folder / "model.onnx"))
    code, out = _user_onnx(capsys, tmp_path, folder / "model.onnx")
    _assert_error(capsys, code, 2, "outside")
    assert not out.exists() or _nothing_written(out)


def test_lint_error_stops_the_stage_with_findings_listed(tmp_path, capsys):
    # QuantizeLinear / DequantizeLinear: no ATC parser at any opset (was NonZero, which the issue-16 table parses)
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["input", "scale"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "scale"], ["logits"])],
                              "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 28, 28])], [scale])
    path = tmp_path / "nz.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    code, out = _user_onnx(capsys, tmp_path, path)
    captured = capsys.readouterr()
    assert code == 1
    assert "op-unsupported" in captured.out and "lint found" in captured.err
    assert json.loads((out / "export.json").read_text())["failed"] == "lint"
    assert not (out / "golden").exists()


@pytest.mark.parametrize("batch", ["0", "-3"])
def test_a_batch_below_one_is_refused_before_the_good_export_is_replaced(student_runs, tmp_path, capsys, batch):
    run = tmp_path / "run"
    shutil.copytree(student_runs["tinycnn"], run)
    assert _export(run) == 0
    capsys.readouterr()
    before = {name: (run / name).read_bytes() for name in ("model.onnx", "model.raw.onnx", "export.json")}
    _assert_error(capsys, _export(run, "--export-batch", batch), 2, f"export.batch must be >= 1 (got {batch})")
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_stage_stopped_after_the_onnx_is_rewritten_marks_export_json_failed(student_runs, tmp_path, capsys):
    # the new batch-4 model.onnx is written before the data is read; the old export.json (batch 1) must not
    # be left to describe it, or om builds the new model and deploy runs it with the old batch
    run = tmp_path / "run"
    shutil.copytree(student_runs["tinycnn"], run)
    assert _export(run) == 0
    capsys.readouterr()
    code = _export(run, "--export-batch", "4", "--data-dir", str(tmp_path / "nowhere"))
    _assert_error(capsys, code, 2, "takes no --data-dir")
    record = json.loads((run / "export.json").read_text())
    assert record["failed"] == "export" and "takes no --data-dir" in record["error"]
    assert main(["om", "--run", str(run), "--sim"]) == 2
    assert "the last export failed" in capsys.readouterr().err
    assert main(["deploy", "--run", str(run), "--board", "nowhere"]) == 2
    assert "the last export failed" in capsys.readouterr().err
    assert main(["verify", "--run", str(run)]) == 2
    assert "the last export failed" in capsys.readouterr().err


def test_a_run_folder_that_cannot_be_created_is_one_line(student_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(student_runs["tinycnn"], run)
    assert _export(run) == 0
    capsys.readouterr()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for target in (a_file, a_file / "sub"):
        code = main(["export", "--onnx", str(run / "model.onnx"), "--run", str(target)])
        _assert_error(capsys, code, 2, str(target))
