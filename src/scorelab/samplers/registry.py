"""Every sampler by name, in one table: its function, the process it runs on and its cost (DESIGN.md 3).

``sample(model, shape, "pc", steps=500)`` picks the process a sampler needs
from the model's own (MATH.md 4, Song et al. 2021, Table 1):

* ``ancestral``: DDPM's chain (Algorithm 2) for a DDPM model; any other
  model runs DDIM with ``eta = 1``, the same ancestral step on its own grid.
* ``pc``, ``em``: the reverse SDE of the model's continuous process: a DDPM
  model's VP SDE, an NCSN model's VE SDE, or the SDE it was trained with.
* ``langevin``: annealed Langevin dynamics on an NCSN ladder (the model's,
  or NCSNv1's 10 levels over the model's sigma range).
* ``ode`` (adaptive RK45), ``heun``, ``dpm++2m``, ``dpm++3m``, ``ddim``: any affine process.
* ``ld``: Langevin dynamics on the single least-noise score (Song & Ermon's
  starting point, which annealing improves on).

On a general SDE (a non-affine drift, MATH.md 7) only ``em``, ``pc``, ``ode`` and
``ld`` run: they need ``f``, ``g`` and the score, never ``a(t), s(t)``.
Each entry declares ``nfe(steps, process, options)``, the network evaluations
per sample (tested against every sampler's own count); the CLI, ``evaluate``
and the benchmarks read it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .._util import require
from ..models import DiffusionModel
from ..processes import DDPM, NCSN, SDE
from ._common import NoiseLike, SampleResult
from .ancestral import ddim, ddpm_ancestral
from .multinomial import multinomial_ancestral
from .ode import dpm_solver_pp_2m, dpm_solver_pp_3m, ode_heun, ode_rk45, unipc
from .sde import annealed_langevin, euler_maruyama, langevin_dynamics, predictor_corrector

__all__ = ["SAMPLERS", "REGISTRY", "SamplerEntry", "sample", "sde_process", "sampler_nfe", "steps_for_nfe"]

Bind = Callable[[SDE], tuple[Callable[..., SampleResult], dict[str, Any]]]


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler: what it is, the function and fixed arguments it runs with on a model's process
    (``bind``), the keyword its ``steps`` go to, its default steps, its cost, and whether any SDE will do."""

    describe: str
    bind: Bind
    default_steps: Callable[[SDE], int] | None          # None: adaptive (no steps)
    nfe: Callable[[int, SDE, dict[str, Any]], int] | None
    steps_keyword: str = "steps"
    any_sde: bool = False
    discrete: bool = False                              # for categorical data (multinomial diffusion)


def sde_process(process: SDE) -> SDE:
    """The continuous SDE a discrete process discretizes (DDPM -> VP, NCSN -> VE), else itself."""
    return process.sampling_sde()


def _ladder(process: SDE) -> NCSN:
    """The NCSN ladder annealed Langevin walks: the model's, or NCSNv1's 10 levels over its sigmas."""
    if isinstance(process, NCSN):
        return process
    return NCSN(sigma_max=float(process.sigma(1.0)), sigma_min=float(process.sigma(process.t_min)), num_scales=10)


def _denoise(process: SDE, options: dict[str, Any]) -> int:
    """The final Tweedie call of the SDE samplers: by default on affine processes only."""
    denoise = options.get("denoise")
    return int(process.affine if denoise is None else denoise)


def _pc_nfe(steps: int, process: SDE, options: dict[str, Any]) -> int:
    corrector = options.get("corrector", "langevin")
    k = options.get("corrector_steps", 1)
    if corrector in ("mala", "hmc"):           # the energy where the chain starts, then one per proposal
        # (a projection moves the state, so with ``project`` every step starts from a fresh energy)
        starts = k if options.get("project") is not None else min(k, 1)
        correct = starts + k * (options.get("leapfrog_steps", 3) if corrector == "hmc" else 1)
    else:
        correct = (corrector != "none") * k
    per_step = (options.get("predictor", "reverse_diffusion") != "none") + correct
    return steps * per_step + _denoise(sde_process(process), options)


#: The one table of samplers.
REGISTRY: dict[str, SamplerEntry] = {
    "ancestral": SamplerEntry(
        "DDPM ancestral sampling (Ho et al. Alg. 2); steps = respaced steps (default: all T)",
        lambda p: (ddpm_ancestral, {}) if isinstance(p, DDPM) else (ddim, {"eta": 1.0}),
        lambda p: p.num_steps if isinstance(p, DDPM) else 50, lambda s, p, o: s),
    "ddim": SamplerEntry("DDIM, eta = 0 (Song, Meng & Ermon); steps (default 50)",
                         lambda p: (ddim, {}), lambda p: 50, lambda s, p, o: s),
    "pc": SamplerEntry("predictor-corrector: reverse diffusion + Langevin (Song et al. 2021); steps (default 1000)",
                       lambda p: (predictor_corrector, {"process": sde_process(p)}), lambda p: 1000, _pc_nfe,
                       any_sde=True),
    "em": SamplerEntry("Euler-Maruyama on the reverse SDE (Song et al. 2021); steps (default 1000)",
                       lambda p: (euler_maruyama, {"process": sde_process(p)}), lambda p: 1000,
                       lambda s, p, o: s + _denoise(sde_process(p), o), any_sde=True),
    "ode": SamplerEntry("probability-flow ODE, adaptive RK45 (Song et al. 2021); steps ignored",
                        lambda p: (ode_rk45, {}), None, None, any_sde=True),
    "heun": SamplerEntry("EDM's Heun sampler (Karras et al. 2022); steps (default 18, 2 NFE each but the last)",
                         lambda p: (ode_heun, {}), lambda p: 18, lambda s, p, o: 2 * s - 1),
    "dpm++2m": SamplerEntry("DPM-Solver++(2M) (Lu et al. 2022); steps (default 20)",
                            lambda p: (dpm_solver_pp_2m, {}), lambda p: 20, lambda s, p, o: s),
    "dpm++3m": SamplerEntry("DPM-Solver++(3M) (Lu et al. 2022), third-order multistep; steps (default 20)",
                            lambda p: (dpm_solver_pp_3m, {}), lambda p: 20, lambda s, p, o: s),
    "unipc": SamplerEntry("UniPC (Zhao et al. 2023), multistep predictor-corrector, order 2 (order=3 too); "
                          "steps (default 20)", lambda p: (unipc, {}), lambda p: 20, lambda s, p, o: s),
    "langevin": SamplerEntry(
        "annealed Langevin dynamics (Song & Ermon 2019); steps = steps per level (default 100)",
        lambda p: (annealed_langevin, {"process": _ladder(p)}), lambda p: 100,
        lambda s, p, o: _ladder(p).num_scales * s + int(o.get("final_denoise", True)),
        steps_keyword="steps_per_level"),
    "ld": SamplerEntry("Langevin dynamics on one score, the least-noise one (MATH.md 3); steps (default 1000), "
                       "step_size", lambda p: (langevin_dynamics, {}), lambda p: 1000, lambda s, p, o: s,
                       any_sde=True),
    "multinomial": SamplerEntry(
        "ancestral sampling of multinomial diffusion (Hoogeboom et al. 2021), factorized or autoregressive "
        "transitions; steps = a subsequence of the T steps (default all; D calls each when autoregressive)",
        lambda p: (multinomial_ancestral, {}), lambda p: p.num_steps, lambda s, p, o: s, discrete=True),
}
#: Sampler names and what ``steps`` means for each.
SAMPLERS: dict[str, str] = {name: entry.describe for name, entry in REGISTRY.items()}
#: The samplers that need only f, g and the score, so run on every SDE (MATH.md 7).
#: (``multinomial`` is the one for categorical data, MATH.md 10.)
ANY_SDE = tuple(name for name, entry in REGISTRY.items() if entry.any_sde)


def _entry(sampler: str, process: SDE) -> SamplerEntry:
    require(sampler in REGISTRY, f"unknown sampler {sampler!r}; choose one of {list(REGISTRY)}")
    discrete = bool(getattr(process, "discrete", False))
    if discrete or REGISTRY[sampler].discrete:
        fits = [name for name, entry in REGISTRY.items() if entry.discrete == discrete]
        require(REGISTRY[sampler].discrete == discrete, f"sampler {sampler!r} does not run on "
                f"{type(process).__name__} ({'categorical' if discrete else 'continuous'} data); use one of {fits}")
        return REGISTRY[sampler]
    require(process.affine or REGISTRY[sampler].any_sde,
            f"sampler {sampler!r} needs a(t) and s(t) of an affine process, and {type(process).__name__}'s drift is "
            f"not affine; on a general SDE use one of {list(ANY_SDE)}")
    return REGISTRY[sampler]


def _check_options(sampler: str, function: Callable, options: dict[str, Any]) -> None:
    """Refuse options the chosen sampler does not take, naming the ones it does."""
    fixed = {"self", "model", "shape_or_x", "steps", "noise", "process", "steps_per_level"}
    accepted = [p for p in inspect.signature(function).parameters if p not in fixed]
    unknown = sorted(set(options) - set(accepted))
    require(not unknown, f"sampler {sampler!r} takes no option {unknown}; it takes {accepted}")


def sampler_nfe(process: SDE, sampler: str, steps: int | None = None, **options: Any) -> int | None:
    """Network evaluations per sample of ``sampler`` with ``steps`` (its default when None) on a model of
    ``process``; None for the adaptive ODE solver."""
    entry = _entry(sampler, process)
    if entry.nfe is None:
        return None
    return entry.nfe(entry.default_steps(process) if steps is None else steps, process, options)


def steps_for_nfe(process: SDE, sampler: str, nfe: int, **options: Any) -> int:
    """The most steps of ``sampler`` whose network evaluations do not exceed ``nfe`` (e.g. Heun's
    ``2 steps - 1``, PC's ``2 steps + 1``), from the table's declared cost."""
    entry = _entry(sampler, process)
    require(entry.nfe is not None, f"{sampler!r} is adaptive: its NFE follows rtol, not a number of steps")
    cost = lambda s: entry.nfe(s, process, options)                      # noqa: E731
    require(cost(2) > cost(1), f"the sampler {sampler!r} does not spend network calls per step")
    require(cost(1) <= nfe, f"{sampler} needs at least {cost(1)} network calls; {nfe} is too few")
    steps = 1
    while cost(steps + 1) <= nfe:                                        # costs grow linearly: a short walk
        steps += 1
    return steps


def sample(model: DiffusionModel, shape: Sequence[int], sampler: str = "ancestral", steps: int | None = None, *,
           noise: NoiseLike = None, **options: Any) -> SampleResult:
    """Draw ``shape`` samples with the named sampler (see :data:`REGISTRY`); ``options`` go to it."""
    require(steps is None or (isinstance(steps, int) and steps > 0), f"steps must be a positive integer, got {steps!r}")
    entry = _entry(sampler, model.process)
    function, fixed = entry.bind(model.process)
    _check_options(sampler, function, options)
    kw: dict[str, Any] = {**fixed, **options}
    if steps is not None and entry.default_steps is not None:
        kw[entry.steps_keyword] = steps
    return function(model, shape, noise=noise, **kw)
