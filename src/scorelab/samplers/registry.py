"""Every sampler by name, in one table: what it runs on, its options, its cost (docs/DESIGN.md, "Contracts").

Each :class:`SamplerEntry` declares, once, what callers ask of a sampler: the process kinds it takes, the
process it runs on given a model's (``pc`` and ``em`` run a DDPM model on its VP SDE, Song et al. 2021,
Table 1), its options and their defaults (read here, once, from its function), whether it applies a
projection hook after every step (``project``: inpainting by replacement; declared, and checked against the
function by tests/test_architecture.py) and an explicit time grid (``times``), the grid it
walks when it starts below ``t = 1`` (SDEdit), and its cost ``nfe(steps, process, options)`` in network
evaluations per sample (tested against every sampler's own count). The CLI, ``evaluate``, the conditional
methods and the benchmarks read the table; :func:`register_sampler` adds to it (``scorelab.discrete``
registers its ``multinomial`` sampler, and a user can register theirs).

* ``ancestral``: DDPM's chain (Algorithm 2) for a DDPM model; any other affine model runs DDIM with
  ``eta = 1``, the same ancestral step on its own grid.
* ``pc``, ``em``: the reverse SDE of the model's continuous process; any SDE.
* ``langevin``: annealed Langevin dynamics on an NCSN ladder (the model's, or NCSNv1's 10 levels over the
  model's sigma range).
* ``ode`` (adaptive RK45): any SDE; ``heun``, ``dpm++2m``, ``dpm++3m``, ``unipc``, ``ipndm``, ``ddim``: any affine
  process.
* ``ld``: Langevin dynamics on the single least-noise score (Song & Ermon's starting point).
"""

from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import Tensor

from .._util import is_int, require
from ..models import DiffusionModel
from ..noise import Randomness
from ..processes import NCSN, Process, SDE, kind_error
from ._common import SampleResult, final_denoise
from .ancestral import ddim, ddpm_ancestral
from .grids import ancestral_from, evaluations_from, intervals_from
from .ode import dpm_solver_pp_2m, dpm_solver_pp_3m, ipndm, ode_heun, ode_rk45, unipc
from .smc import smc_sampler, smc_sampler_cost
from .sde import annealed_langevin, euler_maruyama, langevin_dynamics, pc_cost, predictor_corrector

__all__ = ["SAMPLERS", "REGISTRY", "SamplerEntry", "register_sampler", "sampler_entry", "samplers_for", "sample",
           "sde_process", "sampler_nfe", "steps_for_nfe"]

#: Parameters every sampler takes that are not options: the model, the start, the randomness, the process.
_NOT_OPTIONS = ("model", "shape_or_x", "noise", "process")
Bind = Callable[[Process], tuple[Callable[..., SampleResult], dict[str, Any]]]


#: Annotations of options that take a number (as written: the sampler modules postpone annotations).
_NUMBERS = {"int", "float", "int | None", "float | None"}


def _options_of(function: Callable[..., SampleResult], exclude: Sequence[str]) -> tuple[dict[str, Any], set[str]]:
    """A sampler function's options and their defaults, and which of them take a number (by their annotation or
    default), from its signature (the one place that reads one)."""
    params = [p for p in inspect.signature(function).parameters.values()
              if p.name not in exclude and p.default is not inspect.Parameter.empty]
    numbers_ = {p.name for p in params if str(p.annotation) in _NUMBERS
                or (isinstance(p.default, (int, float)) and not isinstance(p.default, bool))}
    return {p.name: p.default for p in params}, numbers_


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler (see the module's docstring)."""

    describe: str
    function: Callable[..., SampleResult]
    kinds: tuple[str, ...]
    #: ``cost(steps, process it runs on, resolved options)``: network evaluations per sample; None: adaptive.
    cost: Callable[[int, Process, dict[str, Any]], int] | None
    #: Default steps on a process; None: it takes no steps (adaptive).
    default_steps: Callable[[Process], int] | None
    #: ``bind(process) -> (function, fixed arguments)`` on a model's process; default ``(function, {})``.
    bind: Bind | None = None
    #: ``start(process, steps, t_max) -> times``: its grid from ``t_max < 1``; None: it cannot start there.
    start: Callable[[Process, int, float], Tensor] | None = None
    steps_keyword: str = "steps"
    #: Whether its ``times`` are an evaluation grid from ``t = 1`` (the times the network is asked at, then a
    #: last step to noise level 0), the kind a timestep search returns.
    evaluation_grid: bool = False
    #: Whether it applies a ``project`` hook after every step (Song et al.'s imputation; inpainting by
    #: replacement, RePaint).
    projection: bool = False
    _options: dict[Callable[..., SampleResult], tuple[dict[str, Any], set[str]]] = field(
        default_factory=dict, compare=False, repr=False)

    def bound(self, process: Process) -> tuple[Callable[..., SampleResult], dict[str, Any]]:
        """The function and fixed arguments this sampler runs with on a model of ``process``."""
        return self.bind(process) if self.bind is not None else (self.function, {})

    def runs_on(self, process: Process) -> Process:
        """The process it runs on for a model of ``process`` (``pc`` on a DDPM model: its VP SDE)."""
        return self.bound(process)[1].get("process", process)

    def options(self, process: Process) -> dict[str, Any]:
        """Its options on a model of ``process`` and their defaults."""
        return dict(self._signature(process)[0])

    def _signature(self, process: Process) -> tuple[dict[str, Any], set[str]]:
        """Its options with their defaults, and those that take a number, on a model of ``process``."""
        function, fixed = self.bound(process)
        if function not in self._options:
            self._options[function] = _options_of(function, _NOT_OPTIONS + (self.steps_keyword,) + tuple(fixed))
        return self._options[function]

    def takes_times(self) -> bool:
        """Whether a searched evaluation grid (GITS) can replace its own (``times=``)."""
        return self.evaluation_grid

    def resolve(self, process: Process, options: dict[str, Any], name: str = "") -> dict[str, Any]:
        """Every option's value for a model of ``process``: the defaults with ``options`` applied; options it does
        not take are refused, naming the ones it does."""
        accepted, takes_numbers = self._signature(process)
        unknown = sorted(set(options) - set(accepted))
        require(not unknown, f"sampler {name!r} takes no option {unknown}; it takes {list(accepted)}")
        for key, value in options.items():                # a number (or None) where the sampler takes one
            if key in takes_numbers and value is not None:
                require(isinstance(value, (numbers.Real, Tensor)) and not isinstance(value, bool),
                        f"the sampler {name!r} takes a number for {key} (default {accepted[key]}), got {value!r}")
        return {**accepted, **options}

    def nfe(self, steps: int | None, process: Process, options: dict[str, Any]) -> int | None:
        """Network evaluations per sample with ``steps`` (its default when None) and ``options``; a given
        evaluation grid (``times=``) sets the steps itself."""
        if self.cost is None:
            return None
        if self.evaluation_grid and options.get("times") is not None:
            steps = len(options["times"])
        steps = self.default_steps(process) if steps is None else steps
        return self.cost(steps, self.runs_on(process), self.resolve(process, options))


#: The one table of samplers.
REGISTRY: dict[str, SamplerEntry] = {}
#: Sampler names and what ``steps`` means for each (the registry's descriptions).
SAMPLERS: dict[str, str] = {}


def register_sampler(name: str, function: Callable[..., SampleResult], *, kinds: Sequence[str],
                     cost: Callable[[int, Process, dict[str, Any]], int] | None,
                     default_steps: Callable[[Process], int] | int | None, describe: str = "",
                     bind: Bind | None = None, start: Callable[[Process, int, float], Tensor] | None = None,
                     steps_keyword: str = "steps", evaluation_grid: bool = False,
                     projection: bool = False) -> SamplerEntry:
    """Add a sampler to the table. ``function(model, shape_or_x, steps, *, noise, ...options)``; ``kinds``: the
    process kinds it takes; ``cost(steps, process, options)``: its network evaluations per sample (None:
    adaptive); ``default_steps``: a number or ``process -> number`` (None: it takes none); ``bind``, ``start``,
    ``steps_keyword``, ``evaluation_grid``, ``projection``: see :class:`SamplerEntry`."""
    require(isinstance(name, str) and name and " " not in name, f"a sampler name is a word, got {name!r}")
    require(callable(function), "the sampler must be a function")
    fixed_steps = default_steps
    steps_of = (lambda p: fixed_steps) if isinstance(fixed_steps, int) else fixed_steps
    entry = SamplerEntry(describe or (function.__doc__ or name).strip().split("\n")[0], function, tuple(kinds),
                         cost, steps_of, bind, start, steps_keyword, evaluation_grid, projection)
    REGISTRY[name] = entry
    SAMPLERS[name] = entry.describe
    return entry


def samplers_for(process: Process) -> list[str]:
    """The registered samplers that run on ``process``."""
    return [name for name, entry in REGISTRY.items() if process.has_kind(*entry.kinds)]


def sampler_entry(sampler: str, process: Process) -> SamplerEntry:
    """The registry's ``sampler``, refusing (in one line) a process of a kind it does not take."""
    require(sampler in REGISTRY, f"unknown sampler {sampler!r}; choose one of {list(REGISTRY)}")
    entry = REGISTRY[sampler]
    if not process.has_kind(*entry.kinds):
        raise kind_error(process, entry.kinds, f"sampler {sampler!r}", f"use one of {samplers_for(process)}")
    return entry


def sde_process(process: SDE) -> SDE:
    """The continuous SDE a discrete process discretizes (DDPM -> VP, NCSN -> VE), else itself."""
    return process.sampling_sde()


def _ladder(process: Process) -> NCSN:
    """The NCSN ladder annealed Langevin walks: the model's, or NCSNv1's 10 levels over its sigmas."""
    if process.has_kind("ncsn"):
        return process
    return NCSN(sigma_max=float(process.sigma(1.0)), sigma_min=float(process.sigma(process.t_min)), num_scales=10)


def sampler_nfe(process: Process, sampler: str, steps: int | None = None, **options: Any) -> int | None:
    """Network evaluations per sample of ``sampler`` with ``steps`` (its default when None) on a model of
    ``process``; None for the adaptive ODE solver."""
    return sampler_entry(sampler, process).nfe(steps, process, options)


def steps_for_nfe(process: Process, sampler: str, nfe: int, **options: Any) -> int:
    """The most steps of ``sampler`` whose network evaluations do not exceed ``nfe`` (e.g. Heun's
    ``2 steps - 1``, PC's ``2 steps + 1``), from the table's declared cost."""
    entry = sampler_entry(sampler, process)
    require(entry.cost is not None, f"{sampler!r} is adaptive: its NFE follows rtol, not a number of steps")
    require(not (entry.evaluation_grid and options.get("times") is not None), f"a given times= grid fixes "
            f"{sampler}'s steps; leave it out to find the steps that fit {nfe} network calls")
    cost = lambda s: entry.nfe(s, process, options)                      # noqa: E731
    require(cost(2) > cost(1), f"the sampler {sampler!r} does not spend network calls per step")
    require(cost(1) <= nfe, f"{sampler} needs at least {cost(1)} network calls; {nfe} is too few")
    steps = 1
    while cost(steps + 1) <= nfe:                                        # costs grow linearly: a short walk
        steps += 1
    return steps


def sample(model: DiffusionModel, shape: Sequence[int] | Tensor, sampler: str = "ancestral", steps: int | None = None,
           *, noise: Randomness = None, **options: Any) -> SampleResult:
    """Draw ``shape`` samples (or carry ``x_T``) with the named sampler (see :data:`REGISTRY`); ``options`` go
    to it."""
    require(steps is None or (is_int(steps) and steps > 0), f"steps must be a positive integer, got {steps!r}")
    entry = sampler_entry(sampler, model.process)
    function, fixed = entry.bound(model.process)
    entry.resolve(model.process, options, sampler)
    kw: dict[str, Any] = {**fixed, **options}
    if steps is not None and entry.default_steps is not None:
        kw[entry.steps_keyword] = steps
    return function(model, shape, noise=noise, **kw)


# ---- the built-in samplers ---------------------------------------------------------------
_AFFINE, _ANY_SDE = ("affine",), ("sde",)


def _per_step(steps: int, process: Process, options: dict[str, Any]) -> int:
    return steps


register_sampler("ancestral", ddpm_ancestral, kinds=_AFFINE, cost=_per_step,
                 default_steps=lambda p: p.num_steps if p.has_kind("ddpm") else 50,
                 describe="DDPM ancestral sampling (Ho et al. Alg. 2); steps = respaced steps (default: all T)",
                 bind=lambda p: (ddpm_ancestral, {}) if p.has_kind("ddpm") else (ddim, {"eta": 1.0}),
                 start=ancestral_from, projection=True)
register_sampler("ddim", ddim, kinds=_AFFINE, cost=_per_step, default_steps=50,
                 describe="DDIM, eta = 0 (Song, Meng & Ermon); steps (default 50)", start=evaluations_from,
                 evaluation_grid=True, projection=True)
register_sampler("pc", predictor_corrector, kinds=_ANY_SDE, cost=pc_cost, default_steps=1000,
                 describe="predictor-corrector: reverse diffusion + Langevin (Song et al. 2021); steps (default 1000)",
                 bind=lambda p: (predictor_corrector, {"process": sde_process(p)}), start=intervals_from,
                 projection=True)
register_sampler("em", euler_maruyama, kinds=_ANY_SDE,
                 cost=lambda s, p, o: s + int(final_denoise(p, o["denoise"])), default_steps=1000,
                 describe="Euler-Maruyama on the reverse SDE (Song et al. 2021); steps (default 1000)",
                 bind=lambda p: (euler_maruyama, {"process": sde_process(p)}), start=intervals_from,
                 projection=True)
register_sampler("ode", ode_rk45, kinds=_ANY_SDE, cost=None, default_steps=None,
                 describe="probability-flow ODE, adaptive RK45 (Song et al. 2021); steps ignored")
register_sampler("heun", ode_heun, kinds=_AFFINE, cost=lambda s, p, o: 2 * s - 1, default_steps=18,
                 describe="EDM's Heun sampler (Karras et al. 2022); steps (default 18, 2 NFE each but the last)",
                 start=evaluations_from, evaluation_grid=True, projection=True)
register_sampler("dpm++2m", dpm_solver_pp_2m, kinds=_AFFINE, cost=_per_step, default_steps=20,
                 describe="DPM-Solver++(2M) (Lu et al. 2022); steps (default 20)", start=evaluations_from,
                 evaluation_grid=True, projection=True)
register_sampler("dpm++3m", dpm_solver_pp_3m, kinds=_AFFINE, cost=_per_step, default_steps=20,
                 describe="DPM-Solver++(3M) (Lu et al. 2022), third-order multistep; steps (default 20)",
                 start=evaluations_from, evaluation_grid=True, projection=True)
register_sampler("unipc", unipc, kinds=_AFFINE, cost=_per_step, default_steps=20,
                 describe="UniPC (Zhao et al. 2023), multistep predictor-corrector, order 2 (order=3 too); "
                 "steps (default 20)", start=evaluations_from, evaluation_grid=True, projection=True)
register_sampler("ipndm", ipndm, kinds=_AFFINE, cost=_per_step, default_steps=20,
                 describe="iPNDM (Zhang & Chen 2023), Adams-Bashforth multistep up to order 4 on dy/dsigma = eps; "
                 "steps (default 20)", start=evaluations_from, evaluation_grid=True, projection=True)
register_sampler("langevin", annealed_langevin, kinds=_AFFINE,
                 cost=lambda s, p, o: (p.num_scales if o["times"] is None else len(o["times"])) * s
                 + int(o["final_denoise"]), default_steps=100,
                 describe="annealed Langevin dynamics (Song & Ermon 2019); steps = steps per level (default 100)",
                 bind=lambda p: (annealed_langevin, {"process": _ladder(p)}), steps_keyword="steps_per_level",
                 projection=True)
register_sampler("ld", langevin_dynamics, kinds=_ANY_SDE, cost=_per_step, default_steps=1000,
                 describe="Langevin dynamics on one score, the least-noise one (MATH.md 3); steps (default 1000), "
                 "step_size", projection=True)
register_sampler("smc", smc_sampler, kinds=_AFFINE,
                 cost=lambda s, p, o: smc_sampler_cost(s, o["corrector"], o["corrector_steps"], o["leapfrog_steps"]),
                 default_steps=200,
                 describe="SMC sampler over the noise levels (Del Moral et al. 2006) for models with an energy: "
                 "reverse-diffusion proposals, importance weights, resampling, MALA/HMC moves; steps (default 200)",
                 bind=lambda p: (smc_sampler, {"process": sde_process(p)}))
