"""Time grids as data: every grid a sampler walks is built here, and every sampler takes one (``times=``).

Two conventions, by what the grid lists:

* *evaluation* grids, the times at which the network is asked (DDIM, the ODE solvers, DDPM's ancestral
  chain, RePaint, DPS); the walk ends at noise level 0 after the last: :func:`evaluation_times`,
  :func:`ancestral_times` (DDPM's respaced steps on a DDPM process);
* *interval* grids, ``steps + 1`` times from ``t_max`` down to ``t_min`` with one step between each pair
  (predictor-corrector, Euler-Maruyama): :func:`time_grid`.

The ``*_from`` functions give a sampler's grid when it starts below ``t = 1`` (SDEdit): the sampler
registry names one for each sampler that can (MATH.md 8).
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import Tensor

from .._util import as_time, is_int, require
from ..processes import DDPM, NoiseProcess, require_kind

__all__ = ["time_grid", "evaluation_times", "ancestral_times", "method_levels", "check_times", "respaced_steps", "ddpm_steps",
           "step_grid", "intervals_from", "evaluations_from", "ancestral_from", "GRIDS"]

#: The kinds of :func:`time_grid`.
GRIDS = ("time", "log_sigma", "karras")


def time_grid(process: NoiseProcess, num_steps: int, kind: str = "time", *, rho: float = 7.0,
              t_max: float = 1.0, t_min: float | None = None) -> Tensor:
    """``num_steps + 1`` decreasing times from ``t_max`` to ``t_min`` (float64).

    ``kind``: ``"time"`` uniform in t (Score SDE); ``"log_sigma"`` uniform in
    ``log(s/a)`` (DPM-Solver's logSNR grid); ``"karras"`` EDM's
    ``sigma_i = (sigma_max^(1/rho) + i/n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    with ``rho = 7`` (Karras et al. 2022, eq. 5).
    """
    require(is_int(num_steps) and num_steps >= 1,
            f"num_steps must be a positive integer, got {num_steps!r}")
    t_min = process.t_min if t_min is None else t_min
    require(0 <= t_min < t_max <= 1, f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    u = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if kind == "time":
        return t_max + (t_min - t_max) * u
    require(kind in GRIDS, f"unknown time grid {kind!r}; choose one of {GRIDS}")
    require_kind(process, ("affine",), f"the {kind!r} grid (spaced in the noise level sigma(t))", "use grid='time'")
    lo, hi = process.sigma(as_time(t_min)), process.sigma(as_time(t_max))
    require(float(lo) > 0, f"the {kind!r} grid needs a positive noise level at t_min={t_min}; raise t_min "
            f"(e.g. to {process.t_min or 1e-3}) or use grid='time'")
    if kind == "log_sigma":
        sigmas = torch.exp(torch.log(hi) + (torch.log(lo) - torch.log(hi)) * u)
    else:
        sigmas = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    t = process.time_of_sigma(sigmas)
    t[0], t[-1] = t_max, t_min  # exact ends
    return t


def evaluation_times(process: NoiseProcess, steps: int, kind: str = "time", *, rho: float = 7.0,
                     t_max: float = 1.0, t_min: float | None = None) -> Tensor:
    """``steps`` decreasing evaluation times from ``t_max`` to ``t_min`` (the process's by default;
    :func:`time_grid`'s ``steps - 1`` intervals; one step: ``t_max`` alone)."""
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    if steps == 1:
        return torch.full((1,), float(t_max), dtype=torch.float64)
    return time_grid(process, steps - 1, kind, rho=rho, t_max=t_max, t_min=t_min)


def respaced_steps(num_steps: int, count: int) -> list[int]:
    """``count`` evenly spaced DDPM steps from 1 to ``num_steps``, descending (improved-diffusion's respacing)."""
    require(is_int(count) and 1 <= count <= num_steps,
            f"the number of sampling steps (steps, --steps) must be between 1 and {num_steps}, the DDPM's own "
            f"steps, got {count!r}")
    if count == 1:
        return [num_steps]
    stride = (num_steps - 1) / (count - 1)
    return sorted({round(i * stride) + 1 for i in range(count)}, reverse=True)


def ddpm_steps(ddpm: DDPM, steps: int | Sequence[int] | None, times: Sequence[float] | Tensor | None = None
               ) -> list[int]:
    """DDPM's descending steps: all T (None), ``steps`` evenly respaced ones, an explicit subsequence, or the
    steps at evaluation ``times`` (each must be a step's time ``i / T``)."""
    if times is not None:
        times = check_times(times)
        steps = ddpm.time_to_step(times).tolist()
        require(bool((ddpm.step_to_time(torch.tensor(steps)) - times).abs().max() < 1e-9),
                f"DDPM's chain runs on its steps' times i / {ddpm.num_steps}; these times are not all such")
    if steps is None:
        return list(range(ddpm.num_steps, 0, -1))
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):   # a count (NumPy's too), else steps
        return respaced_steps(ddpm.num_steps, int(steps))
    seq = sorted({int(s) for s in steps}, reverse=True)
    require(len(seq) > 0 and seq[-1] >= 1 and seq[0] <= ddpm.num_steps,
            f"DDPM steps must lie in 1..{ddpm.num_steps}")
    return seq


def ancestral_times(process: NoiseProcess, steps: int) -> Tensor:
    """The times an ancestral chain visits: DDPM's respaced steps on a DDPM process, else ``steps`` uniform
    evaluation times from 1."""
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    if process.has_kind("ddpm"):
        return process.step_to_time(torch.tensor(respaced_steps(process.num_steps, steps)))
    return evaluation_times(process, steps)


def method_levels(process: NoiseProcess, steps: int | None, paper: int) -> int:
    """A conditional method's levels: ``steps``, else its paper's number, at most a DDPM's own steps."""
    if steps is not None:
        return steps
    return min(paper, process.num_steps) if process.has_kind("ddpm") else paper


def check_times(times: Sequence[float] | Tensor, *, increasing: bool = False) -> Tensor:
    """``times`` as a float64 1-D tensor, strictly decreasing (or, with ``increasing``, either way)."""
    times = torch.as_tensor(times, dtype=torch.float64)
    require(times.ndim == 1 and len(times) >= 1, "times must be a 1-D sequence")
    gaps = times[1:] - times[:-1]
    require(bool((gaps < 0).all()) or (increasing and bool((gaps > 0).all())),
            "times must be strictly decreasing" + (" or increasing" if increasing else ""))
    require(bool(((times >= 0) & (times <= 1)).all()), "times must lie in [0, 1]")
    return times


def step_grid(num_steps: int, steps: int) -> list[int]:
    """``steps + 1`` integers from ``T`` down to 0, evenly spaced (every step when ``steps = T``)."""
    require(is_int(steps) and 1 <= steps <= num_steps, f"steps must be an integer in 1..{num_steps} "
            f"(the process's T), got {steps!r}")
    return torch.linspace(num_steps, 0, steps + 1, dtype=torch.float64).round().long().tolist()


# ---- grids that start at t_max < 1 (SDEdit) ---------------------------------------------
def intervals_from(process: NoiseProcess, steps: int, t_max: float) -> Tensor:
    """``steps`` uniform intervals from ``t_max`` down to ``t_min`` (predictor-corrector, Euler-Maruyama)."""
    return time_grid(process, steps, "time", t_max=t_max)


def evaluations_from(process: NoiseProcess, steps: int, t_max: float) -> Tensor:
    """``steps`` uniform evaluation times from ``t_max`` (DDIM and the ODE solvers)."""
    return evaluation_times(process, steps, "time", t_max=t_max)


def ancestral_from(process: NoiseProcess, steps: int, t_max: float) -> Tensor:
    """The ancestral chain from ``t_max``: on a DDPM process its steps respaced from the one nearest ``t_max``,
    else uniform evaluation times."""
    if not process.has_kind("ddpm"):
        return evaluations_from(process, steps, t_max)
    top = max(1, round(t_max * process.num_steps))
    return process.step_to_time(torch.tensor(respaced_steps(top, min(steps, top))))
