"""The affine SDE: ``x_t = a(t) x0 + s(t) eps`` and all that follows from it (MATH.md sections 1 and 4).

Every process here corrupts data as ``x_t = a(t) x0 + s(t) eps`` on the time axis ``t in [0, 1]`` and is
also an SDE ``dx = f(x, t) dt + g(t) dw`` whose marginals those are (Song et al. 2021). The concrete ones
are VP, sub-VP and DDPM (:mod:`scorelab.processes.vp`) and VE and NCSN (:mod:`scorelab.processes.ve`).
All schedules are computed in float64; coefficients returned for a time ``t`` are float64 tensors of
``t``'s shape, cast where they meet ``x``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Sequence

import torch
from torch import Tensor

from .._util import TimeLike, as_time, expand_as, flat_dim, sum_except_batch
from ..noise import Randomness, normal
from .base import SIMULATE_STEPS, SDE

__all__ = ["NoiseProcess"]


class NoiseProcess(SDE):
    """The affine SDE: the forward process ``x_t = a(t) x0 + s(t) eps`` (MATH.md sections 1 and 4).

    Subclasses give ``a(t)`` (:meth:`signal_scale`), ``s(t)`` (:meth:`noise_std`),
    the linear drift's coefficient, the diffusion ``g`` and the prior's scale;
    everything else (sampling ``q(x_t | x0)``, the exact discretization, the
    conditional score) is derived here once.
    """

    kinds = ("affine", "sde")
    conditions = ("time", "sigma", "log_sigma")

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std^2 I)`` at ``t = 1``."""
        return 1.0

    # ---- what each process defines -------------------------------------------------
    @abstractmethod
    def signal_scale(self, t: TimeLike) -> Tensor:
        """a(t), the marginal signal scale (MATH.md 1)."""

    @abstractmethod
    def noise_std(self, t: TimeLike) -> Tensor:
        """s(t), the marginal noise standard deviation (MATH.md 1)."""

    @abstractmethod
    def drift_coef(self, t: TimeLike) -> Tensor:
        """c(t) with the drift ``f(x, t) = c(t) x`` (MATH.md 4; every process here is linear)."""

    @abstractmethod
    def time_of_sigma(self, sigma: TimeLike) -> Tensor:
        """The time at which :meth:`sigma` equals ``sigma`` (inverse of ``s/a``)."""

    # ---- derived once, for every process ----------------------------------------------
    def coefficients(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(a(t), s(t))`` together (one schedule lookup where the process allows it)."""
        return self.signal_scale(t), self.noise_std(t)

    def sigma(self, t: TimeLike) -> Tensor:
        """The VE-equivalent noise level ``s(t) / a(t)``: ``x_t / a = x0 + sigma eps`` (EDM's sigma)."""
        return self.noise_std(t) / self.signal_scale(t)

    def noise_condition(self, condition: str, t: Tensor) -> Tensor:
        """``t``, ``sigma(t)`` or ``log sigma(t)`` (float64, ``(N,)``): what a network is told at time ``t``."""
        self._check_condition(condition)
        if condition == "sigma":
            return self.sigma(t)
        if condition == "log_sigma":
            return torch.log(self.sigma(t))
        return t

    def marginal(self, x0: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """Mean ``a(t) x0`` and per-example std ``s(t)`` of ``q(x_t | x0)`` (MATH.md 1)."""
        t = as_time(t, x0)
        return expand_as(self.signal_scale(t), x0) * x0, self.noise_std(t)

    def perturb(self, x0: Tensor, t: TimeLike, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``x_t = a(t) x0 + s(t) eps`` from ``q(x_t | x0)``; returns ``(x_t, eps)``."""
        t = as_time(t, x0)
        if noise is None:
            noise = normal(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}; "
                             "they must match")
        x_t = expand_as(self.signal_scale(t), x0) * x0 + expand_as(self.noise_std(t), x0) * noise
        return x_t, noise

    def conditional_score(self, x_t: Tensor, x0: Tensor, t: TimeLike) -> Tensor:
        """``grad log q(x_t | x0) = -(x_t - a x0) / s^2``, the DSM regression target (MATH.md 4)."""
        t = as_time(t, x_t)
        a, s = expand_as(self.signal_scale(t), x_t), expand_as(self.noise_std(t), x_t)
        return -(x_t - a * x0) / s**2

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """f(x, t) = c(t) x of the forward SDE (MATH.md 4)."""
        return expand_as(self.drift_coef(as_time(t, x)), x) * x

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """The exact transition ``x_t = r x_{t_next} + G z`` between grid times, as ``(f_i, G_i^2)``:
        ``r = a(t) / a(t_next)``, ``f_i = (r - 1) x``, ``G_i^2 = s(t)^2 - r^2 s(t_next)^2`` (for VP
        DDPM's beta_i, for VE NCSN's ``sigma_i^2 - sigma_{i-1}^2``; MATH.md 4)."""
        ratio = self.signal_scale(t) / self.signal_scale(t_next)
        return expand_as(ratio - 1, x) * x, self.noise_std(t) ** 2 - ratio**2 * self.noise_std(t_next) ** 2

    def langevin_alpha(self, t: Tensor, t_next: Tensor) -> Tensor:
        """``alpha = (a(t) / a(t_next))^2``: 1 for VE, score_sde's ``1 - beta_i`` for VP (MATH.md 4)."""
        return (self.signal_scale(t) / self.signal_scale(t_next)) ** 2

    def sample_marginal(self, x0: Tensor, t: TimeLike, generator: Randomness = None, *,
                        noise: Tensor | None = None, steps: int = SIMULATE_STEPS) -> Tensor:
        """``x_t = a(t) x0 + s(t) eps`` in closed form (``noise``: eps, else drawn; ``steps`` unused)."""
        if noise is None:
            noise = normal(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        return self.perturb(x0, t, noise=noise)[0]

    def score_weight(self, t: TimeLike) -> Tensor:
        """``lambda(t) = s(t)^2`` (NCSN's sigma^2; MATH.md 3-4)."""
        return self.noise_std(t) ** 2

    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None, *,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw from the prior ``N(0, prior_std^2 I)`` at ``t = 1``."""
        return self.prior_std * normal(shape, generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Per-example log-density of the prior ``N(0, prior_std^2 I)``, in nats."""
        d = flat_dim(x)
        var = self.prior_std**2
        return -0.5 * sum_except_batch(x**2) / var - 0.5 * d * math.log(2 * math.pi * var)
