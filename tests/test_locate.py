"""`atlas-kd locate` (atlas/locate.py) against sim boards with an injected fault (atlas/sim/faults.py): it names
the faulty operator and no earlier one, reports an fp16 overflow as such, --bisect finds the same operator, and
without a fault every tensor is within threshold. Bad input is one line with the documented exit code."""
from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path

import pytest
import torch

from atlas.cli import main
from conftest import TINY_CONFIG
from sshd_util import running_board


def board_args(board) -> list[str]:
    return ["--board", board.alias, "--ssh-config", str(board.ssh_config)]


def locate(run: Path, board, *extra: str) -> int:
    return main(["locate", "--run", str(run), "--sim", *board_args(board), *extra])


def nodes(run: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(run / "model.onnx")).graph.node]


@pytest.fixture
def copy_of(tmp_path):
    return lambda src: Path(shutil.copytree(src, tmp_path / f"run-{uuid.uuid4().hex[:6]}"))


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lenet") / "lenet"
    config = run.parent / "lenet.toml"
    config.write_text(TINY_CONFIG.replace('model = "tinycnn"', 'model = "lenet5"\nlr = 0.02')
                      .replace("epochs = 3", "epochs = 1").replace("epochs = 2", "epochs = 1"))
    for argv in (["train", "--config", str(config), "--run", str(run), "--no-progress"],
                 ["export", "--run", str(run), "--export-golden-count", "50"], ["om", "--run", str(run), "--sim"]):
        assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory) -> Path:
    """A ResNet-shaped user model (residual Adds), random weights, random golden inputs."""
    from training.models import ResNet

    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    model = ResNet(3, 10, widths=[8, 16], blocks=[1, 1]).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(folder / "resnet.onnx"), dynamo=False,
                      opset_version=11, input_names=["input"], output_names=["logits"])
    run = folder / "run"
    assert main(["export", "--onnx", str(folder / "resnet.onnx"), "--run", str(run), "--export-golden-count", "16"]) == 0
    assert main(["om", "--run", str(run), "--sim"]) == 0
    return run


def _faulty_layer(run: Path, kind: str = "Conv", which: int = 1) -> str:
    return [n for n in nodes(run) if n.endswith(kind)][which]


@pytest.mark.parametrize("which", ["demo", "lenet", "resnet"])
def test_the_faulty_operator_is_named_first_and_every_earlier_tensor_is_within_threshold(
        which, demo_run, lenet_run, resnet_run, copy_of, tmp_path, capsys):
    run = copy_of({"demo": demo_run, "lenet": lenet_run, "resnet": resnet_run}[which])
    layer = _faulty_layer(run)
    with running_board(tmp_path / "state", name=f"fault-{which}", fault=f"{layer}:scale:-1") as board:
        assert locate(run, board) == 1, capsys.readouterr().err
    record = json.loads((run / "locate.json").read_text())
    first = record["first_divergent"]
    assert first["node"] == layer and first["origin"] == "own"
    index = next(i for i, r in enumerate(record["tensors"]) if r["node"] == layer)
    assert all(r["verdict"] == "ok" for r in record["tensors"][:index])
    assert (run / "locate.csv").read_text().count("\n") == len(record["tensors"]) + 1 and (run / "locate.png").is_file()
    assert "diverges first at" in capsys.readouterr().err.strip().splitlines()[-1]


def test_without_a_fault_every_tensor_is_within_threshold_and_model_om_is_untouched(demo_run, copy_of, tmp_path,
                                                                                   capsys):
    run = copy_of(demo_run)
    before = (run / "model.om").read_bytes()
    with running_board(tmp_path / "state", name="clean") as board:
        assert locate(run, board) == 0, capsys.readouterr().err
    record = json.loads((run / "locate.json").read_text())
    assert record["first_divergent"] is None and all(r["verdict"] == "ok" for r in record["tensors"])
    assert (run / "model.om").read_bytes() == before and (run / "locate" / "model.om").is_file()


def test_an_overflow_mid_network_is_reported_as_overflow_at_that_tensor(demo_run, copy_of, tmp_path, capsys):
    run = copy_of(demo_run)
    layer = _faulty_layer(run, "Relu", 1)
    with running_board(tmp_path / "state", name="overflow", fault=f"{layer}:overflow") as board:
        assert locate(run, board) == 1
    first = json.loads((run / "locate.json").read_text())["first_divergent"]
    assert first["node"] == layer and first["why"] == "overflow"


@pytest.mark.parametrize("which", ["demo", pytest.param("lenet", marks=pytest.mark.slow),
                                   pytest.param("resnet", marks=pytest.mark.slow)])
def test_bisect_finds_the_same_operator(which, demo_run, lenet_run, resnet_run, copy_of, tmp_path, capsys):
    run = copy_of({"demo": demo_run, "lenet": lenet_run, "resnet": resnet_run}[which])
    layer = _faulty_layer(run, "Conv", 1)
    with running_board(tmp_path / "state", name=f"bisect-{which}", fault=f"{layer}:offset:5") as board:
        assert locate(run, board) == 1, capsys.readouterr().err  # the extra-output mode first
        extra_record = json.loads((run / "locate.json").read_text())
        extra = extra_record["first_divergent"]["node"]
        assert locate(run, board, "--bisect") == 1, capsys.readouterr().err
    record = json.loads((run / "locate.json").read_text())
    assert record["mode"] == "bisect" and record["first_divergent"]["node"] == layer == extra
    tensors = len(extra_record["tensors"])
    assert len(record["tensors"]) <= math.ceil(math.log2(tensors)) + 1 < tensors  # a binary search, not one build each


def test_the_fault_applies_only_to_the_board_it_was_given_to(demo_run, copy_of, tmp_path, capsys):
    run = copy_of(demo_run)
    layer = _faulty_layer(run)
    with running_board(tmp_path / "faulty", name="faulty", fault=f"{layer}:nan"), \
            running_board(tmp_path / "healthy", name="healthy") as healthy:
        assert locate(run, healthy) == 0


def test_verify_locate_runs_locate_on_a_fail(demo_run, copy_of, tmp_path, capsys):
    run = copy_of(demo_run)
    layer = _faulty_layer(run)
    with running_board(tmp_path / "state", name="vloc", fault=f"{layer}:scale:-1") as board:
        assert main(["deploy", "--run", str(run), *board_args(board)]) == 0
        (board.root / "atlas-kd" / run.name / "timing.json").unlink()  # the fault's record: locate never reads it
        assert main(["verify", "--run", str(run), "--locate", "--sim", *board_args(board)]) == 1
    assert json.loads((run / "locate.json").read_text())["first_divergent"]["node"] == layer


@pytest.mark.parametrize("argv, code, message", [
    (["--layers", "no-such-node"], 2, "no node named 'no-such-node'"),
    (["--locate-count", "0"], 2, "locate.count must be >= 1"),
])
def test_bad_input_is_one_line(demo_run, copy_of, tmp_path, argv, code, message, capsys):
    run = copy_of(demo_run)
    with running_board(tmp_path / "state", name="bad") as board:
        assert locate(run, board, *argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("atlas-kd locate: error:") and message in err[-1]


def test_a_run_without_an_export_and_an_unreachable_board(tmp_path, demo_run, copy_of, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["locate", "--run", str(empty), "--board", "root@127.0.0.1:1"]) == 2
    assert "export.json: not found" in capsys.readouterr().err
    run = copy_of(demo_run)
    assert main(["locate", "--run", str(run), "--sim", "--board", "root@127.0.0.1:1"]) == 3
    assert "cannot connect" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_bad_fault_spec_is_one_line(tmp_path, capsys):
    assert main(["sim-board", "start", "--name", "badfault", "--state", str(tmp_path), "--fault", "conv"]) == 2
    assert "expected NODE:KIND[:VALUE]" in capsys.readouterr().err
