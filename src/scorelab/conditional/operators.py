"""Linear measurement operators ``y = A x`` for inverse problems and inpainting (MATH.md 8).

An operator maps a batch ``x`` ``(N, *x_shape)`` to ``(N, *y_shape)`` and gives its
adjoint ``A^T``; both are plain torch functions, so gradients flow through them (DPS).
``row_norm2 = c^2`` declares ``A A^T = c^2 I``: the rows are orthogonal with one
norm, so ``P = A^T A / c^2`` is the orthogonal projection onto what is observed, and
Song et al.'s replacement (``method="replace"``/``"repaint"``) can overwrite that part
of ``x`` exactly. Masks (``c^2 = 1``), average pooling (``1 / f^2``) and the grey
channel (``1 / 3``) have it; a blur does not (DPS only).

:meth:`LinearOperator.matrix` gives the dense ``(M, D)`` matrix, which the exact
Gaussian-mixture posterior (:meth:`scorelab.GaussianMixture.condition`) uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._util import is_int, require

__all__ = ["LinearOperator", "SingularBasis", "Mask", "AveragePool", "BoxBlur", "Greyscale", "MatrixOperator", "FunctionOperator", "as_mask",
           "mask_from_spec"]


class LinearOperator:
    """``y = A x`` on batches, with its adjoint; subclasses give :meth:`forward`, :meth:`adjoint`,
    :meth:`y_shape` and :meth:`x_shape` (one example's shapes, without the batch axis)."""

    #: ``c^2`` with ``A A^T = c^2 I`` (orthogonal rows of one norm), or None.
    row_norm2: float | None = None
    #: The number of examples when each has its own operator (a stack of masks or matrices); None when shared.
    batch: int | None = None
    name = "operator"

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        raise NotImplementedError

    def x_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def check_x(self, x_shape: Sequence[int]) -> None:
        """Refuse an input shape this operator cannot take (raises ValueError)."""
        self.y_shape(x_shape)

    def check_y(self, y: Tensor, x_shape: Sequence[int]) -> None:
        """Refuse observations whose shape is not ``A x``'s for inputs of ``x_shape``."""
        want = self.y_shape(x_shape)
        require(tuple(y.shape[1:]) == want, f"observations have shape {tuple(y.shape[1:])} per example but "
                f"the {self.name} operator gives {want} for inputs of shape {tuple(x_shape)}")

    def projection(self, x: Tensor) -> Tensor:
        """``A^T A x / c^2``: the observed part of ``x`` (needs :attr:`row_norm2`)."""
        require(self.row_norm2 is not None, f"the {self.name} operator's rows are not orthogonal, so the "
                "observed part of x is not a projection; use method='dps'")
        return self.adjoint(self.forward(x)) / self.row_norm2

    def matrix(self, x_shape: Sequence[int]) -> Tensor:
        """The dense ``(M, D)`` matrix of ``A`` for inputs of ``x_shape`` (float64; ``(N, M, D)`` for a
        per-example operator)."""
        d = math.prod(x_shape)
        basis = torch.eye(d, dtype=torch.float64).reshape(d, *x_shape)
        return self.forward(basis).reshape(d, -1).T.contiguous()

    def check_batch(self, n: int) -> None:
        """Refuse a batch of ``n`` examples when this operator holds one per example for another number."""
        require(self.batch is None or self.batch == n, f"the {self.name} operator holds one per example for "
                f"{self.batch} examples, but the batch has {n}; give one per example, or one for all")

    def example(self, n: int, y: Tensor) -> tuple["LinearOperator", Tensor]:
        """Example ``n``'s own operator and its observation (no batch axis), from the batch's ``y``: what
        the exact posterior (:meth:`scorelab.GaussianMixture.condition`) of that example takes."""
        return self, y[n]

    def singular_basis(self, x_shape: Sequence[int]) -> "SingularBasis":
        """``A = U diag(s) V^T`` as a :class:`SingularBasis` (MATH.md 12): dense SVD of :meth:`matrix`;
        masks override it with the pixel basis. Refuses linearly dependent rows."""
        a = self.matrix(x_shape)
        m, d = a.shape[-2:]
        require(m <= d, f"the {self.name} operator gives {m} values for {d} unknowns, so its rows are linearly "
                "dependent; drop the redundant ones")
        u, s, vh = torch.linalg.svd(a, full_matrices=True)
        require(bool((s > 1e-10 * s.amax(-1, keepdim=True)).all()), f"the {self.name} operator's rows are "
                "linearly dependent (a zero singular value); drop the redundant ones")
        values = torch.cat([s, s.new_zeros(s.shape[:-1] + (d - m,))], -1)
        return SingularBasis(values, vh, u.transpose(-1, -2))


@dataclass(frozen=True)
class SingularBasis:
    """An operator in the orthonormal basis of its singular vectors, ``A = U diag(s) V^T`` (MATH.md 12):
    coordinate ``j`` of ``V^T x`` is observed through ``y'_j = s_j (V^T x)_j + noise`` (``y' = U^T y``), so
    ``y_bar_j = y'_j / s_j`` observes it with noise ``noise_std / s_j``; ``s_j = 0``: unobserved.

    ``s``: ``(D,)`` or ``(N, D)`` per example; ``vh``: ``V^T`` ``(D, D)`` or ``(N, D, D)``, None for the pixel
    basis (masks); ``uh``: ``U^T`` ``(M, M)`` or ``(N, M, M)``, None when ``A^T y`` already holds ``y_bar``.
    """

    s: Tensor
    vh: Tensor | None
    uh: Tensor | None

    def coordinates(self, x: Tensor, rows: Tensor) -> Tensor:
        """``V^T x`` for flat points ``x`` ``(R, D)`` of examples ``rows`` ``(R,)``."""
        if self.vh is None:
            return x
        vh = self.vh.to(x.device, x.dtype)
        return x @ vh.T if vh.ndim == 2 else torch.einsum("rd,red->re", x, vh[rows])

    def point(self, c: Tensor, rows: Tensor) -> Tensor:
        """``V c``: the flat point whose coordinates are ``c`` ``(R, D)``."""
        if self.vh is None:
            return c
        vh = self.vh.to(c.device, c.dtype)
        return c @ vh if vh.ndim == 2 else torch.einsum("re,red->rd", c, vh[rows])

    def observed(self, y: Tensor, operator: "LinearOperator") -> Tensor:
        """``y_bar`` ``(N, D)`` (zero where unobserved) of observations ``y`` ``(N, ...)``."""
        y = y.to(torch.float64)
        if self.uh is None:
            return operator.adjoint(y).reshape(len(y), -1)
        uh = self.uh.to(y.device)
        flat = y.reshape(len(y), -1)
        rotated = flat @ uh.T if uh.ndim == 2 else torch.einsum("nm,nkm->nk", flat, uh)
        m = rotated.shape[1]
        s = self.s.to(y.device).expand(len(y), -1)
        return torch.cat([rotated / s[:, :m], rotated.new_zeros(len(y), s.shape[1] - m)], 1)


def as_mask(mask: Tensor, x_shape: Sequence[int]) -> Tensor:
    """Boolean masks (True = known) for examples of shape ``x_shape``: of that shape, one for every example,
    or ``(N, *x_shape)``, one per example. Images ``(C, H, W)`` also take ``(H, W)`` or ``(1, H, W)`` (every
    channel alike) and ``(N, 1, H, W)``. A rank that reads two ways is refused: ``(C, H, W)`` with channels
    that differ could be one mask per channel or a stack of ``C`` examples' masks."""
    mask = torch.as_tensor(mask)
    x_shape = tuple(x_shape)
    if mask.dtype != torch.bool:
        values = mask.unique()
        require(bool(((values == 0) | (values == 1)).all()), "a mask must hold 0/1 or True/False values "
                "(1 = known, 0 = to fill in)")
        mask = mask.bool()
    image = len(x_shape) == 3
    r = len(x_shape)
    expected = (f"{x_shape} (one for every example), (N, *{x_shape}) (one per example)"
                + (", (H, W) or (N, 1, H, W)" if image else ""))
    if image and mask.ndim == 2:
        mask = mask[None]
    if image and mask.ndim == 3 and tuple(mask.shape[1:]) == x_shape[1:] and mask.shape[0] not in (1, x_shape[0]):
        raise ValueError(f"a mask of shape {tuple(mask.shape)} for images of shape {x_shape} reads as a stack of "
                         f"{mask.shape[0]} masks; give it as (N, 1, H, W), one per example")
    if image and mask.ndim == 3 and x_shape[0] > 1 and mask.shape[0] == x_shape[0] and not bool(
            (mask == mask[:1]).all()):
        raise ValueError(f"a mask of shape {tuple(mask.shape)} for images of shape {x_shape} is ambiguous: one "
                         f"mask per channel, or {x_shape[0]} examples' masks? Give (N, 1, H, W) for one per example, or "
                         f"(N, {', '.join(map(str, x_shape))}) for one per channel of each example")
    if image and mask.ndim in (3, 4) and mask.shape[-3] == 1:
        mask = mask.expand(*mask.shape[:-3], x_shape[0], *mask.shape[-2:])
    require(mask.ndim in (r, r + 1) and tuple(mask.shape[mask.ndim - r:]) == x_shape,
            f"the mask has shape {tuple(mask.shape)} but one example has shape {x_shape}; give {expected}")
    each = mask.reshape(-1 if mask.ndim == r + 1 else 1, math.prod(x_shape))
    require(bool(each.any(1).all()), "the mask marks no pixel as known" + (" in some example" if mask.ndim > r else "")
            + ": there is nothing to condition on")
    require(not bool(each.all(1).any()), "the mask marks every pixel as known" + (
        " in some example" if mask.ndim > r else "") + ": there is nothing to fill in")
    return mask


class Mask(LinearOperator):
    """Observe the coordinates where ``mask`` is True.

    One mask for every example: ``A x`` is the known values, flattened ``(N, M)``. A stack of masks
    ``(N, *x_shape)`` (give ``x_shape``), one per example: ``A x`` is ``x`` with the unknown values zeroed,
    ``(N, *x_shape)``, since the examples know different numbers of values; its non-zero rows are orthonormal
    (``row_norm2 = 1``) as a single mask's are.
    """

    row_norm2 = 1.0
    name = "mask"

    def __init__(self, mask: Tensor, x_shape: Sequence[int] | None = None):
        mask = torch.as_tensor(mask)
        self.mask = as_mask(mask, tuple(mask.shape) if x_shape is None else x_shape)
        shared = x_shape is None or self.mask.ndim == len(tuple(x_shape))
        self.batch = None if shared else len(self.mask)
        self.shape = tuple(self.mask.shape[0 if shared else 1:])
        self.index = self.mask.reshape(-1).nonzero().squeeze(1) if shared else None

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        require(tuple(x_shape) == self.shape, f"the mask has shape {self.shape} but one example has shape "
                f"{tuple(x_shape)}; give a mask of the data's shape")
        return (len(self.index),) if self.batch is None else self.shape

    def x_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        return self.shape

    def _each(self, v: Tensor) -> Tensor:
        self.check_batch(v.shape[0])
        return v * self.mask.to(v.device, v.dtype)

    def forward(self, x: Tensor) -> Tensor:
        self.check_x(x.shape[1:])
        if self.batch is not None:
            return self._each(x)
        return x.reshape(x.shape[0], -1)[:, self.index.to(x.device)]

    def adjoint(self, y: Tensor) -> Tensor:
        if self.batch is not None:
            return self._each(y)
        out = y.new_zeros(y.shape[0], self.mask.numel())
        out[:, self.index.to(y.device)] = y
        return out.reshape(y.shape[0], *self.mask.shape)

    def projection(self, x: Tensor) -> Tensor:
        return self._each(x) if self.batch is not None else x * self.mask.to(x.device, x.dtype)

    def matrix(self, x_shape: Sequence[int]) -> Tensor:
        require(self.batch is None, "a stack of masks has one matrix per example; take example(n) first")
        return super().matrix(x_shape)

    def example(self, n: int, y: Tensor) -> tuple["LinearOperator", Tensor]:
        if self.batch is None:
            return self, y[n]
        one = Mask(self.mask[n])
        return one, y[n].reshape(-1)[one.index.to(y.device)]

    def singular_basis(self, x_shape: Sequence[int]) -> SingularBasis:
        """The pixel basis: every known value observed once (``s = 1``), the others not (``s = 0``)."""
        self.y_shape(x_shape)
        return SingularBasis(self.mask.flatten(self.mask.ndim - len(self.shape)).double(), None, None)


class AveragePool(LinearOperator):
    """Super-resolution's observation: the mean over ``factor x factor`` blocks of an image."""

    name = "average-pool"

    def __init__(self, factor: int):
        require(is_int(factor) and factor >= 2, f"the pooling factor must be an integer >= 2, got {factor!r}")
        self.factor = factor
        self.row_norm2 = 1.0 / factor**2

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        require(len(x_shape) == 3 and x_shape[1] % self.factor == 0 and x_shape[2] % self.factor == 0,
                f"average pooling by {self.factor} needs images (C, H, W) with H and W divisible by it, "
                f"got {tuple(x_shape)}")
        return (x_shape[0], x_shape[1] // self.factor, x_shape[2] // self.factor)

    def x_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        require(len(y_shape) == 3, f"low-resolution observations must be images (C, h, w) per example, got "
                f"shape {tuple(y_shape)}")
        return (y_shape[0], y_shape[1] * self.factor, y_shape[2] * self.factor)

    def forward(self, x: Tensor) -> Tensor:
        self.check_x(x.shape[1:])
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3) / f**2


class BoxBlur(LinearOperator):
    """The mean over a ``size x size`` window around each pixel (zero padding, so ``A`` is symmetric)."""

    name = "box-blur"

    def __init__(self, size: int = 3):
        require(is_int(size) and size >= 3 and size % 2 == 1,
                f"the blur size must be an odd integer >= 3, got {size!r}")
        self.size = size

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        require(len(x_shape) == 3, f"a blur needs images (C, H, W), got {tuple(x_shape)}")
        return tuple(x_shape)

    def x_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(y_shape)

    def forward(self, x: Tensor) -> Tensor:
        self.check_x(x.shape[1:])
        c = x.shape[1]
        kernel = x.new_full((c, 1, self.size, self.size), 1.0 / self.size**2)
        return F.conv2d(x, kernel, padding=self.size // 2, groups=c)

    adjoint = forward


class Greyscale(LinearOperator):
    """The grey image of an RGB one: the mean of its three channels, ``(N, 1, H, W)``.

    Its one row per pixel, ``(1, 1, 1) / 3``, is Song et al.'s (2021, appendix I.3) orthogonal
    decoupling of colour: the grey channel is fixed, the two orthogonal to it are sampled.
    """

    row_norm2 = 1.0 / 3.0
    name = "greyscale"

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        require(len(x_shape) == 3 and x_shape[0] == 3,
                f"colourization needs an RGB model (3 channels), and these images have shape {tuple(x_shape)}")
        return (1, x_shape[1], x_shape[2])

    def x_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        require(len(y_shape) == 3 and y_shape[0] == 1, f"grey observations must be images (1, H, W) per example, "
                f"got shape {tuple(y_shape)}")
        return (3, y_shape[1], y_shape[2])

    def forward(self, x: Tensor) -> Tensor:
        self.check_x(x.shape[1:])
        return x.mean(dim=1, keepdim=True)

    def adjoint(self, y: Tensor) -> Tensor:
        return y.expand(y.shape[0], 3, *y.shape[2:]) / 3


class MatrixOperator(LinearOperator):
    """``y = A x`` for points ``(N, D)`` and a dense ``(M, D)`` matrix, or ``(N, M, D)``: one per example."""

    name = "matrix"

    def __init__(self, matrix: Tensor):
        a = torch.as_tensor(matrix, dtype=torch.float64)
        require(a.ndim in (2, 3), f"the matrix must be (M, D), or (N, M, D) for one per example; got shape "
                f"{tuple(a.shape)}")
        self.a = a
        self.batch = None if a.ndim == 2 else len(a)
        gram = a @ a.transpose(-1, -2)
        diagonal = gram.diagonal(dim1=-2, dim2=-1)
        require(bool((diagonal > 0).all()), "every row of the observation matrix must be non-zero")
        c2 = float(diagonal.mean())
        eye = torch.eye(a.shape[-2], dtype=a.dtype)
        self.row_norm2 = c2 if torch.allclose(gram, (c2 * eye).expand_as(gram), atol=1e-12) else None

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        require(tuple(x_shape) == (self.a.shape[-1],), f"the matrix takes points of dimension {self.a.shape[-1]}, "
                f"got shape {tuple(x_shape)}")
        return (self.a.shape[-2],)

    def x_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        return (self.a.shape[-1],)

    def forward(self, x: Tensor) -> Tensor:
        self.check_x(x.shape[1:])
        self.check_batch(x.shape[0])
        a = self.a.to(x.device, x.dtype)
        return x @ a.T if a.ndim == 2 else torch.einsum("nmd,nd->nm", a, x)

    def adjoint(self, y: Tensor) -> Tensor:
        self.check_batch(y.shape[0])
        a = self.a.to(y.device, y.dtype)
        return y @ a if a.ndim == 2 else torch.einsum("nmd,nm->nd", a, y)

    def matrix(self, x_shape: Sequence[int]) -> Tensor:
        self.y_shape(x_shape)
        return self.a

    def example(self, n: int, y: Tensor) -> tuple["LinearOperator", Tensor]:
        return (self, y[n]) if self.batch is None else (MatrixOperator(self.a[n]), y[n])


#: The named masks of ``mask_from_spec`` (and ``scorelab inpaint --mask``).
MASKS = ("center", "left", "right", "top", "bottom", "random:P")


def mask_from_spec(spec: str, x_shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
    """A named mask for images ``(C, H, W)`` (True = known): ``center`` hides the middle half
    square, ``left``/``right``/``top``/``bottom`` hide that half, ``random:P`` hides each pixel with
    probability P (the same pixels in every channel); a PNG file's white, opaque pixels (grey >= 128 and
    alpha >= 128, after resizing to the images' size) are known: erasing to transparency hides pixels too. A
    ``.npy`` file holds 0/1 (or boolean) masks: one ``(H, W)`` for every image, or a stack, one per image:
    ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)`` (returned as ``(N, C, H, W)``)."""
    require(len(x_shape) == 3, f"named masks are for images (C, H, W), got shape {tuple(x_shape)}")
    _, h, w = x_shape
    known = torch.ones(h, w, dtype=torch.bool)
    if spec.lower().endswith(".npy"):
        from pathlib import Path

        import numpy as np

        require(Path(spec).is_file(), f"the mask file {spec} does not exist")
        try:
            array = np.load(spec, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise ValueError(f"{spec} is not a mask array: save 0/1 masks with numpy.save, shape (H, W) or (N, H, W)"
                             ) from None
        stack = torch.from_numpy(np.asarray(array))
        require(stack.ndim in (2, 3, 4) and tuple(stack.shape[-2:]) == (h, w), f"{spec} holds an array of shape "
                f"{tuple(stack.shape)}; give (H, W) = ({h}, {w}) for every image, or (N, H, W) for one per image")
        if stack.ndim == 3:
            stack = stack[:, None]
        return as_mask(stack, x_shape)
    if spec.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")):
        from ..data import load_alpha, load_image

        known = torch.from_numpy(load_image(spec, (1, h, w))[0] >= 128)
        alpha = load_alpha(spec, h)
        if alpha is not None:
            known &= torch.from_numpy(alpha >= 128)
    elif spec == "center":
        known[h // 4: h - h // 4, w // 4: w - w // 4] = False
    elif spec == "left":
        known[:, : w // 2] = False
    elif spec == "right":
        known[:, w // 2:] = False
    elif spec == "top":
        known[: h // 2] = False
    elif spec == "bottom":
        known[h // 2:] = False
    elif spec.startswith("random:"):
        try:
            p = float(spec.split(":", 1)[1])
        except ValueError:
            p = -1.0
        require(0 < p < 1, f"random:P needs a fraction P strictly between 0 and 1, got {spec!r}")
        known = torch.rand(h, w, generator=generator) >= p
    else:
        raise ValueError(f"unknown mask {spec!r}; choose one of {list(MASKS)} or a PNG file (white = known)")
    return as_mask(known, x_shape)


class FunctionOperator(LinearOperator):
    """An operator from two functions: ``forward(x) = A x`` and ``adjoint(y) = A^T y`` on batches, for
    one example shape ``x_shape`` (``row_norm2``: ``c^2`` if ``A A^T = c^2 I``, which enables replacement)."""

    name = "user"

    def __init__(self, forward: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
                 x_shape: Sequence[int], row_norm2: float | None = None):
        require(callable(forward) and callable(adjoint), "forward and adjoint must be functions of a batch")
        self._forward, self._adjoint, self._x_shape = forward, adjoint, tuple(x_shape)
        self._y_shape = tuple(forward(torch.zeros(1, *self._x_shape, dtype=torch.float64)).shape[1:])
        require(row_norm2 is None or row_norm2 > 0, f"row_norm2 must be positive, got {row_norm2}")
        self.row_norm2 = row_norm2

    def y_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        require(tuple(x_shape) == self._x_shape, f"the operator takes examples of shape {self._x_shape}, "
                f"got {tuple(x_shape)}")
        return self._y_shape

    def x_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        return self._x_shape

    def forward(self, x: Tensor) -> Tensor:
        self.check_x(x.shape[1:])
        return self._forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._adjoint(y)
