"""Denoising score matching and its weightings: DDPM's L_simple, NCSN's and the score SDEs' DSM, Min-SNR, EDM
(MATH.md 2-5).

One identity ties them together: with ``x_t = a x0 + s eps`` and ``score = -eps / s``,

    lambda(t) || s_theta(x_t, t) - grad log q(x_t | x0) ||^2 = lambda(t) / s(t)^2 || eps_theta - eps ||^2.

So DDPM's L_simple is denoising score matching with ``lambda = s^2`` at uniformly drawn steps, NCSN's loss
is the same at uniformly drawn levels (``lambda(sigma) = sigma^2``), and the continuous DSM of score SDEs
draws ``t ~ U[1e-5, 1]`` with ``lambda = s^2`` or the likelihood weighting ``lambda = g^2``. :func:`dsm_loss`
computes all of them in eps space (well conditioned as ``s -> 0``); the process decides how times are drawn
(``sample_train_times``) and the model decides how its output becomes eps, so the objective does not depend
on the network's target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._util import expand_as, require
from ..models import DiffusionModel
from ..noise import Randomness
from ..processes import Process, generator_device, require_kind
from .base import Objective, noisy_prediction, reduce, register_objective

__all__ = ["dsm_loss", "simple_loss", "WEIGHTINGS", "lognormal_times"]

#: The weightings ``lambda(t)`` of :func:`dsm_loss`.
WEIGHTINGS = ("s2", "g2", "min-snr", "preconditioned")


def dsm_loss(model: DiffusionModel, x0: Tensor, *, weighting: str = "s2",
             t: Tensor | float | None = None, noise: Tensor | None = None,
             generator: Randomness = None, reduction: str = "sum", gamma: float = 5.0,
             sigma_data: float = 0.5) -> Tensor:
    """Denoising score matching, per example (MATH.md 3 and 4).

    ``lambda(t) || s_theta(x_t, t) - grad log q(x_t | x0) ||^2`` with
    ``lambda = s(t)^2`` (``weighting="s2"``; NCSN's ``sigma^2``), the
    likelihood weighting ``lambda = g(t)^2`` (``"g2"``, Song et al. 2021b),
    Min-SNR-gamma (``"min-snr"``, Hang et al. 2023): ``min(SNR, gamma) ||x0_theta - x0||^2``
    with ``SNR = a^2 / s^2 = 1 / sigma^2``, which in eps space is the ``s^2`` loss
    times ``min(SNR, gamma) / SNR = min(1, gamma sigma^2)`` (gamma = 5, the paper's), or
    EDM's ``lambda(sigma) ||D - y0||^2`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``, the weight that
    gives its preconditioned network a unit-weighted target (``"preconditioned"``, Karras et al. 2022,
    ``sd = sigma_data``): the eps loss times ``(sigma^2 + sd^2) / sd^2``.
    Times come from ``model.process.sample_train_times`` unless ``t`` is given:
    uniform levels for NCSN (Song & Ermon's loss), ``U[1e-5, 1]``
    for the SDEs. ``reduction="sum"`` is the squared norm of MATH.md;
    ``"mean"`` divides by the number of dimensions.
    """
    require(weighting in WEIGHTINGS, f"unknown weighting {weighting!r}; choose 's2' (lambda = s^2), 'g2' "
            "(likelihood weighting, lambda = g^2), 'min-snr' (Min-SNR-gamma) or 'preconditioned' (EDM's)")
    require(gamma > 0, f"gamma must be positive, got {gamma}; Hang et al. use 5")
    require(sigma_data > 0, f"sigma_data must be positive, got {sigma_data}")
    require_kind(model.process, ("affine",), "denoising score matching (it regresses on the Gaussian kernel "
                 "q(x_t | x0))", "train it with sliced_score_matching_loss (--loss ssm-vr) or score_matching_loss")
    pred, noise = noisy_prediction(model, x0, t, noise, generator)
    sq = (pred.eps - noise) ** 2
    process = model.process
    if weighting == "g2":
        sq = sq * expand_as(process.diffusion(pred.t) ** 2 / process.noise_std(pred.t) ** 2, sq)
    elif weighting == "min-snr":
        sq = sq * expand_as((gamma * process.sigma(pred.t) ** 2).clamp(max=1.0), sq)
    elif weighting == "preconditioned":
        sq = sq * expand_as((process.sigma(pred.t) ** 2 + sigma_data**2) / sigma_data**2, sq)
    return reduce(sq, reduction)


def simple_loss(model: DiffusionModel, x0: Tensor, *, t: Tensor | float | None = None,
                noise: Tensor | None = None, generator: Randomness = None, reduction: str = "mean") -> Tensor:
    """DDPM's ``L_simple = || eps - eps_theta(x_t, t) ||^2`` per example (Ho et al. eq. 14, MATH.md 2).

    Steps are drawn uniformly from 1..T by the DDPM process. The default
    ``reduction="mean"`` averages over dimensions as Ho et al.'s code does;
    it is :func:`dsm_loss` with ``lambda = s^2``.
    """
    return dsm_loss(model, x0, weighting="s2", t=t, noise=noise, generator=generator, reduction=reduction)


def lognormal_times(process: Process, n: int, generator: torch.Generator | None, device: torch.device | str | None,
                    *, p_mean: float, p_std: float, **_: Any) -> Tensor:
    """EDM's training noise levels ``ln sigma ~ N(P_mean, P_std^2)`` (Karras et al. 2022, Table 1), clamped to the
    process's range ``[sigma(0), sigma(1)]``, as the process's times."""
    z = torch.randn(n, generator=generator, device=device or generator_device(generator), dtype=torch.float64)
    lo, hi = process.sigma(torch.zeros((), dtype=torch.float64)), process.sigma(torch.ones((), dtype=torch.float64))
    sigma = torch.exp(p_mean + p_std * z).clamp(float(lo), float(hi))
    return process.time_of_sigma(sigma).clamp(0.0, 1.0)


def _dsm(weighting: str):
    """The trainer's DSM: per-dimension mean, eps and times of the batch."""
    def loss(model: DiffusionModel, x0: Tensor, *, t: Tensor | None, noise: Tensor | None, randomness: Randomness,
             gamma: float = 5.0, sigma_data: float = 0.5, **_: Any) -> Tensor:
        return dsm_loss(model, x0, weighting=weighting, t=t, noise=noise, generator=randomness, reduction="mean",
                        gamma=gamma, sigma_data=sigma_data)
    return loss


_AFFINE = ("affine",)
register_objective("simple", Objective("L_simple (Ho et al. 2020, eq. 14): ||eps_theta - eps||^2", _dsm("s2"), _AFFINE))
register_objective("dsm", Objective("denoising score matching, lambda = s^2 (NCSN; score SDEs)", _dsm("s2"), _AFFINE))
register_objective("dsm-likelihood", Objective("denoising score matching, the likelihood weighting lambda = g^2 "
                                               "(Song et al. 2021b)", _dsm("g2"), _AFFINE))
register_objective("min-snr", Objective("denoising score matching, Min-SNR-gamma weighting (Hang et al. 2023)",
                                        _dsm("min-snr"), _AFFINE, {"gamma": 5.0}))
register_objective("edm", Objective(
    "EDM's loss (Karras et al. 2022): log-normal noise levels, the preconditioned weighting", _dsm("preconditioned"),
    _AFFINE, {"sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2}, times=lognormal_times))
