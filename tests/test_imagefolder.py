"""Image-folder data sets (training/imagefolder.py): class folders, mixed sizes and modes, a held-out split, the
decoded cache, bad folders as one line, and a run trained and exported on them with the normalisation computed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas.cli import main
from atlas.errors import UserError
from training import imagefolder
from training.data import load_dataset
from training.imagefolder import ImageRules

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 230, 40)]


def make_folder(root: Path, per_class: int = 6, classes: int = 4, test: bool = True, size=(20, 14)) -> Path:
    """Class k: a bright square of colour k on noise, in mixed file types, sizes and modes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)) if test else (("train", per_class),):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = size[0] + 3 * i, size[1] + 2 * i
                pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = COLOURS[k]
                image = Image.fromarray(pixels)
                kind = i % 3
                if kind == 0:
                    image.save(folder / f"{i}.jpg", quality=90)
                elif kind == 1:
                    image.convert("RGBA").save(folder / f"{i}.png")
                else:
                    image.convert("P").save(folder / f"{i}.bmp")
    return root


def test_mixed_sizes_and_modes_become_the_configured_shape(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    data = load_dataset("imagefolder", folder, cache_dir=tmp_path / "cache", progress=False,
                        rules=ImageRules(size=16))
    assert data.train_images.shape == (24, 16, 16, 3) and data.test_images.shape == (12, 16, 16, 3)
    assert data.train_images.dtype == np.uint8 and data.info.class_names == ("class0", "class1", "class2", "class3")
    assert list(np.bincount(data.train_labels)) == [6, 6, 6, 6]
    centre = data.train_images[data.train_labels == 0][:, 6:10, 6:10].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 150 and centre[1] < 100  # class 0 is red in the middle, whatever the file type
    gray = load_dataset("imagefolder", folder, cache_dir=tmp_path / "cache", progress=False,
                        rules=ImageRules(size=8, channels="gray", resize="stretch"))
    assert gray.train_images.shape == (24, 8, 8, 1) and gray.info.input_shape == (1, 8, 8)


def test_the_normalisation_is_computed_from_train_unless_given(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    data = load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False, rules=ImageRules(size=16))
    x = data.train_images.reshape(-1, 3) / 255.0
    assert np.allclose(data.info.mean, x.mean(axis=0), atol=1e-5) and np.allclose(data.info.std, x.std(axis=0),
                                                                                    atol=1e-5)
    given = load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False,
                         rules=ImageRules(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert given.info.mean == (0.5, 0.5, 0.5) and given.info.std == (0.25, 0.25, 0.25)


def test_without_a_test_folder_a_stratified_share_is_held_out(tmp_path):
    folder = make_folder(tmp_path / "imgs", per_class=10, test=False)
    data = load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False,
                        rules=ImageRules(size=8, test_fraction=0.2))
    assert list(np.bincount(data.test_labels)) == [2, 2, 2, 2] and list(np.bincount(data.train_labels)) == [8] * 4
    assert "held out" in data.source["test"]


def test_the_cache_decodes_once_and_a_changed_folder_decodes_again(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "imgs")
    calls = []
    real = imagefolder.decode
    monkeypatch.setattr(imagefolder, "decode", lambda path, rules: calls.append(path) or real(path, rules))
    load = lambda: load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False,  # noqa: E731
                                rules=ImageRules(size=16))
    first = load()
    assert len(calls) == 36
    second = load()
    assert len(calls) == 36 and np.array_equal(first.train_images, second.train_images)  # no decode the 2nd time
    assert second.source.get("cached") is True
    touched = folder / "train" / "class0" / "0.jpg"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    load()
    assert len(calls) == 72  # the folder changed: decoded again


def test_an_unreadable_image_names_the_file(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    bad = folder / "train" / "class2" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match=f"{bad}: not a readable image"):
        load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False, rules=ImageRules(size=8))


@pytest.mark.parametrize("damage, message", [
    (lambda f: [p.unlink() for p in (f / "train" / "class1").iterdir()], "an empty class folder"),
    (lambda f: [os.rename(p, f / p.name) for p in (f / "train").iterdir()] and None, "no class folders"),
])
def test_bad_folders_are_one_line(tmp_path, damage, message):
    folder = make_folder(tmp_path / "imgs", test=False)
    damage(folder)
    with pytest.raises(UserError, match=message):
        load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False, rules=ImageRules(size=8))


def test_listed_classes_set_the_label_order_and_must_exist(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    data = load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False,
                        rules=ImageRules(size=8, classes=("class3", "class2", "class1", "class0")))
    assert data.info.class_names[0] == "class3"
    with pytest.raises(UserError, match="no folder for class 'dog'"):
        load_dataset("imagefolder", folder, cache_dir=tmp_path / "c", progress=False,
                     rules=ImageRules(size=8, classes=("dog",)))


def test_a_run_on_an_image_folder_trains_and_exports_with_its_normalisation(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATLAS_KD_CACHE", str(tmp_path / "cache"))
    folder = make_folder(tmp_path / "imgs", per_class=12)
    recipe = tmp_path / "mine.toml"
    recipe.write_text(f'[data]\ndataset = "imagefolder"\ndir = "{folder}"\nimage_size = 16\nbatch_size = 16\n'
                      '[teacher]\nmodel = "cnn"\nepochs = 1\n[student]\nmodel = "tinycnn"\nepochs = 1\n'
                      '[export]\ngolden_count = 12\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--run", str(run), "--no-progress"]) == 0
    assert main(["export", "--run", str(run)]) == 0, capsys.readouterr().err
    export = json.loads((run / "export.json").read_text())
    train = json.loads((run / "train.json").read_text())
    assert export["input"]["shape"] == [1, 3, 16, 16] and export["golden"]["count"] == 12
    assert export["normalization"]["mean"] == train["dataset"]["mean"] and len(export["normalization"]["std"]) == 3


def test_imagefolder_without_a_folder_is_one_line(tmp_path, capsys):
    assert main(["train", "--run", str(tmp_path / "r"), "--data-dataset", "imagefolder", "--no-progress"]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
