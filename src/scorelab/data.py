"""Data: readers of the standard files, toy point sets, and the one place images are scaled.

Images are kept as uint8 arrays ``(N, C, H, W)`` until a batch is drawn, then
mapped to the model's range by :func:`to_model_range` (``x = 2k/255 - 1``, the
VLB decoder's levels, MATH.md 2); :func:`to_uint8` is its inverse. Nothing here
downloads: every reader takes a path to the files users get from the usual
sources (see each function). Bad input gets a ``ValueError`` that says what
was wrong and what to do.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import pickle
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ._util import is_int, require

__all__ = ["ImageSet", "check_bytes", "to_model_range", "to_uint8", "to_levels", "to_categories", "from_categories", "DIGITS_LEVELS", "load_digits", "read_idx", "load_mnist",
           "load_cifar10", "load_image", "load_image_folder", "load_array", "toy_points", "batches", "load_dataset", "take",
           "DATASET_HELP"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


# ---------------------------------------------------------------------------------------
# Scaling: the one place
# ---------------------------------------------------------------------------------------
def check_bytes(k: Tensor) -> None:
    """Raise unless ``k`` holds integer pixel values in 0..255."""
    require(not k.is_floating_point() or bool((k == k.round()).all()),
            "expected integer pixel values 0..255 (8-bit images), got fractional values; "
            "pass the raw bytes, not images already scaled to [0, 1] or [-1, 1]")
    require(k.numel() == 0 or (int(k.min()) >= 0 and int(k.max()) <= 255), "pixel values must lie in 0..255")


def to_model_range(k: Tensor | np.ndarray) -> Tensor:
    """8-bit values ``k`` in 0..255 to ``2k/255 - 1`` in [-1, 1] (float32)."""
    k = torch.as_tensor(k)
    check_bytes(k)
    return k.float() * (2 / 255) - 1


def to_uint8(x: Tensor) -> Tensor:
    """The inverse of :func:`to_model_range`: round ``(x + 1) 255 / 2`` and clip to 0..255."""
    return ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_categories(x: Tensor, num_categories: int) -> Tensor:
    """Model-range values to categories ``0..K-1`` on ``K`` evenly spaced grey levels, ``round((x + 1)(K - 1) / 2)``
    (the digits' 17 levels exactly; ``K = 2`` thresholds at mid-grey): multinomial diffusion's data (MATH.md 10)."""
    require(is_int(num_categories) and num_categories >= 2, f"num_categories must be an integer >= 2, "
            f"got {num_categories!r}")
    return ((x.detach().double() + 1) * ((num_categories - 1) / 2)).round().clamp(0, num_categories - 1).long()


def from_categories(k: Tensor, num_categories: int) -> Tensor:
    """The inverse of :func:`to_categories`: category ``k`` as the grey level ``2k / (K - 1) - 1``."""
    return k.float() * (2 / (num_categories - 1)) - 1


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Model-range values to uint8 on a grid of ``levels + 1`` grey values, ``rint(255 j / levels)``:
    the format of data stored with fewer than 8 bits (the digits: 0..16, :data:`DIGITS_LEVELS`)."""
    require(is_int(levels) and 1 <= levels <= 255, f"levels must be an integer in 1..255, got {levels!r}")
    j = ((x.detach().double() + 1) * (levels / 2)).round().clamp(0, levels)
    return (j * (255 / levels)).round().to(torch.uint8)


@dataclass
class ImageSet:
    """uint8 images ``(N, C, H, W)``, optional integer labels ``(N,)`` and class names."""

    images: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    skipped: int = 0

    def __post_init__(self) -> None:
        require(self.images.dtype == np.uint8 and self.images.ndim == 4,
                f"images must be uint8 of shape (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        require(len(self.images) > 0, "the image set is empty")
        if self.labels is not None:
            require(self.labels.shape == (len(self.images),),
                    f"{len(self.images)} images but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------
#: Images of the digits set held out as its "test" split (a fixed 10%).
DIGITS_TEST_SIZE = 180
#: The digits are 4-bit counts 0..16: 17 grey levels.
DIGITS_LEVELS = 16


def load_digits(split: str = "all") -> ImageSet:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16 scaled to 0..255): the embedded default.

    ``split``: "all", or "train" (1,617 images) / "test" (180), a fixed random
    partition (NumPy seed 0) so held-out numbers are comparable between runs.
    """
    require(split in ("all", "train", "test"), f"split must be 'all', 'train' or 'test', got {split!r}")
    pixels, target = _digits_arrays()
    images = np.rint(pixels.reshape(-1, 8, 8) * (255 / DIGITS_LEVELS)).astype(np.uint8)[:, None]
    labels = target.astype(np.int64)
    if split != "all":
        order = np.random.default_rng(0).permutation(len(images))
        idx = np.sort(order[:DIGITS_TEST_SIZE] if split == "test" else order[DIGITS_TEST_SIZE:])
        images, labels = images[idx], labels[idx]
    return ImageSet(np.ascontiguousarray(images), labels, [str(i) for i in range(10)])


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixel counts ``(1797, 64)`` and labels, read-only, parsed once a process: from the file
    scikit-learn ships, as its ``load_digits`` reads it, without importing scikit-learn (a second of every
    command's start); through ``load_digits`` where that file is not found."""
    path = _digits_csv()
    if path is not None:
        data = np.loadtxt(path, delimiter=",")
        pixels, target = data[:, :-1], data[:, -1]
    else:
        from sklearn.datasets import load_digits as _load

        d = _load()
        pixels, target = d.data, d.target
    for array in (pixels, target):
        array.setflags(write=False)
    return pixels, target


def _digits_csv() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn (or None)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (MNIST's format), gzip-compressed or not."""
    path = Path(path)
    require(path.is_file(), f"no such file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} could not be read ({e}); the file is corrupt or truncated") from None
    require(len(data) >= 4 and data[0] == 0 and data[1] == 0 and data[2] in _IDX_TYPES,
            f"{path} is not an idx file (bad magic number); expected MNIST-style idx data")
    ndim = data[3]
    require(len(data) >= 4 + 4 * ndim, f"{path} ends inside its idx header ({len(data)} bytes); the file is "
            "truncated: download it again")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    body = data[4 + 4 * ndim:]
    require(len(body) == math.prod(dims) * dtype.itemsize,
            f"{path} holds {len(body)} bytes of data but its header promises {dims}; the file is truncated")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"{root} has no {stem}[.gz]; point to the folder with MNIST-style idx files "
                     "(e.g. train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")


def load_mnist(root: str | Path, split: str = "train") -> ImageSet:
    """MNIST or Fashion-MNIST from the standard idx files in ``root`` (``split`` "train" or "test").

    Users get the files from the datasets' sites, or Fashion-MNIST with
    ``apt-get install dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
    """
    require(split in ("train", "test"), f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    require(root.is_dir(), f"no such folder: {root}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    require(images.ndim == 3 and images.dtype == np.uint8, f"idx images in {root} have shape {images.shape}")
    require(len(labels) == len(images), f"{len(images)} images but {len(labels)} labels in {root}")
    return ImageSet(images[:, None].copy(), labels.astype(np.int64), [str(i) for i in range(10)])


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, and refuses every other class or function.

    CIFAR-10's "python version" is a pickle; a pickle can run any code while
    it loads, so only what such a batch holds is allowed (the same idea as
    ``torch.load(weights_only=True)``).
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays "
                                         "and lists; this file is not one (or was tampered with)")
        return super().find_class(module, name)


def _read_cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is not a readable CIFAR-10 python batch ({e})") from None
    require(isinstance(batch, dict) and b"data" in batch and b"labels" in batch,
            f"{path} does not hold CIFAR-10's data and labels")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    require(data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072 and len(labels) == len(data),
            f"{path} holds data {data.dtype} {data.shape} and {len(labels)} labels; expected uint8 (N, 3072)")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path: str | Path, split: str = "train") -> ImageSet:
    """CIFAR-10 from any of its standard forms.

    * an ``.npz`` with ``x`` (N, 32, 32, 3) uint8 and ``y``;
    * the binary version's folder ``cifar-10-batches-bin`` (data_batch_1..5.bin, test_batch.bin);
    * the python version's folder ``cifar-10-batches-py`` (data_batch_1..5, test_batch), read with an
      unpickler that admits only arrays and lists (any other content is refused).
    """
    require(split in ("train", "test"), f"split must be 'train' or 'test', got {split!r}")
    path = Path(path)
    if path.suffix == ".npz":
        return load_array(path)
    require(path.is_dir(), f"no such file or folder: {path}; give an .npz (x, y) or the cifar-10-batches-bin "
            "or cifar-10-batches-py folder")
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if all((path / f"{n}.bin").is_file() for n in stems):
        records = np.concatenate([np.fromfile(path / f"{n}.bin", dtype=np.uint8) for n in stems])
        require(records.size % 3073 == 0, f"CIFAR-10 binary files in {path} are truncated")
        records = records.reshape(-1, 3073)
        return ImageSet(records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].astype(np.int64),
                        list(CIFAR10_CLASSES))
    if all((path / n).is_file() for n in stems):
        parts = [_read_cifar_python_batch(path / n) for n in stems]
        return ImageSet(np.ascontiguousarray(np.concatenate([p[0] for p in parts])),
                        np.concatenate([p[1] for p in parts]), list(CIFAR10_CLASSES))
    missing = [n for n in stems if not (path / f"{n}.bin").is_file() and not (path / n).is_file()]
    raise ValueError(f"{path} lacks {missing}; expected CIFAR-10's binary version (data_batch_1.bin ...) or "
                     "python version (data_batch_1 ...)")


def load_array(path: str | Path, kind: str = "auto") -> ImageSet | np.ndarray:
    """Images or points from ``.npy`` / ``.npz`` (arrays ``x`` and optional ``y`` in an npz).

    Images: uint8 ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3}
    -> :class:`ImageSet`. Points: float ``(N, D)`` -> a float32 array.
    """
    path = Path(path)
    require(path.is_file(), f"no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):                      # its members are read here, checked too
            names = data.files
            x, y = (data[k] if k in names else None for k in ("x", "y"))
        else:
            names, x, y = ["x"], data, None
    except ValueError as e:
        raise ValueError(f"{path} holds Python objects ({e}); save plain numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path} is not a readable .npy/.npz file ({e}); it is corrupt or truncated") from None
    require(x is not None, f"{path} has arrays {names}; name the data 'x' (and labels 'y')")
    if kind == "points" or (kind == "auto" and x.ndim == 2 and x.dtype.kind == "f"):
        require(x.ndim == 2 and x.dtype.kind in "fiu", f"points must be a numeric (N, D) array, got {x.dtype} {x.shape}")
        require(np.isfinite(x).all(), f"{path} contains NaN or Inf")
        return x.astype(np.float32)
    require(x.dtype == np.uint8, f"images in {path} must be uint8 (0..255), got {x.dtype}; "
            "convert with (x * 255).round().astype('uint8') if they are floats in [0, 1]")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    require(x.ndim == 4 and x.shape[1] in (1, 3),
            f"images in {path} have shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3")
    labels = None if y is None else np.asarray(y).astype(np.int64).reshape(-1)
    return ImageSet(np.ascontiguousarray(x), labels)


def _eight_bit(im):
    """A PIL image with 8-bit channels: 16-bit greys (modes ``I;16*``, and ``I``, which Pillow opens 16-bit PNGs
    as) are scaled by 255 / 65535, where ``convert`` would clip every level above 255 to white."""
    from PIL import Image

    if not im.mode.startswith("I"):
        return im
    levels = np.asarray(im).astype(np.float64).clip(0, 65535)
    return Image.fromarray(np.round(levels * (255 / 65535)).astype(np.uint8), "L")


def _fit_square(im, image_size: int, resample: int | None = None):
    """Resize a PIL image's shorter side to ``image_size`` (bicubic), then centre-crop it square."""
    from PIL import Image

    w, h = im.size
    scale = image_size / min(w, h)
    im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                   Image.BICUBIC if resample is None else resample)
    w, h = im.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return im.crop((left, top, left + image_size, top + image_size))


def load_image(path: str | Path, shape: Sequence[int]) -> np.ndarray:
    """One image file as uint8 ``(C, H, W)`` of ``shape`` (grey for C = 1, RGB for 3), resized and
    centre-cropped to the square side ``H = W``."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    require(h == w and c in (1, 3), f"images of shape {tuple(shape)} cannot be read from a file")
    try:
        with Image.open(path) as im:
            im = _fit_square(_eight_bit(im).convert("L" if c == 1 else "RGB"), h)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}; check the path") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}; give a PNG or JPEG") from None
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()


def load_alpha(path: str | Path, size: int) -> np.ndarray | None:
    """An image file's transparency as uint8 ``(size, size)`` (255 = opaque), resized and centre-cropped as
    :func:`load_image` does; None when the file has none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if "A" not in im.getbands() and "transparency" not in im.info:
                return None
            alpha = _fit_square(im.convert("RGBA").getchannel("A"), size)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}; check the path") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}; give a PNG or JPEG") from None
    return np.asarray(alpha, dtype=np.uint8)


def load_image_folder(root: str | Path, *, image_size: int | None = None, mode: str = "auto",
                      labels: bool = False, on_error: str = "skip") -> ImageSet:
    """Every PNG/JPEG (and BMP, GIF, WebP) below ``root``, recursively.

    ``image_size``: resize the shorter side then centre-crop to a square of
    that size (needed when sizes differ). ``mode``: "L" (grey), "RGB", or
    "auto" (grey if every image is). ``labels``: the class is the name of the
    first sub-folder below ``root``. ``on_error``: "skip" unreadable images
    (and count them in ``skipped``) or "raise".
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    require(root.is_dir(), f"no such folder: {root}")
    require(mode in ("auto", "L", "RGB"), f"mode must be 'auto', 'L' or 'RGB', got {mode!r}")
    require(on_error in ("skip", "raise"), f"on_error must be 'skip' or 'raise', got {on_error!r}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    require(len(files) > 0, f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); check the path")
    pictures, names, skipped = [], [], 0
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                pictures.append(im.copy())
                names.append(p)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            if on_error == "raise":
                raise ValueError(f"cannot read image {p}: {e}; fix or remove it, or pass on_error='skip'") from None
            skipped += 1
    require(len(pictures) > 0, f"none of the {len(files)} image files under {root} could be read")
    if skipped:
        warnings.warn(f"skipped {skipped} unreadable image(s) under {root}", stacklevel=2)
    if mode == "auto":
        mode = "L" if all(im.mode in ("L", "1") or im.mode.startswith("I") for im in pictures) else "RGB"
    arrays = []
    for im in pictures:
        im = _eight_bit(im).convert(mode)
        if image_size is not None:
            im = _fit_square(im, image_size)
        arrays.append(np.asarray(im, dtype=np.uint8))
    sizes = sorted({a.shape[:2] for a in arrays})
    require(len(sizes) == 1, f"images under {root} have different sizes {sizes[:5]}; pass image_size=... "
            "to resize and centre-crop them")
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y, classes = None, None
    if labels:
        folders = [p.relative_to(root).parts for p in names]
        require(all(len(parts) >= 2 for parts in folders),
                f"labels=True takes the class from sub-folders of {root}, but some images lie directly in it")
        classes = sorted({parts[0] for parts in folders})
        y = np.array([classes.index(parts[0]) for parts in folders], dtype=np.int64)
    return ImageSet(np.ascontiguousarray(x), y, classes, skipped)


# ---------------------------------------------------------------------------------------
# Toy point sets
# ---------------------------------------------------------------------------------------
def toy_points(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``"two_moons"``, ``"swiss_roll"``, ``"checkerboard"`` or ``"gaussian_mixture"`` (8 modes on a
    circle of radius 3): ``(n, 2)`` float32 points within about [-4, 4], reproducible from ``seed``."""
    require(is_int(n) and n > 0, f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    if name == "two_moons":
        from sklearn.datasets import make_moons
        x = make_moons(n, noise=0.05, random_state=seed)[0] * 2 - np.array([1.0, 0.5])
    elif name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll
        x = make_swiss_roll(n, noise=0.5, random_state=seed)[0][:, [0, 2]] / 5
    elif name == "checkerboard":
        x1 = rng.uniform(-4, 4, n)
        x2 = rng.uniform(0, 2, n) - 2 * rng.integers(0, 2, n) + 2 * (np.floor(x1 / 2) % 2)
        x = np.stack([x1, x2], 1)
    elif name == "gaussian_mixture":
        angles = 2 * np.pi * rng.integers(0, 8, n) / 8
        x = 3 * np.stack([np.cos(angles), np.sin(angles)], 1) + 0.3 * rng.normal(size=(n, 2))
    else:
        raise ValueError(f"unknown toy set {name!r}; choose two_moons, swiss_roll, checkerboard or gaussian_mixture")
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Dataset specs: one string names any dataset (the trainer's and the CLI's --data)
# ---------------------------------------------------------------------------------------
DATASET_HELP = ("digits | mnist:DIR | fashion-mnist:DIR | cifar10:PATH (.npz or cifar-10-batches-bin) | "
                "folder:DIR | array:FILE.npz/.npy | points:NAME (two_moons, swiss_roll, checkerboard, "
                "gaussian_mixture)")


def has_test_split(spec: str) -> bool:
    """Whether the data set named by ``spec`` has a held-out split (a folder or an array file has one only as
    another ``--data``)."""
    return spec.partition(":")[0] not in ("folder", "array")


def load_dataset(spec: str, split: str = "train", *, image_size: int | None = None, labels: bool = False,
                 num_points: int = 20000, seed: int = 0) -> ImageSet | np.ndarray:
    """Load the dataset named by ``spec`` (see :data:`DATASET_HELP`) and ``split``.

    ``image_size`` resizes folder images; ``labels`` takes class labels from a
    folder's sub-folders; toy point sets draw ``num_points`` points (the test
    split from another seed).
    """
    require(split in ("train", "test"), f"split must be 'train' or 'test', got {split!r}")
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return load_digits(split)
    require(kind in ("mnist", "fashion-mnist", "cifar10", "points", "folder", "array"),
            f"unknown dataset {spec!r}; the forms are: {DATASET_HELP}")
    require(bool(arg), f"dataset {spec!r} needs a path or name after ':'; the forms are: {DATASET_HELP}")
    if kind in ("mnist", "fashion-mnist"):
        return load_mnist(arg, split)
    if kind == "cifar10":
        return load_cifar10(arg, split)
    if kind == "points":
        return toy_points(arg, num_points, seed=seed if split == "train" else seed + 1)
    require(split == "train" or has_test_split(spec), f"{kind} data has no separate test split; pass --split "
            "train, or point --data at the held-out files")
    if kind == "folder":
        return load_image_folder(arg, image_size=image_size, labels=labels)
    if kind == "array":
        return load_array(arg)
    raise ValueError(f"unknown dataset {spec!r}; the forms are: {DATASET_HELP}")


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------
def batches(data: ImageSet | np.ndarray, batch_size: int, generator: torch.Generator, *,
            flip: bool = False, with_labels: bool = False):
    """Endless shuffled batches in the model's range: images through :func:`to_model_range`
    (with random horizontal flips if asked), points as float32. Reproducible from ``generator``."""
    require(is_int(batch_size) and batch_size > 0, f"batch_size must be a positive integer, got {batch_size!r}")
    is_images = isinstance(data, ImageSet)
    n = len(data)
    require(n > 0, "no data to draw batches from")
    if with_labels:
        require(is_images and data.labels is not None,
                "class conditioning needs labels; load a labelled set (e.g. labels=True for image folders)")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            x, y = take(data, order[start:start + batch_size].numpy(), generator, flip=flip)
            yield (x, y) if with_labels else x


def take(data: ImageSet | np.ndarray, idx: np.ndarray, generator: torch.Generator | None = None, *,
         flip: bool = False, rows: slice | None = None) -> tuple[Tensor, Tensor | None]:
    """Examples ``idx`` in the model's range, and their labels (None if the set has none).

    Images go through :func:`to_model_range`, then a random horizontal flip
    each with probability 1/2 if ``flip``; points become float32. ``rows``
    keeps only those positions of ``idx`` (a rank's share of a global batch);
    the flips are drawn for all of ``idx``, so the share equals those rows of
    the whole batch.
    """
    mask = torch.rand(len(idx), generator=generator) < 0.5 if flip and isinstance(data, ImageSet) else None
    if rows is not None:
        idx = idx[rows]
        mask = None if mask is None else mask[rows]
    if not isinstance(data, ImageSet):
        return torch.from_numpy(np.asarray(data, dtype=np.float32)[idx]), None
    x = to_model_range(torch.from_numpy(data.images[idx]))
    if mask is not None:
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x, (None if data.labels is None else torch.from_numpy(data.labels[idx]))
