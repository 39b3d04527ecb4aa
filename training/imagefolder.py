"""Image-folder data sets: `train/<class>/*` and `test/<class>/*` (or a seeded, stratified held-out share of train
when there is no test folder), JPEG/PNG/BMP through Pillow, preprocessed by the config's rules into the uint8 NHWC
arrays the rest of the pipeline takes (the same form as MNIST's and CIFAR-10's).

Decoding is the slow part (60,000 CIFAR JPEGs), so the arrays are cached once per folder and rules: the cache key
is the sha256 of every file's relative path, size and mtime plus the rules, so a changed folder decodes again.
Class order is the sorted folder names unless the config lists them. The normalisation is the config's, else
computed from the train split (and recorded in every checkpoint, as MNIST's is).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from atlas.errors import UserError
from atlas.fileio import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_FORMAT = "atlas-kd.imagefolder.v2"  # v2: splits in a fixed shuffled order
SPLIT_SEED = 20261201  # the held-out split never depends on the run's seed (like mnist-sample's)
RESIZE_MODES = ("crop", "stretch")
CHANNEL_MODES = {"rgb": ("RGB", 3), "gray": ("L", 1)}


@dataclass(frozen=True)
class ImageRules:
    """How images become model inputs: size (square), channels, how to resize, and the class list."""

    size: int = 32  # the height (and the width, unless `width` is given)
    width: int = 0  # 0: square (size x size); a user's model may take e.g. 48 x 320
    channels: str = "rgb"  # rgb | gray
    resize: str = "crop"  # crop: shorter side to `size`, then the centre; stretch: straight to size x size
    classes: tuple[str, ...] = ()  # empty: the sorted folder names
    test_fraction: float = 0.1  # held out of train/ when there is no test/
    mean: tuple[float, ...] = ()  # empty: computed from the train split
    std: tuple[float, ...] = ()

    @property
    def hw(self) -> tuple[int, int]:
        return self.size, self.width or self.size

    def check(self) -> None:
        if self.size < 1 or self.width < 0:
            raise UserError(f"data.image_size must be >= 1 (got {self.size})")
        if self.channels not in CHANNEL_MODES:
            raise UserError(f"data.channels must be one of {', '.join(CHANNEL_MODES)} (got {self.channels!r})")
        if self.resize not in RESIZE_MODES:
            raise UserError(f"data.resize must be one of {', '.join(RESIZE_MODES)} (got {self.resize!r})")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"data.test_fraction must be in (0, 1) (got {self.test_fraction})")
        n = CHANNEL_MODES[self.channels][1]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values and len(values) != n:
                raise UserError(f"data.{name} has {len(values)} values for {n} channel(s) ({self.channels})")
        if any(s <= 0 for s in self.std):
            raise UserError(f"data.std must be positive (got {list(self.std)})")
        if len(set(self.classes)) != len(self.classes):
            raise UserError(f"data.classes names a class twice: {list(self.classes)}")


@dataclass
class Images:
    """Decoded images of one split: uint8 NHWC pixels, int64 labels (-1: no class folder), and their files."""

    pixels: np.ndarray
    labels: np.ndarray
    files: list[str] = field(default_factory=list)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(folder: Path, classes: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(class name, folder) in label order; one line for no classes, a listed class missing, or an empty one."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(f"{folder}: no class folders (expected {folder}/<class>/<image>.jpg, one folder per class)")
    names = list(classes) if classes else found
    missing = [c for c in names if c not in found]
    if missing:
        raise UserError(f"{folder}: no folder for class {missing[0]!r} of data.classes (found: {', '.join(found)})")
    for name in names:
        if not image_files(folder / name):
            raise UserError(f"{folder / name}: an empty class folder (no .jpg, .jpeg, .png or .bmp files)")
    return [(name, folder / name) for name in names]


def decode(path: Path, rules: ImageRules) -> np.ndarray:
    """One image file -> uint8 HWC array under the rules; one line naming the file when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    mode, _ = CHANNEL_MODES[rules.channels]
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            height, width = rules.hw
            if rules.resize == "stretch":
                image = image.resize((width, height), Image.BILINEAR)
            else:  # cover height x width, keeping the aspect ratio, then cut the centre
                scale = max(height / image.height, width / image.width)
                w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
                image = image.resize((w, h), Image.BILINEAR)
                left, top = (w - width) // 2, (h - height) // 2
                image = image.crop((left, top, left + width, top + height))
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "remove or replace it") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def decode_all(paths: list[Path], rules: ImageRules, progress: bool, desc: str) -> np.ndarray:
    """Every file decoded (Pillow releases the GIL while decoding, so two threads per core pay)."""
    from tqdm import tqdm

    n = CHANNEL_MODES[rules.channels][1]
    out = np.empty((len(paths), *rules.hw, n), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        results = pool.map(lambda p: decode(p, rules), paths)
        for i, pixels in enumerate(tqdm(results, total=len(paths), desc=desc, unit="img", disable=not progress,
                                        leave=False, mininterval=0.5)):
            out[i] = pixels
    return out


def read_labelled(folder: Path, rules: ImageRules, progress: bool, classes: list[str] | None = None) -> Images:
    """A folder of class folders -> Images (labels by class order)."""
    folders = class_folders(folder, tuple(classes) if classes else rules.classes)
    paths, labels = [], []
    for label, (_, class_dir) in enumerate(folders):
        files = image_files(class_dir)
        paths += files
        labels += [label] * len(files)
    pixels = decode_all(paths, rules, progress, desc=f"decoding {folder.name}")
    return Images(pixels, np.asarray(labels, dtype=np.int64), [str(p.relative_to(folder)) for p in paths])


def read_flat_or_labelled(folder: Path, rules: ImageRules, progress: bool, classes: list[str] | None = None) -> Images:
    """A folder of class folders (labelled) or of images (labels -1): for golden sets from a user's images."""
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of images")
    files = image_files(folder)
    if files:
        pixels = decode_all(files, rules, progress, desc=f"decoding {folder.name}")
        return Images(pixels, np.full(len(files), -1, dtype=np.int64), [p.name for p in files])
    return read_labelled(folder, rules, progress, classes)


def folder_key(folder: Path, rules: ImageRules) -> str:
    """sha256 over every image's relative path, size and mtime, and the rules: what the decoded cache depends on."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "rules": asdict(rules)}, sort_keys=True).encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            st = path.stat()
            h.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def split_held_out(images: Images, fraction: float) -> tuple[Images, Images]:
    """A stratified, seeded share of each class as the test split (at least one image per class)."""
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = []
    for label in np.unique(images.labels):
        idx = rng.permutation(np.flatnonzero(images.labels == label))
        if len(idx) < 2:
            raise UserError(f"class {label} has {len(idx)} image: a held-out test split needs at least 2 per class "
                            "(or give a test/ folder)")
        test_idx.append(idx[:max(1, round(fraction * len(idx)))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(images.labels)), test)

    def take(idx: np.ndarray) -> Images:
        return Images(images.pixels[idx], images.labels[idx], [images.files[i] for i in idx])

    return take(train), take(test)


def shuffled(images: Images) -> Images:
    """The images in a fixed random order (data.train_limit takes a prefix; it must hold every class)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images.labels))
    return Images(images.pixels[order], images.labels[order], [images.files[i] for i in order])


def channel_stats(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC pixels after /255 (float64, in chunks: 60,000 images fit)."""
    n = pixels.shape[-1]
    total, total_sq, count = np.zeros(n), np.zeros(n), 0
    for start in range(0, len(pixels), 4096):
        x = pixels[start:start + 4096].reshape(-1, n).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_splits(folder: Path, rules: ImageRules, *, cache_dir: Path, progress: bool) -> dict:
    """{"train": Images, "test": Images, "classes", "mean", "std", "source"}: decoded once, then from the cache."""
    rules.check()
    if not folder.is_dir():
        raise UserError(f"data dir {folder} does not exist or is not a folder (pass --data-dir with the image folder)")
    key = folder_key(folder, rules)
    cached = cache_dir / f"{key}.npz"
    source = {"kind": "imagefolder", "dir": str(folder), "key": key}
    if cached.is_file():
        try:
            return _read_cache(cached, source)
        except (OSError, ValueError, KeyError):
            cached.unlink(missing_ok=True)  # a damaged cache decodes again
    train_dir = folder / "train" if (folder / "train").is_dir() else folder
    classes = [name for name, _ in class_folders(train_dir, rules.classes)]
    train = read_labelled(train_dir, rules, progress)
    if (folder / "test").is_dir():
        test = read_labelled(folder / "test", rules, progress, classes)
        source["test"] = "test/"
    else:
        train, test = split_held_out(train, rules.test_fraction)
        source["test"] = f"held out: {rules.test_fraction:g} of each class (seed {SPLIT_SEED})"
    train, test = shuffled(train), shuffled(test)  # folders are read class by class: mix, so any prefix is mixed
    mean, std = (rules.mean, rules.std) if rules.mean and rules.std else channel_stats(train.pixels)
    result = {"train": train, "test": test, "classes": classes, "mean": mean, "std": std, "source": source}
    _write_cache(cached, result)
    return result


def _write_cache(path: Path, result: dict) -> None:
    meta = {k: result[k] for k in ("classes", "mean", "std", "source")}
    meta["files"] = {split: result[split].files for split in ("train", "test")}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, train_pixels=result["train"].pixels, train_labels=result["train"].labels,
                     test_pixels=result["test"].pixels, test_labels=result["test"].labels,
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _read_cache(path: Path, source: dict) -> dict:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        train = Images(data["train_pixels"], data["train_labels"], meta["files"]["train"])
        test = Images(data["test_pixels"], data["test_labels"], meta["files"]["test"])
    return {"train": train, "test": test, "classes": meta["classes"], "mean": tuple(meta["mean"]),
            "std": tuple(meta["std"]), "source": {**meta["source"], **source, "cached": True}}
