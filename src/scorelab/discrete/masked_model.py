"""The model of masked diffusion: ``mu_theta(x_t, t)``, a distribution over the K categories at every masked
dimension, in MDLM's SUBS parameterization (MATH.md 13; Sahoo et al. 2024): it never puts mass on [MASK],
and an unmasked dimension is copied (its ``x_0`` is ``x_t``, with probability one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import TimeLike
from ..models import NetworkModel
from ..processes import Process, require_kind
from .masked import MaskedDiffusion
from .models import CategoricalPrediction, network_logits
from .process import _LOG_ZERO

__all__ = ["MaskedModel", "TIME_SCALE"]

#: The network is told ``1000 t``, as the VP SDE's networks (Song et al. 2021; MATH.md 13).
TIME_SCALE = 1000.0


class MaskedModel(NetworkModel):
    """``mu_theta`` from ``net(one_hot(x_t), c) -> logits``: the network maps ``(N, C*(K+1), H, W)`` to
    ``(N, C*K, H, W)`` (``(N, D*(K+1)) -> (N, D*K)`` for vectors); SUBS keeps the unmasked dimensions.

    ``time_conditioning``: the network is told ``c = 1000 t``; without it ``c = 0`` (the default, as MDLM: the
    exact ``mu`` depends on ``x_t`` alone, since which dimensions are masked says nothing of their values, and
    the sampler's cache is then exact).
    """

    parameterization = "masked"
    target = "x0"
    #: Its reverse step draws every dimension independently from ``mu_theta``.
    factorized = True
    process: MaskedDiffusion

    def __init__(self, net: nn.Module, process: Process, *, num_classes: int | None = None,
                 data_shape: tuple[int, ...] | None = None, time_conditioning: bool = False):
        require_kind(process, ("masked",), "a masked diffusion model", "use CategoricalModel for multinomial "
                     "diffusion, scorelab.Model for continuous data")
        super().__init__(net, process, num_classes=num_classes, data_shape=data_shape)
        self.time_conditioning = bool(time_conditioning)

    @property
    def reads_time(self) -> bool:
        """Whether the network is told ``t`` (``time_conditioning``); without it the sampler's cache is exact."""
        return self.time_conditioning

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        """The categories' shape: the network's input holds one-hot channels, K + 1 per channel (or dimension)."""
        shape = super().data_shape
        return None if shape is None else (shape[0] // self.process.num_states,) + tuple(shape[1:])

    def logits(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The network's logits over the K categories, ``(*x_t.shape, K)``, for checked states and times."""
        c = t * TIME_SCALE if self.time_conditioning else torch.zeros_like(t)
        return network_logits(self.net, x_t, c.float(), labels, self.process)

    def log_x0(self, x_t: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        """``log mu_theta(x_t, t)`` over the K categories, float64: the network's softmax where ``x_t`` is
        [MASK], the copied category (log 1, log 0 elsewhere) where it is not."""
        x_t = self.process.check_states(x_t)
        t = self.process.times(t, x_t)
        return subs(self.logits(x_t, t, labels), x_t, self.process)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> CategoricalPrediction:
        """``log mu_theta`` at states ``x`` and times ``t`` (the sampler's and the label wrappers' call)."""
        x = self.process.check_states(x)
        t = self.process.times(t, x)
        return CategoricalPrediction(x, t, self.log_x0(x, t, labels))

    def forward(self, x_t: Tensor, t: TimeLike) -> Tensor:
        return self.log_x0(x_t, t)


def subs(logits: Tensor, x_t: Tensor, process: MaskedDiffusion) -> Tensor:
    """MDLM's SUBS parameterization of ``logits`` ``(*x_t.shape, K)``: normalized over the K categories (so
    never [MASK]) where ``x_t`` is masked, the one-hot copy of ``x_t`` elsewhere; float64 logs."""
    log_p = torch.log_softmax(logits.double(), -1)
    masked = (x_t == process.mask_state).unsqueeze(-1)
    copy = F.one_hot(x_t.clamp(max=process.num_categories - 1), process.num_categories).double()
    return torch.where(masked, log_p, copy.log().clamp(min=_LOG_ZERO))
