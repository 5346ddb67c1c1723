"""Metropolis-corrected MCMC on a model's energy: MALA and HMC, accept/reject per sample (MATH.md 9).

Both target ``p_t(x) ∝ exp(-U(x, t))`` at one noise level, using the energy ``U`` and the score
``-grad U`` of a model that has an energy (:mod:`scorelab.energy`, ``GaussianMixture.energy_model``,
:mod:`scorelab.compose`). ULA, the unadjusted Langevin step, is the baseline they correct:

* ULA: ``x' = x + e score(x) + sqrt(2e) z``, always taken (biased for any ``e > 0``);
* MALA (Roberts & Tweedie 1996): the same proposal, accepted with probability
  ``min(1, exp(U(x) - U(x')) q(x | x') / q(x' | x))``, ``q(x' | x) = N(x'; x + e score(x), 2e I)``;
* HMC (Neal 2011): momentum ``p`` refreshed as ``rho p + sqrt(1 - rho^2) xi``, ``L`` leapfrog steps of
  size ``h`` on ``H = U(x) + |p|^2 / 2``, accepted with ``min(1, exp(H - H'))``; a rejection flips ``p``
  (which keeps partial refreshment exact). ``h = sqrt(2e)`` matches MALA's step: one leapfrog step with
  full refreshment is MALA.

Each sample is accepted or rejected on its own (Du et al.'s released code takes one decision for the
whole batch, and scales MALA's proposal density wrongly), and the acceptance rate is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .._util import as_time, expand_as, is_int, require
from ..models import DiffusionModel, require_energy
from ..noise import Randomness, randn_like
from ..processes import SDE
from ._common import SampleResult, finite_or_raise, initial_noise, resolve

__all__ = ["METHODS", "MCMCState", "mcmc_step", "mcmc"]

#: The MCMC kernels, by name.
METHODS = ("ula", "mala", "hmc")


@dataclass
class MCMCState:
    """The chain at one noise level: position, its energy and score, momentum (HMC), and the tallies."""

    x: Tensor
    energy: Tensor | None = None
    score: Tensor | None = None
    momentum: Tensor | None = None
    accepted: float = 0.0
    proposed: int = 0
    nfe: int = 0


def _sq(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).sum(1)


def _metropolis(state: MCMCState, x1: Tensor, u1: Tensor, g1: Tensor, log_alpha: Tensor, noise: Randomness) -> Tensor:
    """Accept the proposal ``(x1, U(x1), score(x1))`` per sample with probability ``min(1, exp(log_alpha))``;
    returns which were taken (the state keeps the others)."""
    z = randn_like(state.energy[:, None], noise)[:, 0]               # one uniform per sample, by the normal cdf
    uniform = 0.5 * (1 + torch.erf(z.double() / math.sqrt(2)))
    take = torch.log(uniform.clamp(min=1e-300)) < log_alpha.double()
    m = expand_as(take.to(state.x.dtype), state.x)
    state.x = m * x1 + (1 - m) * state.x
    state.energy = torch.where(take, u1, state.energy)
    state.score = m * g1 + (1 - m) * state.score
    return take


def mcmc_step(model: DiffusionModel, state: MCMCState, t: Tensor, step_size: Tensor | float, method: str, *,
              leapfrog_steps: int = 3, momentum_refresh: float = 0.0, noise: Randomness = None) -> MCMCState:
    """One ULA, MALA or HMC step at time ``t`` (``(N,)``) with step ``e`` (scalar or ``(N,)``), per sample."""
    x = state.x
    e_n = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).expand(x.shape[0])   # one step per sample
    e = expand_as(e_n, x)
    if method == "ula":
        score = model.predict(x, t).score
        state.nfe += 1
        state.x = x + e * score + torch.sqrt(2 * e) * randn_like(x, noise)
        state.energy = state.score = None
        return state
    if state.energy is None or state.score is None:
        state.energy, state.score = model.energy_and_score(x, t)
        state.nfe += 1
    u0, g0 = state.energy, state.score.to(x.dtype)
    if method == "mala":
        x1 = x + e * g0 + torch.sqrt(2 * e) * randn_like(x, noise)
        u1, g1 = model.energy_and_score(x1, t)
        state.nfe += 1
        g1 = g1.to(x.dtype)
        log_q_fwd = -_sq(x1 - x - e * g0) / (4 * e_n)
        log_q_bwd = -_sq(x - x1 - e * g1) / (4 * e_n)
        state.score = g0
        take = _metropolis(state, x1, u1, g1, (u0 - u1) + log_q_bwd - log_q_fwd, noise)
    else:                                                       # hmc
        require(is_int(leapfrog_steps) and leapfrog_steps >= 1,
                f"leapfrog_steps must be a positive integer, got {leapfrog_steps!r}")
        require(0.0 <= momentum_refresh < 1.0, f"momentum_refresh must lie in [0, 1), got {momentum_refresh}")
        h = torch.sqrt(2 * e)
        xi = randn_like(x, noise)
        p = xi if state.momentum is None or momentum_refresh == 0 else \
            momentum_refresh * state.momentum + math.sqrt(1 - momentum_refresh**2) * xi
        h0 = u0 + 0.5 * _sq(p)
        x1, p1, g1, u1 = x, p + 0.5 * h * g0, g0, u0
        for k in range(leapfrog_steps):
            x1 = x1 + h * p1
            u1, g1 = model.energy_and_score(x1, t)
            g1 = g1.to(x.dtype)
            state.nfe += 1
            p1 = p1 + (h if k + 1 < leapfrog_steps else 0.5 * h) * g1
        state.score = g0
        take = _metropolis(state, x1, u1, g1, h0 - (u1 + 0.5 * _sq(p1)), noise)
        m = expand_as(take.to(x.dtype), x)
        state.momentum = m * p1 - (1 - m) * p                    # a rejection flips the momentum
    state.accepted += float(take.double().sum())
    state.proposed += x.shape[0]
    return state


@torch.no_grad()
def mcmc(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 100, *, t: float | None = None,
         method: str = "mala", step_size: float = 1e-3, leapfrog_steps: int = 3, momentum_refresh: float = 0.0,
         process: SDE | None = None, noise: Randomness = None) -> SampleResult:
    """``steps`` MCMC steps at the single time ``t`` (default ``t_min``) targeting ``p_t`` (MATH.md 9).

    ``method``: ``"ula"``, ``"mala"`` or ``"hmc"`` (``leapfrog_steps`` steps of size ``sqrt(2 step_size)``,
    momentum kept with weight ``momentum_refresh`` between steps). Returns the acceptance rate too.
    """
    require(method in METHODS, f"unknown MCMC method {method!r}; choose one of {METHODS}")
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    require(step_size > 0, f"step_size must be positive, got {step_size}")
    model, process = resolve(model, process)
    if method != "ula":
        require_energy(model)
    t = process.t_min if t is None else t
    require(0 <= t <= 1, f"t must lie in [0, 1], got {t}")
    state = MCMCState(initial_noise(process, shape_or_x, noise, model))
    tt = as_time(t, state.x)
    for _ in range(steps):
        state = mcmc_step(model, state, tt, step_size, method, leapfrog_steps=leapfrog_steps,
                          momentum_refresh=momentum_refresh, noise=noise)
    finite_or_raise(state.x, "mcmc")
    rate = state.accepted / state.proposed if state.proposed else None
    return SampleResult(state.x, state.nfe, rate)
