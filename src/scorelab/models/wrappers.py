"""Model-to-model wrappers that change how a model answers, not what it knows (MATH.md 1; docs/DESIGN.md).

* :class:`ProcessAdapter`: a model trained under one process answering in another's time, matching noise
  levels ``sigma = s / a`` (Song et al. 2021 drive DDPM and NCSN checkpoints by the VP and VE SDEs' samplers
  this way);
* :class:`ClipDenoised`: the denoised estimate clipped to the data range at every call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._util import TimeLike, as_time, expand_as, require
from ..processes import Process, require_kind
from .base import DiffusionModel, ModelWrapper, Prediction

__all__ = ["ProcessAdapter", "ClipDenoised"]


class ProcessAdapter(ModelWrapper):
    """A model trained under one process, answering in the time of another.

    At time ``t`` of ``process`` the noise level is ``sigma = s(t) / a(t)``;
    the base model is asked at the time ``t'`` of its own process with the same
    sigma, on ``x a'(t') / a(t)``. Both views describe ``x / a = x0 + sigma eps``,
    so eps (and x0) carry over unchanged (MATH.md 1; Song et al. 2021 run
    DDPM and NCSN checkpoints under the VP and VE SDEs this way). Outside the
    range of sigma the base model was trained on (from its process's
    ``train_t_min`` to 1) the nearest end is used. Its energy is the base model's at the same noise level
    (``x`` is rescaled, which shifts ``-log p`` by a constant).
    """

    def __init__(self, model: DiffusionModel, process: Process):
        require_kind(model.process, ("affine",), "answering in another process's time (a noise level s / a)")
        require_kind(process, ("affine",), "answering in another process's time (a noise level s / a)")
        super().__init__(model)
        self._process = process

    @property
    def process(self) -> Process:
        return self._process

    @property
    def normalized_energy(self) -> bool:
        """False: the base model's energy at a rescaled ``x`` is ``-log p`` shifted by the rescaling's log-determinant."""
        return False

    def _base(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(a, s)`` here, and the base model's time and input at the same noise level."""
        base = self.model.process
        a, s = self.process.coefficients(t)
        t_base = base.time_of_sigma(s / a).clamp(base.train_t_min, 1.0)   # never below what it was trained on
        return a, s, t_base, expand_as(base.signal_scale(t_base) / a, x) * x

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        t = as_time(t, x)
        a, s, t_base, x_base = self._base(x, t)
        p = ModelWrapper.predict(self, x_base, t_base, labels)
        return Prediction(x, t, a, s, eps=p.eps, variance_frac=p.variance_frac)

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        t = as_time(t, x)
        _, _, t_base, x_base = self._base(x, t)
        return ModelWrapper.energy(self, x_base, t_base, labels)

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.energy(x, t, labels), self.predict(x, t, labels).score


class ClipDenoised(ModelWrapper):
    """``model`` with its denoised estimate clipped to the data range (images: [-1, 1]).

    ``x0 = clamp((x - s eps) / a, low, high)`` and the answer is re-expressed as
    ``eps = (x - a x0) / s`` (MATH.md 1), so every sampler (DDPM, DDIM, the SDE
    and ODE solvers) sees the same clipped prediction. This is the static
    thresholding of Ho et al.'s sampling code (``clip_denoised=True``) and
    diffusers' ``clip_sample``: it keeps an imperfect image model's trajectories
    inside the data range. At ``s = 0`` the answer is left as is, and so is a prediction without ``x0`` (a
    general SDE's). The energy, where the model has one, is the model's own: Metropolis corrections target
    the model's density.
    """

    def __init__(self, model: DiffusionModel, low: float = -1.0, high: float = 1.0):
        require(low < high, f"clip range must have low < high, got [{low}, {high}]")
        require_kind(model.process, ("sde",), "clipping the denoised estimate")
        super().__init__(model)
        self.low, self.high = low, high

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        p = super().predict(x, t, labels)
        if not p.affine:
            return p
        a, s = expand_as(p.a, x), expand_as(p.s, x)
        x0 = p.x0.clamp(self.low, self.high)
        eps = torch.where(s > 0, (x - a.to(x.dtype) * x0) / s.clamp(min=1e-30).to(x.dtype), p.eps)
        return Prediction(p.x, p.t, p.a, p.s, eps=eps.to(p.eps.dtype), variance_frac=p.variance_frac)
