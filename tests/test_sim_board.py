"""atlas/sim/sim_board.py: the local sim board's lifecycle, its login environment, several boards at once."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from atlas.cli import main as cli_main
from atlas.sim.sim_board import SIM_DIR, board_status, default_state_dir, start_board, stop_board
from atlas.ssh import BoardSession
from sshd_util import running_board

REPO = Path(__file__).resolve().parents[1]


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _session(info) -> BoardSession:
    return BoardSession(info.address(), log=lambda message: None)  # through the board's own ssh_config


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "state"
    yield path
    stop_board("b", path)  # cleanup even when the test failed half-way


def test_start_status_stop_lifecycle(state, capsys):
    info = start_board("b", state)
    assert info.running and not info.already_running and _pid_alive(info.pid) and _port_answers(info.port)
    recorded = json.loads((state / "board.json").read_text())
    assert recorded["port"] == info.port and recorded["pid"] == info.pid and recorded["alias"] == "b"
    assert recorded["board"] == f"{info.user}@127.0.0.1:{info.port}"
    assert (state / "known_hosts").read_text().startswith(f"[127.0.0.1]:{info.port} ssh-ed25519 ")

    assert cli_main(["sim-board", "status", "--name", "b", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert f"running on 127.0.0.1:{info.port} (pid {info.pid}" in out
    assert f"BOARD=b SSH_CONFIG={state / 'ssh_config'}" in out

    assert cli_main(["sim-board", "stop", "--name", "b", "--state", str(state)]) == 0
    assert "sim board b stopped" in capsys.readouterr().out
    assert not _pid_alive(info.pid) and not _port_answers(info.port)
    assert not board_status("b", state).running
    assert cli_main(["sim-board", "status", "--name", "b", "--state", str(state)]) == 1
    assert "stopped" in capsys.readouterr().out
    assert json.loads((state / "board.json").read_text())["pid"] is None


def test_start_is_idempotent(state, capsys):
    first = start_board("b", state)
    assert cli_main(["sim-board", "start", "--name", "b", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert f"sim board b already running: sshd pid {first.pid} on 127.0.0.1:{first.port}" in out
    assert f"--board {first.user}@127.0.0.1:{first.port}" in out
    again = start_board("b", state)
    assert (again.pid, again.port, again.already_running) == (first.pid, first.port, True)


def test_restart_keeps_the_port_and_the_host_key(state):
    first = start_board("b", state)
    known_hosts = first.known_hosts.read_text()
    stop_board("b", state)
    second = start_board("b", state)
    assert second.port == first.port and second.pid != first.pid
    assert second.known_hosts.read_text() == known_hosts  # BOARD values and known_hosts stay valid


def test_stale_pid_file_is_handled(state):
    info = start_board("b", state)
    stop_board("b", state)
    info.pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not this board's sshd
    assert not board_status("b", state).running
    info.pid_file.write_text("999999999\n")  # no such process
    assert not board_status("b", state).running
    restarted = start_board("b", state)
    assert restarted.running and not restarted.already_running and restarted.pid != os.getpid()
    assert int(restarted.pid_file.read_text()) == restarted.pid


def test_board_login_environment_looks_like_a_sim_board(state):
    info = start_board("b", state)
    probe = "import json, os, sys; print(json.dumps({k: os.environ.get(k) for k in " \
            "('HOME', 'PYTHONPATH', 'ATLAS_KD_SIM_BOARD', 'PATH')} | {'python': sys.executable, " \
            "'home': os.path.expanduser('~'), 'numpy': __import__('numpy').__version__}))"
    with _session(info) as s:
        seen = json.loads(s.run(["python3", "-c", probe]).stdout)
        assert s.home() == str(info.root)
    assert seen["HOME"] == seen["home"] == str(info.root)  # the board root, not /root
    assert seen["PYTHONPATH"] == str(SIM_DIR) and seen["ATLAS_KD_SIM_BOARD"] == "1"
    assert seen["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert Path(seen["python"]).parent == Path(sys.executable).parent  # the project's interpreter, with numpy
    assert seen["numpy"]


@pytest.mark.skipif(not (SIM_DIR / "acl" / "__init__.py").exists(),
                    reason="the pyACL emulator (atlas/sim/acl) has not landed yet")
def test_acl_imports_on_the_board(state):
    info = start_board("b", state)
    with _session(info) as s:
        where = s.run(["python3", "-c", "import acl; print(acl.__file__)"]).stdout.strip()
    assert Path(where).parent == SIM_DIR / "acl"


def test_two_boards_run_at_once(tmp_path):
    with running_board(tmp_path / "b1", "b1") as b1, running_board(tmp_path / "b2", "b2") as b2:
        assert b1.port != b2.port and b1.pid != b2.pid
        with _session(b1) as s1, _session(b2) as s2:
            assert s1.home() == str(b1.root) and s2.home() == str(b2.root)
        stop_board("b1", tmp_path / "b1")
        assert board_status("b2", tmp_path / "b2").running and _port_answers(b2.port)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client to cross-check the ssh_config")
def test_openssh_client_logs_in_with_the_written_ssh_config(state):
    info = start_board("b", state)
    result = subprocess.run(["ssh", "-F", str(info.ssh_config), "-o", "BatchMode=yes", "b", "echo", "$HOME"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(info.root)


def test_board_outlives_the_start_command(tmp_path):
    state = tmp_path / "detached"
    script = REPO / "scripts" / "sim-board.sh"
    try:
        started = subprocess.run([str(script), "start", "--name", "d", "--state", str(state)],
                                 capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines()[1] == f"BOARD=d SSH_CONFIG={state / 'ssh_config'}"
        info = board_status("d", state)  # the starting process has exited
        assert info.running and _port_answers(info.port)
        stopped = subprocess.run([str(script), "stop", "--name", "d", "--state", str(state)],
                                 capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert not _port_answers(info.port)
    finally:
        stop_board("d", state)


def test_bad_name_is_a_one_line_error(capsys):
    assert cli_main(["sim-board", "status", "--name", "a b;x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atlas-kd sim-board: error: sim board name 'a b;x'") and "\n" not in err


def test_default_state_folder_is_in_the_repo_cache():
    assert default_state_dir("b4") == REPO / ".cache" / "sim-board" / "b4"
