"""The on-board app (atlas/board/infer.py), run as the board runs it: a subprocess with the emulator on PYTHONPATH.

The acceptance tests take their model and golden data from the `golden_case` fixture: a trained demo student
(conftest `demo_run`) with its 1,000 golden images and onnxruntime reference.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from atlas import om_container
from test_acl_emulator import (AIPP_MNIST, REAL_OM, build_tiny_cnn_onnx, build_with_atc_sim, mnist_like_images,
                               normalise, onnx_reference, write_sim_om)

REPO = Path(__file__).resolve().parents[1]
INFER = REPO / "atlas" / "board" / "infer.py"
SIM_PATH = REPO / "atlas" / "sim"
GOLDEN_COUNT = 1000
SPEED_BOUND_S = 5.0  # acceptance 4: 1,000 MNIST-sized images in < 5 s on 2 cores, start-up included
KNOBS = ("ATLAS_KD_SIM_ACL_RUN_MODE", "ATLAS_KD_SIM_ACL_FAIL", "ATLAS_KD_SIM_ACL_STATS", "ATLAS_KD_SIM_ACL_VERBOSE",
         "ATLAS_KD_SIM_ACL_OLD_UTIL")


class GoldenCase:
    """The trained demo student (conftest `demo_run`): its 1,000 golden inputs (float32 NCHW), its onnxruntime fp32
    reference, and a sim .om per batch size, built by the real route (export with that batch, then `om --sim`,
    so the emulator runs float16 numerics as the 310 computes with ATC's default force_fp16)."""

    def __init__(self, demo_run: Path, folder: Path):
        self.demo_run, self.folder = demo_run, folder
        self.inputs = demo_run / "golden" / "inputs.npy"
        self.reference = np.load(demo_run / "golden" / "reference.npy")
        self._oms: dict[int, Path] = {1: demo_run / "model.om"}

    def om(self, batch: int) -> Path:
        if batch not in self._oms:
            from atlas.cli import main

            run = self.folder / f"b{batch}"
            run.mkdir()
            for name in ("config.json", "student.pt"):
                shutil.copy(self.demo_run / name, run / name)
            assert main(["export", "--run", str(run), "--export-batch", str(batch), "--export-golden-count", "10"]) == 0
            assert main(["om", "--run", str(run), "--sim"]) == 0
            self._oms[batch] = run / "model.om"
        return self._oms[batch]


@pytest.fixture(scope="module")
def golden_case(demo_run, tmp_path_factory):
    return GoldenCase(demo_run, tmp_path_factory.mktemp("golden"))


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, out_dir: Path, stats: Path, seconds: float):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.out_dir, self.seconds = out_dir, seconds
        self.stats = json.loads(stats.read_text()) if stats.exists() else None

    @property
    def outputs(self) -> np.ndarray:
        return np.load(self.out_dir / "outputs.npy")

    @property
    def timing(self) -> dict:
        return json.loads((self.out_dir / "timing.json").read_text())

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if not line.startswith("acl-sim:")]


def run_infer(out_dir: Path, model: Path, inputs: Path, *extra: str, env: dict | None = None,
              pythonpath: Path = SIM_PATH) -> Run:
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = out_dir / "acl-stats.json"
    environment = {k: v for k, v in os.environ.items() if k not in KNOBS}
    environment.update({"PYTHONPATH": str(pythonpath), "ATLAS_KD_SIM_ACL_STATS": str(stats)}, **(env or {}))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(INFER), "--model", str(model), "--input", str(inputs),
                           "--output", str(out_dir / "outputs.npy"), *extra],
                          capture_output=True, text=True, env=environment, timeout=120)
    return Run(proc, out_dir, stats, time.perf_counter() - started)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_released_everything(run: Run) -> None:
    assert run.stats is not None, run.stderr
    assert run.stats["leaks_at_finalize"] == {}
    assert run.stats["live"]["allocations"] == 0


@pytest.fixture
def small_inputs(tmp_path) -> Path:
    path = tmp_path / "small.npy"
    np.save(path, normalise(mnist_like_images(20, seed=2)))
    return path


# -- acceptance 1 and 4 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden_runs(golden_case, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {batch: run_infer(out / f"b{batch}", golden_case.om(batch), golden_case.inputs, "--batch", str(batch))
            for batch in (1, 7)}


@pytest.mark.parametrize("batch", [1, 7])
def test_golden_outputs_agree_with_onnxruntime_on_top1_and_cosine(golden_case, golden_runs, batch):
    run = golden_runs[batch]
    assert run.returncode == 0, run.stderr
    outputs = run.outputs
    assert outputs.dtype == np.float32 and outputs.shape == golden_case.reference.shape
    top1 = (outputs.argmax(1) == golden_case.reference.argmax(1)).mean()
    assert top1 >= 0.999
    assert cosine_rows(outputs, golden_case.reference).min() >= 0.999


@pytest.mark.parametrize("batch", [1, 7])
def test_one_execute_per_batch_no_malloc_after_setup_and_no_leak(golden_runs, batch):
    run = golden_runs[batch]
    assert run.returncode == 0, run.stderr
    executions = math.ceil(GOLDEN_COUNT / batch)  # 143 for batch 7: the last batch is partial
    assert run.stats["calls"]["acl.mdl.execute"] == executions == run.stats["executes"]
    assert run.stats["malloc_after_first_execute"] == 0
    assert run.stats["calls"]["acl.rt.malloc"] == 2  # one input, one output buffer
    assert run.stats["calls"]["acl.finalize"] == 1
    assert_released_everything(run)
    assert run.stats["error_count"] == 0


def test_timing_json_reports_load_latency_percentiles_and_throughput(golden_runs):
    timing = golden_runs[7].timing
    assert timing["acl"] == "sim" and timing["run_mode"] == "ACL_DEVICE" and timing["device"] == 0
    assert timing["batch"] == 7 and timing["loop"] == 1 and timing["samples"] == GOLDEN_COUNT
    assert timing["executions"] == 143
    latency = timing["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert timing["model_load_ms"] > 0 and timing["throughput_images_per_s"] > 0
    assert timing["copy_in_ms_total"] > 0 and timing["copy_out_ms_total"] > 0
    assert timing["input"]["memcpy_kind"] == timing["output"]["memcpy_kind"] == "DEVICE_TO_DEVICE"
    assert golden_runs[7].stdout.splitlines()[-1].startswith("infer.py: done: 1000 samples x 1 loop, batch 7, "
                                                             "143 executions;")
    assert sorted(p.name for p in golden_runs[7].out_dir.iterdir()) == ["acl-stats.json", "outputs.npy",
                                                                        "timing.json"]  # no temp files left


def test_processes_1000_mnist_images_in_under_5_seconds(golden_case, tmp_path, record_property):
    run = run_infer(tmp_path, golden_case.om(1), golden_case.inputs, "--batch", "1")
    assert run.returncode == 0, run.stderr
    record_property("wall_seconds_1000_images_batch1", round(run.seconds, 3))
    print(f"infer.py, 1000 images, batch 1, emulator: {run.seconds:.2f} s wall (subprocess, start-up included)")
    assert run.seconds < SPEED_BOUND_S


# -- behaviours ----------------------------------------------------------------------------------------------------
def test_loop_repeats_the_input_and_writes_outputs_of_the_first_pass(tmp_path, golden_case, small_inputs):
    once = run_infer(tmp_path / "once", golden_case.om(7), small_inputs)
    looped = run_infer(tmp_path / "loop", golden_case.om(7), small_inputs, "--loop", "3",
                       "--timing", str(tmp_path / "looped-timing.json"))
    assert once.returncode == looped.returncode == 0, looped.stderr
    assert looped.stats["calls"]["acl.mdl.execute"] == 3 * 3
    timing = json.loads((tmp_path / "looped-timing.json").read_text())
    assert timing["executions"] == 9 and timing["loop"] == 3 and timing["executions_per_pass"] == 3
    np.testing.assert_array_equal(looped.outputs, once.outputs)
    assert looped.stats["malloc_after_first_execute"] == 0


def test_aipp_model_takes_uint8_nhwc_and_matches_the_float_reference(tmp_path):
    images = mnist_like_images(50, seed=4)
    np.save(tmp_path / "pixels.npy", images[..., None])
    run = run_infer(tmp_path / "out", write_sim_om(tmp_path / "aipp.om", batch=1, aipp=True),
                    tmp_path / "pixels.npy")
    assert run.returncode == 0, run.stderr
    reference = onnx_reference(build_tiny_cnn_onnx(1), normalise(images), 1)
    assert (run.outputs.argmax(1) == reference.argmax(1)).all()
    assert cosine_rows(run.outputs, reference).min() >= 0.999
    assert run.timing["input"]["dtype"] == "uint8"


def test_atc_sim_model_with_aipp_and_fp16_output_runs_on_uint8_pixels(tmp_path):
    # the whole sim chain: spec/atc.md §6 aipp_mnist.cfg -> atc-sim (force_fp16, --output_type=FP16) -> infer.py
    cfg = tmp_path / "insert_op.cfg"
    fields = "".join(f"    {k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in AIPP_MNIST.items())
    cfg.write_text("aipp_op {\n" + fields + "}\n")
    om = build_with_atc_sim(tmp_path, 1, f"--insert_op_conf={cfg}", "--output_type=FP16")
    images = mnist_like_images(200, seed=5)
    np.save(tmp_path / "pixels.npy", images[..., None])
    run = run_infer(tmp_path / "out", om, tmp_path / "pixels.npy")
    assert run.returncode == 0, run.stderr
    reference = onnx_reference(build_tiny_cnn_onnx(1), normalise(images), 1)
    assert run.outputs.dtype == np.float32
    assert (run.outputs.argmax(1) == reference.argmax(1)).mean() >= 0.999
    assert cosine_rows(run.outputs, reference).min() >= 0.999
    assert run.timing["input"]["dtype"] == "uint8" and run.timing["output"]["dtype"] == "float16"


def test_float_inputs_are_refused_by_an_aipp_model(tmp_path, small_inputs):
    run = run_infer(tmp_path / "out", write_sim_om(tmp_path / "aipp.om", batch=1, aipp=True), small_inputs)
    assert run.returncode == 2
    assert run.error_lines == [f"infer.py: error: the inputs {small_inputs} have samples of shape (1,28,28) "
                               "float32, but the model takes (28,28,1) uint8 per sample "
                               "(model input dims [1, 28, 28, 1])"]
    assert_released_everything(run)


def test_float16_model_outputs_are_written_as_float32(tmp_path, small_inputs):
    run = run_infer(tmp_path / "out", write_sim_om(tmp_path / "fp16.om", batch=7, output_dtype="float16"),
                    small_inputs)
    assert run.returncode == 0, run.stderr
    reference = onnx_reference(build_tiny_cnn_onnx(7), np.load(small_inputs), 7)
    assert run.outputs.dtype == np.float32
    np.testing.assert_array_equal(run.outputs, reference.astype(np.float16).astype(np.float32))


def test_host_run_mode_copies_host_to_device_and_device_to_host(tmp_path, golden_case, small_inputs):
    run = run_infer(tmp_path, golden_case.om(7), small_inputs, env={"ATLAS_KD_SIM_ACL_RUN_MODE": "1"})
    assert run.returncode == 0, run.stderr
    copied = run.stats["bytes_copied"]
    assert copied["HOST_TO_DEVICE"] == 3 * 7 * 784 * 4 and copied["DEVICE_TO_HOST"] == 3 * 7 * 10 * 4
    assert copied["DEVICE_TO_DEVICE"] == 0
    assert run.timing["run_mode"] == "ACL_HOST"


def test_older_cann_without_bytes_helpers_uses_the_numpy_helpers(tmp_path, golden_case, small_inputs):
    new = run_infer(tmp_path / "new", golden_case.om(7), small_inputs)
    old = run_infer(tmp_path / "old", golden_case.om(7), small_inputs, env={"ATLAS_KD_SIM_ACL_OLD_UTIL": "1"})
    assert old.returncode == 0, old.stderr
    assert old.timing["host_staging"] == "numpy_to_ptr/ptr_to_numpy"
    assert "acl.util.bytes_to_ptr" not in old.stats["calls"] and old.stats["calls"]["acl.util.numpy_to_ptr"] == 3
    np.testing.assert_array_equal(old.outputs, new.outputs)


# -- failures: one line, non-zero exit, everything released -----------------------------------------------------
def test_failing_execute_is_one_line_naming_call_and_code_and_everything_is_released(tmp_path, golden_case,
                                                                                     small_inputs):
    # ATLAS_KD_SIM_ACL_FAIL is the emulator's rehearsal knob: the 2nd acl.mdl.execute returns 507011
    run = run_infer(tmp_path, golden_case.om(7), small_inputs,
                    env={"ATLAS_KD_SIM_ACL_FAIL": "acl.mdl.execute:507011:2"})
    assert run.returncode == 1
    assert run.stderr.splitlines() == ["infer.py: error: acl.mdl.execute failed: 507011 ACL_ERROR_RT_MODEL_EXECUTE"]
    assert "Traceback" not in run.stdout + run.stderr
    assert_released_everything(run)
    assert not (tmp_path / "outputs.npy").exists() and not (tmp_path / "timing.json").exists()


@pytest.mark.parametrize("failure, line", [
    ("acl.rt.malloc:207001:2", "acl.rt.malloc failed: 207001 ACL_ERROR_RT_MEMORY_ALLOCATION"),
    ("acl.mdl.create_desc:0", "acl.mdl.create_desc failed: returned a null handle"),
    ("acl.rt.create_context:107001", "acl.rt.create_context failed: 107001 ACL_ERROR_RT_INVALID_DEVICEID"),
])
def test_failure_during_setup_releases_what_was_made(tmp_path, golden_case, small_inputs, failure, line):
    run = run_infer(tmp_path, golden_case.om(7), small_inputs, env={"ATLAS_KD_SIM_ACL_FAIL": failure})
    assert run.returncode == 1
    assert run.error_lines == ["infer.py: error: " + line]
    assert_released_everything(run)


def test_input_shape_mismatch_names_expected_and_actual_and_releases_everything(tmp_path, golden_case):
    np.save(tmp_path / "nhwc.npy", np.zeros((5, 28, 28, 1), np.float32))
    run = run_infer(tmp_path / "out", golden_case.om(1), tmp_path / "nhwc.npy")
    assert run.returncode == 2
    assert run.error_lines == [f"infer.py: error: the inputs {tmp_path / 'nhwc.npy'} have samples of shape "
                               "(28,28,1) float32, but the model takes (1,28,28) float32 per sample "
                               "(model input dims [1, 1, 28, 28])"]
    assert_released_everything(run)


def test_input_dtype_mismatch_is_refused(tmp_path, golden_case):
    np.save(tmp_path / "f64.npy", np.zeros((5, 1, 28, 28)))
    run = run_infer(tmp_path / "out", golden_case.om(1), tmp_path / "f64.npy")
    assert run.returncode == 2 and "float64, but the model takes (1,28,28) float32" in run.stderr


def test_batch_other_than_the_models_is_refused(tmp_path, golden_case, small_inputs):
    run = run_infer(tmp_path, golden_case.om(7), small_inputs, "--batch", "4")
    assert run.returncode == 2
    assert run.error_lines == ["infer.py: error: --batch 4 does not match the model's batch 7 (an .om has the batch "
                               "it was built with); pass --batch 7 or rebuild the .om with batch 4"]
    assert_released_everything(run)


@pytest.mark.parametrize("model, inputs, message", [
    ("absent.om", "small.npy", "cannot read the model {d}/absent.om: No such file or directory"),
    ("model.om", "absent.npy", "cannot read the inputs {d}/absent.npy: No such file or directory"),
    ("model.om", "model.om", "the inputs {d}/model.om are not a .npy file (no NUMPY magic at the start)"),
])
def test_missing_or_unreadable_files_are_one_line_errors_before_any_acl_call(tmp_path, golden_case, small_inputs,
                                                                             model, inputs, message):
    write_sim_om(tmp_path / "model.om", batch=7)
    run = run_infer(tmp_path / "out", tmp_path / model, tmp_path / inputs)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["infer.py: error: " + message.format(d=tmp_path)]
    assert run.stats is None or "acl.init" not in run.stats["calls"]


def test_real_om_is_refused_by_the_emulator_with_the_clear_message(tmp_path, small_inputs):
    if not REAL_OM.exists():
        pytest.skip(f"real .om fixture absent: {REAL_OM}")
    run = run_infer(tmp_path, REAL_OM, small_inputs)
    assert run.returncode == 1
    assert om_container.NOT_SIM_MESSAGE in run.stderr
    assert run.error_lines == ["infer.py: error: acl.mdl.load_from_file failed: 100013 ACL_ERROR_PARSE_MODEL"]
    assert_released_everything(run)


def test_sim_om_on_a_real_acl_is_refused_before_init(tmp_path, golden_case, small_inputs):
    fake = tmp_path / "fake_real_acl" / "acl"
    fake.mkdir(parents=True)
    # a stand-in for the real pyACL: no __atlas_kd_sim__ marker; records whether anything was called
    (fake / "__init__.py").write_text(
        "import os\n"
        "def init(*args):\n"
        "    open(os.environ['FAKE_ACL_CALLED'], 'w').write('acl.init')\n"
        "    return 0\n")
    called = tmp_path / "called.txt"
    run = run_infer(tmp_path / "out", golden_case.om(7), small_inputs, pythonpath=fake.parent,
                    env={"FAKE_ACL_CALLED": str(called)})
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"infer.py: error: {golden_case.om(7)}: {om_container.SIM_MESSAGE}: a real Ascend board cannot run it; "
        "build a real one with `make om` (ATC)"]
    assert not called.exists()


def test_app_copy_of_the_sim_magic_matches_the_container(monkeypatch):
    monkeypatch.syspath_prepend(str(INFER.parent))
    spec = importlib.util.spec_from_file_location("board_infer", INFER)
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    assert infer.SIM_OM_MAGIC == om_container.SIM_MAGIC
    assert infer.SIM_OM_ON_REAL_BOARD.startswith(om_container.SIM_MESSAGE)


# -- a dynamic-batch .om (profiles 1,2,4,8) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def dynamic_batch_om(tmp_path_factory) -> Path:
    from atlas.sim import atc_sim
    from test_atc_sim import tiny_cnn

    folder = tmp_path_factory.mktemp("dynamic")
    model = tiny_cnn(folder / "dyn.onnx", batch_dim="N")
    assert atc_sim.main([f"--model={model}", "--framework=5", f"--output={folder / 'dyn'}", "--soc_version=Ascend310",
                         "--input_shape=input:-1,1,28,28", "--dynamic_batch_size=1,2,4,8"]) == 0
    return folder / "dyn.om"


def test_dynamic_batch_runs_the_last_partial_batch_at_the_smallest_profile_that_holds_it(tmp_path, dynamic_batch_om):
    k = 2
    inputs = normalise(mnist_like_images(8 * k + 3, seed=7))
    np.save(tmp_path / "inputs.npy", inputs)
    run = run_infer(tmp_path / "out", dynamic_batch_om, tmp_path / "inputs.npy")
    assert run.returncode == 0, run.stderr
    timing = run.timing
    assert timing["executions_by_batch"] == {"8": k, "4": 1} and timing["padded_rows"] == 1
    assert timing["executions"] == k + 1 and timing["dynamic_batch"] == [1, 2, 4, 8] and timing["batch"] == 8
    assert run.stats["calls"]["acl.mdl.set_dynamic_batch_size"] == k + 1
    assert run.stats["calls"]["acl.mdl.get_cur_output_dims"] == k + 1
    reference = onnx_reference((dynamic_batch_om.parent / "dyn.onnx").read_bytes(), inputs, 8)
    assert run.outputs.shape == (8 * k + 3, 10)
    assert cosine_rows(run.outputs, reference).min() >= 0.999
    assert_released_everything(run)


def test_a_static_model_pads_the_last_batch_to_its_own_batch(tmp_path, small_inputs):
    run = run_infer(tmp_path / "out", write_sim_om(tmp_path / "b7.om", batch=7), small_inputs)
    assert run.returncode == 0, run.stderr
    assert run.timing["executions_by_batch"] == {"7": 3} and run.timing["padded_rows"] == 1  # 20 = 7+7+6
    assert run.timing["dynamic_batch"] is None


def test_a_batch_that_is_not_a_profile_of_the_dynamic_model_is_refused(tmp_path, dynamic_batch_om, small_inputs):
    run = run_infer(tmp_path / "out", dynamic_batch_om, small_inputs, "--batch", "3")
    assert run.returncode == 2
    assert run.error_lines == ["infer.py: error: --batch 3 is not a batch size of the model (dynamic: 1,2,4,8); "
                               "pass one of them"]
    assert_released_everything(run)
