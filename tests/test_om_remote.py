"""`atlas-kd om --on-board`: ATC over SSH. The sim board has no real ATC: these tests run atc-sim (the
rehearsal route) or fake `atc` scripts there; the real ATC on a real board is the `cann` test at the end."""
import json
import os
import shutil
import stat

import pytest

from atlas.cli import main
from atlas import om_container


@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


@pytest.fixture
def run(demo_run, tmp_path):
    run = shutil.copytree(demo_run, tmp_path / "demo")
    (run / "model.om").unlink()
    return run


def om_on_board(run, board, *extra):
    return main(["om", "--run", str(run), "--on-board", board.alias, "--ssh-config", str(board.ssh_config), *extra])


def _script(board, name, text):
    path = board.root / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_sim_rehearsal_of_the_on_board_route_fetches_a_sim_om(run, board, capsys):
    assert om_on_board(run, board, "--sim") == 0, capsys.readouterr().err
    assert om_container.is_sim_om((run / "model.om").read_bytes())
    record = json.loads((run / "atc.json").read_text())
    assert record["where"].startswith("board:") and record["tool"] == "atc-sim" and record["success"]
    assert record["remote_dir"].startswith(str(board.root))
    assert "ATC run success" in (run / "atc.log").read_text()


def test_no_atc_on_the_board_is_one_line(run, board, capsys):
    assert om_on_board(run, board) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "`atc` not found there" in err and "set_env.sh" in err
    assert not (run / "model.om").exists()


def test_fake_atc_failing_on_the_board_is_explained_not_real_atc(run, board, capsys):
    fake = _script(board, "fake-atc-fails", "#!/bin/sh\n"
                   "echo 'ATC start working now, please wait for a moment.'\n"
                   "echo \"ATC run failed, Please check the detail log, Try 'atc --help' for more information\"\n"
                   "echo 'E19010: No parser is registered for Op [/conv/Conv, optype [ai.onnx::17::Conv]].'\n"
                   "exit 255\n")
    assert om_on_board(run, board, "--atc", fake) == 1
    err = capsys.readouterr().err
    assert "E19010" in err.splitlines()[0]
    record = json.loads((run / "atc.json").read_text())
    assert record["exit_code"] == 255 and record["errors"][0]["code"] == "E19010" and not record["success"]
    assert not (run / "model.om").exists()


def test_a_sim_om_from_the_real_route_is_refused_not_passed_off_as_real(run, board, capsys):
    # a fake `atc` that is really atc-sim: the real route must not accept the simulated .om it writes
    fake = _script(board, "fake-atc-sim", '#!/bin/sh\nexec atc-sim "$@"\n')
    assert om_on_board(run, board, "--atc", fake) == 1
    assert "simulated .om, built by atc-sim" in capsys.readouterr().err
    assert not (run / "model.om").exists()


@pytest.mark.cann
def test_real_atc_on_a_real_board(run, capsys):
    board = os.environ.get("ATLAS_KD_REAL_BOARD")
    if not board:
        pytest.skip("no real Atlas board: set ATLAS_KD_REAL_BOARD=user@host (and deploy.env_script via "
                    "ATLAS_KD_REAL_BOARD_ENV) to run ATC on it")
    extra = ["--deploy-env-script", os.environ["ATLAS_KD_REAL_BOARD_ENV"]] if os.environ.get("ATLAS_KD_REAL_BOARD_ENV") else []
    assert main(["om", "--run", str(run), "--on-board", board, *extra]) == 0
    assert om_container.is_real_om((run / "model.om").read_bytes())
