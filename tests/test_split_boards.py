"""A split run across two sim boards (issue 23, acceptance 2): with both up every sample is combined; when B's
board stops mid-run every remaining sample is answered by A alone, none is lost, and the run says which samples
used which mode; verify judges both modes against their references (and fails on a perturbed answer)."""
from __future__ import annotations

import contextlib
import json
import shutil
import threading

import numpy as np
import pytest

from atlas.cli import main
from atlas.config import load_config
from atlas.sim.sim_board import stop_board
from atlas.split_deploy import deploy_split
from conftest import SPLIT_TINY_CONFIG
from sshd_util import running_board

CONFIG = SPLIT_TINY_CONFIG + "[export]\ngolden_count = 400\n"


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    """train (a one-epoch teacher) -> split -> export and om --sim of A and B."""
    root = tmp_path_factory.mktemp("split-run")
    config = root / "split.toml"
    config.write_text(CONFIG)
    run = root / "parent"
    for argv in (["train", "--config", str(config), "--run", str(run), "--no-progress"],
                 ["split", "--run", str(run), "--no-progress"],
                 *[[stage, "--run", str(run / "split" / role), *extra]
                   for role in ("A", "B") for stage, extra in (("export", []), ("om", ["--sim"]))]):
        assert main(argv) == 0, argv
    return run / "split"


@pytest.fixture
def two_boards(tmp_path):
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(running_board(tmp_path / "state-a", name="split-a"))
        b = stack.enter_context(running_board(tmp_path / "state-b", name="split-b"))
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(a.known_hosts.read_text() + b.known_hosts.read_text())
        yield a, b, known_hosts


def _config(run, a, b, known_hosts):
    return load_config(run / "config.json", {"deploy.boards": [f"A={a.board}", f"B={b.board}"],
                                             "deploy.identities": [str(a.identity), str(b.identity)],
                                             "deploy.known_hosts": str(known_hosts)})


def test_with_both_boards_up_every_sample_is_combined_and_verifies(split_run, two_boards, tmp_path, capsys):
    a, b, known_hosts = two_boards
    run = shutil.copytree(split_run, tmp_path / "both" / "split")
    assert main(["deploy", "--run", str(run), "--board", f"A={a.board}", "--board", f"B={b.board}",
                 "--identity", str(a.identity), "--identity", str(b.identity), "--known-hosts", str(known_hosts),
                 "--deadline-ms", "5000"]) == 0
    out = np.load(run / "board" / "A" / "outputs.npz")
    assert out["mode"].all() and len(out["mode"]) == 400
    deployed = json.loads((run / "deploy.json").read_text())
    assert deployed["split_modes"]["deadline_ms"] == 5000  # deploy's flag reached A's board (default 100)
    assert deployed["split_modes"]["ranges"] == [[0, 399, "combined"]]
    assert [e["status"] for e in deployed["boards"]] == ["ok", "ok"]
    assert main(["verify", "--run", str(run)]) == 0
    verified = json.loads((run / "verify.json").read_text())
    assert verified["combined"]["top1_agreement"] == 1.0 and verified["modes"]["a_alone"] == 0
    assert verified["latency_ms"]["with_b"]["count"] == 400 and "sim board" in verified["latency_ms"]["source"]
    assert "split verify: PASS" in capsys.readouterr().out

    # negative control: one combined answer changed on this machine after the fact fails verify
    perturbed = dict(out)
    perturbed["logits"] = out["logits"].copy()
    perturbed["logits"][5] = -perturbed["logits"][5]
    np.savez(run / "board" / "A" / "outputs.npz", **perturbed)
    assert main(["verify", "--run", str(run)]) == 1


def test_stopping_b_mid_run_leaves_the_rest_to_a_alone_and_none_is_lost(split_run, two_boards, tmp_path):
    a, b, known_hosts = two_boards
    run = shutil.copytree(split_run, tmp_path / "lost" / "split")
    lines, stopper = [], []

    def log(line: str) -> None:
        lines.append(line)
        if not stopper and "[A]" in line and " combined, " in line and "/400 samples, 0 combined" not in line:
            stopper.append(threading.Thread(target=stop_board, args=(b.name, b.state_dir)))
            stopper[0].start()  # B's board goes away while A is half-way through its inputs

    deploy_split(_config(run, a, b, known_hosts), run, log=log)
    stopper[0].join(30)
    out = np.load(run / "board" / "A" / "outputs.npz")
    mode = out["mode"]
    assert len(mode) == 400 and len(out["logits"]) == 400  # every sample answered
    switch = int(np.argmin(mode))  # the first sample A answered alone
    assert 0 < switch < 400 and mode[:switch].all() and not mode[switch:].any()  # none combined after the stop
    np.testing.assert_array_equal(out["logits"][switch:], out["logits_a"][switch:])
    assert set(out["reason"][switch:]) <= {1, 2, 3}  # no link, deadline, link lost
    deployed = json.loads((run / "deploy.json").read_text())
    assert deployed["split_modes"]["ranges"] == [[0, switch - 1, "combined"], [switch, 399, "a_alone"]]
    assert deployed["boards"][1]["status"] == "lost"
    assert any(f"sample {switch}: A alone from here" in line for line in lines)
    assert any("A alone" in line and "combined" in line and "none lost" in line for line in lines)
    assert main(["verify", "--run", str(run)]) == 0  # both modes agree with their references
    verified = json.loads((run / "verify.json").read_text())
    assert verified["modes"] == {**verified["modes"], "combined": switch, "a_alone": 400 - switch}
    assert verified["latency_ms"]["without_b"]["count"] >= 1
