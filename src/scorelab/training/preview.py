"""Sample grids during training: deterministic samples from fixed noise, so grids are comparable over steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..imaging import save_grid
from ..models import Conditional, device_and_dtype
from ..samplers import sample
from ..store import ModelSpec
from .plots import plot_points

__all__ = ["save_preview", "PREVIEW_SAMPLERS"]

#: The sampler of the grids, by the first of the process's kinds found here: DDIM (eta = 0, MATH.md 5),
#: Euler-Maruyama on a general SDE (MATH.md 7), multinomial diffusion's chain (MATH.md 10), masked diffusion's
#: (MATH.md 13), DiffFlow's backward chain (MATH.md 11).
PREVIEW_SAMPLERS = {"affine": "ddim", "sde": "em", "multinomial": "multinomial", "masked": "masked",
                    "learned": "diffflow"}


@torch.no_grad()
def save_preview(model: Any, spec: ModelSpec, step: int, out: Path, *, num: int = 64, steps: int = 50,
                 seed: int = 0) -> Path:
    """``out/samples/step-XXXXXXXX.png``: ``num`` samples of :data:`PREVIEW_SAMPLERS`'s sampler with ``steps``
    steps (a discrete chain: at most its own steps; an autoregressive model all of them).

    Class-conditional models draw class ``k mod num_classes`` in position k.
    """
    device = device_and_dtype(model)[0]
    shape = (num,) + tuple(spec.data_shape)
    m = model
    if spec.classes:
        m = Conditional(model, torch.arange(num, device=device) % len(spec.classes))
    process = model.process
    if process.has_kind("ddpm"):
        steps = min(steps, process.num_steps)
    chosen: int | None = steps
    if process.has_kind("multinomial") and (not model.factorized or process.num_steps <= steps):
        chosen = None                                    # every step (an autoregressive model takes no fewer)
    if process.has_kind("learned"):
        chosen = None                                    # DiffFlow's chain on the grid it was trained on
    noise = torch.Generator(device).manual_seed(seed)
    name = next(PREVIEW_SAMPLERS[k] for k in process.kinds if k in PREVIEW_SAMPLERS)
    x = sample(m, shape, name, chosen, noise=noise).samples
    path = Path(out) / "samples" / f"step-{step:08d}.png"
    if len(spec.data_shape) == 1:
        return plot_points(x.float().cpu().numpy(), path, title=f"step {step}")
    nrow = len(spec.classes) if spec.classes and num % len(spec.classes) == 0 else None
    return save_grid(x.clamp(-1, 1), path, nrow=nrow)
