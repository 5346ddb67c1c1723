"""Latents: data <-> noise through the probability-flow ODE (RK45) or DDIM inversion, and :func:`slerp`
between latents (MATH.md 4-5; the survey's link to flows' invertible maps)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .._util import require
from ..models import DiffusionModel
from ..processes import NoiseProcess, require_kind
from ..samplers._common import flow_process, resolve
from ..samplers.grids import time_grid
from ..samplers.ode import _sigma_ode, solve_probability_flow

__all__ = ["encode", "decode", "slerp"]


def _latent_times(process: NoiseProcess, steps: int, t_min: float) -> Tensor:
    return time_grid(process, steps, "log_sigma", t_min=t_min).flip(0)  # t_min .. 1


@torch.no_grad()
def encode(model: DiffusionModel, x: Tensor, *, method: str = "ode", process: NoiseProcess | None = None,
           t_min: float | None = None, steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """Map data ``x`` (at ``t_min``) to its latent at ``t = 1`` (MATH.md 4-5).

    ``method="ode"``: the probability-flow ODE with adaptive RK45; ``"ddim"``:
    DDIM inversion, ``steps`` Euler steps in ``dy/dsigma = eps`` with increasing sigma.
    """
    return _carry(model, x, method, process, t_min, steps, rtol, atol, to_latent=True)


@torch.no_grad()
def decode(model: DiffusionModel, z: Tensor, *, method: str = "ode", process: NoiseProcess | None = None,
           t_min: float | None = None, steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """Map a latent ``z`` at ``t = 1`` back to data at ``t_min``: the inverse of :func:`encode`."""
    return _carry(model, z, method, process, t_min, steps, rtol, atol, to_latent=False)


def _carry(model: DiffusionModel, x: Tensor, method: str, process: NoiseProcess | None, t_min: float | None,
           steps: int, rtol: float, atol: float, to_latent: bool) -> Tensor:
    """``x`` carried between ``t_min`` and 1 (up with ``to_latent``) by the ODE or DDIM's Euler steps."""
    require(method in ("ode", "ddim"), f"unknown method {method!r}; choose 'ode' or 'ddim'")
    if method == "ode":
        process = flow_process(model, process)
    model, process = resolve(model, process)
    t_min = process.t_min if t_min is None else t_min
    if method == "ode":
        ends = (t_min, 1.0) if to_latent else (1.0, t_min)
        return solve_probability_flow(model, x, *ends, process=process, rtol=rtol, atol=atol)[0]
    require_kind(process, ("affine",), "DDIM inversion (MATH.md 4)", "use method='ode' (the probability-flow ODE)")
    times = _latent_times(process, steps, t_min)
    return _walk(model, process, x, times if to_latent else times.flip(0))


def _walk(model: DiffusionModel, process: NoiseProcess, x: Tensor, times: Tensor) -> Tensor:
    return _sigma_ode(model, x, len(times), 1, grid="time", rho=7.0, times=times, churn=0.0, s_tmin=0.0,
                      s_tmax=math.inf, s_noise=1.0, process=process, noise=None, callback=None,
                      name="ddim", to_zero=False).samples


def slerp(z0: Tensor, z1: Tensor, alpha: float | Sequence[float] | Tensor) -> Tensor:
    """Spherical interpolation between latents, per example (Shoemake 1985).

    ``alpha`` scalar gives a batch like ``z0``; a sequence of ``m`` values gives
    ``(m, *z0.shape)``. Falls back to linear interpolation for parallel latents; opposite latents have no
    one great circle between them and are refused.
    """
    require(z0.shape == z1.shape, f"latents differ in shape: {tuple(z0.shape)} vs {tuple(z1.shape)}")
    alphas = torch.as_tensor(alpha, dtype=torch.float64)
    a0, a1 = z0.reshape(z0.shape[0], -1).double(), z1.reshape(z1.shape[0], -1).double()
    cos = (a0 * a1).sum(1) / (a0.norm(dim=1) * a1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    opposite = torch.nonzero(theta[:, 0] > math.pi - 1e-6)[:, 0].tolist()
    require(not opposite, f"latents {opposite[:5]} point in opposite directions, where spherical interpolation has "
            "no one path; interpolate between other latents, or linearly")

    def one(a: Tensor) -> Tensor:
        small = theta < 1e-6
        w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / torch.sin(theta).clamp(min=1e-12))
        w1 = torch.where(small, a, torch.sin(a * theta) / torch.sin(theta).clamp(min=1e-12))
        return (w0 * a0 + w1 * a1).reshape(z0.shape).to(z0.dtype)

    if alphas.ndim == 0:
        return one(alphas)
    return torch.stack([one(a) for a in alphas])
