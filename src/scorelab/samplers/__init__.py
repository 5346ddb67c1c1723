"""Samplers of the three frameworks and beyond (MATH.md 2-5, 9).

Every sampler is a plain function ``(model, shape or x_T, steps, *, times, process, noise, callback) ->
SampleResult(samples, nfe)``, but :func:`annealed_langevin` (``steps_per_level``) and the adaptive
:func:`ode_rk45` (tolerances; no steps, no callback); see each function's docstring for its paper and
algorithm. Time grids are data (:mod:`~scorelab.samplers.grids`); :mod:`~scorelab.samplers.registry` names
each sampler once with what it takes and what it costs, and :func:`sample` draws with any of them by name.
"""

from ..noise import PerSampleNoise
from . import grids, mcmc
from ._common import Projection, SampleResult, StepInfo, posterior_step
from .ancestral import ddim, ddpm_ancestral
from .batched import map_chunks, sample_many
from .grids import evaluation_times, respaced_steps, time_grid
from .mcmc import mcmc_step
from .particles import SMCResult
from .ode import (dopri5, dpm_solver_pp_2m, dpm_solver_pp_3m, ipndm, ode_euler, ode_heun, ode_rk45,
                  solve_probability_flow, unipc)
from .registry import (REGISTRY, SAMPLERS, SamplerEntry, register_sampler, sample, sampler_entry, sampler_nfe,
                       samplers_for, sde_process, steps_for_nfe)
from .smc import smc_sampler
from .sde import (CORRECTORS, PREDICTORS, annealed_langevin, default_snr, euler_maruyama, langevin_dynamics,
                  predictor_corrector)

__all__ = [
    "SampleResult", "StepInfo", "Projection", "PerSampleNoise", "time_grid", "evaluation_times", "respaced_steps",
    "grids", "ddpm_ancestral", "ddim", "langevin_dynamics", "annealed_langevin", "euler_maruyama",
    "predictor_corrector", "PREDICTORS", "CORRECTORS", "default_snr", "ode_rk45", "ode_euler", "ode_heun",
    "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc", "ipndm", "dopri5", "solve_probability_flow", "posterior_step",
    "mcmc", "mcmc_step", "SAMPLERS", "REGISTRY", "SamplerEntry", "register_sampler", "sampler_entry", "samplers_for",
    "sample", "sampler_nfe", "steps_for_nfe", "sde_process", "sample_many", "map_chunks", "smc_sampler", "SMCResult",
]
