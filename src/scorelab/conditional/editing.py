"""SDEdit (Meng et al. 2022): edit an image by noising it part way and running the reverse SDE or ODE
from there (MATH.md 8).

``x(t0) = a(t0) x + s(t0) z`` (on a general SDE, ``x(t0)`` simulated by Euler-Maruyama from ``x``, MATH.md 7);
then any sampler that can start below ``t = 1`` (its registry entry names the grid it walks from there)
carries it back to data. Small ``t0`` keeps the input's details, large ``t0`` only
its layout; ``t0 = 1`` is plain sampling (the input forgotten). With the deterministic samplers (``ddim``,
``dpm++2m``, ...) the noise is drawn once and the rest is the probability-flow ODE.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._util import as_time, is_int, require
from ..models import DiffusionModel, ProcessAdapter, device_and_dtype
from ..noise import Randomness, randn_like
from ..samplers import REGISTRY, SampleResult, sample, sampler_entry

__all__ = ["sdedit"]


def sdedit(model: DiffusionModel, x: Tensor, t0: float, *, sampler: str = "em", steps: int | None = None,
           noise: Randomness = None, **options: Any) -> SampleResult:
    """Noise ``x`` ``(N, ...)`` to time ``t0`` in (0, 1] of the sampler's process, then sample back to data.

    ``sampler``: ``em`` or ``pc`` (the reverse SDE, as the paper; in a few dimensions give ``pc``
    ``snr_norm="batch"``, see :func:`~scorelab.samplers.predictor_corrector`), ``ancestral``, or an ODE solver on
    a grid (``ddim``, ``heun``, ``dpm++2m``, ``dpm++3m``, ``unipc``): any sampler of the registry that can start
    below ``t = 1``. ``steps``: the steps from ``t0`` down (default: the sampler's default times ``t0``, at
    least 1). ``process=``: run on another process than the model's.
    """
    try:
        t0 = float(t0)
    except (TypeError, ValueError):
        raise ValueError(f"t0 must be a number in (0, 1], got {t0!r}") from None
    require(math.isfinite(t0) and 0 < t0 <= 1, f"t0 must lie in (0, 1] (0 = keep the input, 1 = forget it), got {t0!r}")
    x = torch.as_tensor(x)
    require(x.ndim >= 2, f"x must be a batch (N, ...), got shape {tuple(x.shape)}")
    if x.ndim == 4:
        require(bool(torch.isfinite(x).all()) and float(x.min()) >= -1 - 1e-6 and float(x.max()) <= 1 + 1e-6,
                f"images must lie in [-1, 1] as the model was trained (got [{float(x.min()):.3g}, "
                f"{float(x.max()):.3g}]); scale 8-bit images with scorelab.data.to_model_range")
    device, dtype = device_and_dtype(model)
    x = x.to(device=device, dtype=dtype)
    chosen = options.pop("process", None)
    process = model.process if chosen is None else chosen
    entry = sampler_entry(sampler, process)
    starts = [name for name, e in REGISTRY.items() if e.start is not None and process.has_kind(*e.kinds)]
    require(entry.start is not None, f"SDEdit needs a sampler that starts below t = 1 on a grid; choose one of "
            f"{starts}, not {sampler!r}")
    runs_on = entry.runs_on(process)
    steps = max(1, round(entry.default_steps(runs_on) * t0)) if steps is None else steps
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    times = entry.start(runs_on, steps, t0)
    t0 = float(times[0])                                   # DDPM's chain starts at its step nearest t0
    if runs_on.has_kind("affine"):
        a, s = runs_on.coefficients(as_time(t0))
        start = float(a) * x + float(s) * randn_like(x, noise)
    else:                                                  # no closed form: the forward SDE, simulated
        start = runs_on.sample_marginal(x, as_time(t0, x), noise)
    if process != model.process:                           # the model answering in the chosen process's time
        model = ProcessAdapter(model, process)
    return sample(model, start, sampler, noise=noise, times=times, **options)
