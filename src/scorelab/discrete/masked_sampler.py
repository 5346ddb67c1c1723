"""Ancestral sampling of masked diffusion (MATH.md 13): from all [MASK] at ``t = 1`` to the data at ``t = 0`` on
any grid; from ``t`` to ``s``, each masked dimension is revealed with probability
``(alpha_s - alpha_t) / (1 - alpha_t)``, its category drawn from ``mu_theta(x_t, t)`` (Shi et al. 2024;
Sahoo et al. 2024). With ``cache`` a sample's prediction is reused while nothing in it changed (MDLM), so a
sample costs at most one network call per step and at most one more than its number of dimensions; that is
exact only for a model whose prediction does not read ``t`` (``model.reads_time`` False), and the default."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .._util import is_int, require
from ..data import from_categories
from ..models import device_and_dtype
from ..noise import Randomness, uniform
from ..processes import require_kind
from ..samplers import SampleResult, register_sampler
from ..samplers._common import Callback, call_back
from ..samplers.grids import check_times
from .models import finite_logits
from .process import initial_states, sample_categorical

__all__ = ["masked_ancestral", "DEFAULT_STEPS"]

#: Steps of ``scorelab sample`` on a masked model unless told otherwise (with the cache, a sample costs at most
#: one network call per dimension plus one).
DEFAULT_STEPS = 256


def _grid(steps: int | None, times: Sequence[float] | Tensor | None) -> Tensor:
    if times is not None:
        grid = check_times(times)
        require(float(grid[0]) == 1.0 and float(grid[-1]) == 0.0, "masked sampling's times run from 1 (all "
                "[MASK]) down to 0 (the data)")
        return grid
    steps = DEFAULT_STEPS if steps is None else steps
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    return torch.linspace(1, 0, steps + 1, dtype=torch.float64)


@torch.no_grad()
def masked_ancestral(model, shape_or_x: Sequence[int] | Tensor, steps: int | None = None, *,
                     times: Sequence[float] | Tensor | None = None, cache: bool | None = None, noise: Randomness = None,
                     callback: Callback | None = None) -> SampleResult:
    """Reveal the [MASK]ed dimensions along a grid from ``t = 1`` to 0 (MATH.md 13).

    ``shape_or_x``: ``(N, *dims)`` to start from all [MASK], or partly masked states ``x_t`` (their unmasked
    dimensions are kept; the grid still starts at ``t = 1``). ``steps``: an even grid (default
    :data:`DEFAULT_STEPS`); ``times``: the grid itself. ``cache``: reuse a sample's last prediction while it is
    unchanged, exact for a model that does not read ``t`` (as the exact ``mu`` does not); None (the default):
    cache exactly when ``model.reads_time`` is False, and a model that reads ``t`` refuses ``cache=True``.
    Returns grey levels and the categories (``states``); ``nfe`` is the most network calls any sample took.
    """
    process = model.process
    require_kind(process, ("masked",), "masked diffusion sampling", "use 'multinomial' for multinomial diffusion")
    cache = not model.reads_time if cache is None else cache
    require(not (cache and model.reads_time), "this masked model reads t, so reusing its prediction across times "
            "would sample another distribution; pass cache=False (or leave cache unset)")
    device = device_and_dtype(model)[0]
    x = initial_states(process, shape_or_x, noise, device)
    grid = _grid(steps, times).to(device)
    n = x.shape[0]
    calls = torch.zeros(n, dtype=torch.long, device=device)
    stale = torch.ones(n, dtype=torch.bool, device=device)
    log_mu: Tensor | None = None
    for i, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        masked = x == process.mask_state
        todo = (stale | (not cache)) & masked.flatten(1).any(1)
        if bool(todo.any()):
            rows = torch.nonzero(todo)[:, 0]
            fresh = model.select_rows(rows).predict(x[rows], torch.full((len(rows),), t, device=device)).log_x0
            log_mu = fresh.new_zeros(*x.shape, fresh.shape[-1]) if log_mu is None else log_mu
            log_mu[rows] = finite_logits(fresh)
            calls[rows] += 1
        reveal = process.reveal_probability(torch.tensor(t), torch.tensor(s)).item()
        u = uniform(x.shape, noise, device=device)
        values = sample_categorical(log_mu, noise) if log_mu is not None else x
        new = masked & (u < reveal)
        x = torch.where(new, values, x)
        stale = new.flatten(1).any(1)
        call_back(callback, i, len(grid) - 1, s, x, int(calls.max()))
    return SampleResult(from_categories(x, process.num_categories), int(calls.max()), states=x)


register_sampler("masked", masked_ancestral, kinds=("masked",), cost=lambda s, p, o: s,
                 default_steps=lambda p: DEFAULT_STEPS,
                 describe="ancestral sampling of masked diffusion (Shi et al. 2024; Sahoo et al. 2024): steps on an "
                 "even grid from t = 1 to 0, each revealing masked dimensions; for a model that does not read t a "
                 "sample's prediction is reused while it is unchanged (cache), so NFE is at most steps")
