"""Data readers on fixture files built here and on the real files in ../shared/data."""

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scorelab import data as D

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_scaling_round_trips_and_hits_the_ends():
    k = torch.arange(256, dtype=torch.uint8)
    x = D.to_model_range(k)
    assert x[0] == -1 and x[-1] == 1
    assert torch.equal(D.to_uint8(x), k)
    with pytest.raises(ValueError, match="integer pixel values"):
        D.to_model_range(torch.rand(3))


def test_digits_are_the_embedded_default(monkeypatch):
    """Read from scikit-learn's file without its loader, the digits are its ``load_digits``'s, scaled from 0..16
    to 0..255; where that file is not found, its loader gives the same."""
    import sklearn.datasets

    peer = sklearn.datasets.load_digits()
    D._digits_arrays.cache_clear()                                   # parsed once a process: parse it here
    with monkeypatch.context() as m:
        m.setattr(sklearn.datasets, "load_digits", None)            # the file alone
        s, fast = D.load_digits(), D.load_digits("test")
    assert D._digits_csv() is not None
    assert s.images.shape == (1797, 1, 8, 8) and s.images.dtype == np.uint8
    assert np.array_equal(s.images[:, 0], np.rint(peer.images * 255 / 16).astype(np.uint8))
    assert np.array_equal(s.labels, peer.target)
    monkeypatch.setattr(D, "_digits_csv", lambda: None)               # the loader alone
    D._digits_arrays.cache_clear()
    slow = D.load_digits("test")
    D._digits_arrays.cache_clear()
    assert np.array_equal(slow.images, fast.images) and np.array_equal(slow.labels, fast.labels)
    assert s.images.max() == 255 and s.images.min() == 0
    assert sorted(set(s.labels.tolist())) == list(range(10))


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_and_mnist_layout(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    s = D.load_mnist(tmp_path, "test")
    assert np.array_equal(s.images[:, 0], images) and np.array_equal(s.labels, labels)
    with pytest.raises(ValueError, match="no train-images-idx3-ubyte"):
        D.load_mnist(tmp_path, "train")


def test_truncated_or_foreign_idx_files_are_refused(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 3, 3), np.uint8), False)
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(tmp_path / "b")
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3, 0, 0]))            # cut inside its header
    with pytest.raises(ValueError, match="ends inside its idx header"):
        D.read_idx(tmp_path / "h")
    (tmp_path / "c").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an idx file"):
        D.read_idx(tmp_path / "c")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/data is not beside this checkout")
def test_real_mnist_and_fashion_mnist_files():
    mnist = D.load_mnist(SHARED / "mnist", "test")
    assert mnist.images.shape == (10000, 1, 28, 28)
    assert np.bincount(mnist.labels).tolist()[:2] == [980, 1135]          # the official test split
    fashion = D.load_mnist(SHARED / "fashion-mnist", "train")
    assert fashion.images.shape == (60000, 1, 28, 28) and np.bincount(fashion.labels).tolist() == [6000] * 10
    raw = (SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert hashlib.md5(raw).hexdigest() == "ec29112dd5afa0611ce80d1b7f02629c"


@pytest.mark.skipif(not (SHARED / "cifar10_jpg_test_uint8.npz").is_file(), reason="no shared CIFAR-10 copy")
def test_real_cifar10_npz():
    s = D.load_cifar10(SHARED / "cifar10_jpg_test_uint8.npz")
    assert s.images.shape == (10000, 3, 32, 32) and s.images.dtype == np.uint8
    assert np.bincount(s.labels).tolist() == [1000] * 10


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    records = rng.integers(0, 256, (7, 3073), dtype=np.uint8)
    records[:, 0] = np.arange(7) % 10
    records.tofile(tmp_path / "test_batch.bin")
    s = D.load_cifar10(tmp_path, "test")
    assert np.array_equal(s.labels, np.arange(7) % 10)
    assert np.array_equal(s.images.reshape(7, -1), records[:, 1:])
    with pytest.raises(ValueError, match="data_batch_1.bin"):
        D.load_cifar10(tmp_path, "train")


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_cifar10_python_batches_load_arrays_and_refuse_code(tmp_path):
    import pickle

    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4, 1, 5], b"data": data,
             b"filenames": [b"a.png"] * 5}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))   # CIFAR's protocol
    s = D.load_cifar10(tmp_path, "test")
    assert s.labels.tolist() == [3, 1, 4, 1, 5] and np.array_equal(s.images.reshape(5, -1), data)
    assert s.classes[3] == "cat"
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load posix.system|refusing to load os.system"):
        D.load_cifar10(tmp_path, "test")


def test_arrays_of_images_and_points(tmp_path):
    rng = np.random.default_rng(2)
    hwc = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", x=hwc, y=np.arange(4))
    s = D.load_array(tmp_path / "imgs.npz")
    assert s.images.shape == (4, 3, 6, 6) and np.array_equal(s.images, hwc.transpose(0, 3, 1, 2))
    np.save(tmp_path / "pts.npy", rng.normal(size=(10, 2)))
    assert D.load_array(tmp_path / "pts.npy").shape == (10, 2)
    np.save(tmp_path / "float_imgs.npy", rng.random((4, 8, 8)))
    with pytest.raises(ValueError, match="must be uint8"):
        D.load_array(tmp_path / "float_imgs.npy", kind="images")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        D.load_array(tmp_path / "obj.npy")
    np.savez(tmp_path / "noname.npz", images=hwc)
    with pytest.raises(ValueError, match="name the data 'x'"):
        D.load_array(tmp_path / "noname.npz")
    whole = (tmp_path / "imgs.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        D.load_array(tmp_path / "cut.npz")


def test_image_folder_with_classes_resizing_and_a_corrupt_file(tmp_path):
    rng = np.random.default_rng(3)
    for cls, size in (("cat", (12, 10)), ("dog", (10, 14))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match="different sizes"), pytest.warns(UserWarning, match="skipped 1"):
        D.load_image_folder(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1"):
        s = D.load_image_folder(tmp_path, image_size=8, labels=True)
    assert s.images.shape == (4, 3, 8, 8) and s.skipped == 1
    assert s.classes == ["cat", "dog"] and s.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="broken.jpg"):
        D.load_image_folder(tmp_path, image_size=8, on_error="raise")
    grey = D.load_image_folder(tmp_path / "cat", mode="L")
    assert grey.images.shape == (2, 1, 12, 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        D.load_image_folder(tmp_path / "empty")
    # 16-bit greys are scaled to 8 bits (level k * 257 is level k), not clipped to white above 255.
    deep = tmp_path / "deep"
    deep.mkdir()
    levels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 4
    Image.fromarray(levels * 257).save(deep / "a.png")
    assert np.array_equal(D.load_image_folder(deep).images[0, 0], levels)
    assert np.array_equal(D.load_image(deep / "a.png", (1, 8, 8))[0], levels)


def test_batches_are_reproducible_scaled_and_flipped():
    s = D.load_digits()
    a = next(D.batches(s, 16, torch.Generator().manual_seed(0)))
    b = next(D.batches(s, 16, torch.Generator().manual_seed(0)))
    assert torch.equal(a, b) and a.shape == (16, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    x, y = next(D.batches(s, 8, torch.Generator().manual_seed(1), flip=True, with_labels=True))
    assert y.shape == (8,)
    with pytest.raises(ValueError, match="needs labels"):
        next(D.batches(D.ImageSet(s.images[:4]), 2, torch.Generator(), with_labels=True))


@pytest.mark.parametrize("name", ["two_moons", "swiss_roll", "checkerboard", "gaussian_mixture"])
def test_toy_points(name):
    x = D.toy_points(name, 500, seed=4)
    assert x.shape == (500, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(x, D.toy_points(name, 500, seed=4))
    assert np.abs(x).max() < 6
