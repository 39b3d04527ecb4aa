import gzip
import hashlib
import http.server
import pickle
import threading

import numpy as np
import pytest

from atlas.errors import UserError
from datagen import idx_bytes, make_cifar_bin_dir, make_cifar_python_dir, make_mnist_dir
from training import data as data_mod
from training.data import load_dataset, normalize, read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_reads_gz_and_raw(tmp_path, gz):
    make_mnist_dir(tmp_path / "m", n_train=50, n_test=20, gz=gz)
    d = load_dataset("mnist", tmp_path / "m")
    assert d.train_images.shape == (50, 28, 28, 1) and d.test_images.shape == (20, 28, 28, 1)
    assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int64
    assert d.source["official_md5"] is False  # generated files are not the official ones, and we say so


def test_wrong_idx_magic_is_one_line(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n_train=10, n_test=10, gz=False)
    raw = bytearray((folder / "train-images-idx3-ubyte").read_bytes())
    raw[2] = 0x0D  # float data: not MNIST
    (folder / "train-images-idx3-ubyte").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="unsupported IDX magic 00000d03"):
        load_dataset("mnist", folder)
    (folder / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(UserError, match="not an IDX file"):
        load_dataset("mnist", folder)


def test_truncated_idx_is_one_line(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n_train=10, n_test=10, gz=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(UserError, match="truncated or padded IDX"):
        load_dataset("mnist", folder)
    path.write_bytes(path.read_bytes()[:40])  # a cut .gz stream
    with pytest.raises(UserError, match="cannot read"):
        load_dataset("mnist", folder)


def test_missing_file_and_missing_dir_name_data_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="missing train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path / "empty")


def test_real_mnist_in_shared_data_is_the_official_content():
    folder = data_mod.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present on this machine")
    d = load_dataset("mnist", folder)
    assert d.source["official_md5"] is True
    assert np.bincount(d.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_sample_is_a_fixed_stratified_split():
    a, b = load_dataset("mnist-sample"), load_dataset("mnist-sample")
    assert len(a.train_labels) == 4000 and len(a.test_labels) == 1000
    assert np.bincount(a.train_labels).tolist() == [400] * 10
    assert np.bincount(a.test_labels).tolist() == [100] * 10
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.test_labels, b.test_labels)
    assert len(set(a.train_labels[:20].tolist())) > 3  # shuffled: a prefix is not all one digit


def test_mnist_sample_takes_no_data_dir(tmp_path):
    with pytest.raises(UserError, match="takes no --data-dir"):
        load_dataset("mnist-sample", tmp_path)


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: _Files(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _publish(folder, monkeypatch):
    """Make the generated files the 'published' ones, so the MD5 check can pass for them."""
    gz, raw = {}, {}
    for stem in data_mod.MNIST_GZ_MD5:
        blob = (folder / f"{stem}.gz").read_bytes()
        gz[stem] = hashlib.md5(blob).hexdigest()
        raw[stem] = hashlib.md5(gzip.decompress(blob)).hexdigest()
    monkeypatch.setattr(data_mod, "MNIST_GZ_MD5", gz)
    monkeypatch.setattr(data_mod, "MNIST_RAW_MD5", raw)


def test_download_checks_md5_and_caches(tmp_path, file_server, monkeypatch):
    root, url = file_server
    make_mnist_dir(root, n_train=30, n_test=10)
    _publish(root, monkeypatch)
    monkeypatch.setattr(data_mod, "MNIST_MIRRORS", (url,))
    d = load_dataset("mnist", cache_dir=tmp_path / "cache", progress=False)
    assert len(d.train_labels) == 30 and d.source["official_md5"] is True
    # a re-compressed copy of the same bytes is accepted (the shared train-images file is one)
    blob = gzip.decompress((root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(blob, compresslevel=1, mtime=123))
    (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    load_dataset("mnist", cache_dir=tmp_path / "cache", progress=False)


def test_download_with_wrong_md5_fails_naming_data_dir_and_leaves_nothing(tmp_path, file_server, monkeypatch):
    root, url = file_server
    make_mnist_dir(root, n_train=30, n_test=10)
    monkeypatch.setattr(data_mod, "MNIST_MIRRORS", (url,))  # published sums stay the official ones: mismatch
    with pytest.raises(UserError, match=r"download of train-images-idx3-ubyte.gz failed .*MD5.*--data-dir"):
        load_dataset("mnist", cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_download_from_unreachable_mirror_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset("mnist", cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize("maker", [make_cifar_python_dir, make_cifar_bin_dir])
def test_cifar10_both_official_formats_read_back_exactly(tmp_path, maker):
    folder, arrays = maker(tmp_path / "c", n_per_batch=12)
    d = load_dataset("cifar10", folder)
    assert d.train_images.shape == (60, 32, 32, 3) and d.test_images.shape == (12, 32, 32, 3)
    data, labels = arrays["test_batch"]
    assert np.array_equal(d.test_labels, labels)
    # channel-major rows -> NHWC: pixel (0, 0) of image 0 is (R, G, B) = data[0, 0], data[0, 1024], data[0, 2048]
    assert d.test_images[0, 0, 0].tolist() == [data[0, 0], data[0, 1024], data[0, 2048]]


def test_cifar10_found_in_the_official_subfolder(tmp_path):
    make_cifar_python_dir(tmp_path / "cifar-10-batches-py", n_per_batch=4)
    assert load_dataset("cifar10", tmp_path).train_images.shape[0] == 20


def test_cifar10_truncated_binary_batch(tmp_path):
    folder, _ = make_cifar_bin_dir(tmp_path / "c", n_per_batch=4)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UserError, match="data_batch_3.bin.*truncated"):
        load_dataset("cifar10", folder)


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path):
    folder, _ = make_cifar_python_dir(tmp_path / "c", n_per_batch=4)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset("cifar10", folder)
    assert not marker.exists()


def test_normalize_is_x_over_255_minus_mean_over_std_in_nchw():
    images = np.array([[[[0, 255, 51]]]], dtype=np.uint8)  # N=1, H=1, W=1, C=3
    out = normalize(images, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
    assert out.shape == (1, 3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.0, 2.0, 0.0], atol=1e-6)


def test_read_idx_returns_md5_of_content(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)))
    array, md5 = read_idx(path)
    assert array.tolist() == [0, 1, 2, 3, 4] and md5 == hashlib.md5(path.read_bytes()).hexdigest()
