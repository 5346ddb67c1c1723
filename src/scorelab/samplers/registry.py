"""Every sampler by name, with the process each one runs on: what the CLI and the demo call.

``sample(model, shape, "pc", steps=500)`` picks the process a sampler needs
from the model's own (MATH.md 4, Song et al. 2021, Table 1):

* ``ancestral``: DDPM's chain (Algorithm 2) for a DDPM model; any other
  model runs DDIM with ``eta = 1``, the same ancestral step on its own grid.
* ``pc``, ``em``: the reverse SDE of the model's continuous process: a DDPM
  model's VP SDE, an NCSN model's VE SDE, or the SDE it was trained with.
* ``langevin``: annealed Langevin dynamics on an NCSN ladder (the model's,
  or an NCSN with the model's sigma range and ``steps`` levels).
* ``ode`` (adaptive RK45), ``heun``, ``dpm++2m``, ``ddim``: any affine process.
* ``ld``: Langevin dynamics on the single least-noise score (Song & Ermon's
  starting point, which annealing improves on).

On a general SDE (a non-affine drift, MATH.md 7) only ``em``, ``pc``, ``ode`` and
``ld`` run: they need ``f``, ``g`` and the score, never ``a(t), s(t)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from .._util import require
from ..models import DiffusionModel
from ..processes import DDPM, NCSN, SDE
from ._common import NoiseLike, SampleResult
from .ancestral import ddim, ddpm_ancestral
from .ode import dpm_solver_pp_2m, ode_heun, ode_rk45
from .sde import annealed_langevin, euler_maruyama, langevin_dynamics, predictor_corrector

__all__ = ["SAMPLERS", "sample", "sde_process"]

#: Sampler names and what ``steps`` means for each (None: the sampler's default).
SAMPLERS: dict[str, str] = {
    "ancestral": "DDPM ancestral sampling (Ho et al. Alg. 2); steps = respaced steps (default: all T)",
    "ddim": "DDIM, eta = 0 (Song, Meng & Ermon); steps (default 50)",
    "pc": "predictor-corrector: reverse diffusion + Langevin (Song et al. 2021); steps (default 1000)",
    "em": "Euler-Maruyama on the reverse SDE (Song et al. 2021); steps (default 1000)",
    "ode": "probability-flow ODE, adaptive RK45 (Song et al. 2021); steps ignored",
    "heun": "EDM's Heun sampler (Karras et al. 2022); steps (default 18, 2 NFE each)",
    "dpm++2m": "DPM-Solver++(2M) (Lu et al. 2022); steps (default 20)",
    "langevin": "annealed Langevin dynamics (Song & Ermon 2019); steps = steps per level (default 100)",
    "ld": "Langevin dynamics on one score, the least-noise one (MATH.md 3); steps (default 1000), step_size",
}
#: The samplers that need only f, g and the score, so run on every SDE (MATH.md 7).
ANY_SDE = ("em", "pc", "ode", "ld")


def sde_process(process: SDE) -> SDE:
    """The continuous SDE a discrete process discretizes (DDPM -> VP, NCSN -> VE), else itself."""
    return process.sampling_sde()


def _function(sampler: str, process: SDE):
    return {"ancestral": ddpm_ancestral if isinstance(process, DDPM) else ddim, "ddim": ddim,
            "pc": predictor_corrector, "em": euler_maruyama, "ode": ode_rk45, "heun": ode_heun,
            "dpm++2m": dpm_solver_pp_2m, "langevin": annealed_langevin, "ld": langevin_dynamics}[sampler]


def _check_options(sampler: str, options: dict[str, Any], process: SDE) -> None:
    """Refuse options the chosen sampler does not take, naming the ones it does."""
    fixed = {"self", "model", "shape_or_x", "steps", "noise", "process", "steps_per_level"}
    accepted = [p for p in inspect.signature(_function(sampler, process)).parameters if p not in fixed]
    unknown = sorted(set(options) - set(accepted))
    require(not unknown, f"sampler {sampler!r} takes no option {unknown}; it takes {accepted}")


def sample(model: DiffusionModel, shape: Sequence[int], sampler: str = "ancestral", steps: int | None = None, *,
           noise: NoiseLike = None, **options: Any) -> SampleResult:
    """Draw ``shape`` samples with the named sampler (see :data:`SAMPLERS`); ``options`` go to it."""
    require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    require(steps is None or (isinstance(steps, int) and steps > 0), f"steps must be a positive integer, got {steps!r}")
    process = model.process
    require(process.affine or sampler in ANY_SDE,
            f"sampler {sampler!r} needs a(t) and s(t) of an affine process, and {type(process).__name__}'s drift is "
            f"not affine; on a general SDE use one of {list(ANY_SDE)}")
    _check_options(sampler, options, process)
    kw: dict[str, Any] = dict(noise=noise, **options)
    if steps is not None and sampler not in ("ode", "langevin"):
        kw["steps"] = steps
    if sampler == "ancestral":
        if isinstance(process, DDPM):
            return ddpm_ancestral(model, shape, **kw)
        kw.setdefault("eta", 1.0)
        return ddim(model, shape, **kw)
    if sampler == "ddim":
        return ddim(model, shape, **kw)
    if sampler in ("pc", "em"):
        sde = sde_process(process)
        if sampler == "em":
            return euler_maruyama(model, shape, process=sde, **kw)
        return predictor_corrector(model, shape, process=sde, **kw)
    if sampler == "ode":
        return ode_rk45(model, shape, **kw)
    if sampler == "ld":
        return langevin_dynamics(model, shape, **kw)
    if sampler == "heun":
        return ode_heun(model, shape, **kw)
    if sampler == "dpm++2m":
        return dpm_solver_pp_2m(model, shape, **kw)
    ladder = process
    if not isinstance(process, NCSN):                 # NCSNv1's 10 geometric levels over the model's sigmas
        ladder = NCSN(sigma_max=float(process.sigma(1.0)), sigma_min=float(process.sigma(process.t_min)),
                      num_scales=10)
    if steps is not None:
        kw["steps_per_level"] = steps
    return annealed_langevin(model, shape, process=ladder, **kw)
