"""`deploy --delta` against the sim board: updates of a deployed model travel as deltas (lossless, lossy, or of the
.om for a board without ATC), anything wrong with the board's base falls back to a full upload in one line, and
a dropped link mid-update leaves the board with either the old or the new model, whole."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch

from atlas import run_folder as rf
from atlas.cli import main
from sshd_util import write_known_hosts
from tcp_proxy import TcpProxy

SWITCHED = (rf.ONNX, rf.RAW_ONNX, rf.MODEL_OM, rf.ATC_LOG, rf.ExportRecord.FILE, rf.AtcRecord.FILE)


@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


def retrained(demo_run: Path, folder: Path, update) -> Path:
    """A copy of the demo run whose student went through `update(model, payload, train_split, cfg)`, exported and
    converted again (the artifacts a user's retrain -> export -> om leaves)."""
    from atlas.config import load_config
    from training import checkpoint
    from training.data import load_data
    from training.distill import to_splits

    shutil.copytree(demo_run, folder)
    cfg = load_config(folder / rf.CONFIG)
    model, payload = checkpoint.load_model(folder / rf.STUDENT)
    train, _ = to_splits(load_data(cfg.data, progress=False), torch.device("cpu"))
    new, arch = update(model, train, cfg)
    checkpoint.save(folder / "update.pt", {**payload, "arch": arch or payload["arch"],
                                           "state_dict": {k: v.detach().clone() for k, v in new.state_dict().items()}})
    assert main(["export", "--run", str(folder), "--checkpoint", str(folder / "update.pt")]) == 0
    assert main(["om", "--run", str(folder), "--sim"]) == 0
    return folder


@pytest.fixture(scope="module")
def versions(demo_run, tmp_path_factory):
    """v1: the last layer retrained; v2: v1 with every layer one more epoch at the run's final lr; other: another
    architecture (narrower last conv)."""
    from training.models import build_model, make_arch
    from training.updates import final_lr, finetune_all, retrain_last_layer

    root = tmp_path_factory.mktemp("delta-versions")
    v1 = retrained(demo_run, root / "v1", lambda m, train, cfg: (retrain_last_layer(m, train, epochs=1, lr=0.001),
                                                                  None))

    def all_layers(model, train, cfg):
        from training import checkpoint

        model, _ = checkpoint.load_model(v1 / "update.pt")
        lr = final_lr(cfg.student, (len(train.labels) + cfg.data.batch_size - 1) // cfg.data.batch_size)
        return finetune_all(model, train, cfg.student, lr=lr), None

    def narrower(model, train, cfg):
        arch = make_arch("tinycnn", (1, 28, 28), 10, stages=[[8], [16], [16]])
        return build_model(arch), arch

    return {"v1": v1, "v2": retrained(demo_run, root / "v2", all_layers),
            "other": retrained(demo_run, root / "other", narrower)}


@pytest.fixture
def run(demo_run, tmp_path):
    return Path(shutil.copytree(demo_run, tmp_path / f"run-{uuid.uuid4().hex[:6]}"))


def switch(run: Path, version: Path) -> None:
    """The run now holds `version`'s model (as if retrained, exported and converted in place)."""
    for name in SWITCHED:
        shutil.copy(version / name, run / name)
    shutil.rmtree(run / rf.GOLDEN)
    shutil.copytree(version / rf.GOLDEN, run / rf.GOLDEN)


def deploy(run: Path, board, *extra: str) -> int:
    return main(["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config), *extra])


def update(run: Path) -> dict:
    return json.loads((run / rf.DeployRecord.FILE).read_text())["boards"][0]["delta"]


def on_board(board, run: Path, name: str) -> Path:
    return board.root / "atlas-kd" / run.name / name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flipped(data: bytes) -> bytes:
    """The file with its last byte changed (an ONNX may end in a zero byte: writing one would change nothing)."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def test_two_updates_travel_as_deltas_and_verify_passes(run, board, versions, capsys):
    assert deploy(run, board, "--delta", "lossless") == 0
    assert "delta: full upload of model.onnx: the board has no manifest" in capsys.readouterr().out
    first = update(run)
    assert first["kind"] == "full" and first["route"] == "atc" and first["bytes_sent"] == (run / rf.ONNX).stat().st_size

    switch(run, versions["v1"])  # (a) the last layer retrained: a lossless delta
    assert deploy(run, board, "--delta", "lossless") == 0, capsys.readouterr().err
    a = update(run)
    assert a["kind"] == "delta" and a["mode"] == "lossless" and a["check"]["ok"] and a["check"]["board"] == sha256(run / rf.ONNX)
    assert a["full_bytes"] == (run / rf.ONNX).stat().st_size and a["ratio"] <= 0.25, a
    assert a["stats"]["changed"] == 2 and a["stats"]["tensors"] == 8  # the classifier's weight and bias
    assert sha256(on_board(board, run, rf.REMOTE_MODEL)) == sha256(run / rf.MODEL_OM)  # atc-sim there == here
    assert main(["verify", "--run", str(run)]) == 0

    switch(run, versions["v2"])  # (b) every layer one more epoch: a lossy delta
    assert deploy(run, board, "--delta", "lossy") == 0, capsys.readouterr().err
    b = update(run)
    assert b["kind"] == "delta" and b["mode"] == "lossy" and b["ratio"] <= 0.10 and b["check"]["ok"], b
    assert b["stats"]["max_error_rms"] <= 1e-3 * (1 + 1e-4) and b["tolerance"] == 1e-3
    held = run / "board" / b["board_onnx"]["path"]
    assert sha256(held) == b["board_onnx"]["sha256"] == sha256(on_board(board, run, rf.REMOTE_ONNX)) != b["exact_onnx_sha256"]
    capsys.readouterr()
    assert main(["verify", "--run", str(run)]) == 0
    assert "lossy delta: judged against the weights the board rebuilt" in capsys.readouterr().out
    judged = json.loads((run / rf.VerifyRecord.FILE).read_text())["boards"][0]
    assert judged["passed"] and abs(judged["lossy_delta"]["accuracy_change"]) <= 0.001, judged["lossy_delta"]

    assert deploy(run, board, "--delta", "lossy") == 0  # the board holds it (within the tolerance): nothing sent
    again = json.loads((run / rf.DeployRecord.FILE).read_text())["boards"][0]
    assert again["delta"]["kind"] == "none" and again["bytes_sent"] == 0
    assert deploy(run, board, "--delta", "lossless") == 0  # lossless wants the exact model: the residual goes
    assert update(run)["kind"] == "delta" and sha256(on_board(board, run, rf.REMOTE_ONNX)) == sha256(run / rf.ONNX)


def test_a_base_that_was_corrupted_deleted_or_is_another_architecture_falls_back_in_one_line(run, board, versions,
                                                                                              capsys):
    assert deploy(run, board, "--delta", "lossless") == 0
    base = on_board(board, run, rf.REMOTE_ONNX)
    for version, damage, reason in (
            ("v1", lambda: base.write_bytes(flipped(base.read_bytes())), "the board's model.onnx changed since the "
                                                                          "last deploy"),
            ("v2", base.unlink, "the board's model.onnx is missing (deleted since the last deploy?)"),
            ("other", lambda: None, "the new model's architecture differs from the board's (")):
        damage()
        switch(run, versions[version])
        capsys.readouterr()
        assert deploy(run, board, "--delta", "lossless") == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("delta:")]
        assert len(lines) == 1 and reason in lines[0], lines
        assert update(run)["kind"] == "full" and reason in update(run)["reason"]
        assert sha256(base) == sha256(run / rf.ONNX)  # the new model, whole
    assert "classifier.1.weight [10, 288] -> [10, 144]" in update(run)["reason"]  # the narrower last conv
    assert main(["verify", "--run", str(run)]) == 0


def test_a_cut_link_mid_update_leaves_the_old_or_the_new_model_whole(run, board, versions, tmp_path, capsys):
    assert deploy(run, board, "--delta", "lossless") == 0
    names = (rf.REMOTE_ONNX, rf.REMOTE_MODEL)
    old = {name: sha256(on_board(board, run, name)) for name in names}
    switch(run, versions["v1"])
    # the board's ATC, called once delta.py apply has rebuilt the ONNX: it waits until the link is cut (a cut at a
    # fixed point, whatever the machine's load), then builds
    building, cut = tmp_path / "building", tmp_path / "cut"
    atc = tmp_path / "atc-after-the-cut"
    atc.write_text(f"#!/bin/sh\ntouch {building}\nfor i in $(seq 600); do [ -e {cut} ] && break; sleep 0.1; done\n"
                   f"exec {Path(sys.executable).parent / 'atc-sim'} \"$@\"\n")
    atc.chmod(0o755)
    seen, done = {name: set() for name in names}, threading.Event()

    def watch(proxy):
        while not done.is_set():
            if building.exists() and not cut.exists():
                proxy.cut_all()
                cut.touch()
            for name in names:
                path = on_board(board, run, name)
                if path.exists():
                    seen[name].add(sha256(path))

    for retries, code in (("0", 3), ("4", 0)):  # no retry: exit 3, old model; retries: the update goes through
        building.unlink(missing_ok=True)
        cut.unlink(missing_ok=True)
        with TcpProxy(board.port) as proxy:
            known = write_known_hosts(board, tmp_path / "known_hosts", proxy.port)
            watcher = threading.Thread(target=watch, args=(proxy,), daemon=True)
            watcher.start()
            result = main(["deploy", "--run", str(run), "--board", f"{board.user}@127.0.0.1:{proxy.port}",
                           "--known-hosts", str(known), "--identity", str(board.identity), "--delta", "lossless",
                           "--deploy-retries", retries, "--deploy-atc", str(atc)])
            done.set()
            watcher.join()
            done.clear()
        assert result == code and cut.exists(), capsys.readouterr().err
        if code:
            assert {name: sha256(on_board(board, run, name)) for name in names} == old
            assert capsys.readouterr().err.strip().splitlines()[-1].startswith("atlas-kd deploy: error: board")
    new = {name: sha256(on_board(board, run, name)) for name in names}
    assert new[rf.REMOTE_ONNX] == sha256(run / rf.ONNX) and new != old
    assert all(seen[name] <= {old[name], new[name]} for name in names), seen  # never a third, partial state
    assert update(run)["kind"] == "delta" and "retry 1/4" in capsys.readouterr().out
    assert main(["verify", "--run", str(run)]) == 0


def test_a_board_without_atc_gets_a_lossless_delta_of_the_om_and_lossy_says_so(run, board, versions, capsys):
    script = board.root / "no-atc.sh"  # PATH without the venv's bin: no atc-sim there
    script.write_text("export PATH=/usr/bin:/bin\n")
    options = ["--delta", "lossy", "--deploy-env-script", str(script), "--deploy-python", sys.executable]
    assert deploy(run, board, *options) == 0, capsys.readouterr().err
    switch(run, versions["v1"])
    capsys.readouterr()
    assert deploy(run, board, *options) == 0, capsys.readouterr().err
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("delta:")]
    assert lines == ["delta: lossy needs ATC on the board (the .om is rebuilt there) and `atc-sim` is not found there: "
                     "sending a lossless delta of the .om instead"]
    entry = update(run)
    assert entry["route"] == "om" and entry["kind"] == "delta" and entry["mode"] == "lossless" and entry["check"]["ok"]
    assert entry["full_file"] == rf.REMOTE_MODEL and entry["bytes_sent"] < entry["full_bytes"] / 2
    assert sha256(on_board(board, run, rf.REMOTE_MODEL)) == sha256(run / rf.MODEL_OM)
    assert main(["verify", "--run", str(run)]) == 0


def test_atc_failing_on_the_board_is_one_line_and_the_old_model_stays(run, board, versions, capsys):
    assert deploy(run, board, "--delta", "lossless") == 0
    old = sha256(on_board(board, run, rf.REMOTE_MODEL))
    fake = board.root / "failing-atc"
    fake.write_text("#!/bin/sh\necho 'ATC start working now, please wait for a moment.'\n"
                    "echo 'E19010: No parser is registered for Op [x, optype [ai.onnx::11::Conv]].'\nexit 255\n")
    fake.chmod(0o755)
    switch(run, versions["v1"])
    assert deploy(run, board, "--delta", "lossless", "--deploy-atc", str(fake)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "E19010" in err and "the board keeps its old model" in err
    assert sha256(on_board(board, run, rf.REMOTE_MODEL)) == old


def test_delta_route_atc_on_a_board_without_it_and_bad_options_are_one_line(run, board, capsys):
    assert deploy(run, board, "--delta", "lossless", "--deploy-delta-route", "atc", "--deploy-atc", "no-such-atc") == 2
    assert "deploy.delta_route is atc but `no-such-atc` is not found there" in capsys.readouterr().err
    for option, message in ((["--deploy-delta-tolerance", "0"], "deploy.delta_tolerance must be above 0"),
                            (["--deploy-delta-route", "ftp"], "deploy.delta_route must be one of auto, atc, om")):
        assert deploy(run, board, "--delta", "lossy", *option) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
