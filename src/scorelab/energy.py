"""Energy-parameterized models: an unnormalized density ``exp(-U(x, t))`` whose gradient is the score
(MATH.md 9; Salimans & Ho 2021, Du et al. 2023).

A network gives ``E_theta(x, t)`` per sample and the model's energy is ``U = E_theta / s(t)``, so that
``eps = s(t) grad_x U = grad_x E_theta``: the network's energy is on the scale of eps, as a score
network's output is, and ``U = -log p_t(x) + const`` when the model is exact. Two forms:

* ``"scalar"``: the network returns one number per sample, ``E_theta = net(x, c)`` (a head on any network);
* ``"norm"``: the network returns a tensor of ``x``'s shape and ``E_theta = ||x - net(x, c)||^2 / 2``
  (Du et al.'s toy models write ``||net(x) - x||^2``); with ``net = 0`` it is ``||x||^2 / 2``, whose
  ``eps = x`` is exact where the data is forgotten.

``predict`` differentiates the energy (``create_graph`` while training, so DSM trains it by double
backpropagation); every sampler and loss takes the model as it takes a score model, and the
Metropolis-corrected samplers (:mod:`scorelab.samplers.mcmc`) use the energy itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ._util import TimeLike, as_time, expand_as, require
from .models import CONDITIONS, Prediction, energy_method
from .processes import SDE

__all__ = ["EnergyModel", "HasEnergy", "FORMS", "energy_and_score", "has_energy"]

#: How a network's output becomes an energy.
FORMS = ("scalar", "norm")


@runtime_checkable
class HasEnergy(Protocol):
    """A model with ``energy(x, t) -> (N,)``, ``U = -log p_t(x) + const`` (its score is ``-grad_x U``)."""

    def energy(self, x: Tensor, t: TimeLike) -> Tensor: ...


def has_energy(model: object) -> bool:
    return callable(getattr(model, "energy", None))


def energy_and_score(model: object, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
    """``(U(x, t), score(x, t))`` of a model with an energy, in one pass where it can."""
    both = getattr(model, "energy_and_score", None)
    if callable(both):
        return both(x, t)
    return energy_method(model)(x, t), model.predict(x, t).score  # type: ignore[attr-defined]


class EnergyModel(nn.Module):
    """A network giving an energy per sample, under an affine process (MATH.md 9).

    Args:
        net: ``net(x, c)`` returning ``(N,)`` (``form="scalar"``) or ``x``'s shape (``"norm"``).
        process: the affine process it is trained under.
        form: ``"scalar"`` or ``"norm"`` (see the module's docstring).
        condition: what the network is told about the noise level (default: the process's).
    """

    def __init__(self, net: nn.Module, process: SDE, form: str = "scalar", condition: str | None = None):
        super().__init__()
        require(form in FORMS, f"unknown energy form {form!r}; choose one of {FORMS}")
        require(process.affine, f"an energy model needs s(t) to scale its energy; {type(process).__name__} "
                "has a non-affine drift: use a score model (target='score') there")
        condition = condition or process.default_condition
        require(condition in CONDITIONS and condition in process.conditions,
                f"the noise condition {condition!r} does not fit {type(process).__name__}; "
                f"it takes {list(process.conditions)}")
        self.net, self.process, self.form, self.condition = net, process, form, condition
        self.target = "energy"
        self.learned_variance = False

    @property
    def num_classes(self) -> int:
        """Number of classes of a class-conditional network (``net.config.num_classes``), else 0."""
        net = getattr(self.net, "module", self.net)
        return int(getattr(getattr(net, "config", None), "num_classes", 0))

    def network_energy(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """``E_theta(x, t)``, shape ``(N,)``: on the scale of eps (``eps = grad_x E_theta``)."""
        c = self.process.noise_condition(self.condition, t).to(x.dtype)
        out = self.net(x, c) if labels is None else self.net(x, c, labels)
        if self.form == "scalar":
            if out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.shape != (x.shape[0],):
                raise ValueError(f"an energy network (form='scalar') must return one number per sample, shape "
                                 f"({x.shape[0]},), but returned {tuple(out.shape)}; add a head that reduces to a "
                                 "scalar, or use form='norm' for a network that returns x's shape")
            return out
        if out.shape != x.shape:
            raise ValueError(f"an energy network (form='norm') must return x's shape {tuple(x.shape)}, but returned "
                             f"{tuple(out.shape)}; use form='scalar' for a network with one output per sample")
        return 0.5 * (x - out).flatten(1).pow(2).sum(1)

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        """``U(x, t) = E_theta / s(t)``, equal to ``-log p_t(x)`` up to a constant in x when exact."""
        t = as_time(t, x)
        return self.network_energy(x, t, labels) / self.process.noise_std(t).to(x.dtype)

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        t = as_time(t, x)
        u, eps = self._energy_and_eps(x, t, labels)
        return u, -eps / expand_as(self.process.noise_std(t), x)

    def _energy_and_eps(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # A graph for training, or for a caller who differentiates through x (score matching's trace).
        create = torch.is_grad_enabled() and (self.training or x.requires_grad)
        with torch.enable_grad():
            xg = x if (create and x.requires_grad) else x.detach().requires_grad_(True)
            e = self.network_energy(xg, t, labels)
            eps, = torch.autograd.grad(e.sum(), xg, create_graph=create)
        s = self.process.noise_std(t).to(x.dtype)
        u = e / s
        return (u, eps) if create else (u.detach(), eps.detach())

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        """The score ``-grad_x U`` as a :class:`Prediction` (``eps = grad_x E_theta``); ``labels`` for a
        class-conditional network (reached through :class:`scorelab.guidance.Conditional`)."""
        t = as_time(t, x)
        _, eps = self._energy_and_eps(x, t, labels)
        a, s = self.process.coefficients(t)
        return Prediction(x, t, a, s, eps)

    def forward(self, x: Tensor, t: TimeLike) -> Prediction:
        return self.predict(x, t)
