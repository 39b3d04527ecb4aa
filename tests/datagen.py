"""Small data sets written in the official file formats, so the real readers are what the tests exercise."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Noise plus a bright band whose position depends on the label: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels),) + shape, dtype=np.uint8)
    rows = shape[0] if len(shape) == 2 else shape[1]
    band = max(1, rows // 10)
    for i, y in enumerate(labels):
        r0 = int(y) * band
        if len(shape) == 2:
            images[i, r0:r0 + band, :] = 230
        else:
            images[i, :, r0:r0 + band, :] = 230
    return images


def make_mnist_dir(folder: Path, n_train: int = 300, n_test: int = 100, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = class_images(labels, (28, 28), seed=n)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def _cifar_batches(n_per_batch: int):
    rng = np.random.default_rng(2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=n_per_batch)
        images = class_images(labels, (3, 32, 32), seed=len(name) + n_per_batch)  # channel-major, as the files hold it
        yield name, images.reshape(n_per_batch, 3072), labels


def make_cifar_python_dir(folder: Path, n_per_batch: int = 40) -> tuple[Path, dict]:
    """The python version: pickled dicts with bytes keys (as the official Python 2 pickles load), plus batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, data, labels in _cifar_batches(n_per_batch):
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        arrays[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                            "frog", "horse", "ship", "truck")],
                     b"num_cases_per_batch": n_per_batch, b"num_vis": 3072}, f, protocol=2)
    return folder, arrays


def make_cifar_bin_dir(folder: Path, n_per_batch: int = 40) -> tuple[Path, dict]:
    """The binary version: records of 1 label byte + 3072 pixel bytes (R plane, G plane, B plane)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, data, labels in _cifar_batches(n_per_batch):
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
        arrays[name] = (data, labels)
    (folder / "batches.meta.txt").write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    return folder, arrays
