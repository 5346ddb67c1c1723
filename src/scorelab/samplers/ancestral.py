"""DDPM ancestral sampling and DDIM (MATH.md 2 and 5).

Both are written in the coordinates ``y = x / a(t)``, where every process
reads ``y = x0 + sigma eps`` (MATH.md 1). From noise level ``sigma`` to
``sigma' < sigma``, the forward posterior ``q(y' | y, x0)`` (DDPM's
``q(x_{t-1} | x_t, x0)`` rescaled) has mean ``x0 + (sigma'^2 / sigma) eps`` and
variance ``sigma'^2 (1 - sigma'^2 / sigma^2)``; DDIM's family keeps the
marginals with any noise ``eta`` times that standard deviation
(:func:`~scorelab.samplers._common.posterior_step`; Song, Meng & Ermon 2021, eq. 12).
``eta = 1`` is DDPM's ancestral step with ``sigma_t^2 = beta_tilde_t``; ``eta = 0`` is the
Euler step of the probability-flow ODE ``dy/dsigma = eps`` (their eq. 14).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .._util import require
from ..models import DiffusionModel, resolve_variance
from ..noise import Randomness, randn_like
from ..processes import NoiseProcess, require_kind
from ._common import (Callback, Projection, SampleResult, SigmaView, call_back, finite_or_raise, initial_noise,
                      posterior_step, projected, resolve)
from .grids import ancestral_times, check_times, ddpm_steps, evaluation_times

__all__ = ["ddpm_ancestral", "ddim"]


def _clip(pred_x0: Tensor, clip_x0: bool) -> Tensor:
    return pred_x0.clamp(-1, 1) if clip_x0 else pred_x0


@torch.no_grad()
def ddpm_ancestral(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor,
                   steps: int | Sequence[int] | None = None, *, times: Sequence[float] | Tensor | None = None,
                   variance: str | None = None, process: NoiseProcess | None = None, noise: Randomness = None,
                   clip_x0: bool = False, project: Projection | None = None,
                   callback: Callback | None = None) -> SampleResult:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2; MATH.md 2).

    ``x_{t-1} = mu_theta(x_t, t) + sigma_t z`` from ``t = T`` down to 1, with
    ``sigma_t^2 = beta_t`` (``variance="beta"``), ``beta_tilde_t`` or learned
    (Nichol & Dhariwal 2021); by default the learned one for a model trained
    with it, else ``beta``. ``steps``: all T (None), a number of evenly
    respaced steps, or an explicit subsequence; ``times``: the steps' times ``i / T`` (a grid of
    :mod:`~scorelab.samplers.grids`). On a subsequence the betas are
    recomputed from ``alpha_bar`` as improved-diffusion does. ``clip_x0``
    clips the predicted ``x0`` to [-1, 1] (images); ``project`` is applied after every step
    (:data:`~scorelab.samplers.Projection`). Runs on a DDPM process:
    the model's own, or ``process=sl.DDPM(...)`` for a model of another process.
    """
    variance = resolve_variance(model, variance)
    model, ddpm = resolve(model, process)
    require_kind(ddpm, ("ddpm",), "ddpm_ancestral (it follows DDPM's chain)",
                 "pass process=sl.DDPM() to drive this model through DDPM's steps, or use ddim(eta=1), "
                 "predictor_corrector(predictor='ancestral') or euler_maruyama, which take any process")
    seq = ddpm_steps(ddpm, steps, times)
    x = initial_noise(ddpm, shape_or_x, noise, model)
    view = SigmaView(model, ddpm)
    ab_table = ddpm.alpha_bars
    for i, step in enumerate(seq):
        prev = seq[i + 1] if i + 1 < len(seq) else 0
        ab, ab_prev = ab_table[step].item(), ab_table[prev].item()
        t = ddpm.step_to_time(step)
        a, a_prev = math.sqrt(ab), math.sqrt(ab_prev)
        sigma, sigma_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
        y = x / a
        pred = view.predict(y, t, a)
        x0 = _clip(pred.x0, clip_x0)
        x = a_prev * posterior_step(y, x0, sigma, sigma_prev, draw=False)   # posterior mean mu_tilde, rescaled
        if prev > 0:
            beta = 1 - ab / ab_prev                            # respaced beta_t
            beta_tilde = (1 - ab_prev) / (1 - ab) * beta
            if variance == "beta":
                log_var = torch.full_like(x, math.log(beta))
            elif variance == "beta_tilde":
                log_var = torch.full_like(x, math.log(beta_tilde))
            else:
                require(pred.variance_frac is not None, "variance='learned' needs a model trained "
                        "with learned_variance=True; use 'beta' or 'beta_tilde'")
                frac = pred.variance_frac.to(x.dtype)
                log_var = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
            x = x + torch.exp(0.5 * log_var) * randn_like(x, noise)
        x = projected(project, x, a_prev, a_prev * sigma_prev)
        call_back(callback, i + 1, len(seq), prev / ddpm.num_steps, x, view.nfe)
    finite_or_raise(x, "ddpm_ancestral")
    return SampleResult(x, view.nfe)


@torch.no_grad()
def ddim(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 50, *,
         eta: float = 0.0, times: Sequence[float] | Tensor | None = None, grid: str | None = None,
         process: NoiseProcess | None = None, noise: Randomness = None, clip_x0: bool = False,
         project: Projection | None = None, callback: Callback | None = None) -> SampleResult:
    """DDIM (Song, Meng & Ermon 2021, eq. 12; MATH.md 5), for any affine process.

    ``eta = 0`` is deterministic; ``eta = 1`` is ancestral sampling with
    ``beta_tilde``. Evaluates the model at ``steps`` decreasing times (or the
    given ``times``) and ends with ``x0_hat`` at noise level 0. The default
    times are DDPM's evenly respaced steps for a DDPM process, otherwise
    ``steps`` evaluation times of the ``grid`` (default ``"time"``; :mod:`~scorelab.samplers.grids`).
    """
    require(0.0 <= eta <= 1.0, f"eta must lie in [0, 1], got {eta}")
    model, process = resolve(model, process)
    if times is None:
        times = ancestral_times(process, steps) if grid is None else evaluation_times(process, steps, grid)
    times = check_times(times)
    x = initial_noise(process, shape_or_x, noise, model)
    view = SigmaView(model, process)
    scales, sigmas = view.grid(times)
    for i, t in enumerate(times):
        y = x / scales[i]
        pred = view.predict(y, t, scales[i])
        x0 = _clip(pred.x0, clip_x0)
        if i + 1 == len(times):                               # last step: to noise level 0
            x = projected(project, x0, 1.0, 0.0)
        else:
            y = posterior_step(y, x0, sigmas[i], sigmas[i + 1], noise, eta=eta)
            x = projected(project, scales[i + 1] * y, scales[i + 1], scales[i + 1] * sigmas[i + 1])
        call_back(callback, i + 1, len(times), float(times[i + 1]) if i + 1 < len(times) else 0.0, x, view.nfe)
    finite_or_raise(x, "ddim")
    return SampleResult(x, view.nfe)
