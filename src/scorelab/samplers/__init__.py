"""Samplers of the three frameworks and beyond (MATH.md 2-5).

Every sampler is a plain function ``(model, shape or x_T, steps, *, process,
noise, callback) -> SampleResult(samples, nfe)``. See each function's docstring
for its paper and algorithm.
"""

from ._common import PerSampleNoise, SampleResult, StepInfo, time_grid
from .ancestral import ddim, ddpm_ancestral, respaced_steps
from .ode import (dopri5, dpm_solver_pp_2m, dpm_solver_pp_3m, ode_euler, ode_heun, ode_rk45, solve_probability_flow,
                  unipc)
from .registry import REGISTRY, SAMPLERS, sample, sampler_nfe, sde_process, steps_for_nfe
from .sde import CORRECTORS, PREDICTORS, annealed_langevin, euler_maruyama, langevin_dynamics, predictor_corrector
from .batched import sample_many

__all__ = [
    "SampleResult", "StepInfo", "PerSampleNoise", "time_grid", "respaced_steps",
    "ddpm_ancestral", "ddim", "langevin_dynamics", "annealed_langevin", "euler_maruyama", "predictor_corrector",
    "PREDICTORS", "CORRECTORS", "ode_rk45", "ode_euler", "ode_heun", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc",
    "dopri5", "solve_probability_flow", "SAMPLERS", "REGISTRY", "sample", "sampler_nfe", "steps_for_nfe", "sde_process", "sample_many",
]
