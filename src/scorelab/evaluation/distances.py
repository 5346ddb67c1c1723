"""Distances between two sample sets, for checking samplers against exact samples.

* :func:`energy_distance` (Szekely & Rizzo 2013): ``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||``
  with unbiased (U-statistic) within-set terms; zero in expectation when the
  two sets come from one distribution, positive otherwise; :func:`energy_distance_to`
  scores many sets against one reference.
* :func:`sliced_wasserstein`: the mean over random unit directions of the
  1-D Wasserstein-2 distance of the projections (Bonneel et al. 2015).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._util import require

__all__ = ["energy_distance", "energy_distance_to", "sliced_wasserstein"]


def _flat_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    require(x.shape[1] == y.shape[1], f"sample sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    require(x.shape[0] >= 2 and y.shape[0] >= 2, "each sample set needs at least 2 points")
    return x, y


def _mean_pairwise(a: Tensor, b: Tensor, same: bool, unbiased: bool, chunk: int = 2048) -> Tensor:
    total = a.new_zeros(())
    for i in range(0, a.shape[0], chunk):
        total = total + torch.cdist(a[i:i + chunk], b).sum()
    n, m = a.shape[0], b.shape[0]
    return total / (n * (n - 1)) if same and unbiased else total / (n * m)


def energy_distance(x: Tensor, y: Tensor, unbiased: bool = True) -> float:
    """Energy distance between sample sets ``x`` (N, ...) and ``y`` (M, ...).

    ``unbiased=True``: U-statistics within each set, zero in expectation for
    equal distributions (so it can come out slightly negative). ``False``: the
    V-statistic, always >= 0, with a floor of order 1/N; ratios of two such
    distances stay meaningful near the floor.
    """
    return energy_distance_to(y, unbiased)(x)


def energy_distance_to(y: Tensor, unbiased: bool = True) -> Callable[[Tensor], float]:
    """``x -> energy_distance(x, y, unbiased)`` with the reference set ``y``'s own term ``E||Y - Y'||`` computed
    once, for scoring many sample sets against one reference: the same figures bit for bit, without the
    ``M^2`` distances within ``y`` each time."""
    y = y.reshape(y.shape[0], -1).double()
    require(y.shape[0] >= 2, "each sample set needs at least 2 points")
    within_y = _mean_pairwise(y, y, True, unbiased)

    def distance(x: Tensor) -> float:
        x, _ = _flat_pair(x, y)
        return float(2 * _mean_pairwise(x, y, False, unbiased) - _mean_pairwise(x, x, True, unbiased) - within_y)
    return distance


def _w2_squared_sorted(px: Tensor, py: Tensor) -> Tensor:
    """Per column, the squared Wasserstein-2 distance between the empirical measures of sorted columns
    ``px`` ``(n, P)`` and ``py`` ``(m, P)``: ``int_0^1 (F_x^-1(u) - F_y^-1(u))^2 du``, both quantile functions
    steps that change at ``i / n`` and ``j / m``."""
    n, m = px.shape[0], py.shape[0]
    if n == m:
        return ((px - py) ** 2).mean(0)
    cuts = torch.unique(torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                                   torch.arange(1, m + 1, dtype=torch.float64) / m]))
    widths = torch.diff(cuts, prepend=cuts.new_zeros(1))
    mid = cuts - widths / 2                                        # inside each interval both steps are constant
    ix, iy = (mid * n).long().clamp(max=n - 1), (mid * m).long().clamp(max=m - 1)
    return (widths[:, None] * (px[ix] - py[iy]) ** 2).sum(0)


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance: the root mean over random unit directions of the squared 1-D distance
    between the projected empirical measures (exact for sets of unequal size too)."""
    x, y = _flat_pair(x, y)
    dirs = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x @ dirs).sort(dim=0).values, (y @ dirs).sort(dim=0).values
    return float(_w2_squared_sorted(px, py).mean().sqrt())
