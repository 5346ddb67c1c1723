"""The multistep solvers' default settings, chosen by the number of steps (MATH.md 5, "Few-step defaults").

Below 20 steps the error of DPM-Solver++(2M)/(3M), UniPC and iPNDM is set less by their order than by where
the grid stops: a grid uniform in ``log sigma`` that stops at a noise level ``sigma_end`` of 0.05 to 0.2 and
then returns the data prediction spends its few steps where the trajectory bends, where a grid to the
process's ``t_min`` spends them on noise levels below the data's resolution. Each row below is the setting
with the smallest worst-case error, relative to the best setting of that solver, over the exact oracle's
2-D and 16-D Gaussian mixtures on DDPM (``benchmarks/few_step.py``), kept where the digits model agrees
(``benchmarks/few_step_images.py``: in-domain FID at 5 and 10 calls at least as good as the paper's
settings, or within 20%). UniPC below 8 calls did not (FID 1.16 against 0.74 at 5) and keeps its paper's
settings there. From 20 steps every solver keeps its paper's grid (uniform in ``log sigma`` to ``t_min``;
EDM's rho = 7 grid for iPNDM), within a few per cent of the best there, which also keeps the solvers'
convergence orders measurable. docs/benchmarks.md "Few-step sampling" has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import is_int, require
from ..processes import NoiseProcess
from .grids import evaluation_times


@dataclass(frozen=True)
class StepRule:
    """One default: the grid kind, the noise level it stops at (None: the process's ``t_min``), the order
    (None: the solver's own) and its lower-order final steps."""

    grid: str
    sigma_end: float | None
    order: int | None
    lower_order_final: bool


def _rows(*rows: tuple[int, str, float | None, int | None, bool]) -> tuple[tuple[int, StepRule], ...]:
    return tuple((first, StepRule(grid, end, order, lof)) for first, grid, end, order, lof in rows)


#: ``solver -> ((first step count the rule holds from, rule), ...)``, ascending.
RULES: dict[str, tuple[tuple[int, StepRule], ...]] = {
    "dpm++2m": _rows((1, "log_sigma", 0.07, None, False), (6, "log_sigma", 0.1, None, False),
                     (13, "log_sigma", 0.07, None, False), (20, "log_sigma", None, None, True)),
    "dpm++3m": _rows((1, "log_sigma", 0.2, None, False), (6, "log_sigma", 0.03, None, True),
                     (7, "log_sigma", 0.1, None, True), (8, "log_sigma", 0.2, None, False),
                     (10, "log_sigma", 0.1, None, False), (15, "log_sigma", None, None, True)),
    "unipc": _rows((1, "log_sigma", None, 2, True), (8, "log_sigma", 0.14, 3, False),
                   (10, "log_sigma", 0.1, 3, False), (12, "log_sigma", 0.1, 3, True),
                   (13, "log_sigma", None, 3, False), (20, "log_sigma", None, 2, True)),
    "ipndm": _rows((1, "log_sigma", 0.2, 3, False), (6, "log_sigma", 0.2, 4, False),
                   (7, "log_sigma", 0.1, 4, True), (13, "log_sigma", 0.05, 4, True),
                   (20, "karras", None, 4, False)),
}


def step_rule(solver: str, steps: int) -> StepRule:
    """The default settings of ``solver`` (a key of :data:`RULES`) for ``steps`` network evaluations."""
    require(solver in RULES, f"no default rules for {solver!r}; known: {sorted(RULES)}")
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    return [rule for first, rule in RULES[solver] if steps >= first][-1]


def rule_times(process: NoiseProcess, steps: int, rule: StepRule, *, rho: float = 7.0) -> Tensor:
    """``steps`` evaluation times of ``rule``'s grid, stopping at ``rule.sigma_end`` (or the process's ``t_min``
    when that is the lower level)."""
    t_min = None
    if rule.sigma_end is not None:
        t_end = float(process.time_of_sigma(torch.tensor(rule.sigma_end, dtype=torch.float64)))
        t_min = t_end if t_end > process.t_min else None
    return evaluation_times(process, steps, rule.grid, rho=rho, t_min=t_min)
