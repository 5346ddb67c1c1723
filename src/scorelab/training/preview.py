"""Sample grids during training: deterministic DDIM from fixed noise, so grids are comparable over steps."""

from __future__ import annotations

from pathlib import Path

import torch

from ..guidance import Conditional
from ..imaging import save_grid
from ..models import Model
from ..processes import DDPM
from ..modelspec import ModelSpec
from ..samplers import ddim, euler_maruyama
from ..samplers.multinomial import multinomial_ancestral
from .plots import plot_points

__all__ = ["save_preview"]


@torch.no_grad()
def save_preview(model: Model, spec: ModelSpec, step: int, out: Path, *, num: int = 64, steps: int = 50,
                 seed: int = 0) -> Path:
    """``out/samples/step-XXXXXXXX.png``: ``num`` DDIM samples (eta = 0, ``steps`` steps; MATH.md 5),
    or Euler-Maruyama ones on a general SDE, or multinomial diffusion's chain on ``steps`` of its steps.

    Class-conditional models draw class ``k mod num_classes`` in position k.
    """
    device = next(model.parameters()).device
    shape = (num,) + tuple(spec.data_shape)
    m = model
    if spec.classes:
        m = Conditional(model, torch.arange(num, device=device) % len(spec.classes))
    if isinstance(model.process, DDPM):
        steps = min(steps, model.process.num_steps)
    noise = torch.Generator(device).manual_seed(seed)
    if getattr(model.process, "discrete", False):  # multinomial diffusion: its chain (all steps when autoregressive)
        x = multinomial_ancestral(m, shape, min(steps, model.process.num_steps) if model.factorized else None,
                                  noise=noise).samples
    elif model.process.affine:
        x = ddim(m, shape, steps, noise=noise).samples
    else:                                          # a general SDE: Euler-Maruyama from the same noise (MATH.md 7)
        x = euler_maruyama(m, shape, steps, noise=noise).samples
    path = Path(out) / "samples" / f"step-{step:08d}.png"
    if len(spec.data_shape) == 1:
        return plot_points(x.float().cpu().numpy(), path, title=f"step {step}")
    nrow = len(spec.classes) if spec.classes and num % len(spec.classes) == 0 else None
    return save_grid(x.clamp(-1, 1), path, nrow=nrow)
