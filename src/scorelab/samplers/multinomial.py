"""Ancestral sampling of multinomial diffusion (MATH.md 10): from ``x_T ~ pi`` back to ``x_0``, on every
step or on a subsequence of them."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .._util import require
from ..data import from_categories
from ._common import Callback, NoiseLike, SampleResult, call_back

__all__ = ["multinomial_ancestral", "step_grid"]


def step_grid(num_steps: int, steps: int) -> list[int]:
    """``steps + 1`` integers from ``T`` down to 0, evenly spaced (every step when ``steps = T``)."""
    require(isinstance(steps, int) and 1 <= steps <= num_steps, f"steps must be an integer in 1..{num_steps} "
            f"(the process's T), got {steps!r}")
    grid = torch.linspace(num_steps, 0, steps + 1, dtype=torch.float64).round().long().tolist()
    return grid


@torch.no_grad()
def multinomial_ancestral(model, shape_or_x: Sequence[int] | Tensor, steps: int | None = None, *,
                          noise: NoiseLike = None, callback: Callback | None = None) -> SampleResult:
    """``x_s ~ p(x_s | x_t)`` along a grid of steps from ``T`` to 0 (Hoogeboom et al. 2021; on a
    subsequence, the kernel ``sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` for the gap ``s < t``).

    ``shape_or_x``: ``(N, *dims)`` to start from the prior, or ``x_T`` itself. ``steps``: how many
    transitions (default all T; an autoregressive model is trained for single steps and takes all).
    Returns the samples in the model's range (category ``k`` as ``2k / (K - 1) - 1``, a grey level) and
    the categories in ``SampleResult.states``; ``nfe`` counts network calls per sample (``D`` per
    transition for an autoregressive model, which draws dimension by dimension).
    """
    process = model.process
    require(getattr(process, "discrete", False), f"multinomial ancestral sampling needs a multinomial diffusion "
            f"model, and this one's process is {type(process).__name__}; use 'ancestral'")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(shape_or_x, Tensor):
        x = process.check_states(shape_or_x, "x_T").to(device)
    else:
        shape = tuple(shape_or_x)
        require(len(shape) >= 2, f"shape must include the batch, e.g. (16, 1, 8, 8); got {shape}")
        x = process.prior_sample(shape, noise, device=device)
    autoregressive = not model.factorized
    steps = process.num_steps if steps is None else steps
    require(not autoregressive or steps == process.num_steps, f"an autoregressive model draws single steps: "
            f"sample it with all {process.num_steps} steps, not {steps}")
    grid = step_grid(process.num_steps, steps)
    per_call = x[0].numel() if autoregressive else 1
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        x = model.sample_reverse(x, t_vec, torch.full_like(t_vec, s), noise)
        call_back(callback, i, steps, s / process.num_steps, x, (i + 1) * per_call)
    return SampleResult(from_categories(x, process.num_categories), steps * per_call, states=x)
