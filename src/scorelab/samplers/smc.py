"""An SMC sampler over the noise levels (Del Moral, Doucet & Jasra 2006; MATH.md 12): samples and the
normalizing constant of ``exp(-U(x, t_min))`` for a model with an energy, including products of energies
(:mod:`scorelab.compose`) whose modes separate, where annealed MCMC alone keeps the wrong mode weights.

The batch is one population of ``N`` weighted particles; the target at time ``t_i`` of the grid is
``pi_i(x) ∝ exp(-U(x, t_i))``. Particles start from the process's prior, weighted by ``exp(-U) / prior``;
from ``t`` to ``t' < t`` each moves by the reverse-diffusion step of the predictor-corrector sampler,
``x' ~ q(x' | x) = N(x - f + G^2 score(x, t), G^2 I)`` (``x_t = x_t' + f + G z`` is the process's forward step),
and is reweighted by

    w = exp(-U(x', t')) L(x | x') / (exp(-U(x, t)) q(x' | x)),   L(x | x') = N(x; x' + f(x'), G^2 I),

the forward step as the backward kernel (any kernel keeps the weights exact; this one makes them nearly
constant where the summed score is the diffused target's). When the effective sample size falls below
``ess_threshold N`` the population is resampled (systematic), then MALA or HMC steps that leave ``pi_{t'}``
invariant (:mod:`scorelab.samplers.mcmc`) move it. The product of the levels' mean weights estimates
``Z = ∫ exp(-U(x, t_min)) dx``: for normalized parts (exact energies) the product's normalizing constant.
A trained energy is known only up to a constant per noise level, which cancels from the weights (the samples
stay exact) but shifts the evidence.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .._util import as_time, expand_as, is_int, require
from ..models import DiffusionModel, require_energy
from ..noise import PerSampleNoise, Randomness, randn_like
from ..processes import SDE
from ._common import Callback, call_back, finite_or_raise, initial_noise, resolve
from .grids import check_times, time_grid
from .mcmc import MCMCState, mcmc_step
from .particles import ParticleWeights, SMCResult, systematic_resample, take, uniform

__all__ = ["MOVES", "smc_sampler", "smc_sampler_cost"]

#: The MCMC moves of :func:`smc_sampler`, and the network evaluations of one move step.
MOVES = {"mala": lambda leapfrog_steps: 1, "hmc": lambda leapfrog_steps: leapfrog_steps, "none": lambda _: 0}
_CURE = ("(no particle carries weight): use more particles, more steps, or more MCMC moves per level")


def _sq(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).sum(1).double()


def smc_sampler_cost(steps: int, corrector: str, corrector_steps: int, leapfrog_steps: int) -> int:
    """Network evaluations per particle: the start, then per level the proposal's energy and the moves."""
    return 1 + steps * (1 + corrector_steps * MOVES[corrector](leapfrog_steps))


@torch.no_grad()
def smc_sampler(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 200, *,
                corrector: str = "mala", corrector_steps: int = 2, target_snr: float = 0.5, leapfrog_steps: int = 3,
                ess_threshold: float = 0.5, times: Sequence[float] | Tensor | None = None, grid: str = "time",
                t_min: float | None = None, process: SDE | None = None, noise: Randomness = None,
                callback: Callback | None = None) -> SMCResult:
    """Draw ``N`` equally weighted samples of ``exp(-U(x, t_min))`` from a population of ``N`` particles (see the
    module's text; MATH.md 12). ``steps`` levels of the ``grid`` kind (or ``times``), ``corrector_steps`` MALA or
    HMC moves per level (``corrector="none"``: importance weights and resampling alone) of step
    ``e = 2 alpha (target_snr s(t))^2``, the annealed rule of the predictor-corrector sampler. The result's
    ``log_evidence`` ``(1,)`` estimates ``log Z``, ``ess`` ``(steps + 1, 1)`` holds the effective sample size after
    each reweighting, ``particles`` ``(1, N, ...)`` and ``weights`` ``(1, N)`` the weighted population before the
    last resampling, ``acceptance`` the moves' acceptance rate. A starting population given as ``shape_or_x`` must
    be drawn from the process's prior: its first weights divide by the prior's density. The particles interact
    through resampling, so a sample depends on its whole population (with
    :class:`~scorelab.noise.PerSampleNoise`, particle ``k`` draws its moves from seed ``k`` and the population's
    resampling from seed 0)."""
    require(corrector in MOVES, f"unknown corrector {corrector!r} for the SMC sampler; choose one of {list(MOVES)}")
    require(is_int(corrector_steps) and corrector_steps >= 0,
            f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
    require(target_snr > 0, f"target_snr must be positive, got {target_snr}")
    require(isinstance(ess_threshold, (int, float)) and 0 <= ess_threshold <= 1,
            f"ess_threshold must lie in [0, 1], got {ess_threshold!r}")
    model, process = resolve(model, process)
    require_energy(model)
    times = time_grid(process, steps, grid, t_min=t_min) if times is None else check_times(times)
    levels = len(times) - 1
    x = initial_noise(process, shape_or_x, noise, model)
    n = x.shape[0]
    shared = noise.subset(range(1)) if isinstance(noise, PerSampleNoise) else noise   # the population's own draws
    weights = ParticleWeights(1, n, ess_threshold, shared, x.device, _CURE)
    t = as_time(times[0].item(), x)
    chain = MCMCState(x)
    chain.energy, chain.score = model.energy_and_score(x, t)
    nfe = 1
    weights.reweight((-chain.energy.double() - process.prior_log_prob(x).double())[None], 0, levels + 1)
    for i in range(levels):
        t_next = as_time(times[i + 1].item(), x)
        x, u, g = chain.x, chain.energy.double(), chain.score.to(x.dtype)
        f, var = process.discretize(x, t, t_next)                          # x_t = x_t' + f + G z, var = G^2
        var = torch.as_tensor(var, dtype=x.dtype, device=x.device).expand(n)
        mean = x - f + expand_as(var, x) * g
        x1 = mean + expand_as(var.sqrt(), x) * randn_like(x, noise)
        u1, g1 = model.energy_and_score(x1, t_next)
        nfe += 1
        back = x1 + process.discretize(x1, t, t_next)[0]
        log_inc = u - u1.double() + (_sq(x1 - mean) - _sq(x - back)) / (2 * var.double())
        ess = weights.reweight(log_inc[None], i + 1, levels + 1)
        chain.x, chain.energy, chain.score = x1, u1, g1
        picked = weights.resample(ess)
        if picked is not None:
            chain.x, chain.energy, chain.score = (take(v[None], picked)[0] for v in (x1, u1, g1))
        e = 2 * process.langevin_alpha(t, t_next) * (target_snr * process.noise_std(t_next)) ** 2
        for _ in range(corrector_steps if corrector != "none" else 0):
            chain = mcmc_step(model, chain, t_next, e, corrector, leapfrog_steps=leapfrog_steps, noise=noise)
        t = t_next
        call_back(callback, i + 1, levels, float(times[i + 1]), chain.x, nfe + chain.nfe)
    finite_or_raise(chain.x, "smc_sampler")
    particles, last = chain.x, weights.log_w.exp()
    out = take(particles[None], systematic_resample(last, uniform((1, 1), shared, x.device)))[0]   # equal weights
    rate = chain.accepted / chain.proposed if chain.proposed else None
    return SMCResult(out, nfe + chain.nfe, rate, log_evidence=weights.log_z, ess=torch.stack(weights.ess),
                     resamplings=weights.resamplings, particles=particles[None], weights=last)
