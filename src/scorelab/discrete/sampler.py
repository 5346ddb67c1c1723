"""Ancestral sampling of multinomial diffusion (MATH.md 10): from ``x_T ~ pi`` back to ``x_0``, on every
step or on a subsequence of them."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .._util import require
from ..data import from_categories
from ..models import device_and_dtype
from ..noise import Randomness
from ..processes import require_kind
from ..samplers import SampleResult, register_sampler
from ..samplers._common import Callback, call_back
from ..samplers.grids import check_times, step_grid
from .models import reverse_draw
from .process import initial_states

__all__ = ["multinomial_ancestral"]


@torch.no_grad()
def multinomial_ancestral(model, shape_or_x: Sequence[int] | Tensor, steps: int | None = None, *,
                          times: Sequence[float] | Tensor | None = None, noise: Randomness = None,
                          callback: Callback | None = None) -> SampleResult:
    """``x_s ~ p(x_s | x_t)`` along a grid of steps from ``T`` to 0 (Hoogeboom et al. 2021; on a
    subsequence, the kernel ``sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` for the gap ``s < t``).

    ``shape_or_x``: ``(N, *dims)`` to start from the prior, or ``x_T`` itself. ``steps``: how many
    transitions (default all T; an autoregressive model is trained for single steps and takes all); ``times``:
    the grid itself, ``t = step / T`` from 1 down to 0.
    Returns the samples in the model's range (category ``k`` as ``2k / (K - 1) - 1``, a grey level) and
    the categories in ``SampleResult.states``; ``nfe`` counts network calls per sample (``D`` per
    transition for an autoregressive model, which draws dimension by dimension).
    """
    process = model.process
    require_kind(process, ("multinomial",), "multinomial ancestral sampling",
                 "use 'ancestral' (or 'masked' for masked diffusion)")
    device = device_and_dtype(model)[0]
    x = initial_states(process, shape_or_x, noise, device)
    autoregressive = not model.factorized                 # draws dimension by dimension
    if times is not None:
        grid = (check_times(times) * process.num_steps).round().long().tolist()
        require(grid[-1] == 0, "multinomial ancestral sampling's times end at 0 (the data)")
        steps = len(grid) - 1
    else:
        steps = process.num_steps if steps is None else steps
        grid = step_grid(process.num_steps, steps)
    require(not autoregressive or steps == process.num_steps, f"an autoregressive model draws single steps: "
            f"sample it with all {process.num_steps} steps, not {steps}")
    per_call = x[0].numel() if autoregressive else 1
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        if autoregressive:
            x = model.sample_reverse(x, t_vec, torch.full_like(t_vec, s), noise)
        else:                                  # through any label wrapper: p(x_0 | x_t), then the posterior
            x = reverse_draw(process, x, model.predict(x, t_vec).log_x0, t_vec, torch.full_like(t_vec, s), noise)
        call_back(callback, i, steps, s / process.num_steps, x, (i + 1) * per_call)
    return SampleResult(from_categories(x, process.num_categories), steps * per_call, states=x)


register_sampler("multinomial", multinomial_ancestral, kinds=("multinomial",), cost=lambda s, p, o: s,
                 default_steps=lambda p: p.num_steps,
                 describe="ancestral sampling of multinomial diffusion (Hoogeboom et al. 2021), factorized or "
                 "autoregressive transitions; steps = a subsequence of the T steps (default all; D calls each when "
                 "autoregressive)")
