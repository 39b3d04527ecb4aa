"""Fleet deploy: four sim boards (four sshd on loopback) at once take less than twice the time of one."""
import contextlib
import json
import shutil
import time

from atlas.cli import main
from sshd_util import running_board


def _boards_args(boards):
    args = []
    for info in boards:
        args += ["--board", info.board, "--identity", str(info.identity)]
    return args


def _known_hosts(boards, path):
    path.write_text("".join(info.known_hosts.read_text() for info in boards))
    return path


def test_four_boards_at_once_take_under_twice_one(demo_run, tmp_path, capsys, record_property):
    with contextlib.ExitStack() as stack:
        boards = [stack.enter_context(running_board(tmp_path / f"state{i}", name=f"fleet{i}")) for i in range(5)]
        known_hosts = _known_hosts(boards, tmp_path / "known_hosts")
        single, fleet = boards[0], boards[1:]

        def timed(targets, name):
            """Best of two fresh deploys (each a new run name, so every byte is sent again): the usual guard
            against one unlucky scheduling hiccup in a wall-clock measurement."""
            times = []
            for attempt in range(2):
                run = shutil.copytree(demo_run, tmp_path / f"{name}{attempt}" / f"{name}{attempt}")
                t0 = time.perf_counter()
                assert main(["deploy", "--run", str(run), *_boards_args(targets), "--known-hosts", str(known_hosts)]) == 0
                times.append(time.perf_counter() - t0)
            return min(times), run

        one_s, _ = timed([single], "one")
        four_s, many_run = timed(fleet, "many")
    capsys.readouterr()
    report = json.loads((many_run / "deploy.json").read_text())
    assert report["ok"] and len(report["boards"]) == 4
    assert all(b["bytes_sent"] > 3_000_000 for b in report["boards"])  # every board got the whole bundle
    dirs = {b["local_dir"] for b in report["boards"]}
    assert len(dirs) == 4 and all((many_run / d / "outputs.npy").is_file() for d in dirs)
    assert main(["verify", "--run", str(many_run)]) == 0
    assert len(json.loads((many_run / "verify.json").read_text())["boards"]) == 4
    record_property("one_board_s", round(one_s, 2))
    record_property("four_boards_s", round(four_s, 2))
    print(f"fleet: one board {one_s:.2f} s, four boards {four_s:.2f} s, ratio {four_s / one_s:.2f}")
    assert four_s < 2 * one_s, (one_s, four_s)
