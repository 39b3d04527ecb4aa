"""The board app's image road (issue 21 item 3): `export --dvpp` keeps the JPEGs in golden/images/ with a reference
computed on the host through atlas/yuv.py's JPEGD -> YUV420SP -> VPC resize -> AIPP CSC -> normalisation; deploy
ships the JPEGs; the app decodes them on the (emulated) DVPP into a YUV420SP_U8 AIPP model; verify PASSes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atlas.cli import main
from test_board_app import run_infer

MEAN, STD = "0.5,0.5,0.5", "0.25,0.25,0.25"


@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    """16 JPEGs of mixed sizes (odd ones too) in 4 class folders."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for k in range(4):
        folder = root / f"class{k}"
        folder.mkdir()
        for i in range(4):
            h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
            pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 30 + 10 * k, (h, w, 3)), 0, 255).astype(np.uint8)
            pixels[: h // (2 + i % 3)] = rng.integers(0, 256, 3)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)
    return root


def rgb_cnn(path: Path, size: int) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * (size // 2) ** 2, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=11,
                      input_names=["input"], output_names=["logits"])
    return path


@pytest.fixture(scope="module")
def model28(tmp_path_factory) -> Path:
    """28 x 28: the VPC's 16-aligned stride is 32, so AIPP crops it (the harder case)."""
    return rgb_cnn(tmp_path_factory.mktemp("m28") / "m28.onnx", 28)


def export_dvpp(model: Path, jpegs: Path, run: Path, *extra: str) -> int:
    return main(["export", "--onnx", str(model), "--run", str(run), "--images", str(jpegs), "--data-mean", MEAN,
                 "--data-std", STD, "--dvpp", *extra])


def deploy(board, run: Path) -> int:
    return main(["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config)])


@pytest.fixture(scope="module")
def dvpp_run(model28, jpegs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dvpp") / "dvpp"
    assert export_dvpp(model28, jpegs, run) == 0
    assert main(["om", "--run", str(run), "--sim"]) == 0
    return run


def test_export_keeps_the_jpegs_and_the_frames_dvpp_makes_of_them(dvpp_run, jpegs):
    board_input = json.loads((dvpp_run / "export.json").read_text())["board_input"]
    assert board_input["layout"] == "YUV420SP" and board_input["aipp_format"] == "YUV420SP_U8"
    assert board_input["image_count"] == 16
    originals = sorted(jpegs.glob("*/*.jpg"))
    copies = sorted((dvpp_run / "golden" / "images").iterdir())
    assert [p.name for p in copies] == [f"{i:06d}.jpg" for i in range(16)]
    assert [p.read_bytes() for p in copies] == [p.read_bytes() for p in originals]  # the bytes, not a re-encode
    frames = np.load(dvpp_run / "golden" / "inputs.npy")
    assert frames.shape == (16, 28 * 3 // 2, 32) and frames.dtype == np.uint8  # 28 wide at the VPC's stride 32
    assert np.load(dvpp_run / "golden" / "labels.npy").tolist() == [k for k in range(4) for _ in range(4)]
    cfg = (dvpp_run / "insert_op.cfg").read_text()
    assert "input_format: YUV420SP_U8" in cfg and "crop_size_w: 28" in cfg and "src_image_size_w: 32" in cfg
    # how much another JPEG decoder (and resize filter) moves the reference: recorded for a real board's verify
    sensitivity = board_input["decoder_sensitivity"]
    assert set(sensitivity) == {"another_jpeg_decoder", "and_another_resize_filter"}
    assert 0.9 < sensitivity["another_jpeg_decoder"]["cosine_min"] < 1.0


def test_the_app_decodes_on_the_dvpp_exactly_the_frames_export_computed(dvpp_run, tmp_path):
    record = tmp_path / "record"
    result = run_infer(tmp_path / "out", dvpp_run / "model.om", dvpp_run / "golden" / "images",
                       env={"ATLAS_KD_SIM_ACL_RECORD": str(record)})
    assert result.returncode == 0, result.stderr
    fed = np.stack([np.load(p)["input0"][0] for p in sorted(record.glob("*.npz"))])
    host = np.load(dvpp_run / "golden" / "inputs.npy")
    assert np.array_equal(fed[:, :, :28], host[:, :, :28])  # like with like: the picture bytes are identical
    timing = result.timing
    assert timing["images"]["count"] == 16 and timing["images"]["resized_to"] == [28, 28]
    stats = result.stats
    assert not stats["leaks_at_finalize"] and not stats["warnings"], stats
    assert stats["calls"]["acl.media.dvpp_jpeg_decode_async"] == 16
    assert stats["calls"]["acl.media.dvpp_vpc_resize_async"] == 16


def test_the_image_road_goes_deploy_verify_pass_on_the_sim_board_and_fails_with_another_picture(dvpp_run, board,
                                                                                              tmp_path, capsys):
    run = tmp_path / "road"
    shutil.copytree(dvpp_run, run)
    assert deploy(board, run) == 0, capsys.readouterr().err
    deployed = json.loads((run / "deploy.json").read_text())["boards"][0]
    assert [u["file"] for u in deployed["uploads"]][1] == "images-16/000000.jpg"
    assert "images-16" in deployed["app"]["argv"][deployed["app"]["argv"].index("--input") + 1]
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "verify.json").read_text())["boards"][0]["metrics"]
    assert metrics["top1_agreement"] == 1.0 and metrics["cosine_min"] >= 0.999

    # negative control: the board decodes what it is sent, not golden/inputs.npy: another picture fails verify
    picture = run / "golden" / "images" / "000005.jpg"
    with Image.open(picture) as image:
        Image.fromarray(255 - np.asarray(image)).save(picture, quality=85)
    assert deploy(board, run) == 0
    assert main(["verify", "--run", str(run)]) == 1
    assert "verification FAILED" in capsys.readouterr().err
    assert json.loads((run / "verify.json").read_text())["boards"][0]["metrics"]["worst_sample"] == 5


def test_the_app_refuses_images_for_a_model_without_the_yuv420sp_aipp(model28, jpegs, tmp_path):
    run = tmp_path / "plain"
    assert main(["export", "--onnx", str(model28), "--run", str(run), "--images", str(jpegs), "--data-mean", MEAN,
                 "--data-std", STD, "--om-aipp", "true"]) == 0  # RGB AIPP: uint8 NHWC, not DVPP frames
    assert main(["om", "--run", str(run), "--sim"]) == 0
    result = run_infer(tmp_path / "out", run / "model.om", jpegs / "class0")
    assert result.returncode == 2 and "export --dvpp" in result.stderr, result.stderr
    # control: the same folder into the DVPP model runs
    assert export_dvpp(model28, jpegs, tmp_path / "dvpp") == 0 and main(["om", "--run", str(tmp_path / "dvpp"),
                                                                         "--sim"]) == 0
    assert run_infer(tmp_path / "out2", tmp_path / "dvpp" / "model.om", jpegs / "class0").returncode == 0


def test_an_empty_images_folder_is_one_line_exit_2(dvpp_run, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_infer(tmp_path / "out", dvpp_run / "model.om", tmp_path / "empty")
    assert result.returncode == 2 and "no .jpg or .jpeg files" in result.stderr


def test_a_damaged_jpeg_names_the_file_and_the_dvpp_call(dvpp_run, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    data = (dvpp_run / "golden" / "images" / "000000.jpg").read_bytes()
    (folder / "a.jpg").write_bytes(data[:len(data) // 3])
    result = run_infer(tmp_path / "out", dvpp_run / "model.om", folder)
    assert result.returncode == 1, result.stderr
    assert "dvpp_jpeg_decode_async" in result.stderr and "a.jpg" in result.stderr
    assert not result.stats["leaks_at_finalize"]  # released after the failure too


@pytest.mark.parametrize("case, message", [
    ("no-images", "export.dvpp (--dvpp) takes the JPEGs of --images"),
    ("png", "z.png: export.dvpp takes JPEG files only"),
    ("odd", "needs an even model height and width"),
])
def test_bad_dvpp_exports_are_one_line_exit_2(case, message, model28, jpegs, tmp_path, capsys):
    run, model, folder = tmp_path / "run", model28, jpegs
    if case == "no-images":
        code = main(["export", "--onnx", str(model), "--run", str(run), "--dvpp"])
    else:
        if case == "png":
            folder = tmp_path / "mixed"
            shutil.copytree(jpegs / "class0", folder)
            Image.new("RGB", (40, 40)).save(folder / "z.png")
        else:
            model = rgb_cnn(tmp_path / "m27.onnx", 27)
        code = export_dvpp(model, folder, run)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (run / "golden").exists()
