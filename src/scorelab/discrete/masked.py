"""Masked (absorbing) diffusion in continuous time (MATH.md 13; Shi et al. 2024, MD4; Sahoo et al. 2024, MDLM).

Each dimension keeps its category with probability ``alpha_t`` and is replaced by [MASK] (state ``K``)
otherwise: ``q(x_t^i | x_0^i) = alpha_t [x_t^i = x_0^i] + (1 - alpha_t) [x_t^i = m]``, with ``alpha_t``
decreasing from ``alpha_0 = 1`` to ``alpha_1 = 0``. Everything the bound and the sampler need follows from
``alpha_t`` and its derivative:

* the bound's weight ``w(t) = -alpha'_t / (1 - alpha_t)`` (linear schedule: ``1 / t``);
* from ``t`` back to ``s < t``, a masked dimension is revealed with probability
  ``(alpha_s - alpha_t) / (1 - alpha_t)`` and otherwise stays masked.

Schedules: ``"linear"`` ``alpha_t = 1 - t``; ``"cosine"`` ``alpha_t = 1 - cos(pi/2 (1 - t))`` (MD4);
``"polynomial"`` ``alpha_t = 1 - t^exponent``; ``"table"``: piecewise linear through ``alphas`` given on an
even grid of ``t`` from 0 to 1 (non-increasing, from 1 to 0). Times are floats in ``[0, 1]``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from .._util import is_int, require
from ..noise import Randomness, uniform
from .process import CategoricalProcess

__all__ = ["MaskedDiffusion", "MASKED_SCHEDULES", "TIME_SAMPLING", "draw_times"]

MASKED_SCHEDULES = ("linear", "cosine", "polynomial", "table")
#: How the training times of a batch are drawn: MD4's low-discrepancy draws ``t_i = 1 - frac(u + i / N)`` (one
#: uniform ``u`` per batch, the batch spread evenly over [0, 1]) or independently.
TIME_SAMPLING = ("low-discrepancy", "uniform")


def draw_times(n: int, noise: Randomness = None, device: torch.device | str = "cpu",
               time_sampling: str = "low-discrepancy") -> Tensor:
    """``n`` times in ``(0, 1]`` (never 0, where the weight is infinite), each marginally uniform: MD4's
    low-discrepancy draws or independent ones (:data:`TIME_SAMPLING`)."""
    require(time_sampling in TIME_SAMPLING, f"unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLING}")
    u = uniform((n if time_sampling == "uniform" else 1,), noise, device=device).clamp(max=1 - 2 ** -40)
    if time_sampling == "low-discrepancy":
        u = torch.remainder(u + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)
    return 1 - u


class MaskedDiffusion(CategoricalProcess):
    """Masked diffusion over ``num_categories`` values per dimension, in continuous time (MATH.md 13).

    Args:
        num_categories: ``K``, the data's categories ``0..K-1`` (K >= 2); [MASK] is state ``K``.
        schedule: ``"linear"``, ``"cosine"``, ``"polynomial"`` (with ``exponent``) or ``"table"`` (with ``alphas``).
        exponent: the polynomial schedule's power ``w`` in ``alpha_t = 1 - t^w`` (w > 0).
        alphas: the table schedule's ``alpha`` at ``t = 0, 1/n, ..., 1``: from 1 down to 0, never increasing.
    """

    #: Categorical data, absorbed into [MASK] in continuous time.
    kinds = ("categorical", "masked")

    def __init__(self, num_categories: int, schedule: str = "linear", exponent: float = 1.0,
                 alphas: Sequence[float] | None = None):
        require(is_int(num_categories) and num_categories >= 2,
                f"num_categories must be an integer >= 2, got {num_categories!r}")
        require(schedule in MASKED_SCHEDULES, f"unknown schedule {schedule!r}; choose one of {MASKED_SCHEDULES}")
        require(isinstance(exponent, (int, float)) and math.isfinite(exponent) and exponent > 0,
                f"the polynomial schedule's exponent must be a positive number, got {exponent!r}")
        require((alphas is not None) == (schedule == "table"), "alphas are the table schedule's: give them with "
                "schedule='table' (and only then)")
        if alphas is not None:
            table = torch.as_tensor(list(alphas), dtype=torch.float64)
            require(table.ndim == 1 and len(table) >= 2 and bool(torch.isfinite(table).all()),
                    "alphas must be at least two finite numbers, alpha at t = 0, ..., 1")
            require(float(table[0]) == 1.0 and float(table[-1]) == 0.0 and bool((table[1:] <= table[:-1]).all()),
                    f"the schedule must decrease from alpha_0 = 1 to alpha_1 = 0 and never increase, got "
                    f"{[round(float(a), 4) for a in table]}")
            self._table = table
        self.num_categories, self.schedule, self.exponent = num_categories, schedule, float(exponent)
        self.alphas = None if alphas is None else [float(a) for a in self._table]
        self.num_states, self.mask_state = num_categories + 1, num_categories

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": "masked", "num_categories": self.num_categories, "schedule": self.schedule}
        if self.schedule == "polynomial":
            out["exponent"] = self.exponent
        if self.schedule == "table":
            out["alphas"] = self.alphas
        return out

    # ---------------------------------------------------------------------------------- the schedule
    def times(self, t: float | Tensor, like: Tensor) -> Tensor:
        """``t`` as one float64 time per example of ``like``, each in ``[0, 1]``, or a one-line error."""
        t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        require(t.shape == (like.shape[0],), f"t must be one time per example, shape ({like.shape[0]},), "
                f"got {tuple(t.shape)}")
        require(bool(((t >= 0) & (t <= 1)).all()), "masked diffusion's times lie in [0, 1]")
        return t

    def alpha(self, t: Tensor) -> Tensor:
        """``alpha_t``: the probability that a dimension is still unmasked at time ``t``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "linear":
            return 1 - t
        if self.schedule == "cosine":
            return 1 - torch.cos(math.pi / 2 * (1 - t))
        if self.schedule == "polynomial":
            return 1 - t ** self.exponent
        n = len(self._table) - 1
        pos = (t * n).clamp(0, n)
        i = pos.floor().long().clamp(max=n - 1)
        table = self._table.to(t.device)
        return table[i] + (pos - i) * (table[i + 1] - table[i])

    def mask_probability(self, t: Tensor) -> Tensor:
        """``1 - alpha_t``, computed directly (``t ** exponent``, not ``1 - (1 - t ** exponent)``: near ``t = 0`` the
        difference rounds to 0 and the bound's weight to infinity)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "linear":
            return t
        if self.schedule == "cosine":
            return torch.cos(math.pi / 2 * (1 - t))
        if self.schedule == "polynomial":
            return t ** self.exponent
        return 1 - self.alpha(t)

    def alpha_rate(self, t: Tensor) -> Tensor:
        """``-alpha'_t``, the rate at which dimensions are masked (non-negative)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule == "linear":
            return torch.ones_like(t)
        if self.schedule == "cosine":
            return math.pi / 2 * torch.sin(math.pi / 2 * (1 - t))
        if self.schedule == "polynomial":
            return self.exponent * t ** (self.exponent - 1)
        n = len(self._table) - 1
        i = (t * n).floor().long().clamp(0, n - 1)
        table = self._table.to(t.device)
        return (table[i] - table[i + 1]) * n

    def weight(self, t: Tensor) -> Tensor:
        """The bound's weight ``w(t) = -alpha'_t / (1 - alpha_t)`` (MATH.md 13); finite for ``t > 0``."""
        rate = self.alpha_rate(t)
        return torch.where(rate > 0, rate / self.mask_probability(t), 0.0)      # a flat stretch masks nothing

    def reveal_probability(self, t: Tensor, s: Tensor) -> Tensor:
        """``(alpha_s - alpha_t) / (1 - alpha_t)``: the chance that a dimension masked at ``t`` is unmasked at
        ``s < t`` (1 at ``s = 0``)."""
        m_t, m_s = self.mask_probability(t), self.mask_probability(s)
        return ((m_t - m_s) / m_t.clamp(min=1e-300)).clamp(0, 1)

    # ---------------------------------------------------------------------------------- the process
    def sample_marginal(self, x0: Tensor, t: float | Tensor, noise: Randomness = None) -> Tensor:
        """``x_t ~ q(x_t | x_0)``: each dimension masked independently with probability ``1 - alpha_t``
        (``noise``: a generator, or the trainer's batch noise, as :func:`~scorelab.discrete.sample_categorical`)."""
        x0 = self.check_data(x0)
        t = self.times(t, x0)
        return self._keep_or_prior(x0, self.alpha(t), noise)

    def prior_sample(self, shape: Sequence[int], noise: Randomness = None,
                     device: torch.device | str = "cpu") -> Tensor:
        """``x_1``: every dimension [MASK] (``noise`` is not used; the prior is a point mass)."""
        return torch.full(tuple(shape), self.mask_state, dtype=torch.long, device=device)

    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = "cpu") -> Tensor:
        """Independent uniform times in ``(0, 1]`` (:func:`draw_times`; the ``masked`` loss spreads a batch's)."""
        return draw_times(n, generator, device if device is not None else "cpu", "uniform")
