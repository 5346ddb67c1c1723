"""Downloads (for online users) through a local file:// mirror: checksums, atomic writes, safe extraction."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from scorelab import data as D
from scorelab import download as dl
from test_data import write_idx


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_idx_files_arrive_checked_and_load(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    write_idx(mirror / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), True)
    write_idx(mirror / "t10k-labels-idx1-ubyte.gz", np.array([7, 2, 1], dtype=np.uint8), True)
    files = {p.name: md5(p) for p in mirror.iterdir()}
    monkeypatch.setitem(dl.DATASETS, "mnist", (mirror.as_uri(), files))
    root = dl.download_dataset("mnist", tmp_path / "mnist", progress=False)
    assert D.load_mnist(root, "test").labels.tolist() == [7, 2, 1]
    # Present and intact: not fetched again (the mirror is gone).
    for p in mirror.iterdir():
        p.unlink()
    dl.download_dataset("mnist", root, progress=False)
    # A file whose checksum differs from the published one is refused and leaves nothing behind.
    (mirror / "t10k-images-idx3-ubyte.gz").write_bytes(b"not the file")
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="not the published"):
        dl.download_dataset("mnist", root, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["t10k-labels-idx1-ubyte.gz"]


def test_cifar_archive_is_extracted_member_by_member(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    records = np.random.default_rng(1).integers(0, 256, (4, 3073), dtype=np.uint8)
    records[:, 0] = [1, 2, 3, 4]
    with tarfile.open(mirror / "cifar-10-binary.tar.gz", "w:gz") as archive:
        def add(name, content):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for member in dl._CIFAR_MEMBERS:
            add(f"cifar-10-batches-bin/{member}", records.tobytes() if member.endswith(".bin") else b"airplane\n")
        add("../../escaped.txt", b"outside")                         # never written
    monkeypatch.setitem(dl.DATASETS, "cifar10", (mirror.as_uri(), {"cifar-10-binary.tar.gz": md5(mirror / "cifar-10-binary.tar.gz")}))
    folder = dl.download_dataset("cifar10", tmp_path / "c", progress=False)
    assert D.load_cifar10(folder, "test").labels.tolist() == [1, 2, 3, 4]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "c" / "escaped.txt").exists()
    with pytest.raises(ValueError, match="unknown dataset"):
        dl.download_dataset("imagenet", tmp_path)
