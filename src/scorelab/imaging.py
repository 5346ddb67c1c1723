"""Image grids and strips as PNG (Pillow), from batches in the model's range [-1, 1]."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from ._util import is_int, require
from .data import to_uint8

__all__ = ["make_grid", "save_grid", "save_png"]


def make_grid(x: Tensor, nrow: int | None = None, *, padding: int = 1, scale: int = 1,
              pad_value: int = 255) -> np.ndarray:
    """``(N, C, H, W)`` images in [-1, 1] -> one uint8 ``(H', W', C)`` picture, ``nrow`` images a row.

    ``scale`` enlarges each pixel to ``scale x scale`` (nearest), so 8x8 digits stay visible.
    """
    require(x.ndim == 4 and x.shape[1] in (1, 3), f"expected images (N, 1 or 3, H, W), got {tuple(x.shape)}")
    require(x.shape[0] > 0, "no images to put in a grid")
    require(is_int(scale) and scale >= 1, f"scale must be a positive integer, got {scale!r}")
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    images = to_uint8(x).cpu().numpy().transpose(0, 2, 3, 1)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top:top + h, left:left + w] = images[k]
    return grid


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 ``(H, W)`` or ``(H, W, 1 or 3)`` array as PNG, creating folders."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if picture.ndim == 3 and picture.shape[2] == 1:
        picture = picture[:, :, 0]
    Image.fromarray(picture).save(path)
    return path


def save_grid(x: Tensor, path: str | Path, nrow: int | None = None, *, scale: int | None = None,
              padding: int = 1) -> Path:
    """:func:`make_grid` then :func:`save_png`; ``scale`` defaults to enlarging small images to >= 32 px."""
    scale = scale or max(1, 32 // int(x.shape[-1]))
    return save_png(make_grid(x, nrow, padding=padding, scale=scale), path)
