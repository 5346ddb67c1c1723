"""Sample grids during training: deterministic samples from fixed per-sample noise, so grids are comparable over
steps, drawn by every rank of a job and written by rank 0's background writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..distributed import Ranks
from ..imaging import save_grid
from ..models import Conditional, device_and_dtype
from ..samplers import sample_many
from ..store import ModelSpec
from .plots import plot_points

__all__ = ["draw_preview", "save_preview", "PREVIEW_SAMPLERS"]

#: The sampler of the grids, by the first of the process's kinds found here: DDIM (eta = 0, MATH.md 5),
#: Euler-Maruyama on a general SDE (MATH.md 7), multinomial diffusion's chain (MATH.md 10), masked diffusion's
#: (MATH.md 13), DiffFlow's backward chain (MATH.md 11).
PREVIEW_SAMPLERS = {"affine": "ddim", "sde": "em", "multinomial": "multinomial", "masked": "masked",
                    "learned": "diffflow"}


@torch.no_grad()
def draw_preview(model: Any, spec: ModelSpec, *, num: int = 64, steps: int = 50, seed: int = 0,
                 ranks: Ranks = Ranks()) -> Tensor | None:
    """``num`` samples of :data:`PREVIEW_SAMPLERS`'s sampler with ``steps`` steps (a discrete chain: at most its
    own steps; an autoregressive model all of them), gathered on rank 0 (None on the other ranks).

    Every rank draws an equal share (sample k from its own seed ``(seed, k)``, :func:`~scorelab.samplers.sample_many`),
    so no rank waits for rank 0 to sample alone. Class-conditional models draw class ``k mod num_classes`` in
    position k.
    """
    process = model.process
    if process.has_kind("ddpm"):
        steps = min(steps, process.num_steps)
    chosen: int | None = steps
    if process.has_kind("multinomial") and (not model.factorized or process.num_steps <= steps):
        chosen = None                                    # every step (an autoregressive model takes no fewer)
    if process.has_kind("learned"):
        chosen = None                                    # DiffFlow's chain on the grid it was trained on
    name = next(PREVIEW_SAMPLERS[k] for k in process.kinds if k in PREVIEW_SAMPLERS)
    device = device_and_dtype(model)[0]

    def model_for_rows(rows: Tensor) -> Any:
        return Conditional(model, rows.to(device) % len(spec.classes)) if spec.classes else model

    result = sample_many(model_for_rows, spec.data_shape, num, name, chosen, seed=seed,
                         batch_size=-(-num // ranks.world_size), ranks=ranks)
    return None if result is None else result.samples


def save_preview(x: Tensor, spec: ModelSpec, step: int, out: Path) -> Path:
    """``out/samples/step-XXXXXXXX.png``: the grid of ``x`` (one column a class when they divide evenly: sample k
    asks for class k mod C), or a scatter plot for 2-D points."""
    path = Path(out) / "samples" / f"step-{step:08d}.png"
    if len(spec.data_shape) == 1:
        return plot_points(x.float().cpu().numpy(), path, title=f"step {step}")
    nrow = len(spec.classes) if spec.classes and len(x) % len(spec.classes) == 0 else None
    return save_grid(x.clamp(-1, 1), path, nrow=nrow)
