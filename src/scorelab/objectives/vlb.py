"""DDPM's variational bound (MATH.md 2): its terms, the whole bound, and Nichol & Dhariwal's hybrid objective.

``L_vlb = L_T + sum_{t=2..T} L_{t-1} + L_0`` with ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` and
the discretized Gaussian decoder ``L_0 = -log p(x0 | x1)`` (Ho et al. 2020): an ELBO, as a VAE's, whose
bits/dim :mod:`scorelab.likelihood` reports on held-out data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .._util import expand_as, flat_dim, mean_except_batch, nats_to_bits_per_dim, require, sum_except_batch
from ..models import DiffusionModel, Prediction, resolve_variance
from ..noise import Randomness
from ..processes import DDPM, require_kind
from .base import Objective, check_batch, noisy_prediction, register_objective

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "prior_kl", "vlb_term", "vlb", "VLB", "hybrid_loss",
           "ddpm_of", "NO_VLB"]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi``, accurate in both tails."""
    flip = lo > 0  # use Phi(-lo) - Phi(-hi) where both ends are in the upper tail
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor,
                                        num_bins: int = 256) -> Tensor:
    """Elementwise ``log P(x)`` of the discretized Gaussian decoder (Ho et al. eq. 13, MATH.md 2).

    ``x`` lies on the ``num_bins`` levels of [-1, 1]; each level owns the
    interval ``x +- 1 / (num_bins - 1)``, and the end levels extend to
    ``-inf`` and ``+inf``.
    """
    half = 1.0 / (num_bins - 1)
    std = torch.exp(0.5 * log_var)
    lo = torch.where(x <= -1 + half / 2, torch.full_like(x, -math.inf), (x - half - mean) / std)
    hi = torch.where(x >= 1 - half / 2, torch.full_like(x, math.inf), (x + half - mean) / std)
    return _log_normal_mass(lo, hi)


#: What to use where DDPM's bound does not apply.
NO_VLB = "use the probability-flow ODE likelihood instead (--method ode)"


def ddpm_of(model: DiffusionModel) -> DDPM:
    """The model's DDPM process, or the one error of a model that has none (MATH.md 2)."""
    require_kind(model.process, ("ddpm",), "the variational bound (MATH.md 2)", NO_VLB)
    return model.process


def _check_images(x0: Tensor) -> None:
    check_batch(x0)
    require(float(x0.min()) >= -1 - 1e-6 and float(x0.max()) <= 1 + 1e-6,
            "the VLB's decoder expects data scaled to [-1, 1] (8-bit levels k -> 2k/255 - 1); "
            f"got values in [{float(x0.min()):.3g}, {float(x0.max()):.3g}]")


def prior_kl(process: DDPM, x0: Tensor) -> Tensor:
    """``L_T = KL(q(x_T | x0) || N(0, I))`` per example, in nats (MATH.md 2)."""
    ab = process.alpha_bars[-1].item()
    mean = math.sqrt(ab) * x0.double()
    logvar = torch.full_like(mean, math.log1p(-ab))
    zero = torch.zeros_like(mean)
    return sum_except_batch(normal_kl(mean, logvar, zero, zero))


def _vlb_term(process: DDPM, x0: Tensor, step: Tensor, pred: Prediction, variance: str,
              detach_mean: bool, num_bins: int) -> Tensor:
    """The L_vlb term at per-example ``step`` given the model's prediction at ``x_t = pred.x``."""
    x_t = pred.x
    eps = pred.eps.detach() if detach_mean else pred.eps
    mean = process.reverse_mean(x_t, eps, step)
    log_var = process.model_log_variance(step, variance, pred.variance_frac)
    log_var = (expand_as(log_var, x_t) if log_var.ndim == 1 else log_var.to(x_t.dtype)).expand_as(x_t)
    decoder = -sum_except_batch(discretized_gaussian_log_likelihood(x0, mean, log_var, num_bins))
    first = step == 1
    if bool(first.all()):
        return decoder
    q_mean, q_var = process.posterior(x0, x_t, step.clamp(min=2))
    q_logvar = expand_as(torch.log(q_var), x_t).expand_as(x_t)
    kl = sum_except_batch(normal_kl(q_mean, q_logvar, mean, log_var))
    return torch.where(first, decoder, kl)


def vlb_term(model: DiffusionModel, x0: Tensor, step: int | Tensor, *, variance: str | None = None,
             noise: Tensor | None = None, generator: Randomness = None,
             detach_mean: bool = False, num_bins: int = 256) -> Tensor:
    """One term of L_vlb per example, in nats (MATH.md 2), for ``x_t ~ q(x_t | x0)``.

    Step ``t >= 2``: ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))``;
    step 1: ``L_0 = -log p(x0 | x1)`` under the discretized Gaussian decoder.
    ``variance`` is ``"beta"``, ``"beta_tilde"`` or ``"learned"`` (default:
    learned if the model has it, else beta). ``detach_mean`` stops the
    gradient through the mean, as Nichol & Dhariwal's hybrid loss does.
    """
    process = ddpm_of(model)
    variance = resolve_variance(model, variance)
    _check_images(x0)
    step = torch.as_tensor(step, device=x0.device).long().expand(x0.shape[0])
    pred, _ = noisy_prediction(model, x0, process.step_to_time(step), noise, generator)
    return _vlb_term(process, x0, step, pred, variance, detach_mean, num_bins)


@dataclass(frozen=True)
class VLB:
    """DDPM's variational bound per example, with its breakdown (MATH.md 2).

    ``terms[:, 0]`` is the decoder ``L_0``; ``terms[:, i]`` is ``L_i`` for
    ``i = 1..T-1`` (the KL at step ``i + 1``); ``prior`` is ``L_T``. Nats.
    """

    prior: Tensor
    terms: Tensor
    num_dims: int

    @property
    def total(self) -> Tensor:
        """``L_vlb = L_T + sum_t L_{t-1} + L_0`` per example, in nats."""
        return self.prior + self.terms.sum(dim=1)

    @property
    def bits_per_dim(self) -> Tensor:
        """``L_vlb / (D ln 2)`` per example."""
        return nats_to_bits_per_dim(self.total, self.num_dims)


@torch.no_grad()
def vlb(model: DiffusionModel, x0: Tensor, *, variance: str | None = None,
        generator: Randomness = None, num_bins: int = 256,
        callback: Callable[[int], None] | None = None) -> VLB:
    """The full L_vlb of ``x0`` (one network call per step, ``T`` in all), in nats (MATH.md 2).

    Each term draws its own ``x_t ~ q(x_t | x0)``, so the total is an
    unbiased single-sample estimate of the bound. ``callback(step)`` reports progress.
    """
    process = ddpm_of(model)
    _check_images(x0)
    levels = (x0.double() + 1) * (num_bins - 1) / 2
    require(bool(((levels - levels.round()).abs() < 1e-3).all()),
            f"the VLB is a bound for discrete data on the {num_bins} levels 2k/{num_bins - 1} - 1; "
            "scale 8-bit images with scorelab.data.to_model_range (or pass num_bins)")
    terms = torch.empty(x0.shape[0], process.num_steps, dtype=torch.float64, device=x0.device)
    for step in range(1, process.num_steps + 1):
        terms[:, step - 1] = vlb_term(model, x0, step, variance=variance, generator=generator,
                                      num_bins=num_bins).double()
        if callback is not None:
            callback(step)
    return VLB(prior=prior_kl(process, x0), terms=terms, num_dims=flat_dim(x0))


def hybrid_loss(model: DiffusionModel, x0: Tensor, *, lambda_vlb: float = 1e-3,
                t: Tensor | float | None = None, noise: Tensor | None = None,
                generator: Randomness = None, num_bins: int = 256) -> Tensor:
    """``L_hybrid = L_simple + lambda L_vlb`` per example (Nichol & Dhariwal 2021, eq. 16; MATH.md 2).

    The model must predict its variance (``learned_variance=True``). For a
    drawn step ``t``, ``L_vlb`` is estimated by ``T * L_{t-1}`` in bits per
    dimension with the mean's gradient stopped, so it trains only the variance,
    exactly as improved-diffusion does; ``lambda = 0.001`` is the paper's.
    """
    process = ddpm_of(model)
    require(model.learned_variance,
            "hybrid_loss trains a learned variance; wrap the network with Model(..., learned_variance=True)")
    _check_images(x0)
    pred, noise = noisy_prediction(model, x0, t, noise, generator)
    simple = mean_except_batch((pred.eps - noise) ** 2)
    step = process.time_to_step(pred.t)
    term = _vlb_term(process, x0, step, pred, "learned", True, num_bins)
    return simple + lambda_vlb * process.num_steps * nats_to_bits_per_dim(term, flat_dim(x0)).to(simple.dtype)


def _hybrid(model: DiffusionModel, x0: Tensor, *, t: Tensor | None, noise: Tensor | None, randomness: Randomness,
            lambda_vlb: float, **_: Any) -> Tensor:
    return hybrid_loss(model, x0, lambda_vlb=lambda_vlb, t=t, noise=noise, generator=randomness)


register_objective("hybrid", Objective("L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. 16), a learned variance",
                                       _hybrid, ("ddpm",), {"lambda_vlb": 1e-3}, learned_variance=True))
