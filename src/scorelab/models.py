"""The model wrapper: a network plus its process and prediction target (MATH.md section 1).

Losses, samplers and likelihoods talk to a model only through the small
:class:`DiffusionModel` protocol: a ``process`` attribute and
``predict(x, t) -> Prediction``. A :class:`Prediction` holds the network's
answer as eps, from which the score, the denoised ``x0`` and ``v`` follow by
MATH.md 1 (``score = -eps / s``, ``x0 = (x - s eps) / a``, ``v = a eps - s x0``),
so a network trained for any target serves every sampler.

:class:`Model` wraps any ``torch.nn.Module`` ``net(x, noise_condition)`` and
decides, once, what noise condition the network receives (time, discrete
index, sigma or log-sigma). :meth:`Model.in_process` (and
:class:`ProcessAdapter`) lets a model trained under one process answer in
another's time, matching noise levels ``sigma = s / a``: this is how a
DDPM-trained network is driven by the VP SDE's samplers and an NCSN one by
the VE SDE's (Song et al. 2021, Table 1).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ._util import TimeLike, as_time, expand_as, require
from .processes import DDPM, SDE

__all__ = ["TARGETS", "CONDITIONS", "Prediction", "ScorePrediction", "DiffusionModel", "Model", "ModelWrapper",
           "energy_method",
           "ProcessAdapter",
           "ClipDenoised", "to_eps", "from_eps", "select_rows", "resolve_variance"]

#: Prediction targets a network may be trained for (MATH.md 1).
TARGETS = ("eps", "score", "x0", "v")
#: What a Model's network may be: one of the targets, or EDM's preconditioned ``F`` (Karras et al. 2022).
NETWORK_TARGETS = TARGETS + ("edm",)
#: Noise conditions a network may receive.
CONDITIONS = ("time", "index", "sigma", "log_sigma")


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


@dataclass(frozen=True)
class Prediction:
    """What a model says about a noisy batch ``x`` at time ``t`` of its process.

    ``a``, ``s`` are the per-example marginal coefficients (float64, shape
    ``(N,)``); ``variance_frac`` is the learned-variance interpolation in
    [0, 1] of Nichol & Dhariwal (2021), or None for fixed-variance models.
    """

    x: Tensor
    t: Tensor
    a: Tensor
    s: Tensor
    eps: Tensor
    variance_frac: Tensor | None = None

    @property
    def score(self) -> Tensor:
        """``grad_x log p_t(x) = -eps / s``."""
        return from_eps(self.eps, "score", self.x, self.a, self.s)

    @property
    def x0(self) -> Tensor:
        """Denoised estimate ``E[x0 | x_t] = (x - s eps) / a`` (Tweedie)."""
        return from_eps(self.eps, "x0", self.x, self.a, self.s)

    @property
    def v(self) -> Tensor:
        """``v = a eps - s x0`` (Salimans & Ho 2022)."""
        return from_eps(self.eps, "v", self.x, self.a, self.s)

    def target(self, name: str) -> Tensor:
        """The prediction expressed as ``name`` (one of :data:`TARGETS`)."""
        return from_eps(self.eps, name, self.x, self.a, self.s)


_NO_KERNEL = ("a general SDE has no Gaussian kernel a(t) x0 + s(t) eps, so its model gives only the score; "
              "{what} exists for affine processes (VP, sub-VP, VE, DDPM, NCSN)")


@dataclass(frozen=True)
class ScorePrediction:
    """What a model says under a general SDE (MATH.md 7): the score alone.

    Without ``a(t), s(t)`` there is no eps, x0 (Tweedie) or v; asking for them
    is an error that says so. Samplers that need only the score (Euler-Maruyama,
    predictor-corrector, the probability-flow ODE) use this as they use :class:`Prediction`.
    """

    x: Tensor
    t: Tensor
    score: Tensor
    variance_frac: Tensor | None = None

    def target(self, name: str) -> Tensor:
        _check_target(name)
        if name == "score":
            return self.score
        raise ValueError(_NO_KERNEL.format(what=f"the {name} prediction"))

    eps = property(lambda self: self.target("eps"))
    x0 = property(lambda self: self.target("x0"))
    v = property(lambda self: self.target("v"))


@runtime_checkable
class DiffusionModel(Protocol):
    """Anything with a ``process`` and ``predict(x, t) -> Prediction``: trained or exact."""

    process: SDE

    def predict(self, x: Tensor, t: TimeLike) -> Prediction: ...


class Model(nn.Module):
    """A network ``net(x, noise_condition)`` with its process and prediction target.

    Args:
        net: any module taking ``(x, c)`` with ``c`` of shape ``(N,)`` and
            returning ``x``'s shape (twice the channels with ``learned_variance``).
        process: the noise process the network is trained under.
        target: what the network predicts: ``"eps"``, ``"score"``, ``"x0"`` or ``"v"``. On a
            general SDE only ``"score"``, with the output scaled as score_sde's
            ``scale_by_sigma``: ``score = out / sqrt(lambda(t))``, ``lambda(t) = 1 - exp(-int_0^t g^2)``
            (:meth:`SDE.score_weight`), so the network's output stays of order one as ``t -> 0``.
        condition: what the network is told about the noise level; default
            the process's ``default_condition``: DDPM's and NCSN's 0-based index
            (Ho et al., Song & Ermon), ``t`` for VP, sub-VP and general SDEs, ``log sigma``
            for VE (score_sde's NCSN++).
        learned_variance: the network's output has twice the channels
            (dimension 1); the second half is Nichol & Dhariwal's ``v`` in
            [-1, 1], mapped to ``variance_frac = (v + 1) / 2``.
    """

    def __init__(self, net: nn.Module, process: SDE, target: str = "eps",
                 condition: str | None = None, learned_variance: bool = False):
        super().__init__()
        require(target in NETWORK_TARGETS, f"unknown prediction target {target!r}; choose one of {NETWORK_TARGETS}")
        require(target == "score" or process.affine,
                f"the {target!r} target needs a(t) and s(t) (x_t = a x0 + s eps), which "
                f"{type(process).__name__} does not have: its drift is not affine; use target='score' "
                "and train it with sliced score matching")
        condition = condition or process.default_condition
        require(condition in CONDITIONS,
                f"unknown noise condition {condition!r}; choose one of {CONDITIONS}")
        if condition == "index":
            require(condition in process.conditions,
                    f"condition 'index' needs a DDPM or NCSN process, not {type(process).__name__}; "
                    "use 'time', 'sigma' or 'log_sigma'")
        require(condition in process.conditions, f"the noise condition {condition!r} needs a noise level "
                f"sigma(t), which {type(process).__name__} does not have; use {list(process.conditions)}")
        require(not learned_variance or isinstance(process, DDPM),
                "learned_variance interpolates DDPM's beta_t and beta_tilde_t; use it with a DDPM process")
        self.net = net
        self.process = process
        self.target = target
        self.condition = condition
        self.learned_variance = learned_variance

    def noise_condition(self, t: Tensor) -> Tensor:
        """What the network receives at time ``t`` (decided here, once)."""
        return self.process.noise_condition(self.condition, t)

    @property
    def num_classes(self) -> int:
        """Number of classes of a class-conditional network (``net.config.num_classes``), else 0."""
        net = getattr(self.net, "module", self.net)           # through a DistributedDataParallel wrapper
        return int(getattr(getattr(net, "config", None), "num_classes", 0))

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        """One network evaluation at ``(x, t)``, returned as a :class:`Prediction`.

        ``labels`` ``(N,)`` condition a class-conditional network (-1: no label);
        samplers reach them through :class:`scorelab.guidance.Conditional`.
        """
        t = as_time(t, x)
        c = self.noise_condition(t).to(x.dtype)
        inp = x
        if self.target == "edm":                      # EDM's c_in, on y = x / a (MATH.md 5)
            a, s = self.process.coefficients(t)
            inp = x * expand_as(1 / (a * torch.sqrt((s / a) ** 2 + self.process.sigma_data**2)), x)
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
        if not self.process.affine:
            return ScorePrediction(x, t, self._general_score(x, t, out), frac)
        a, s = self.process.coefficients(t)
        if self.target == "edm":
            return Prediction(x, t, a, s, self._edm_eps(x, a, s, out), frac)
        return Prediction(x, t, a, s, to_eps(out, self.target, x, a, s), frac)

    def _edm_eps(self, x: Tensor, a: Tensor, s: Tensor, out: Tensor) -> Tensor:
        """EDM's preconditioned denoiser (Karras et al. 2022, Table 1) in ``y = x / a``, ``sigma = s / a``:
        ``x0 = c_skip y + c_out F`` with ``c_skip = sd^2 / (sigma^2 + sd^2)``,
        ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, returned as eps (MATH.md 1)."""
        sd2 = self.process.sigma_data**2
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

    def in_process(self, process: SDE) -> "ProcessAdapter":
        """This model answering in another process's time (see :class:`ProcessAdapter`)."""
        return ProcessAdapter(self, process)


class ModelWrapper:
    """Base of the model-to-model wrappers (adapters, clipping, guidance; DESIGN.md 3).

    What the inner model knows (its process, learned variance, number of classes,
    parameters and so its device) is forwarded from here, and :meth:`select_rows`
    rebinds a copy of the wrapper to those rows of the inner model; wrappers with
    per-sample state of their own (labels) extend it.
    """

    def __init__(self, model: DiffusionModel):
        self.model = model

    @property
    def process(self) -> SDE:
        return self.model.process

    @property
    def learned_variance(self) -> bool:
        return getattr(self.model, "learned_variance", False)

    @property
    def num_classes(self) -> int:
        return getattr(self.model, "num_classes", 0)

    def parameters(self):
        params = getattr(self.model, "parameters", None)
        return params() if callable(params) else iter(())

    def select_rows(self, rows: Tensor) -> "ModelWrapper":
        """This wrapper for rows ``rows`` of the batch (see :func:`select_rows`)."""
        clone = copy.copy(self)
        clone.model = select_rows(self.model, rows)
        return clone


class ProcessAdapter(ModelWrapper):
    """A model trained under one process, answering in the time of another.

    At time ``t`` of ``process`` the noise level is ``sigma = s(t) / a(t)``;
    the base model is asked at the time ``t'`` of its own process with the same
    sigma, on ``x a'(t') / a(t)``. Both views describe ``x / a = x0 + sigma eps``,
    so eps (and x0) carry over unchanged (MATH.md 1; Song et al. 2021 run
    DDPM and NCSN checkpoints under the VP and VE SDEs this way). Outside the
    range of sigma the base model was trained on (from its process's
    ``train_t_min`` to 1) the nearest end is used.
    """

    def __init__(self, model: DiffusionModel, process: SDE):
        super().__init__(model)
        self._process = process

    @property
    def process(self) -> SDE:
        return self._process

    def _base(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(a, s)`` here, and the base model's time and input at the same noise level."""
        base = self.model.process
        a, s = self.process.coefficients(t)
        t_base = base.time_of_sigma(s / a).clamp(base.train_t_min, 1.0)   # never below what it was trained on
        return a, s, t_base, expand_as(base.signal_scale(t_base) / a, x) * x

    def predict(self, x: Tensor, t: TimeLike) -> Prediction:
        t = as_time(t, x)
        a, s, t_base, x_base = self._base(x, t)
        p = self.model.predict(x_base, t_base)
        return Prediction(x, t, a, s, p.eps, p.variance_frac)

    def energy(self, x: Tensor, t: TimeLike) -> Tensor:
        """The base model's energy at the same noise level (``x`` is rescaled, which shifts ``-log p`` by a
        constant), for models that have one (MATH.md 9)."""
        energy = energy_method(self.model)
        t = as_time(t, x)
        _, _, t_base, x_base = self._base(x, t)
        return energy(x_base, t_base)


def energy_method(model: object, name: str = "energy"):
    """``model``'s ``energy`` (or ``energy_and_score``) method, or the one-line error that it has none (MATH.md 9)."""
    method = getattr(model, name, None)
    require(callable(method), "this model has no energy (it predicts a score): Metropolis corrections and mixtures "
            "need an energy model (--parameterization energy, scorelab.EnergyModel, GaussianMixture.energy_model, "
            "or a composition of them); use the unadjusted 'langevin' corrector for a score model")
    return method


class ClipDenoised(ModelWrapper):
    """``model`` with its denoised estimate clipped to the data range (images: [-1, 1]).

    ``x0 = clamp((x - s eps) / a, low, high)`` and the answer is re-expressed as
    ``eps = (x - a x0) / s`` (MATH.md 1), so every sampler (DDPM, DDIM, the SDE
    and ODE solvers) sees the same clipped prediction. This is the static
    thresholding of Ho et al.'s sampling code (``clip_denoised=True``) and
    diffusers' ``clip_sample``: it keeps an imperfect image model's trajectories
    inside the data range. At ``s = 0`` the answer is left as is.
    """

    def __init__(self, model: DiffusionModel, low: float = -1.0, high: float = 1.0):
        require(low < high, f"clip range must have low < high, got [{low}, {high}]")
        super().__init__(model)
        self.low, self.high = low, high

    def predict(self, x: Tensor, t: TimeLike) -> Prediction:
        p = self.model.predict(x, t)
        a, s = expand_as(p.a, x), expand_as(p.s, x)
        x0 = p.x0.clamp(self.low, self.high)
        eps = torch.where(s > 0, (x - a.to(x.dtype) * x0) / s.clamp(min=1e-30).to(x.dtype), p.eps)
        return Prediction(p.x, p.t, p.a, p.s, eps.to(p.eps.dtype), p.variance_frac)


def resolve_variance(model: DiffusionModel, variance: str | None) -> str:
    """DDPM's reverse variance for ``model`` (MATH.md 2): ``None`` means the learned one for a model
    trained with it (Nichol & Dhariwal), else ``beta``; ``"learned"`` needs such a model."""
    learned = getattr(model, "learned_variance", False)
    if variance is None:
        return "learned" if learned else "beta"
    require(variance in ("beta", "beta_tilde", "learned"),
            f"unknown variance {variance!r}; choose 'beta', 'beta_tilde' or 'learned'")
    require(variance != "learned" or learned,
            "variance='learned' needs a model with learned_variance=True; use 'beta' or 'beta_tilde'")
    return variance


def select_rows(model: DiffusionModel, rows: Tensor) -> DiffusionModel:
    """The model for rows ``rows`` of the batch.

    Wrappers that bind per-sample state (labels, in :mod:`scorelab.guidance`)
    define ``select_rows``; adaptive ODE solvers call this for the samples
    still moving, so sample k keeps its own state.
    """
    select = getattr(model, "select_rows", None)
    return model if select is None else select(rows)
