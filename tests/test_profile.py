"""Per-operator timing (issue 20 item 4): deploy --profile on the sim board, the emulator's acl.prof codes, the
report, and the real board's path (marked cann)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import atlas.sim.acl as acl
from atlas import run_folder as rf
from atlas import om_container
from atlas.board import acl_consts as C
from atlas.cli import main
from test_acl_emulator import Opened, write_sim_om
from test_acl_error_codes import table_rows

REPO = Path(__file__).resolve().parents[1]
CPU = "CPU (emulator), not the NPU"


def model_nodes(om: Path) -> list[str]:
    """The nodes the sim .om runs, without atc-sim's float16 emulation casts (atlas/fp16.py)."""
    payload = onnx.load_from_string(om_container.unpack(om.read_bytes(), name=str(om)).onnx_bytes)
    return [n.name for n in payload.graph.node if not n.name.endswith(("__fp16_cast", "__fp32_cast"))]


# -- the sim board road ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def profiled(demo_run, sim_board, tmp_path_factory):
    run = tmp_path_factory.mktemp("profile") / "demo"
    shutil.copytree(demo_run, run)
    code = main(["deploy", "--run", str(run), "--board", sim_board.alias, "--ssh-config", str(sim_board.ssh_config),
                 "--profile"])
    assert code == 0
    return run


def test_deploy_profile_gives_one_cpu_labelled_row_per_executed_node(profiled):
    profile = json.loads((profiled / rf.BOARD / rf.BOARD_PROFILE).read_text())
    timing = json.loads((profiled / rf.BOARD / rf.BOARD_TIMING).read_text())
    assert profile["source"] == CPU and all(row["source"] == CPU for row in profile["ops"] + profile["types"])
    assert [op["name"] for op in profile["ops"]] == model_nodes(profiled / rf.MODEL_OM)
    executions = timing["executions"]
    assert profile["executions"] == executions == 1000
    assert all(op["calls"] == executions and op["min_us"] > 0 for op in profile["ops"])
    assert profile["records"] == executions * len(profile["ops"])
    by_type = {}
    for op in profile["ops"]:
        by_type[op["type"]] = by_type.get(op["type"], 0) + op["total_us"]
    assert {t["type"]: t["total_us"] for t in profile["types"]} == by_type
    assert sum(by_type.values()) == profile["total_us"] > 0
    assert abs(sum(t["share"] for t in profile["types"]) - 1) < 1e-3
    entry = json.loads((profiled / "deploy.json").read_text())["boards"][0]
    assert entry["profile"]["source"] == CPU and "app/profiling.py" in {u["file"] for u in entry["uploads"]}


def test_verify_report_names_the_slowest_operators_with_their_source(profiled, capsys):
    assert main(["verify", "--run", str(profiled)]) == 0
    report = (profiled / rf.REPORT).read_text()
    assert f"## Operator times: board ({CPU}: these are not Ascend 310 times)" in report
    slowest = max(json.loads((profiled / rf.BOARD / rf.BOARD_PROFILE).read_text())["ops"], key=lambda o: o["total_us"])
    assert f"`{slowest['name']}`" in report
    from atlas import profile_report

    assert profile_report.main([str(profiled)]) == 0 and CPU in capsys.readouterr().out


def test_without_profile_there_is_no_profile_and_no_report_section(profiled, sim_board, capsys):
    # negative control: the same run deployed again without --profile drops the earlier profile.json
    assert main(["deploy", "--run", str(profiled), "--board", sim_board.alias, "--ssh-config",
                 str(sim_board.ssh_config)]) == 0
    assert not (profiled / rf.BOARD / rf.BOARD_PROFILE).exists()
    entry = json.loads((profiled / "deploy.json").read_text())["boards"][0]
    assert entry["profile"] is None and "--profile" not in entry["app"]["argv"]
    assert main(["verify", "--run", str(profiled)]) == 0
    assert "Operator times" not in (profiled / rf.REPORT).read_text()
    from atlas import profile_report

    capsys.readouterr()
    assert profile_report.main([str(profiled)]) == 1 and "no board ran with --profile" in capsys.readouterr().err


# -- the app ---------------------------------------------------------------------------------------------------
def run_app(tmp_path: Path, om: Path, *extra: str, pythonpath: Path = REPO / "atlas" / "sim"):
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_KD_SIM_ACL_")}
    env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, str(REPO / "atlas" / "board" / "infer.py"), "--model", str(om), "--input",
                           str(inputs), "--output", str(tmp_path / "out" / "outputs.npy"), *extra],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_pyacl_without_acl_prof_is_one_line_exit_2(tmp_path):
    fake = tmp_path / "fake"
    (fake / "acl").mkdir(parents=True)
    # the emulator without its acl.prof: what an older pyACL would be
    (fake / "acl" / "__init__.py").write_text(
        "import importlib\nreal = importlib.import_module('atlas.sim.acl')\n"
        "globals().update({k: v for k, v in vars(real).items() if k not in ('prof', '__path__', '__name__', "
        "'__spec__', '__loader__', '__file__', '__package__')})\n")
    (fake / "atlas").symlink_to(REPO / "atlas")
    om = write_sim_om(tmp_path / "tiny.om", batch=1)
    proc = run_app(tmp_path, om, "--profile", pythonpath=fake)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("acl-sim:")]
    assert proc.returncode == 2 and len(errors) == 1 and "no model-subscription profiling" in errors[0], proc.stderr
    assert not (tmp_path / "out" / "profile.json").exists()
    assert run_app(tmp_path, om).returncode == 0  # the control: the same app without --profile runs


def test_the_board_apps_profile_name_equals_the_contract():
    assert importlib.util.find_spec("atlas.board.profiling") is not None
    source = (REPO / "atlas" / "board" / "infer.py").read_text()
    assert f'PROFILE_NAME = "{rf.REMOTE_PROFILE}"' in source and rf.REMOTE_PROFILE == rf.BOARD_PROFILE
    assert f'SOURCE_CPU = "{CPU}"' in (REPO / "atlas" / "board" / "profiling.py").read_text()


# -- the emulator's acl.prof codes (docs/emulator.md, the P table) ----------------------------------------------
@pytest.fixture(autouse=False)
def fresh_emulator():
    acl._sim.reset()
    yield
    acl._sim.reset()


def loaded(tmp: Path) -> Opened:
    assert acl.init() in (0, C.ACL_ERROR_REPEAT_INITIALIZE) and acl.rt.set_device(0) == 0
    acl.rt.create_context(0)
    return Opened(write_sim_om(tmp / "tiny.om", batch=2))


def config(metric: int = 0xFF) -> int:
    _, write = os.pipe()
    return acl.prof.create_subscribe_config(1, metric, write)


def subscribed(tmp: Path) -> Opened:
    model = loaded(tmp)
    assert acl.prof.model_subscribe(model.model_id, config()) == 0
    return model


def records(tmp: Path) -> tuple[bytes, int]:
    """The records of one execution of a subscribed model (they reach the pipe at unsubscribe), and their ptr."""
    model = loaded(tmp)
    read, write = os.pipe()
    assert acl.prof.model_subscribe(model.model_id, acl.prof.create_subscribe_config(1, 0xFF, write)) == 0
    assert model.feed(np.zeros((2, 1, 28, 28), np.float32)) == 0
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == 0
    assert acl.prof.model_un_subscribe(model.model_id) == 0
    data = b""
    while True:
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(read)
    return data, acl.util.bytes_to_ptr(data)


def closed_fd() -> int:
    read, write = os.pipe()
    os.close(read)
    os.close(write)
    return write


def conflict(tmp: Path) -> int:
    model = loaded(tmp)
    assert acl.prof.init(str(tmp)) == 0
    return acl.prof.model_subscribe(model.model_id, config())


def other_config(tmp: Path) -> int:
    subscribed(tmp)
    second = Opened(write_sim_om(tmp / "second.om", batch=2))
    return acl.prof.model_subscribe(second.model_id, config(metric=0))


def bad_signature(tmp: Path) -> int:
    data, _ = records(tmp)
    damaged = bytes([data[0] ^ 1]) + data[1:]
    return acl.prof.get_op_num(acl.util.bytes_to_ptr(damaged), len(damaged))[1]


def type_twice(tmp: Path) -> int:
    data, ptr = records(tmp)
    assert acl.prof.get_op_type(ptr, len(data), 0, 65)[1] == 0
    return acl.prof.get_op_type(ptr, len(data), 0, 65)[1]


PROBES = {
    "P01": lambda tmp: acl.prof.create_subscribe_config(2, 0xFF, os.pipe()[1]),
    "P02": lambda tmp: acl.prof.create_subscribe_config(1, 0xFF, closed_fd()),
    "P03": lambda tmp: acl.prof.model_subscribe(loaded(tmp).model_id, 0),
    "P04": lambda tmp: (loaded(tmp), acl.prof.model_subscribe(99, config()))[1],
    "P05": lambda tmp: acl.prof.model_subscribe(subscribed(tmp).model_id, config()),
    "P06": conflict,
    "P07": other_config,
    "P08": lambda tmp: acl.prof.model_un_subscribe(loaded(tmp).model_id),
    "P09": lambda tmp: acl.prof.destroy_subscribe_config(0),
    "P10": lambda tmp: (lambda d, p: acl.prof.get_op_num(p, len(d) - 1)[1])(*records(tmp)),
    "P11": bad_signature,
    "P12": type_twice,
    "P13": lambda tmp: (lambda d, p: acl.prof.get_op_name(p, len(d), 0, 4097)[1])(*records(tmp)),
    "P14": lambda tmp: acl.prof.model_subscribe(loaded(tmp).model_id, config()),
}


def test_every_prof_table_row_has_a_probe():
    assert sorted(table_rows("P")) == sorted(PROBES)


@pytest.mark.parametrize("row", sorted(PROBES))
def test_the_emulators_acl_prof_returns_the_code_the_table_states(row, tmp_path, fresh_emulator):
    call, code = table_rows("P")[row]
    assert PROBES[row](tmp_path) == code, f"{row} {call}"


def test_a_record_read_through_the_getters_is_a_model_node_with_cpu_times(tmp_path, fresh_emulator):
    data, ptr = records(tmp_path)
    size, ret = acl.prof.get_op_desc_size()
    count, ret2 = acl.prof.get_op_num(ptr, len(data))
    assert ret == ret2 == 0 and count == len(data) // size == len(model_nodes(tmp_path / "tiny.om"))
    length, ret = acl.prof.get_op_name_len(ptr, len(data), 0)
    name, ret2 = acl.prof.get_op_name(ptr, len(data), 0, length)
    assert ret == ret2 == 0 and name == model_nodes(tmp_path / "tiny.om")[0] and length == len(name) + 1
    start, end = acl.prof.get_op_start(ptr, len(data), 0), acl.prof.get_op_end(ptr, len(data), 0)
    assert 0 < start < end and acl.prof.get_op_duration(ptr, len(data), 0) == end - start
    assert acl.prof.get_model_id(ptr, len(data), 0) == 1
    assert acl.prof.get_op_start(ptr, len(data), count) == 0  # out of range: the bare getters give 0


# -- the real board ------------------------------------------------------------------------------------------------
@pytest.mark.cann
def test_a_real_board_profiles_through_acl_prof(tmp_path):
    real_om = os.environ.get("ATLAS_KD_REAL_OM", "")
    probe = subprocess.run(["python3", "-c", "import acl; assert not getattr(acl, '__atlas_kd_sim__', False); "
                            "print(hasattr(acl, 'prof'))"], capture_output=True, text=True)
    if probe.returncode != 0 or not Path(real_om).is_file():
        pytest.skip("no CANN here: the real acl.prof path needs a board's (or a CANN host's) pyACL and a real .om "
                    "in $ATLAS_KD_REAL_OM (python3 -c 'import acl' fails on this machine)")
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.zeros((1, 1, 28, 28), np.float32))
    proc = subprocess.run(["python3", str(REPO / "atlas" / "board" / "infer.py"), "--model", real_om, "--input",
                           str(inputs), "--output", str(tmp_path / "outputs.npy"), "--profile"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["source"] == "acl.prof (NPU)" and profile["ops"] and profile["total_us"] > 0
