"""What every sampler shares: results, the start, the sigma-space view, the posterior step, the last denoise.

Samplers are plain functions ``(model, shape or x_T, steps, *, times, process, noise, callback) ->
SampleResult``. ``process`` defaults to the model's own; when it differs, the model is adapted by matching
noise levels (:class:`scorelab.models.ProcessAdapter`), so a DDPM-trained network runs under the VP SDE's
samplers and an NCSN one under the VE SDE's (Song et al. 2021).

Randomness comes from ``noise``: a ``torch.Generator`` (one stream for the batch) or a
:class:`~scorelab.noise.PerSampleNoise` built from one seed per sample, which makes sample ``k`` the same
whatever the batch size (as EDM's code does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .._util import as_time, require
from ..models import DiffusionModel, Prediction, ProcessAdapter, device_and_dtype
from ..noise import PerSampleNoise, Randomness, randn_like
from ..processes import SDE, NoiseProcess, Process

__all__ = ["SampleResult", "Callback", "StepInfo", "Projection", "projected", "resolve", "flow_process",
           "trained_t_min", "initial_noise", "SigmaView", "call_back", "finite_or_raise", "final_denoise",
           "posterior_step"]


@dataclass(frozen=True)
class StepInfo:
    """Passed to a sampler's callback after each step."""

    step: int
    num_steps: int
    t: float
    #: The state after the step, in ``x`` coordinates (``x_t = a(t) x0 + s(t) eps``) from every sampler.
    x: Tensor
    nfe: int
    #: The network's eps at the step's start, in ``y = x / a`` (iPNDM gives it: GITS's cost matrix reads it).
    eps: Tensor | None = None


Callback = Callable[[StepInfo], None]

#: ``project(x, a, s) -> x``: applied after every step of a sampler to its state ``x``, which lies at
#: ``a x0 + s eps`` (``a = 1, s = sigma`` for the samplers that work in ``y = x / a``); Song et al.'s
#: imputation (:mod:`scorelab.conditional`) overwrites the observed part of ``x`` this way.
Projection = Callable[[Tensor, float, float], Tensor]


def projected(project: Projection | None, x: Tensor, a: float, s: float) -> Tensor:
    """``x`` after the sampler's ``project`` hook at marginal coefficients ``(a, s)`` (none: unchanged)."""
    return x if project is None else project(x, float(a), float(s))


@dataclass(frozen=True)
class SampleResult:
    """Samples, the number of network evaluations (NFE) per sample that produced them, for the
    Metropolis-corrected samplers the share of proposals accepted, for categorical data the states, and for the
    particle samplers the log of the normalizing constant they estimate."""

    samples: Tensor
    nfe: int
    acceptance: float | None = None
    states: Tensor | None = None             # categorical samplers: the integer categories themselves
    log_evidence: Tensor | None = None       # SMC: per example (log p(y)) or per population (log Z)


def initial_noise(process: Process, shape_or_x: Sequence[int] | Tensor, noise: Randomness,
                  model: DiffusionModel) -> Tensor:
    """``x_T``: given as a tensor, or drawn from the process's prior on the model's device and in
    its dtype (sample k from its own generator with :class:`~scorelab.noise.PerSampleNoise`)."""
    if isinstance(shape_or_x, Tensor):
        return shape_or_x
    shape = tuple(shape_or_x)
    require(len(shape) >= 2, f"shape must include the batch, e.g. (16, 2) or (16, 1, 8, 8); got {shape}")
    device, dtype = device_and_dtype(model)
    if isinstance(noise, PerSampleNoise):
        require(shape[0] == len(noise), f"batch of {shape[0]} but PerSampleNoise has {len(noise)} seeds")
        return torch.cat([process.prior_sample((1,) + shape[1:], g, device=g.device, dtype=dtype)
                          for g in noise.generators]).to(device)
    return process.prior_sample(shape, noise, device=device, dtype=dtype)


def resolve(model: DiffusionModel, process: SDE | None) -> tuple[DiffusionModel, SDE]:
    """The model as seen by ``process`` (adapted by noise level when it is not the model's own)."""
    if process is None or process == model.process:
        return model, model.process
    return ProcessAdapter(model, process), process


def flow_process(model: DiffusionModel, process: SDE | None) -> SDE:
    """The process the probability-flow ODE runs on: ``process``, else the model's continuous SDE (a linear
    DDPM's VP SDE, NCSN's VE SDE; MATH.md 4), whose smooth coefficients RK45 integrates in far fewer steps
    than DDPM's piecewise-constant rate."""
    return model.process.sampling_sde() if process is None else process


def trained_t_min(model: DiffusionModel, process: SDE) -> float:
    """The smallest time of ``process`` at which ``model`` was trained: its own process's ``train_t_min``,
    carried over by noise level when ``process`` is another (DDPM's step 1 is VP's t = 9.9e-4)."""
    base = model.process
    if process == base:
        return base.train_t_min
    return float(process.time_of_sigma(base.sigma(base.train_t_min)).clamp(process.train_t_min, 1.0))


def final_denoise(process: SDE, denoise: bool | None) -> bool:
    """Whether a stochastic sampler ends with Tweedie's ``E[x0 | x_{t_min}]`` (one more network call):
    ``denoise``, by default where the process has a Gaussian kernel (affine), never on a general SDE."""
    return process.has_kind("affine") if denoise is None else denoise


def posterior_step(y: Tensor, x0: Tensor, sigma: float, sigma_next: float, noise: Randomness = None, *,
                   eta: float = 1.0, draw: bool = True) -> Tensor:
    """One step of DDIM's family in ``y = x / a`` from noise level ``sigma`` to ``sigma_next < sigma``
    (Song, Meng & Ermon 2021, eq. 12; MATH.md 5):

        y' = x0 + c eps + sigma_eta z,  eps = (y - x0) / sigma,  sigma_eta = eta sigma' sqrt(1 - sigma'^2 / sigma^2),

    ``c = sqrt(sigma'^2 - sigma_eta^2)``, which at ``eta = 1`` is ``sigma'^2 / sigma``: the mean of the forward
    posterior ``q(y' | y, x0)``, DDPM's ancestral step with ``sigma_t^2 = beta_tilde_t``. ``eta = 0`` is the
    Euler step of the probability-flow ODE. Without ``draw`` the mean alone (no ``z``)."""
    eps = (y - x0) / sigma
    sigma_eta = eta * sigma_next * math.sqrt(max(1 - sigma_next**2 / sigma**2, 0.0))
    c = sigma_next**2 / sigma if eta == 1.0 else math.sqrt(max(sigma_next**2 - sigma_eta**2, 0.0))
    y = x0 + c * eps
    if draw and sigma_eta > 0:
        y = y + sigma_eta * randn_like(y, noise)
    return y


class SigmaView:
    """A model seen in EDM's coordinates: ``y = x / a(t)``, ``y = x0 + sigma eps``.

    Every process is a rescaling of this one (MATH.md 1), so samplers written
    on ``(y, sigma)`` (DDIM, EDM's Heun, DPM-Solver++) serve all of them.
    Counts network evaluations.
    """

    def __init__(self, model: DiffusionModel, process: NoiseProcess):
        self.model, self.process, self.nfe = model, process, 0

    def predict(self, y: Tensor, t: Tensor | float, scale: float | None = None) -> Prediction:
        """The model at time ``t`` on ``x = a(t) y``; eps and x0 are those of ``y``.

        ``scale`` is ``a(t)`` when the caller already knows it (samplers precompute their grid).
        """
        t = as_time(t, y)
        a = self.scale(t[0]) if scale is None else scale
        self.nfe += 1
        return self.model.predict(a * y, t)

    def scale(self, t: Tensor | float) -> float:
        return float(self.process.signal_scale(as_time(t)))

    def sigma(self, t: Tensor | float) -> float:
        return float(self.process.sigma(as_time(t)))

    def grid(self, times: Tensor) -> tuple[list[float], list[float]]:
        """``(a(t_i), sigma(t_i))`` for a whole grid, as floats."""
        a, s = self.process.coefficients(times)
        return a.tolist(), (s / a).tolist()


def call_back(callback: Callback | None, step: int, num_steps: int, t: float, x: Tensor, nfe: int,
              eps: Tensor | None = None, scale: float = 1.0) -> None:
    """Tell ``callback`` of a step; a solver that works in ``y = x / a`` passes ``y`` and ``scale = a(t)``, so the
    callback sees ``x`` from every sampler."""
    if callback is not None:
        callback(StepInfo(step, num_steps, float(t), x if scale == 1.0 else x * scale, nfe, eps))


def finite_or_raise(x: Tensor, where: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{where} produced NaN or Inf; lower the step size, raise the "
                                 "number of steps, or check the model's output")
