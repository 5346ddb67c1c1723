"""What every sampler shares: results, noise, time grids and the sigma-space view.

Samplers are plain functions ``(model, shape or x_T, steps, *, process, noise,
callback) -> SampleResult``. ``process`` defaults to the model's own; when it
differs, the model is adapted by matching noise levels
(:class:`scorelab.models.ProcessAdapter`), so a DDPM-trained network runs under
the VP SDE's samplers and an NCSN one under the VE SDE's (Song et al. 2021).

Randomness comes from ``noise``: a ``torch.Generator`` (one stream for the
batch) or a :class:`PerSampleNoise` built from one seed per sample, which
makes sample ``k`` the same whatever the batch size (as EDM's code does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .._util import as_time, require
from ..models import DiffusionModel, Prediction, ProcessAdapter
from ..processes import SDE, NoiseProcess

__all__ = ["SampleResult", "PerSampleNoise", "Callback", "StepInfo", "Projection", "projected", "time_grid", "resolve", "flow_process",
           "trained_t_min",
           "randn_like", "initial_noise"]


@dataclass(frozen=True)
class StepInfo:
    """Passed to a sampler's callback after each step."""

    step: int
    num_steps: int
    t: float
    x: Tensor
    nfe: int


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
    Metropolis-corrected samplers the share of proposals accepted, and for categorical data the states."""

    samples: Tensor
    nfe: int
    acceptance: float | None = None
    states: Tensor | None = None             # categorical samplers: the integer categories themselves


class PerSampleNoise:
    """One generator per sample, seeded ``seeds[k]``: sample k's noise ignores the batch size."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        require(len(seeds) > 0, "PerSampleNoise needs at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(device).manual_seed(s) for s in self.seeds]

    #: Sample k of a job seeded ``seed`` is drawn from ``seed * SEED_STRIDE + k``.
    SEED_STRIDE = 1_000_003

    @classmethod
    def for_rows(cls, seed: int, rows: Sequence[int] | Tensor, device: torch.device | str = "cpu"
                 ) -> "PerSampleNoise":
        """The noise of samples ``rows`` of a job seeded ``seed``: sample k's own seed ignores batching
        and the number of processes (``seed * 1_000_003 + k``)."""
        return cls([int(seed) * cls.SEED_STRIDE + int(k) for k in rows], device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        require(shape[0] == len(self.generators),
                f"batch of {shape[0]} but PerSampleNoise has {len(self.generators)} seeds")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype,
                                        device=g.device).to(device) for g in self.generators])


NoiseLike = torch.Generator | PerSampleNoise | None


def randn_like(x: Tensor, noise: NoiseLike) -> Tensor:
    """Standard normal noise shaped like ``x`` from a generator or per-sample seeds."""
    if isinstance(noise, PerSampleNoise):
        return noise.randn(x.shape, x.dtype, x.device)
    return torch.randn(x.shape, generator=noise, dtype=x.dtype,
                       device=noise.device if noise is not None else x.device).to(x.device)


def model_device_dtype(model: object) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a model's parameters (the innermost model's, through wrappers such as
    adapters and guidance), else CPU float32."""
    candidate = model
    for _ in range(8):
        if candidate is None:
            break
        params = getattr(candidate, "parameters", None)
        first = next(params(), None) if callable(params) else None
        if first is not None:
            return first.device, first.dtype
        candidate = getattr(candidate, "model", None)
    return torch.device("cpu"), torch.float32


def initial_noise(process: SDE, shape_or_x: Sequence[int] | Tensor, noise: NoiseLike,
                  model: object = None) -> Tensor:
    """``x_T``: given as a tensor, or drawn from the process's prior on the model's device and in
    its dtype (sample k from its own generator with :class:`PerSampleNoise`)."""
    if isinstance(shape_or_x, Tensor):
        return shape_or_x
    shape = tuple(shape_or_x)
    require(len(shape) >= 2, f"shape must include the batch, e.g. (16, 2) or (16, 1, 8, 8); got {shape}")
    device, dtype = model_device_dtype(model)
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


def time_grid(process: NoiseProcess, num_steps: int, kind: str = "time", *, rho: float = 7.0,
              t_max: float = 1.0, t_min: float | None = None) -> Tensor:
    """``num_steps + 1`` decreasing times from ``t_max`` to ``t_min`` (float64).

    ``kind``: ``"time"`` uniform in t (Score SDE); ``"log_sigma"`` uniform in
    ``log(s/a)`` (DPM-Solver's logSNR grid); ``"karras"`` EDM's
    ``sigma_i = (sigma_max^(1/rho) + i/n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    with ``rho = 7`` (Karras et al. 2022, eq. 5).
    """
    require(isinstance(num_steps, int) and num_steps >= 1,
            f"num_steps must be a positive integer, got {num_steps!r}")
    t_min = process.t_min if t_min is None else t_min
    require(0 <= t_min < t_max <= 1, f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    u = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if kind == "time":
        return t_max + (t_min - t_max) * u
    lo, hi = process.sigma(as_time(t_min)), process.sigma(as_time(t_max))
    require(kind not in ("log_sigma", "karras") or float(lo) > 0,
            f"the {kind!r} grid needs a positive noise level at t_min={t_min}; raise t_min "
            f"(e.g. to {process.t_min or 1e-3}) or use grid='time'")
    if kind == "log_sigma":
        sigmas = torch.exp(torch.log(hi) + (torch.log(lo) - torch.log(hi)) * u)
    elif kind == "karras":
        sigmas = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    else:
        raise ValueError(f"unknown time grid {kind!r}; choose 'time', 'log_sigma' or 'karras'")
    t = process.time_of_sigma(sigmas)
    t[0], t[-1] = t_max, t_min  # exact ends
    return t


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


def call_back(callback: Callback | None, step: int, num_steps: int, t: float, x: Tensor, nfe: int) -> None:
    if callback is not None:
        callback(StepInfo(step, num_steps, float(t), x, nfe))


def finite_or_raise(x: Tensor, where: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{where} produced NaN or Inf; lower the step size, raise the "
                                 "number of steps, or check the model's output")
