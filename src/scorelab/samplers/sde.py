"""Stochastic samplers: Langevin dynamics, annealed Langevin, Euler-Maruyama and predictor-corrector (MATH.md 3-4).

Each works for every process it can: annealed Langevin runs NCSN's ladder (any model, through the NCSN
view); Euler-Maruyama and predictor-corrector run any SDE in its own time, VP, sub-VP, VE, DDPM, NCSN and
general SDEs alike. Predictor-corrector composes one predictor step and corrector steps, each from a table
(:data:`PREDICTORS`, :data:`CORRECTORS`) that also says what a step costs in network evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .._util import as_time, expand_as, is_int, require
from ..models import DiffusionModel, require_energy
from ..noise import Randomness, randn_like
from ..processes import SDE, require_kind
from ._common import (Callback, Projection, SampleResult, call_back, final_denoise, finite_or_raise, initial_noise,
                      posterior_step, projected, resolve)
from .grids import check_times, time_grid
from .mcmc import MCMCState, mcmc_step

__all__ = ["langevin_dynamics", "annealed_langevin", "euler_maruyama", "predictor_corrector", "PREDICTORS",
           "CORRECTORS", "Step", "default_snr", "pc_cost"]


class _Counter:
    """Counts network evaluations of a model's score."""

    def __init__(self, model: DiffusionModel):
        self.model, self.nfe = model, 0

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.model.predict(x, t).score

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.model.predict(x, t).x0


def _coefficients(process: SDE, t: float, project: Projection | None) -> tuple[float, float]:
    """``(a(t), s(t))`` for a ``project`` hook, which needs the Gaussian kernel of an affine process."""
    if project is None:
        return 1.0, 0.0
    require_kind(process, ("affine",), "projecting onto observations (a(t) and s(t))")
    a, s = process.coefficients(as_time(t))
    return float(a), float(s)


def _norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


def default_snr(process: SDE) -> float:
    """The Langevin corrector's signal-to-noise ratio ``r`` when none is given: score_sde's configs, 0.16 for
    processes that keep the signal's scale (``a(t) = 1``: VE, NCSN) and 0.01 for the others (MATH.md 4)."""
    keeps_scale = process.has_kind("affine") and float(process.signal_scale(1.0)) == 1.0
    return 0.16 if keeps_scale else 0.01


@torch.no_grad()
def langevin_dynamics(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 1000,
                      step_size: float = 1e-3, *, t: float | None = None, process: SDE | None = None,
                      noise: Randomness = None, project: Projection | None = None,
                      callback: Callback | None = None) -> SampleResult:
    """Langevin dynamics on one score (the survey's starting point; MATH.md 3).

    ``x_i = x_{i-1} + (gamma / 2) grad log p(x_{i-1}) + sqrt(gamma) w_i`` for ``steps``
    steps of size ``gamma = step_size``, with the model's score at the single time
    ``t`` (default ``t_min``, the least noise it knows), from ``x`` or a prior draw.
    It samples ``p`` as ``gamma -> 0`` and ``steps -> oo``, but between modes
    separated by low density it mixes too slowly to get their weights right:
    the failure annealed Langevin (:func:`annealed_langevin`) mends.
    """
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    require(step_size > 0, f"step_size must be positive, got {step_size}")
    model, process = resolve(model, process)
    t = process.t_min if t is None else t
    require(0 <= t <= 1, f"t must lie in [0, 1], got {t}")
    x = initial_noise(process, shape_or_x, noise, model)
    net = _Counter(model)
    tt = as_time(t, x)
    a_s = _coefficients(process, t, project)
    for i in range(steps):
        x = x + 0.5 * step_size * net.score(x, tt) + math.sqrt(step_size) * randn_like(x, noise)
        x = projected(project, x, *a_s)
        call_back(callback, i + 1, steps, t, x, net.nfe)
    finite_or_raise(x, "langevin_dynamics")
    return SampleResult(x, net.nfe)


@torch.no_grad()
def annealed_langevin(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, *,
                      epsilon: float = 2e-5, steps_per_level: int = 100, final_denoise: bool = True,
                      step_rule: str = "paper", times: Sequence[float] | Tensor | None = None,
                      process: SDE | None = None, noise: Randomness = None,
                      project: Projection | None = None, callback: Callback | None = None) -> SampleResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1; MATH.md 3).

    For each level ``i`` (largest sigma first), ``alpha_i = epsilon sigma_i^2 / sigma_L^2``
    and ``steps_per_level`` times ``x <- x + alpha_i / 2 score + sqrt(alpha_i) z``
    (``step_rule="paper"``, Algorithm 1). ``step_rule="code"`` is ermongroup/ncsn's
    ``anneal_Langevin_dynamics``, which made the paper's samples:
    ``x <- x + alpha_i score + sqrt(2 alpha_i) z``, twice the paper's step (the same as
    ``"paper"`` with ``2 epsilon``); that code also starts from U[0, 1] for data on
    [0, 1] (pass ``2 U[0, 1] - 1`` as ``shape_or_x`` for scorelab's [-1, 1]) where this
    function draws from the prior by default.
    ``final_denoise`` adds NCSNv2's ``x <- x + sigma_L^2 score(x, sigma_L)``.
    Runs on an NCSN ladder: the model's, or ``process=sl.NCSN(...)``; ``times`` (decreasing, on the ladder's
    VE time axis) picks other levels than its rungs.
    """
    model, ncsn = resolve(model, process)
    require_kind(ncsn, ("ncsn",), "annealed_langevin (it walks NCSN's sigma ladder)",
                 "pass process=sl.NCSN(...) to drive this model through a ladder, or use "
                 "predictor_corrector(predictor='none', corrector='annealed_langevin') on any process")
    require(epsilon > 0, f"epsilon must be positive, got {epsilon}")
    require(step_rule in ("paper", "code"), f"unknown step_rule {step_rule!r}; choose 'paper' (Song & Ermon's "
            "Algorithm 1) or 'code' (ermongroup/ncsn's twice-as-large step)")
    scale = 1.0 if step_rule == "paper" else 2.0                 # the code's alpha is twice the paper's
    require(is_int(steps_per_level) and steps_per_level >= 1,
            f"steps_per_level must be a positive integer, got {steps_per_level!r}")
    if times is None:                                            # the ladder's rungs
        level_times = [ncsn.level_to_time(level) for level in range(1, ncsn.num_scales + 1)]
        sigmas = ncsn.sigmas.tolist()
    else:
        grid = check_times(times)
        level_times, sigmas = list(grid), ncsn.sigma(grid).tolist()
    x = initial_noise(ncsn, shape_or_x, noise, model)
    net = _Counter(model)
    sigma_last = sigmas[-1]
    for level, (t, sigma) in enumerate(zip(level_times, sigmas), start=1):
        alpha = scale * epsilon * sigma**2 / sigma_last**2
        for _ in range(steps_per_level):
            x = x + 0.5 * alpha * net.score(x, t) + math.sqrt(alpha) * randn_like(x, noise)
            x = projected(project, x, 1.0, sigma)
        call_back(callback, level, len(sigmas), t.item(), x, net.nfe)
    if final_denoise:
        x = x + sigma_last**2 * net.score(x, level_times[-1])
        x = projected(project, x, 1.0, 0.0)
    finite_or_raise(x, "annealed_langevin")
    return SampleResult(x, net.nfe)


@torch.no_grad()
def euler_maruyama(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 1000, *,
                   times: Sequence[float] | Tensor | None = None, process: SDE | None = None, grid: str = "time",
                   t_min: float | None = None, t_max: float = 1.0, denoise: bool | None = None,
                   noise: Randomness = None, project: Projection | None = None,
                   callback: Callback | None = None) -> SampleResult:
    """Euler-Maruyama on the reverse-time SDE (the survey's Algorithm 3; MATH.md 4).

    ``x <- x + [f - g^2 score] dt + g sqrt(|dt|) z`` on ``steps`` steps from
    ``t = 1`` to ``t_min`` (or between the ``times`` given); the last step adds no noise (score_sde's noise
    removal). ``denoise`` then returns ``E[x0 | x_{t_min}]`` (one more NFE; by
    default for affine processes, never for a general SDE, which has no Tweedie formula). It is
    :func:`predictor_corrector` with that predictor and no corrector.
    """
    return predictor_corrector(model, shape_or_x, steps, predictor="euler_maruyama", corrector="none",
                               times=times, process=process, grid=grid, t_min=t_min, t_max=t_max, denoise=denoise,
                               noise=noise, project=project, callback=callback)


# ---- the predictor and corrector steps ---------------------------------------------------
def _reverse_diffusion(net: _Counter, process: SDE, x: Tensor, t: Tensor, t_next: Tensor, last: bool,
                       noise: Randomness) -> Tensor:
    """``x <- x - f_i + G_i^2 score + G_i z`` with the process's discretization (:meth:`SDE.discretize`)."""
    f, g2 = process.discretize(x, t, t_next)
    x = x - f + expand_as(g2, x) * net.score(x, t)
    if not last:
        x = x + expand_as(g2.clamp(min=0).sqrt(), x) * randn_like(x, noise)
    return x


def _euler_maruyama(net: _Counter, process: SDE, x: Tensor, t: Tensor, t_next: Tensor, last: bool,
                    noise: Randomness) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE."""
    dt = t_next[0].item() - t[0].item()
    x = x + process.reverse_drift(x, t, net.score(x, t)) * dt
    if not last:
        x = x + expand_as(process.diffusion(t), x) * math.sqrt(-dt) * randn_like(x, noise)
    return x


def _ancestral(net: _Counter, process: SDE, x: Tensor, t: Tensor, t_next: Tensor, last: bool,
               noise: Randomness) -> Tensor:
    """A draw from the forward posterior (:func:`~scorelab.samplers._common.posterior_step`) in ``y = x / a``."""
    require_kind(process, ("affine",), "the ancestral predictor (a(t) and s(t))",
                 "use predictor='reverse_diffusion' or 'euler_maruyama'")
    a, a_next = process.signal_scale(t[0]).item(), process.signal_scale(t_next[0]).item()
    sigma, sigma_next = process.sigma(t[0]).item(), process.sigma(t_next[0]).item()
    y = x / a
    x0 = y + sigma * (net.score(x, t) * process.noise_std(t[0]).item())  # y - sigma eps, eps = -s(t) score
    return a_next * posterior_step(y, x0, sigma, sigma_next, noise, draw=not last)


def _langevin(net: _Counter, process: SDE, x: Tensor, t: Tensor, t_next: Tensor, snr: float, snr_norm: str,
              noise: Randomness) -> Tensor:
    """``x + e score + sqrt(2 e) z`` with ``e = 2 alpha (r ||z|| / ||score||)^2`` (Song et al. 2021, Alg. 4)."""
    alpha = expand_as(process.langevin_alpha(t, t_next), x)
    score = net.score(x, t)
    z = randn_like(x, noise)
    z_norm, s_norm = _norm(z), _norm(score)
    if snr_norm == "batch":
        z_norm, s_norm = z_norm.mean(), s_norm.mean()
    e = 2 * alpha * expand_as((snr * z_norm / s_norm) ** 2, x)
    return x + e * score + torch.sqrt(2 * e) * z


def _annealed_langevin(net: _Counter, process: SDE, x: Tensor, t: Tensor, t_next: Tensor, snr: float, snr_norm: str,
                       noise: Randomness) -> Tensor:
    """``x + e score + sqrt(2 e) z`` with ``e = 2 alpha (r s(t))^2`` (NCSN's step at the level's sigma)."""
    require_kind(process, ("affine",), "the annealed Langevin corrector (s(t))", "use corrector='langevin'")
    alpha = expand_as(process.langevin_alpha(t, t_next), x)
    score = net.score(x, t)
    z = randn_like(x, noise)
    e = 2 * alpha * expand_as((snr * process.noise_std(t)) ** 2, x)
    return x + e * score + torch.sqrt(2 * e) * z


@dataclass(frozen=True)
class Step:
    """A predictor or corrector of :func:`predictor_corrector`: its function (None: no step, or the Metropolis
    correctors, which run a chain) and its network evaluations per step, from the sampler's options."""

    run: Callable[..., Tensor] | None
    cost: Callable[[dict[str, Any]], int]
    metropolis: bool = False


#: Predictors: ``run(net, process, x, t, t_next, last, noise)``, one network call each.
PREDICTORS: dict[str, Step] = {
    "reverse_diffusion": Step(_reverse_diffusion, lambda o: 1),
    "euler_maruyama": Step(_euler_maruyama, lambda o: 1),
    "ancestral": Step(_ancestral, lambda o: 1),
    "none": Step(None, lambda o: 0),
}


def _metropolis_starts(o: dict[str, Any]) -> int:
    """Energies where a Metropolis chain starts at one level: once, or after every step when a projection moves
    the state."""
    return o["corrector_steps"] if o["project"] is not None else min(o["corrector_steps"], 1)


#: Correctors: ``run(net, process, x, t, t_next, snr, snr_norm, noise)``; a level's cost is ``cost(options)``.
CORRECTORS: dict[str, Step] = {
    "langevin": Step(_langevin, lambda o: o["corrector_steps"]),
    "annealed_langevin": Step(_annealed_langevin, lambda o: o["corrector_steps"]),
    "mala": Step(None, lambda o: _metropolis_starts(o) + o["corrector_steps"], metropolis=True),
    "hmc": Step(None, lambda o: _metropolis_starts(o) + o["corrector_steps"] * o["leapfrog_steps"], metropolis=True),
    "none": Step(None, lambda o: 0),
}


def pc_cost(steps: int, process: SDE, options: dict[str, Any]) -> int:
    """Network evaluations per sample of :func:`predictor_corrector` with ``steps`` and its (resolved)
    ``options``, on the process it runs on: each step's predictor and corrector level, then the final
    denoising."""
    per_step = PREDICTORS[options["predictor"]].cost(options) + CORRECTORS[options["corrector"]].cost(options)
    return steps * per_step + int(final_denoise(process, options["denoise"]))


def _check_pc_options(predictor: str, corrector: str, corrector_steps: int, snr_norm: str,
                      target_acceptance: float | None) -> None:
    require(predictor in PREDICTORS, f"unknown predictor {predictor!r}; choose one of {tuple(PREDICTORS)}")
    require(corrector in CORRECTORS, f"unknown corrector {corrector!r}; choose one of {tuple(CORRECTORS)}")
    require(predictor != "none" or (corrector != "none" and corrector_steps >= 1),
            "with predictor='none' the corrector does all the work: choose a corrector and corrector_steps >= 1")
    require(snr_norm in ("sample", "batch"), f"unknown snr_norm {snr_norm!r}; choose 'sample' or 'batch'")
    require(is_int(corrector_steps) and corrector_steps >= 0,
            f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
    require(target_acceptance is None or 0 < target_acceptance < 1,
            f"target_acceptance must lie in (0, 1), got {target_acceptance}")


def _metropolis_level(model: DiffusionModel, chain: MCMCState, x: Tensor, t: Tensor, e: Tensor, corrector: str,
                      steps: int, at_t: tuple[float, float], project: Projection | None, noise: Randomness,
                      **kernel: Any) -> tuple[Tensor, float | None]:
    """``steps`` MALA or HMC corrector steps at time ``t`` from ``x`` (tallied in ``chain``); returns the new ``x``
    and this level's acceptance rate. A projection moves the state, so its energy is recomputed after it."""
    accepted, proposed = chain.accepted, chain.proposed
    chain.x, chain.energy, chain.score = x, None, None
    for _ in range(steps):
        chain = mcmc_step(model, chain, t, e, corrector, noise=noise, **kernel)
        if project is not None:
            chain.x = projected(project, chain.x, *at_t)
            chain.energy = chain.score = None
    done = chain.proposed - proposed
    return chain.x, ((chain.accepted - accepted) / done if done else None)


def _correct(model: DiffusionModel, net: _Counter, process: SDE, corrector: str, x: Tensor, t: Tensor,
             t_next: Tensor, at_t: tuple[float, float], *, steps: int, target_snr: float, snr_norm: str,
             chain: MCMCState, scale: float, target_acceptance: float | None, project: Projection | None,
             noise: Randomness, kernel: dict[str, Any]) -> tuple[Tensor, float]:
    """One noise level's ``steps`` corrector steps from ``x`` at ``t``: Langevin-type ones on the score, or
    Metropolis-adjusted ones on the energy (step scaled by ``scale``, which moves toward
    ``target_acceptance``). Returns the new ``x`` and step scale."""
    chosen = CORRECTORS[corrector]
    if chosen.metropolis:
        e = scale * 2 * process.langevin_alpha(t, t_next) * (target_snr * process.noise_std(t)) ** 2
        x, rate = _metropolis_level(model, chain, x, t, e, corrector, steps, at_t, project, noise, **kernel)
        if target_acceptance is not None and rate is not None:
            scale *= math.exp(rate - target_acceptance)
    elif chosen.run is not None:
        for _ in range(steps):
            x = projected(project, chosen.run(net, process, x, t, t_next, target_snr, snr_norm, noise), *at_t)
    return x, scale


@torch.no_grad()
def predictor_corrector(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 1000, *,
                        predictor: str = "reverse_diffusion", corrector: str = "langevin",
                        corrector_steps: int = 1, target_snr: float | None = None,
                        snr_norm: str = "sample", times: Sequence[float] | Tensor | None = None,
                        process: SDE | None = None, grid: str = "time",
                        t_min: float | None = None, t_max: float = 1.0, denoise: bool | None = None,
                        leapfrog_steps: int = 3, momentum_refresh: float = 0.0,
                        target_acceptance: float | None = None, noise: Randomness = None,
                        project: Projection | None = None, callback: Callback | None = None) -> SampleResult:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3; MATH.md 4).

    At each time ``t_i`` of the grid: ``corrector_steps`` corrector steps,
    then a predictor step to ``t_{i+1}``. The grid is ``times`` (``steps + 1`` decreasing times; a grid of
    :mod:`~scorelab.samplers.grids`), or ``steps`` steps of the ``grid`` kind from ``t_max`` (default 1; below it,
    from a given ``x`` at that time, as SDEdit does) to ``t_min``. Predictors (:data:`PREDICTORS`):

    * ``"reverse_diffusion"``: ``x <- x - f_i + G_i^2 score + G_i z`` with the
      process's discretization ``x_t = x + f_i + G_i z`` (:meth:`SDE.discretize`): the
      exact ``x_{i} = r x_{i+1} + G z`` of an affine process, ``r = a(t_i) / a(t_{i+1})``,
      ``G^2 = s(t_i)^2 - r^2 s(t_{i+1})^2``, ``f_i = (r - 1) x`` (for VP this is DDPM's
      beta_i, for VE NCSN's ``sigma_i^2 - sigma_{i-1}^2``); Euler-Maruyama's for a general SDE;
    * ``"euler_maruyama"``: one Euler-Maruyama step;
    * ``"ancestral"``: a draw from the forward posterior (DDIM with eta = 1);
    * ``"none"``: corrector only.

    Correctors (:data:`CORRECTORS`): ``"langevin"``, ``x <- x + e score + sqrt(2 e) z`` with
    ``e = 2 alpha (r ||z|| / ||score||)^2``, ``r`` the target signal-to-noise
    ratio (default :func:`default_snr`: 0.16 for VE, 0.01 otherwise) and
    ``alpha = a(t_i)^2 / a(t_{i+1})^2`` (1 for VE and general SDEs; score_sde's
    ``1 - beta_i`` for VP); ``"annealed_langevin"``, ``e = 2 alpha (r s(t))^2``;
    ``"mala"`` and ``"hmc"``, Metropolis-adjusted steps of size ``e = 2 alpha (r s(t))^2`` on the
    model's energy, accepted or rejected per sample (:mod:`scorelab.samplers.mcmc`; HMC takes
    ``leapfrog_steps`` steps of ``sqrt(2 e)``, its momentum kept between corrector steps with weight
    ``momentum_refresh``); ``target_acceptance`` scales their step between noise levels toward that
    acceptance rate; the result reports the rate. ``"none"``. ``snr_norm="sample"`` takes the norms per sample, so
    sample k does not depend on its batch; ``"batch"`` averages them over the batch as
    score_sde does. In high dimension the two agree; in a few dimensions the
    per-sample rule is unstable (a sample where the score nearly vanishes takes
    a huge step): use ``"batch"`` or the annealed corrector there. The last
    predictor step adds no noise; ``denoise`` then returns ``E[x0 | x_{t_min}]``
    (default: for affine processes). ``project`` is applied after every predictor and
    corrector step (Song et al.'s imputation, :mod:`scorelab.conditional`). On a general SDE the reverse-diffusion
    and Euler-Maruyama predictors and the Langevin corrector work; the ancestral
    predictor and annealed corrector need ``a(t), s(t)``.
    """
    _check_pc_options(predictor, corrector, corrector_steps, snr_norm, target_acceptance)
    model, process = resolve(model, process)
    target_snr = default_snr(process) if target_snr is None else target_snr
    require(target_snr > 0, f"target_snr must be positive, got {target_snr}")
    chosen = CORRECTORS[corrector]
    if chosen.metropolis:
        require_energy(model)
    times = time_grid(process, steps, grid, t_min=t_min, t_max=t_max) if times is None else check_times(times)
    steps = len(times) - 1
    require(steps >= 1, "predictor_corrector's times need at least two entries (one step)")
    x = initial_noise(process, shape_or_x, noise, model)
    net = _Counter(model)
    chain, scale = MCMCState(x), 1.0                      # the Metropolis correctors' tallies and step scale
    for i in range(steps):
        t_val, t_next_val = times[i].item(), times[i + 1].item()
        t, t_next = as_time(t_val, x), as_time(t_next_val, x)
        x, scale = _correct(model, net, process, corrector, x, t, t_next, _coefficients(process, t_val, project),
                            steps=corrector_steps, target_snr=target_snr, snr_norm=snr_norm, chain=chain,
                            scale=scale, target_acceptance=target_acceptance, project=project, noise=noise,
                            kernel={"leapfrog_steps": leapfrog_steps, "momentum_refresh": momentum_refresh})
        step = PREDICTORS[predictor].run
        if step is not None:
            x = step(net, process, x, t, t_next, i + 1 == steps, noise)
        x = projected(project, x, *_coefficients(process, t_next_val, project))
        call_back(callback, i + 1, steps, t_next_val, x, net.nfe + chain.nfe)
    if final_denoise(process, denoise):
        x = net.x0(x, as_time(times[-1], x))
        x = projected(project, x, 1.0, 0.0)
    finite_or_raise(x, "predictor_corrector")
    rate = chain.accepted / chain.proposed if chain.proposed else None
    return SampleResult(x, net.nfe + chain.nfe, rate)
