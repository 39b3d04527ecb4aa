"""Deploy faults against a real sshd: a flaky link, host keys, keys, unreachable boards, a board that cannot run
the bundle. Each one gives one clear line and the right exit code, and nothing runs that should not."""
import json
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from atlas.cli import main
from atlas import om_container
from sshd_util import write_known_hosts
from tcp_proxy import TcpProxy


@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


@pytest.fixture
def run(demo_run, tmp_path):
    return Path(shutil.copytree(demo_run, tmp_path / f"run-{uuid.uuid4().hex[:6]}"))


def direct(board, port=None, known_hosts=None, identity=None):
    """Options for the explicit user@127.0.0.1:port form."""
    return ["--board", f"{board.user}@127.0.0.1:{port or board.port}",
            "--known-hosts", str(known_hosts or board.known_hosts), "--identity", str(identity or board.identity)]


def last_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("atlas-kd deploy: error:"), lines
    return lines[-1]


def nothing_on_board(board, run: Path) -> bool:
    remote = board.root / "atlas-kd" / run.name
    return not (remote / "app").exists() and not (remote / "outputs.npy").exists()


def test_three_cuts_mid_upload_and_the_model_is_never_partial_under_its_name(board, tmp_path, capsys):
    # A big model (mlp2000 as the student, ~22 MB .om) so the cuts land inside the model's own upload.
    from training.train import train

    from atlas.config import load_config

    run = tmp_path / "big"
    cfg = load_config(None, {"data.train_limit": "256", "data.test_limit": "100", "teacher.model": "mlp50",
                             "teacher.epochs": "1", "student.model": "mlp2000", "student.epochs": "1",
                             "distill.baseline": "false", "export.golden_count": "100"})
    train(cfg, run, progress=False, log=lambda s: None)
    assert main(["export", "--run", str(run)]) == 0 and main(["om", "--run", str(run), "--sim"]) == 0
    model_size = (run / "model.om").stat().st_size
    remote_model = board.root / "atlas-kd" / "big" / "model.om"
    at_cuts, seen_sizes, done = [], [], threading.Event()

    def watch():
        while not done.is_set():
            if remote_model.exists():
                seen_sizes.append(remote_model.stat().st_size)

    watcher = threading.Thread(target=watch, daemon=True)
    with TcpProxy(board.port, cut_after=[4_000_000] * 3,
                  on_cut=lambda i: at_cuts.append(remote_model.exists())) as proxy:
        known_hosts = write_known_hosts(board, tmp_path / "known_hosts", proxy.port)
        watcher.start()
        code = main(["deploy", "--run", str(run), *direct(board, proxy.port, known_hosts), "--deploy-retries", "4"])
        done.set()
        watcher.join()
        assert code == 0, capsys.readouterr().err
        assert proxy.cuts == 3
    assert at_cuts == [False, False, False]  # at every cut the real name did not exist yet
    assert seen_sizes and all(size == model_size for size in seen_sizes)  # whenever it existed, it was whole
    entry = json.loads((run / "deploy.json").read_text())["boards"][0]
    model_upload = next(u for u in entry["uploads"] if u["file"] == "model.om")
    assert model_upload["retries"] == 3 and model_upload["bytes_sent"] > model_size
    assert main(["verify", "--run", str(run)]) == 0


def test_unknown_host_key_is_refused_with_its_fingerprint(board, run, tmp_path, capsys):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    assert main(["deploy", "--run", str(run), *direct(board, known_hosts=empty)]) == 2
    err = last_error(capsys)
    assert "host key not in known_hosts" in err and "SHA256:" in err and "--trust-new-host" in err
    assert nothing_on_board(board, run)


def test_trust_new_host_records_the_key_and_deploys(board, run, tmp_path, capsys):
    known = tmp_path / "known_hosts"
    known.write_text("")
    assert main(["deploy", "--run", str(run), *direct(board, known_hosts=known), "--trust-new-host"]) == 0
    assert f"[127.0.0.1]:{board.port}" in known.read_text()


def test_changed_host_key_is_always_refused(board, run, tmp_path, capsys):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key_type, key_b64 = Path(f"{other}.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{board.port} {key_type} {key_b64}\n")
    assert main(["deploy", "--run", str(run), *direct(board, known_hosts=known), "--trust-new-host"]) == 2
    assert "host key CHANGED" in last_error(capsys)
    assert nothing_on_board(board, run)


def test_wrong_key_is_an_authentication_error(board, run, tmp_path, capsys):
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    (tmp_path / "ssh_config").write_text("")  # no IdentityFile from any config: only the wrong key is offered
    args = ["--board", f"{board.user}@127.0.0.1:{board.port}", "--known-hosts", str(board.known_hosts),
            "--ssh-config", str(tmp_path / "ssh_config"), "--identity", str(wrong)]
    env_before = os.environ.pop("SSH_AUTH_SOCK", None)
    try:
        assert main(["deploy", "--run", str(run), *args]) == 2
    finally:
        if env_before is not None:
            os.environ["SSH_AUTH_SOCK"] = env_before
    assert "authentication failed" in last_error(capsys)


def test_closed_port_is_unreachable_exit_3(board, run, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        assert main(["deploy", "--run", str(run), *direct(board, port=port)]) == 3
    assert "connection refused" in last_error(capsys)


def test_unresolvable_host_name(run, capsys):
    assert main(["deploy", "--run", str(run), "--board", "root@no-such-host.invalid"]) == 2
    assert "cannot resolve host name 'no-such-host.invalid'" in last_error(capsys)


def test_not_enough_free_space_on_the_board(board, run, tmp_path, capsys):
    small = tmp_path / "small-disk"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        assert main(["deploy", "--run", str(run), *direct(board), "--deploy-remote-dir", str(small)]) == 2
        err = last_error(capsys)
        assert "not enough free space" in err and "MiB free" in err
        assert os.listdir(small) == []  # refused before any upload
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _env_script(board, name: str, text: str) -> str:
    path = board.root / name
    path.write_text(text)
    return str(path)


def test_acl_missing_on_the_board(board, run, capsys):
    script = _env_script(board, "no-acl.sh", "unset PYTHONPATH\n")  # a board without pyACL on its path
    assert main(["deploy", "--run", str(run), *direct(board), "--deploy-env-script", script]) == 2
    err = last_error(capsys)
    assert "acl is not importable" in err and "set_env.sh" in err
    assert nothing_on_board(board, run)


def test_sim_om_to_a_board_whose_acl_is_real_is_refused(board, run, tmp_path, capsys):
    stub = board.root / "real-acl"
    (stub / "acl").mkdir(parents=True, exist_ok=True)
    (stub / "acl" / "__init__.py").write_text('"""stands in for the real pyACL: no emulator marker"""\n')
    script = _env_script(board, "real-acl.sh", f"export PYTHONPATH={stub}\n")
    assert om_container.is_sim_om((run / "model.om").read_bytes())
    assert main(["deploy", "--run", str(run), *direct(board), "--deploy-env-script", script]) == 2
    err = last_error(capsys)
    assert "simulated .om, built by atc-sim" in err and "make om" in err
    assert nothing_on_board(board, run)
