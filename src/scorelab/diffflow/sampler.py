"""DiffFlow's backward chain: the sampler its loss trains (MATH.md 11).

``x_i = x_{i+1} - [f - g^2 s](x_{i+1}, t_{i+1}) dt_i + g_{i+1} sqrt(dt_i) z_i`` from ``x_N ~ N(0, I)`` down the
grid ``t_i = (i / N)^beta``, noise on every step as in the chain whose path KL the loss minimizes. The
general samplers run on a DiffFlow model too: ``em`` and ``pc`` on the reverse SDE, ``ode`` on the probability
flow of the learned pair.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .._util import as_time, require
from ..models import DiffusionModel
from ..noise import Randomness, randn_like
from ..processes import require_kind
from ..samplers import SampleResult, register_sampler
from ..samplers._common import Callback, call_back, finite_or_raise, initial_noise

__all__ = ["backward_chain"]


@torch.no_grad()
def backward_chain(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int | None = None, *,
                   times: Sequence[float] | Tensor | None = None, last_noise: bool = True, noise: Randomness = None,
                   callback: Callback | None = None) -> SampleResult:
    """DiffFlow's backward chain on ``steps`` steps of the model's grid (default its ``N``), or on ``times``
    (increasing, from ``t_0`` to ``t_N``). ``last_noise=False`` ends on the mean of the last kernel."""
    process = model.process
    require_kind(process, ("learned",), "the diffflow sampler (DiffFlow's backward chain)", "use em, pc or ode")
    if times is None:
        grid = process.grid(steps)
    else:
        grid = torch.as_tensor(times, dtype=torch.float64)
        require(grid.ndim == 1 and len(grid) >= 2 and bool((grid[1:] > grid[:-1]).all())
                and 0 <= float(grid[0]) and float(grid[-1]) <= 1,
                "the backward chain's times increase from t_0 to t_N within [0, 1]")
    x = initial_noise(process, shape_or_x, noise, model)
    n = len(grid) - 1
    g = process.diffusion(grid).tolist()
    for k, i in enumerate(range(n - 1, -1, -1)):
        t_next, dt = float(grid[i + 1]), float(grid[i + 1] - grid[i])
        t = as_time(t_next, x)
        x = x - dt * process.reverse_drift(x, t, model.predict(x, t).score)
        if last_noise or i > 0:
            x = x + g[i + 1] * math.sqrt(dt) * randn_like(x, noise)
        call_back(callback, k + 1, n, float(grid[i]), x, k + 1)
    finite_or_raise(x, "DiffFlow's backward chain")
    return SampleResult(x, n)


register_sampler("diffflow", backward_chain, kinds=("learned",), cost=lambda s, p, o: s if o["times"] is None
                 else len(o["times"]) - 1, default_steps=lambda p: p.num_steps,
                 describe="DiffFlow's backward chain (Zhang & Chen 2021) on its grid; steps (default the model's N)")
