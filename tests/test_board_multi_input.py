"""A model with two inputs on the board (issue 16's last gap): golden/inputs.npz by input name goes to the board, the
app feeds each array to the model input of that name, and deploy -> verify PASSes on the sim board."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from atlas.cli import main
from test_board_app import run_infer


@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


class ImageAndVector(nn.Module):
    """Class scores from an image and a side vector (both shape the output, so feeding either wrong shows)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
        self.side = nn.Linear(16, 10)

    def forward(self, image, extra):
        return self.body(image) + self.side(extra)


@pytest.fixture(scope="module")
def two_input_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    torch.manual_seed(0)
    model = folder / "two.onnx"
    torch.onnx.export(ImageAndVector().eval(), (torch.zeros(1, 1, 28, 28), torch.zeros(1, 16)), str(model),
                      dynamo=False, opset_version=11, input_names=["image", "extra"], output_names=["logits"])
    rng = np.random.default_rng(0)
    arrays = {"extra": rng.standard_normal((20, 16)).astype(np.float32),  # not the model's order: names decide
              "image": rng.standard_normal((20, 1, 28, 28)).astype(np.float32)}
    np.savez(folder / "inputs.npz", **arrays)
    run = folder / "run"
    assert main(["export", "--onnx", str(model), "--run", str(run), "--inputs", str(folder / "inputs.npz")]) == 0
    assert main(["om", "--run", str(run), "--sim"]) == 0
    return run


def deploy(board, run: Path) -> int:
    return main(["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config)])


def test_a_two_input_model_goes_deploy_verify_pass_and_fails_when_one_input_changes(two_input_run, board, tmp_path,
                                                                                    capsys):
    run = tmp_path / "run"
    shutil.copytree(two_input_run, run)
    assert deploy(board, run) == 0, capsys.readouterr().err
    entry = json.loads((run / "deploy.json").read_text())["boards"][0]
    assert "inputs.npz" in {u["file"] for u in entry["uploads"]}
    timing = json.loads((run / "board" / "timing.json").read_text())
    assert [(i["name"], i["shape"]) for i in timing["inputs"]] == [("image", [1, 1, 28, 28]), ("extra", [1, 16])]
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "verify.json").read_text())["boards"][0]["metrics"]
    assert metrics["count"] == 20 and metrics["top1_agreement"] == 1.0 and metrics["cosine_min"] >= 0.999

    # negative control: the second input really reaches the model (change it alone and verify fails)
    with np.load(run / "golden" / "inputs.npz") as golden:
        arrays = {name: golden[name] for name in golden.files}
    arrays["extra"] = arrays["extra"] * -3.0
    np.savez(run / "golden" / "inputs.npz", **arrays)
    assert deploy(board, run) == 0
    assert main(["verify", "--run", str(run)]) == 1
    assert "verification FAILED" in capsys.readouterr().err


def test_the_app_feeds_by_name_whatever_the_order_in_the_npz(two_input_run, tmp_path):
    with np.load(two_input_run / "golden" / "inputs.npz") as golden:
        arrays = {name: golden[name] for name in golden.files}
    reference = np.load(two_input_run / "golden" / "reference.npy")
    for order in (["image", "extra"], ["extra", "image"]):
        np.savez(tmp_path / "in.npz", **{name: arrays[name] for name in order})
        result = run_infer(tmp_path / "-".join(order), two_input_run / "model.om", tmp_path / "in.npz")
        assert result.returncode == 0, result.stderr
        assert np.abs(result.outputs - reference).max() < 0.05
        assert not result.stats["leaks_at_finalize"]


@pytest.mark.parametrize("make, message", [
    (lambda a: {"image": a["image"]}, "the model's inputs are ['image', 'extra']"),
    (lambda a: {"image": a["image"], "extra": a["extra"][:, :8]}, "[extra] have samples of shape (8)"),
    (lambda a: {"image": a["image"], "extra": a["extra"][:5]}, "each of the same one or more samples"),
    (lambda a: a["image"], "pass --input FILE.npz with one array per input name"),
])
def test_inputs_that_do_not_fit_a_two_input_model_are_one_line_exit_2(make, message, two_input_run, tmp_path):
    with np.load(two_input_run / "golden" / "inputs.npz") as golden:
        arrays = {name: golden[name] for name in golden.files}
    given = make(arrays)
    path = tmp_path / ("in.npy" if isinstance(given, np.ndarray) else "in.npz")
    (np.save if isinstance(given, np.ndarray) else lambda p, d: np.savez(p, **d))(path, given)
    result = run_infer(tmp_path / "out", two_input_run / "model.om", path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
