"""Timestep search: a grid fitted to a model's own trajectories (GITS, Chen et al. 2024; MATH.md 5).

A teacher (iPNDM on a fine grid of ``teacher_steps`` times) carries a batch of prior draws to the data
and records each point ``y_i`` and its derivative ``eps_i`` in ``y = x / a``. One Euler step from
teacher point ``i`` to the time of point ``j`` misses ``y_j`` by

    C[i, j] = mean over the batch of || y_j - (y_i + (sigma_j - sigma_i) eps_i) ||,

with the teacher's sample at sigma = 0 as the last point; the cost needs no network call beyond the
teacher's. Dynamic programming then picks the ``steps`` teacher times ``0 = i_0 < ... < i_{K-1}`` whose
path to the end minimizes ``C[i_0, i_1] + coeff C[i_1, i_2] + coeff^2 C[i_2, i_3] + ...`` (GITS's
recursion ``V_k(j) = min_i C[j, i] + coeff V_{k-1}(i)``, ``coeff = 1.15``). The result is an evaluation
grid for every grid sampler (``times=``); :func:`save_times` and :func:`load_times` keep it beside a run.

The Euler cost ranks grids for Euler steps; a multistep solver's error on a grid differs. Given the
``sampler`` that will walk the grid, the search therefore runs it on the teacher's draws over each
candidate (the paths for ``coeff`` 1.0, 1.1, 1.2, 1.3 and the one given, and the sampler's own default
grid) and measures how near its samples land to the teacher's in two ways: draw by draw (the mean
distance) and as a set (the energy distance, V-statistic). A candidate replaces the default grid only
when it is nearer by both measures, by at least :data:`MARGIN` (5%); of those, the nearest as a set is
kept. So a searched grid is never worse than the default on the calibration draws by either measure, at
``steps`` network calls per candidate; the margin keeps the default where a candidate's lead is within what
the choice of calibration draws moves (scored on 16 replicates of the 224 cells of ``few_step.md``, with no
margin the kept grid was more than 10% worse than the default in 3 cells, up to 1.45x; with 5% in one held-out
cell, 1.14x, and in none of the 160 on the mixtures the rules were chosen on: ``search_margin.md``).
Each measure alone misleads: the draw-by-draw distance halved by a grid whose samples were
1.45x as far from the exact distribution (UniPC at 8 steps on the 16-D oracle, ``search_margin.md``), and the set
distance alone picked a grid that stops at t = 0.83 on the digits model (in 64 dimensions a set collapsed
to the mean image is near the teacher's by that measure, never draw by draw).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._util import atomic_write, is_int, require
from ..models import DiffusionModel, device_and_dtype
from ..processes import NoiseProcess, require_kind
from ._common import SigmaView, StepInfo, initial_noise, resolve
from .grids import check_times, evaluation_times
from .ode import ipndm
from .registry import sample
from .rules import RULES, rule_times, step_rule

__all__ = ["SearchedTimes", "search_times", "MARGIN", "kept_candidate", "gits_cost", "cheapest_path", "save_times",
           "load_times", "times_path", "run_folder", "searched_for_run"]


@dataclass(frozen=True)
class SearchedTimes:
    """A searched evaluation grid and how it was found."""

    times: list[float]
    steps: int
    teacher_steps: int
    teacher_grid: str
    coeff: float
    batch: int
    cost: float                        # the path's weighted cost, in the data's units
    extra: dict[str, Any] = field(default_factory=dict)
    sampler: str = ""                  # the sampler the candidates were run with ("": none, the Euler path)
    candidates: dict[str, float] = field(default_factory=dict)   # candidate -> its mean miss of the teacher
    set_distances: dict[str, float] = field(default_factory=dict)   # candidate -> energy distance to the teacher's
    chosen: str = ""                   # the candidate kept ("": the Euler path, no sampler given)

    def tensor(self) -> Tensor:
        return torch.tensor(self.times, dtype=torch.float64)


def gits_cost(points: Tensor, eps: Tensor, sigmas: Sequence[float]) -> Tensor:
    """``C[i, j]`` (``i < j``; ``inf`` elsewhere): the batch's mean distance between teacher point ``j`` and one
    Euler step to it from point ``i``. ``points``: ``(N + 1, B, ...)`` in ``y = x / a``, the last at sigma = 0;
    ``eps``: ``(N, B, ...)``, the derivative at each point but the last; ``sigmas``: the ``N + 1`` levels."""
    n = points.shape[0]
    require(eps.shape[0] == n - 1 and len(sigmas) == n, "need N + 1 points, N derivatives and N + 1 sigmas")
    flat = points.reshape(n, points.shape[1], -1).double()
    slopes = eps.reshape(n - 1, eps.shape[1], -1).double()
    sig = torch.tensor(list(sigmas), dtype=torch.float64)
    cost = torch.full((n, n), math.inf, dtype=torch.float64)
    for i in range(n - 1):
        euler = flat[i] + (sig[i + 1:] - sig[i]).view(-1, 1, 1) * slopes[i]
        cost[i, i + 1:] = (flat[i + 1:] - euler).norm(dim=-1).mean(dim=-1)
    return cost


def cheapest_path(cost: Tensor, steps: int, coeff: float = 1.15) -> tuple[list[int], float]:
    """The ``steps`` nodes ``0 = i_0 < i_1 < ... < i_{steps-1} < N`` (``N``, the last node, closes the path)
    minimizing ``sum_k coeff^k C[i_k, i_{k+1}]``, by GITS's dynamic programme; and that minimum."""
    n = cost.shape[0]
    require(1 <= steps <= n - 1, f"steps must lie in 1..{n - 1} (the teacher's steps), got {steps}")
    value = torch.full((steps + 1, n), math.inf, dtype=torch.float64)   # value[k, j]: best k jumps from j to the end
    choice = torch.full((steps + 1, n), -1, dtype=torch.long)
    value[1, :n - 1] = cost[:n - 1, n - 1]
    choice[1, :n - 1] = n - 1
    for k in range(2, steps + 1):
        total = cost[:, :n - 1] + coeff * value[k - 1, :n - 1].unsqueeze(0)     # (from j, via i)
        best, arg = total.min(dim=1)
        value[k], choice[k] = best, arg
    path, node = [0], 0
    for k in range(steps, 1, -1):
        node = int(choice[k, node])
        path.append(node)
    require(math.isfinite(float(value[steps, 0])), f"no path of {steps} steps through {n} points")
    return path, float(value[steps, 0])


#: The path weights tried besides the given one when the search knows its sampler.
COEFFS = (1.0, 1.1, 1.2, 1.3)
#: How much nearer the teacher (relatively, by both measures) a candidate must be to replace the default grid.
MARGIN = 0.05


@torch.no_grad()
def search_times(model: DiffusionModel, steps: int, shape: Sequence[int], *, sampler: str | None = None,
                 teacher_steps: int = 60, teacher_grid: str = "karras", coeff: float = 1.15,
                 process: NoiseProcess | None = None, seed: int = 0, margin: float = MARGIN) -> SearchedTimes:
    """GITS: the ``steps`` evaluation times, from ``t = 1``, that best follow ``model``'s trajectories (see the
    module's docstring). ``shape``: the teacher's batch, e.g. ``(256, 1, 28, 28)``, drawn from ``seed``; costs
    ``teacher_steps`` network calls on it, and ``steps`` per candidate grid when ``sampler`` (a registry
    name) is given; a candidate replaces the default grid when ``margin`` nearer the teacher by both measures."""
    require(is_int(steps) and 1 <= steps < teacher_steps,
            f"steps must be a positive integer below teacher_steps={teacher_steps}, got {steps!r}")
    require(coeff > 0, f"coeff must be positive, got {coeff}")
    require(0 <= margin < 1, f"margin must lie in [0, 1), got {margin}")
    process = model.process if process is None else process
    require_kind(process, ("affine",), "the timestep search (in y = x / a)", "use an affine process's model")
    points: list[Tensor] = []
    derivatives: list[Tensor] = []

    def record(info: StepInfo) -> None:
        points.append(info.x)
        derivatives.append(info.eps)

    times = evaluation_times(process, teacher_steps, teacher_grid)
    scales, sigmas = SigmaView(model, process).grid(times)
    x_T = initial_noise(process, shape, torch.Generator(device_and_dtype(model)[0]).manual_seed(seed), model)
    ipndm(model, x_T.clone(), times=times, process=process, callback=record)
    trajectory = torch.stack([x / a for x, a in zip([x_T] + points, scales + [1.0])])         # in y = x / a
    cost = gits_cost(trajectory, torch.stack(derivatives), sigmas + [0.0])
    paths = {c: cheapest_path(cost, steps, c) for c in ({coeff, *COEFFS} if sampler else {coeff})}
    path, total = paths[coeff]
    found = SearchedTimes(check_times(times[path]).tolist(), steps, teacher_steps, teacher_grid, coeff,
                          int(x_T.shape[0]), total)
    if sampler is None:
        return found
    grids = {f"gits {c:g}": (c, times[p], value) for c, (p, value) in sorted(paths.items())}
    reference = f"gits {coeff:g}"
    if sampler in RULES:
        reference = "default"
        grids["default"] = (coeff, rule_times(process, steps, step_rule(sampler, steps)), math.nan)
    seen = resolve(model, process)[0]                     # the candidates run on the teacher's process too
    nearness = {label: _nearness(seen, x_T, sampler, grid, points[-1]) for label, (_, grid, _) in grids.items()}
    misses = {label: miss for label, (miss, _) in nearness.items()}
    sets = {label: by_set for label, (_, by_set) in nearness.items()}
    chosen = kept_candidate(misses, sets, reference, margin)
    weight, grid, value = grids[chosen]
    return replace(found, times=check_times(grid).tolist(), coeff=weight, cost=value, sampler=sampler,
                   candidates=misses, set_distances=sets, chosen=chosen)


def _nearness(model: DiffusionModel, x_T: Tensor, sampler: str, times: Tensor, teacher: Tensor
              ) -> tuple[float, float]:
    """How near ``sampler``'s samples from ``x_T`` on ``times`` land to the teacher's: the batch's mean distance,
    draw by draw, and the energy distance between the two sets (V-statistic)."""
    from ..evaluation.distances import energy_distance   # here: the evaluation package imports the samplers

    samples = sample(model, x_T.clone(), sampler, times=times).samples
    return (float((samples - teacher).flatten(1).norm(dim=1).mean()),
            energy_distance(samples.double(), teacher.double(), unbiased=False))


def kept_candidate(misses: dict[str, float], sets: dict[str, float], reference: str, margin: float = MARGIN) -> str:
    """The candidate the search keeps: of ``reference`` and the candidates ``margin`` nearer the teacher than it by
    both measures (``misses`` draw by draw, ``sets`` as a set), the nearest as a set."""
    allowed = [reference] + [label for label in misses if label != reference and misses[label] <= (1 - margin) *
                             misses[reference] and sets[label] <= (1 - margin) * sets[reference]]
    return min(allowed, key=sets.get)


def run_folder(checkpoint: str | Path) -> Path:
    """The run a checkpoint folder belongs to (``RUN/checkpoints/NAME`` -> ``RUN``), else the folder itself."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def searched_for_run(run: str | Path, model: DiffusionModel, data_shape: Sequence[int], steps: int, sampler: str, *,
                     checkpoint_step: int, batch: int = 256, seed: int = 0, margin: float = MARGIN
                     ) -> tuple[SearchedTimes, bool]:
    """The run's saved grid of ``steps`` times for ``sampler`` when it was searched on this checkpoint's step
    with this ``margin``, else a new search (``batch`` teacher draws from ``seed``) saved beside the run.
    Returns ``(grid, whether it was searched now)``."""
    path = times_path(run, steps, sampler)
    if path.is_file():
        saved = load_times(path)
        if saved.extra.get("checkpoint_step") == checkpoint_step and saved.extra.get("margin") == margin:
            return saved, False
    found = replace(search_times(model, steps, (batch, *data_shape), sampler=sampler, seed=seed, margin=margin),
                    extra={"checkpoint_step": checkpoint_step, "seed": seed, "margin": margin})
    save_times(path, found)
    return found, True


def times_path(run: str | Path, steps: int, sampler: str) -> Path:
    """Where a run keeps its searched grid of ``steps`` times for ``sampler``: ``RUN/times/SAMPLER-STEPS.json``."""
    return Path(run) / "times" / f"{sampler}-{steps}.json"


def save_times(path: str | Path, searched: SearchedTimes) -> Path:
    """Write a searched grid as JSON, atomically (ranks that search alike may write it alike)."""
    return atomic_write(path, json.dumps(asdict(searched), indent=1))


def load_times(path: str | Path) -> SearchedTimes:
    """A grid written by :func:`save_times` (or a JSON list of times), checked."""
    path = Path(path)
    require(path.is_file(), f"no times file at {path}; write one with: scorelab search-times RUN --steps N")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg}); write it again with scorelab search-times") from None
    if isinstance(data, list):
        data = {"times": data, "steps": len(data), "teacher_steps": 0, "teacher_grid": "given", "coeff": 0.0,
                "batch": 0, "cost": math.nan}
    require(isinstance(data, dict) and "times" in data, f"{path} holds no 'times' list")
    times = check_times(data["times"])
    known = {k: data[k] for k in SearchedTimes.__dataclass_fields__ if k in data}
    return SearchedTimes(**{**known, "times": times.tolist(), "steps": len(times)})
