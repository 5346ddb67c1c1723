"""Fetch the standard dataset files, for users who are online (nothing else in scorelab downloads).

``download_dataset("mnist", "data/mnist")`` writes the official files, each
checked against its published MD5, into a folder that the matching reader
takes (``load_mnist``, ``load_cifar10``, ``--data mnist:data/mnist``). Files
already present with the right checksum are kept; a download goes to a
temporary name and is renamed into place only once its checksum matches.
CIFAR-10 comes as its binary version, extracted member by member (no
pickles, no paths outside the folder).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Callable

from ._util import progress_bar, require

__all__ = ["DATASETS", "download_dataset", "download_inception"]

#: name -> (base URL, {file name: MD5}); the MD5s are the datasets' published ones.
DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}),
}
_CIFAR_MEMBERS = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _md5_check(md5: str) -> Callable[[Path], str | None]:
    def check(path: Path) -> str | None:
        got = _md5(path)
        return None if got == md5 else f"arrived with MD5 {got}, not the published {md5}"
    return check


def _fetch(url: str, target: Path, check: Callable[[Path], str | None], progress: bool) -> None:
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    bar = None
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            if progress:
                bar = progress_bar(total=total, unit="B", unit_scale=True, desc=target.name)
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"could not download {url} ({e}); check the connection, or fetch the file by hand "
                         f"into {target.parent}") from None
    finally:
        if bar is not None:
            bar.close()
    problem = check(tmp)
    if problem:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{url} {problem}: a damaged or altered download; try again or another mirror (base_url)")
    tmp.replace(target)


def download_dataset(name: str, root: str | Path, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Download dataset ``name`` ("mnist", "fashion-mnist" or "cifar10") into ``root``.

    Returns the folder the reader takes: ``root`` for the idx sets,
    ``root/cifar-10-batches-bin`` for CIFAR-10. ``base_url`` replaces the
    default source (a mirror, or a ``file://`` folder).
    """
    require(name in DATASETS, f"unknown dataset {name!r}; downloadable: {sorted(DATASETS)}")
    default_base, files = DATASETS[name]
    base = base_url or default_base
    base = base if base.endswith("/") else base + "/"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for filename, md5 in files.items():
        target = root / filename
        if target.is_file() and _md5(target) == md5:
            continue
        _fetch(base + filename, target, _md5_check(md5), progress)
    if name != "cifar10":
        return root
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(exist_ok=True)
    with tarfile.open(root / "cifar-10-binary.tar.gz") as archive:
        for member in archive.getmembers():
            base_name = Path(member.name).name
            if base_name in _CIFAR_MEMBERS and member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                with source, open(folder / base_name, "wb") as out:
                    shutil.copyfileobj(source, out)
    missing = [m for m in _CIFAR_MEMBERS if not (folder / m).is_file()]
    require(not missing, f"the CIFAR-10 archive lacks {missing}")
    return folder


def download_inception(root: str | Path, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Download pytorch-fid's Inception-v3 weights (the TF 2015-12-05 graph) into ``root``; returns the file.

    The file is accepted when its SHA-256 starts with the hash in its name
    (torch.hub's convention) and it loads as the FID network.
    """
    from .evaluation.inception import INCEPTION_FILENAME, INCEPTION_SHA256_PREFIX, INCEPTION_URL, \
        check_inception_file, load_inception

    def check(path: Path) -> str | None:
        if not check_inception_file(path):
            return f"arrived with a SHA-256 that does not start with {INCEPTION_SHA256_PREFIX}"
        try:
            load_inception(path)
        except (ValueError, FileNotFoundError) as e:
            return f"does not load as the FID Inception network ({e})"
        return None

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / INCEPTION_FILENAME
    if target.is_file() and check(target) is None:
        return target
    url = INCEPTION_URL if base_url is None else base_url.rstrip("/") + "/" + INCEPTION_FILENAME
    _fetch(url, target, check, progress)
    return target
