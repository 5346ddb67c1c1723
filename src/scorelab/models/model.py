"""A trained network as a model: the network, its process, what it predicts and how it is told the noise level
(MATH.md sections 1, 5 and 7).

:class:`NetworkModel` is what every trained model shares (this module's :class:`Model`, the energy
parameterization :class:`scorelab.energy.EnergyModel`, the categorical models of :mod:`scorelab.discrete`):
the network and process, and the declarations of the model contract that follow from the network (its
classes, the shape it takes). :class:`Model` decides, once, what noise condition the network receives
(time, discrete index, sigma or log-sigma) and how its output becomes a :class:`Prediction`, including
EDM's preconditioning (Karras et al. 2022).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._util import TimeLike, as_time, expand_as, require
from ..networks import as_network
from ..processes import Process, require_kind
from .base import CONDITIONS, TARGETS, ModelBase, Prediction, to_eps
from .wrappers import ProcessAdapter

__all__ = ["NetworkModel", "Model", "NETWORK_TARGETS", "resolve_condition"]

#: What a Model's network may predict: one of the targets, or the network ``F`` of EDM's preconditioned
#: denoiser ``D = c_skip x + c_out F(c_in x)`` (Karras et al. 2022, Table 1).
NETWORK_TARGETS = TARGETS + ("preconditioned",)


def resolve_condition(process: Process, condition: str | None) -> str:
    """The noise condition a network under ``process`` receives: ``condition``, else the process's default."""
    condition = condition or process.default_condition
    require(condition in CONDITIONS, f"unknown noise condition {condition!r}; choose one of {CONDITIONS}")
    if condition == "index":
        require_kind(process, ("ddpm", "ncsn"), "the noise condition 'index' (a step or level)",
                     f"use one of {list(process.conditions)}")
    require(condition in process.conditions, f"the noise condition {condition!r} does not fit "
            f"{type(process).__name__}; it takes {list(process.conditions)}")
    return condition


class NetworkModel(nn.Module, ModelBase):
    """A network ``net`` with its ``process``: the base of the trained models.

    ``num_classes`` and ``data_shape`` default to what a scorelab network declares (0 and unknown for any
    other module). ``parameterization`` names the kind of model (``"score"``, ``"energy"``, ...), as its
    checkpoint records it.
    """

    #: How the network's output becomes the model's answer; a checkpoint's spec records it.
    parameterization: ClassVar[str] = ""
    #: What the network's output is regressed on, as the spec records it.
    target: str = ""

    def __init__(self, net: nn.Module, process: Process, *, num_classes: int | None = None,
                 data_shape: tuple[int, ...] | None = None):
        nn.Module.__init__(self)
        self.net, self.process = net, process
        network = as_network(net)
        self._num_classes = int(num_classes if num_classes is not None else (network.num_classes if network else 0))
        self._data_shape = data_shape if data_shape is not None else (network.data_shape if network else None)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        return self._data_shape


class Model(NetworkModel):
    """A network ``net(x, noise_condition)`` with its process and prediction target (MATH.md 1).

    Args:
        net: any module taking ``(x, c)`` with ``c`` of shape ``(N,)`` and
            returning ``x``'s shape (twice the channels with ``learned_variance``).
        process: the noise process the network is trained under.
        target: what the network predicts: ``"eps"``, ``"score"``, ``"x0"``, ``"v"`` or ``"preconditioned"``
            (EDM's ``F``, with ``sigma_data``). On a general SDE only ``"score"``, with the output scaled as
            score_sde's ``scale_by_sigma``: ``score = out / sqrt(lambda(t))``, ``lambda(t) = 1 - exp(-int_0^t g^2)``
            (:meth:`~scorelab.processes.SDE.score_weight`), so the network's output stays of order one as ``t -> 0``.
        condition: what the network is told about the noise level; default
            the process's ``default_condition``: DDPM's and NCSN's 0-based index
            (Ho et al., Song & Ermon), ``t`` for VP, sub-VP and general SDEs, ``log sigma``
            for VE (score_sde's NCSN++).
        learned_variance: the network's output has twice the channels
            (dimension 1); the second half is Nichol & Dhariwal's ``v`` in
            [-1, 1], mapped to ``variance_frac = (v + 1) / 2``.
        sigma_data: the data's standard deviation that EDM's preconditioning assumes (0.5 for images on
            [-1, 1]); used by ``target="preconditioned"`` only.
        num_classes, data_shape: see :class:`NetworkModel`.
    """

    parameterization = "score"

    def __init__(self, net: nn.Module, process: Process, target: str = "eps",
                 condition: str | None = None, learned_variance: bool = False, *, sigma_data: float = 0.5,
                 num_classes: int | None = None, data_shape: tuple[int, ...] | None = None):
        require(target in NETWORK_TARGETS, f"unknown prediction target {target!r}; choose one of {NETWORK_TARGETS}")
        require_kind(process, ("sde",), "a Model", "use scorelab.discrete's models for categorical data")
        if target != "score":
            require_kind(process, ("affine",), f"the {target!r} target (x_t = a x0 + s eps)",
                         "use target='score' and train it with sliced score matching")
        require(not learned_variance or process.has_kind("ddpm"),
                "learned_variance interpolates DDPM's beta_t and beta_tilde_t; use it with a DDPM process")
        require(isinstance(sigma_data, (int, float)) and sigma_data > 0, f"sigma_data must be positive, got {sigma_data!r}")
        super().__init__(net, process, num_classes=num_classes, data_shape=data_shape)
        self.target = target
        self.condition = resolve_condition(process, condition)
        self._learned_variance = learned_variance
        self.sigma_data = float(sigma_data)

    @property
    def learned_variance(self) -> bool:
        return self._learned_variance

    def noise_condition(self, t: Tensor) -> Tensor:
        """What the network receives at time ``t`` (decided here, once)."""
        return self.process.noise_condition(self.condition, t)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        """One network evaluation at ``(x, t)``, returned as a :class:`Prediction`.

        ``labels`` ``(N,)`` condition a class-conditional network (-1: no label);
        samplers reach them through :class:`scorelab.models.Conditional`.
        """
        t = as_time(t, x)
        c = self.noise_condition(t).to(x.dtype)
        inp = x
        if self.target == "preconditioned":            # EDM's c_in, on y = x / a (MATH.md 5)
            a, s = self.process.coefficients(t)
            inp = x * expand_as(1 / (a * torch.sqrt((s / a) ** 2 + self.sigma_data**2)), x)
        out = self.net(inp, c) if labels is None else self.net(inp, c, labels)
        frac = None
        expected = list(x.shape)
        if self.learned_variance:
            expected[1] *= 2
        if list(out.shape) != expected:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input "
                             f"{tuple(x.shape)}; expected {tuple(expected)}"
                             + (" (prediction and variance channels)" if self.learned_variance else ""))
        if self.learned_variance:
            out, var_out = out.chunk(2, dim=1)
            frac = (var_out + 1) / 2
        if not self.process.has_kind("affine"):
            return Prediction(x, t, score=self._general_score(x, t, out), variance_frac=frac)
        a, s = self.process.coefficients(t)
        if self.target == "preconditioned":
            return Prediction(x, t, a, s, eps=self._preconditioned_eps(x, a, s, out), variance_frac=frac)
        return Prediction(x, t, a, s, eps=to_eps(out, self.target, x, a, s), variance_frac=frac)

    def _preconditioned_eps(self, x: Tensor, a: Tensor, s: Tensor, out: Tensor) -> Tensor:
        """EDM's preconditioned denoiser (Karras et al. 2022, Table 1) in ``y = x / a``, ``sigma = s / a``:
        ``x0 = c_skip y + c_out F`` with ``c_skip = sd^2 / (sigma^2 + sd^2)``,
        ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, returned as eps (MATH.md 1)."""
        sd2 = self.sigma_data**2
        sigma = s / a
        c_skip, c_out = sd2 / (sigma**2 + sd2), sigma * math.sqrt(sd2) / torch.sqrt(sigma**2 + sd2)
        x0 = expand_as(c_skip / a, x) * x + expand_as(c_out, x) * out
        return (x - expand_as(a, x) * x0) / expand_as(s, x)

    def _general_score(self, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """The score under a general SDE (MATH.md 7): ``2 f(x, t) / g(t)^2 + out / sqrt(lambda(t))``.

        The first term is the score at which the probability flow stands still (the
        stationary density's score for a Langevin SDE); the network gives the rest,
        scaled like eps, so its output stays of order one at every ``t`` and near
        equilibrium it learns the small residual that moves the flow.
        """
        process = self.process
        skip = 2 * process.drift(x, t) / expand_as(process.diffusion(t) ** 2, x)
        return skip + out / expand_as(process.score_weight(t).clamp(min=1e-12).sqrt(), out)

    def forward(self, x: Tensor, t: TimeLike) -> Prediction:
        return self.predict(x, t)

    def in_process(self, process: Process) -> ProcessAdapter:
        """This model answering in another process's time (see :class:`~scorelab.models.ProcessAdapter`)."""
        return ProcessAdapter(self, process)
