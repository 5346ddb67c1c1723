"""The model contract: what samplers, losses and likelihoods may ask of a model (docs/DESIGN.md, "Contracts").

A model is anything with a ``process`` and ``predict(x, t) -> Prediction``, and it *declares* the rest
(:class:`DiffusionModel`): its number of classes (``predict(x, t, labels)`` when > 0), whether it learned
DDPM's variance, whether it has an energy (``energy_and_score``), the shape of what it makes, its
parameters (so its device), and :meth:`~DiffusionModel.select_rows`, the model for some rows of the batch
(adaptive solvers evaluate the samples still moving). :class:`ModelBase` gives the defaults of a model
that declares nothing more; :class:`ModelWrapper` is the one base of every model-to-model wrapper
(adapters, clipping, guidance, composition), which forwards all that its inner models declare.

A :class:`Prediction` always carries the score; under an affine process also ``a(t), s(t)``, from which
eps, the denoised ``x0`` and ``v`` follow by MATH.md 1 (``score = -eps / s``, ``x0 = (x - s eps) / a``,
``v = a eps - s x0``), so a network trained for any target serves every sampler. Guidance is written once
on it (:meth:`Prediction.guided`, :meth:`Prediction.with_score_added`).
"""

from __future__ import annotations

import copy
from typing import Iterator, Protocol

import torch
from torch import Tensor

from .._util import TimeLike, expand_as, require
from ..processes import Process

__all__ = ["TARGETS", "CONDITIONS", "to_eps", "from_eps", "guide", "Prediction", "DiffusionModel", "ModelBase",
           "ModelWrapper", "require_energy", "resolve_variance", "device_and_dtype", "NO_ENERGY"]

#: Prediction targets a network may be trained for (MATH.md 1).
TARGETS = ("eps", "score", "x0", "v")
#: Noise conditions a network may receive.
CONDITIONS = ("time", "index", "sigma", "log_sigma")

#: The one error of a model without an energy (MATH.md 9).
NO_ENERGY = ("this model has no energy (it predicts a score): Metropolis corrections and mixtures need an energy "
             "model (--parameterization energy, scorelab.EnergyModel, GaussianMixture.energy_model, or a "
             "composition of them); use the unadjusted 'langevin' corrector for a score model")


def _check_target(target: str) -> None:
    require(target in TARGETS, f"unknown prediction target {target!r}; choose one of {TARGETS}")


def to_eps(out: Tensor, target: str, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """Convert a network output for ``target`` at ``x_t = x`` into eps (MATH.md 1).

    ``a`` and ``s`` are per-example ``(N,)`` or scalars. For ``v = a eps - s x0``
    with ``x = a x0 + s eps``: ``eps = (a v + s x) / (a^2 + s^2)``.
    """
    _check_target(target)
    a, s = expand_as(a, x), expand_as(s, x)
    if target == "eps":
        return out
    if target == "score":
        return -s * out
    if target == "x0":
        return (x - a * out) / s
    return (a * out + s * x) / (a**2 + s**2)


def from_eps(eps: Tensor, target: str, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """Express eps at ``x_t = x`` as ``target`` (the inverse of :func:`to_eps`, MATH.md 1)."""
    _check_target(target)
    a, s = expand_as(a, x), expand_as(s, x)
    if target == "eps":
        return eps
    if target == "score":
        return -eps / s
    x0 = (x - s * eps) / a
    if target == "x0":
        return x0
    return a * eps - s * x0


def guide(cond: Tensor, uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance's extrapolation ``cond + w (cond - uncond)`` (Ho & Salimans 2022, eq. 6), for
    eps, scores and energies alike (MATH.md 5, 9)."""
    return cond + w * (cond - uncond)


_NO_KERNEL = ("a general SDE has no Gaussian kernel a(t) x0 + s(t) eps, so its model gives only the score; "
              "{what} exists for affine processes (VP, sub-VP, VE, DDPM, NCSN)")


class Prediction:
    """What a model says about a noisy batch ``x`` at times ``t`` (float64, ``(N,)``).

    Built from eps (``Prediction(x, t, a, s, eps=...)``, under an affine process, ``a`` and ``s`` the
    marginal coefficients, float64 ``(N,)``) or from the score (``Prediction(x, t, score=...)``, under any
    SDE; ``a``, ``s`` when known). The other follows exactly as stored, the rest by MATH.md 1; without
    ``a, s`` asking for eps, x0 or v is an error that says so. ``variance_frac`` is the learned-variance
    interpolation in [0, 1] of Nichol & Dhariwal (2021), or None for fixed-variance models.
    """

    __slots__ = ("x", "t", "a", "s", "_eps", "_score", "variance_frac")

    def __init__(self, x: Tensor, t: Tensor, a: Tensor | None = None, s: Tensor | None = None, *,
                 eps: Tensor | None = None, score: Tensor | None = None, variance_frac: Tensor | None = None):
        require((eps is None) != (score is None), "a Prediction is built from eps or from the score (one of them)")
        require(eps is None or (a is not None and s is not None), "eps needs the marginal's a(t) and s(t)")
        self.x, self.t, self.a, self.s = x, t, a, s
        self._eps, self._score, self.variance_frac = eps, score, variance_frac

    @property
    def affine(self) -> bool:
        """Whether ``a(t), s(t)`` are known (an affine process), so eps, x0 and v are."""
        return self.a is not None

    @property
    def score(self) -> Tensor:
        """``grad_x log p_t(x) = -eps / s``."""
        return self._score if self._score is not None else from_eps(self._eps, "score", self.x, self.a, self.s)

    @property
    def eps(self) -> Tensor:
        return self.target("eps")

    @property
    def x0(self) -> Tensor:
        """Denoised estimate ``E[x0 | x_t] = (x - s eps) / a`` (Tweedie)."""
        return self.target("x0")

    @property
    def v(self) -> Tensor:
        """``v = a eps - s x0`` (Salimans & Ho 2022)."""
        return self.target("v")

    def target(self, name: str) -> Tensor:
        """The prediction expressed as ``name`` (one of :data:`TARGETS`)."""
        _check_target(name)
        if name == "score":
            return self.score
        if not self.affine:
            raise ValueError(_NO_KERNEL.format(what=f"the {name} prediction"))
        eps = self._eps if self._eps is not None else to_eps(self._score, "score", self.x, self.a, self.s)
        return from_eps(eps, name, self.x, self.a, self.s)

    def _like(self, value: Tensor, x: Tensor, t: Tensor, a: Tensor | None, s: Tensor | None,
              variance_frac: Tensor | None) -> "Prediction":
        """A prediction holding ``value`` in this one's form (eps or score)."""
        if self._eps is not None:
            return Prediction(x, t, a, s, eps=value, variance_frac=variance_frac)
        return Prediction(x, t, a, s, score=value, variance_frac=variance_frac)

    def _stored(self) -> Tensor:
        return self._eps if self._eps is not None else self._score

    def rows(self, index: slice) -> "Prediction":
        """The prediction for rows ``index`` of the batch."""
        part = (lambda v: None if v is None else v[index])
        return self._like(self._stored()[index], self.x[index], self.t[index], part(self.a), part(self.s),
                          part(self.variance_frac))

    def guided(self, uncond: "Prediction", w: float) -> "Prediction":
        """Classifier-free guidance with this (conditional) prediction and ``uncond`` (:func:`guide`): eps
        under an affine process, the score otherwise (MATH.md 5). The variance is the conditional's (GLIDE)."""
        return self._like(guide(self._stored(), uncond._stored(), w), self.x, self.t, self.a, self.s,
                          self.variance_frac)

    def with_score_added(self, delta: Tensor) -> "Prediction":
        """The score plus ``delta`` (classifier guidance, MATH.md 8): ``eps - s delta`` in eps form."""
        if self._eps is not None:
            return Prediction(self.x, self.t, self.a, self.s, eps=self._eps - expand_as(self.s, self.x) * delta,
                              variance_frac=self.variance_frac)
        return Prediction(self.x, self.t, self.a, self.s, score=self._score + delta,
                          variance_frac=self.variance_frac)


class DiffusionModel(Protocol):
    """What samplers, losses and likelihoods may ask of a model: trained, exact or wrapped. An unconditional
    model may leave ``labels`` out of ``predict`` and ``energy_and_score``: no caller passes them to it."""

    process: Process
    #: Classes of a class-conditional model (then ``predict(x, t, labels)``, -1: no label), else 0.
    num_classes: int
    #: Whether its prediction carries Nichol & Dhariwal's learned variance (DDPM only).
    learned_variance: bool
    #: Whether it has an energy ``U = -log p_t + const`` (``energy_and_score``).
    has_energy: bool
    #: Whether that energy is normalized, ``U = -log p_t`` exactly (an exact one; a trained energy is not).
    normalized_energy: bool
    #: One example's shape, where the model knows it.
    data_shape: tuple[int, ...] | None
    #: Whether one network call gives the reverse step of every dimension (False: a categorical model with
    #: autoregressive transitions, which draws dimension by dimension, D calls a step).
    factorized: bool
    #: Whether its prediction reads the time ``t`` beyond ``x_t`` (False: a masked diffusion model told no time,
    #: as MDLM's, whose prediction a sampler may reuse while ``x_t`` is unchanged).
    reads_time: bool

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction: ...

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor: ...

    def select_rows(self, rows: Tensor) -> "DiffusionModel": ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


class ModelBase:
    """The contract's defaults, for a model that declares nothing more: unconditional, a fixed variance, no
    energy, no per-row state, no parameters (CPU, float32). Subclasses give ``process`` and ``predict``."""

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def learned_variance(self) -> bool:
        return False

    @property
    def has_energy(self) -> bool:
        return False

    @property
    def normalized_energy(self) -> bool:
        return False

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        return None

    @property
    def factorized(self) -> bool:
        return True

    @property
    def reads_time(self) -> bool:
        return True

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        raise NotImplementedError

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(U(x, t), score(x, t))`` for a model with an energy (MATH.md 9)."""
        raise ValueError(NO_ENERGY)

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        """``U(x, t)``, equal to ``-log p_t(x)`` up to a constant in ``x`` (MATH.md 9)."""
        return self.energy_and_score(x, t, labels)[0]

    def select_rows(self, rows: Tensor) -> "DiffusionModel":
        """The model for rows ``rows`` of the batch: itself, unless it holds per-sample state."""
        return self

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())


def require_energy(model: DiffusionModel) -> None:
    """Refuse, in one line, a model without an energy where an energy is needed (MATH.md 9)."""
    require(model.has_energy, NO_ENERGY)


class ModelWrapper(ModelBase):
    """The one base of model-to-model wrappers (adapters, clipping, guidance, composition; docs/DESIGN.md).

    It holds its inner model (or models, ``parts``) and forwards everything the first declares: process,
    classes, learned variance, energy, data shape, factorization, whether it reads the time (if any part
    does), parameters (so its device) and, through
    :meth:`select_rows`, per-row state; a wrapper overrides what it changes.
    """

    def __init__(self, *parts: DiffusionModel):
        require(len(parts) >= 1, "a wrapper wraps at least one model")
        self.parts: list[DiffusionModel] = list(parts)

    @property
    def model(self) -> DiffusionModel:
        """The (first) inner model."""
        return self.parts[0]

    @property
    def process(self) -> Process:
        return self.model.process

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def learned_variance(self) -> bool:
        return self.model.learned_variance

    @property
    def has_energy(self) -> bool:
        return all(p.has_energy for p in self.parts)

    @property
    def normalized_energy(self) -> bool:
        return self.model.normalized_energy

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        return self.model.data_shape

    @property
    def factorized(self) -> bool:
        return self.model.factorized

    @property
    def reads_time(self) -> bool:
        return any(p.reads_time for p in self.parts)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        return self.model.predict(x, t) if labels is None else self.model.predict(x, t, labels)

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.model.energy_and_score(x, t) if labels is None else self.model.energy_and_score(x, t, labels)

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        return self.model.energy(x, t) if labels is None else self.model.energy(x, t, labels)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        for part in self.parts:
            yield from part.parameters()

    def select_rows(self, rows: Tensor) -> "ModelWrapper":
        """This wrapper for rows ``rows`` of the batch: a copy around its parts' rows."""
        clone = copy.copy(self)
        clone.parts = [p.select_rows(rows) for p in self.parts]
        return clone


def resolve_variance(model: DiffusionModel, variance: str | None) -> str:
    """DDPM's reverse variance for ``model`` (MATH.md 2): ``None`` means the learned one for a model
    trained with it (Nichol & Dhariwal), else ``beta``; ``"learned"`` needs such a model."""
    if variance is None:
        return "learned" if model.learned_variance else "beta"
    require(variance in ("beta", "beta_tilde", "learned"),
            f"unknown variance {variance!r}; choose 'beta', 'beta_tilde' or 'learned'")
    require(variance != "learned" or model.learned_variance,
            "variance='learned' needs a model with learned_variance=True; use 'beta' or 'beta_tilde'")
    return variance


def device_and_dtype(model: DiffusionModel) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a model's first parameter (through wrappers), else CPU float32."""
    first = next(model.parameters(), None)
    return (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)

