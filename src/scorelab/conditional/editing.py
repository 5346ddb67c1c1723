"""SDEdit (Meng et al. 2022): edit an image by noising it part way and running the reverse SDE or ODE
from there (MATH.md 8).

``x(t0) = a(t0) x + s(t0) z``; then any sampler that can start below ``t = 1`` carries it back to
data. Small ``t0`` keeps the input's details, large ``t0`` only its layout; ``t0 = 1`` is plain sampling
(the input forgotten). With the deterministic samplers (``ddim``, ``dpm++2m``, ...) the noise is
drawn once and the rest is the probability-flow ODE.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor

from .._util import as_time, require
from ..models import DiffusionModel
from ..processes import DDPM
from ..samplers._common import NoiseLike, SampleResult, model_device_dtype, randn_like, time_grid
from ..samplers.ancestral import ddpm_ancestral, respaced_steps
from ..samplers.registry import REGISTRY

__all__ = ["sdedit"]


def sdedit(model: DiffusionModel, x: Tensor, t0: float, *, sampler: str = "em", steps: int | None = None,
           noise: NoiseLike = None, **options: Any) -> SampleResult:
    """Noise ``x`` ``(N, ...)`` to time ``t0`` in (0, 1] of the sampler's process, then sample back to data.

    ``sampler``: ``em`` or ``pc`` (the reverse SDE, as the paper), ``ancestral``, or an ODE solver on a
    grid (``ddim``, ``heun``, ``dpm++2m``, ``dpm++3m``, ``unipc``). ``steps``: the steps from ``t0`` down
    (default: the sampler's default times ``t0``, at least 1).
    """
    try:
        t0 = float(t0)
    except (TypeError, ValueError):
        raise ValueError(f"t0 must be a number in (0, 1], got {t0!r}") from None
    require(math.isfinite(t0) and 0 < t0 <= 1, f"t0 must lie in (0, 1] (0 = keep the input, 1 = forget it), got {t0!r}")
    require(sampler in REGISTRY, f"unknown sampler {sampler!r}; choose one of {list(REGISTRY)}")
    x = torch.as_tensor(x)
    require(x.ndim >= 2, f"x must be a batch (N, ...), got shape {tuple(x.shape)}")
    if x.ndim == 4:
        require(bool(torch.isfinite(x).all()) and float(x.min()) >= -1 - 1e-6 and float(x.max()) <= 1 + 1e-6,
                f"images must lie in [-1, 1] as the model was trained (got [{float(x.min()):.3g}, "
                f"{float(x.max()):.3g}]); scale 8-bit images with scorelab.data.to_model_range")
    device, dtype = model_device_dtype(model)
    x = x.to(device=device, dtype=dtype)
    entry = REGISTRY[sampler]
    chosen = options.pop("process", None)
    function, fixed = entry.bind(model.process if chosen is None else chosen)
    params = inspect.signature(function).parameters
    process = fixed.get("process", model.process if chosen is None else chosen)
    require(entry.default_steps is not None and ("t_max" in params or "times" in params
                                                 or function is ddpm_ancestral),
            f"SDEdit needs a sampler that starts below t = 1 on a grid; choose one of "
            f"['em', 'pc', 'ancestral', 'ddim', 'heun', 'dpm++2m', 'dpm++3m', 'unipc'], not {sampler!r}")
    steps = max(1, round(entry.default_steps(process) * t0)) if steps is None else steps
    require(isinstance(steps, int) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    kw: dict[str, Any] = {**fixed, "process": process, **options}
    if function is ddpm_ancestral and isinstance(process, DDPM):   # DDPM's chain from its step nearest t0
        top = max(1, round(t0 * process.num_steps))
        t0 = top / process.num_steps
        kw["steps"] = respaced_steps(top, min(steps, top))
    elif "t_max" in params:
        kw.update(steps=steps, t_max=float(t0))
    else:
        kw["times"] = time_grid(process, steps - 1, "time", t_max=float(t0)) if steps > 1 \
            else torch.tensor([float(t0)], dtype=torch.float64)
    a, s = process.coefficients(as_time(float(t0)))
    start = float(a) * x + float(s) * randn_like(x, noise)
    return function(model, start, noise=noise, **kw)
