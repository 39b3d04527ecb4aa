"""The three PaddleOCR models shipped in the rapidocr-onnxruntime 1.4.4 wheel (the OCR most often deployed on
Ascend boards), as a user brings them: dynamic input dims fixed with --input-shape, lint 0 errors each, and the
detection model through export --images, om --sim, the sim board and verify. The wheel is fetched once with
`pip download --no-deps` into .cache/ (a registry download; skipped with the reason where it cannot be had)."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from atlas.cli import main
from conftest import REPO

pytestmark = pytest.mark.slow
WHEEL = "rapidocr-onnxruntime==1.4.4"
MODELS = {  # file in the wheel -> the input shape rapidocr's config.yaml runs it at
    "ch_PP-OCRv4_det_infer.onnx": "x:1,3,640,640",
    "ch_PP-OCRv4_rec_infer.onnx": "x:1,3,48,320",
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": "x:1,3,48,192",
}


@pytest.fixture(scope="module")
def models() -> Path:
    cache = REPO / ".cache" / "rapidocr"
    folder = cache / "models"
    if not all((folder / name).is_file() for name in MODELS):
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(cache)],
                              capture_output=True, text=True, timeout=600)
        wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if done.returncode or not wheels:
            pytest.skip(f"cannot download {WHEEL}: {(done.stderr.strip().splitlines() or ['no wheel'])[-1]}")
        folder.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in MODELS:
                (folder / name).write_bytes(wheel.read(f"rapidocr_onnxruntime/models/{name}"))
    return folder


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_with_fixed_input_shapes_lints_without_errors(models, name, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["export", "--onnx", str(models / name), "--run", str(run), "--input-shape", MODELS[name],
                 "--export-golden-count", "4"]) == 0, capsys.readouterr().err
    assert json.loads((run / "export.json").read_text())["lint"]["summary"]["errors"] == 0


def test_the_detection_model_goes_the_sim_road_on_images(models, tmp_path, sim_board, capsys):
    images = tmp_path / "pages"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # pages of text lines, as the detector is made for
        page = Image.new("RGB", (800, 600), (240, 240, 240))
        draw = ImageDraw.Draw(page)
        for j in range(8):
            y = 40 + 60 * j
            draw.text((40 + 10 * i, y), f"line {j} of page {i}: OCR sample text", fill=(0, 0, 0))
            draw.rectangle((30, y - 5, 500 + int(rng.integers(0, 200)), y + 20), outline=(90, 0, 0))
        page.save(images / f"{i}.jpg")
    run = tmp_path / "det"
    assert main(["export", "--onnx", str(models / "ch_PP-OCRv4_det_infer.onnx"), "--run", str(run),
                 "--input-shape", MODELS["ch_PP-OCRv4_det_infer.onnx"], "--images", str(images),
                 "--data-mean", "0.485,0.456,0.406", "--data-std", "0.229,0.224,0.225"]) == 0
    assert main(["om", "--run", str(run), "--sim"]) == 0
    assert main(["deploy", "--run", str(run), "--board", sim_board.alias, "--ssh-config",
                 str(sim_board.ssh_config)]) == 0, capsys.readouterr().err
    assert main(["verify", "--run", str(run)]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "verify.json").read_text())["boards"][0]["metrics"]
    assert metrics["cosine_min"] >= 0.999 and metrics["top1_agreement"] is None  # a probability map, not classes
