"""Energy-parameterized models: an unnormalized density ``exp(-U(x, t))`` whose gradient is the score
(MATH.md 9; Salimans & Ho 2021, Du et al. 2023).

A network gives ``E_theta(x, t)`` per sample and the model's energy is ``U = E_theta / s(t)``, so that
``eps = s(t) grad_x U = grad_x E_theta``: the network's energy is on the scale of eps, as a score
network's output is, and ``U = -log p_t(x) + const`` when the model is exact. Two forms:

* ``"scalar"``: the network returns one number per sample, ``E_theta = net(x, c)`` (a head on any network);
* ``"norm"``: the network returns a tensor of ``x``'s shape and ``E_theta = ||x - net(x, c)||^2 / 2``
  (Du et al.'s toy models write ``||net(x) - x||^2``); with ``net = 0`` it is ``||x||^2 / 2``, whose
  ``eps = x`` is exact where the data is forgotten.

``predict`` differentiates the energy, keeping the graph whenever gradients are wanted (training, a loss on
a loaded model, a caller differentiating through ``x``), so DSM trains it by double backpropagation; every
sampler and loss takes the model as it takes a score model, and the Metropolis-corrected samplers
(:mod:`scorelab.samplers.mcmc`) use the energy itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._util import TimeLike, as_time, expand_as, require
from ..models import NetworkModel, Prediction, resolve_condition
from ..processes import Process, require_kind

__all__ = ["EnergyModel", "FORMS"]

#: How a network's output becomes an energy.
FORMS = ("scalar", "norm")


class EnergyModel(NetworkModel):
    """A network giving an energy per sample, under an affine process (MATH.md 9).

    Args:
        net: ``net(x, c)`` returning ``(N,)`` (``form="scalar"``) or ``x``'s shape (``"norm"``).
        process: the affine process it is trained under.
        form: ``"scalar"`` or ``"norm"`` (see the module's docstring).
        condition: what the network is told about the noise level (default: the process's).
        num_classes, data_shape: see :class:`scorelab.models.NetworkModel`.
    """

    parameterization = "energy"
    #: The energy's gradient is on the scale of eps (``eps = grad_x E_theta``).
    target = "eps"

    def __init__(self, net: nn.Module, process: Process, form: str = "scalar", condition: str | None = None, *,
                 num_classes: int | None = None, data_shape: tuple[int, ...] | None = None):
        require(form in FORMS, f"unknown energy form {form!r}; choose one of {FORMS}")
        require_kind(process, ("affine",), "an energy model (s(t) scales its energy)",
                     "use a score model (target='score') there")
        super().__init__(net, process, num_classes=num_classes, data_shape=data_shape)
        self.form, self.condition = form, resolve_condition(process, condition)

    @property
    def has_energy(self) -> bool:
        return True

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

    def _wants_graph(self, x: Tensor) -> bool:
        """Whether the caller will differentiate the answer: gradients are on, and ``x`` or a parameter
        requires them (a loss in train or eval mode; a sampler runs without gradients and gets none)."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.net.parameters()))

    def _energy_and_eps(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        create = self._wants_graph(x)
        with torch.enable_grad():
            xg = x if (create and x.requires_grad) else x.detach().requires_grad_(True)
            e = self.network_energy(xg, t, labels)
            eps, = torch.autograd.grad(e.sum(), xg, create_graph=create)
        s = self.process.noise_std(t).to(x.dtype)
        u = e / s
        return (u, eps) if create else (u.detach(), eps.detach())

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        """The score ``-grad_x U`` as a :class:`~scorelab.models.Prediction` (``eps = grad_x E_theta``); ``labels``
        for a class-conditional network (reached through :class:`scorelab.models.Conditional`)."""
        t = as_time(t, x)
        _, eps = self._energy_and_eps(x, t, labels)
        a, s = self.process.coefficients(t)
        return Prediction(x, t, a, s, eps=eps)

    def forward(self, x: Tensor, t: TimeLike) -> Prediction:
        return self.predict(x, t)
