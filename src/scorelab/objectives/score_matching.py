"""Score matching without a Gaussian kernel (MATH.md 7): Hyvarinen's exact objective and its sliced form.

:func:`score_matching_loss` is ``tr(grad_x s) + ||s||^2 / 2`` (Hyvarinen 2005) and
:func:`sliced_score_matching_loss` its sliced form (Song, Garg, Shi & Ermon 2019), both on ``x_t ~ p_t``
drawn in closed form for an affine process or simulated for a general SDE, where denoising score matching
does not apply.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._util import as_time, expand_as, flat_dim, is_int, require, sum_except_batch
from ..models import DiffusionModel
from ..noise import Randomness, normal
from ..processes import SIMULATE_STEPS
from .base import Objective, check_batch, register_objective

__all__ = ["score_matching_loss", "sliced_score_matching_loss", "PROJECTIONS"]

#: Distributions of the sliced score matching projections v (each with E[v v^T] = I).
PROJECTIONS = ("rademacher", "gaussian", "sphere")
_WEIGHTINGS = ("s2", "g2", "none")


def _score_at_marginal(model: DiffusionModel, x0: Tensor, t: Tensor | float | None, noise: Tensor | None,
                       generator: Randomness, weighting: str, steps: int
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``t`` (unless given) and ``x_t ~ p_t(x_t | x0)``; return ``(x_t, score(x_t, t), lambda(t))``
    with ``x_t`` a leaf that requires grad and the score built under autograd."""
    check_batch(x0)
    require(weighting in _WEIGHTINGS, f"unknown weighting {weighting!r}; choose 's2' (lambda = s^2, or "
            "1 - exp(-int_0^t g^2) for a general SDE), 'g2' (lambda = g^2) or 'none'")
    process = model.process
    if t is None:
        require(generator is None or isinstance(generator, torch.Generator),
                "pass the times t along with BatchNoise randomness")
        t = process.sample_train_times(x0.shape[0], generator, device=x0.device)
    t = as_time(t, x0)
    with torch.no_grad():
        x_t = process.sample_marginal(x0, t, generator, noise=noise, steps=steps)
    x_t = x_t.detach().requires_grad_(True)
    lam = {"s2": process.score_weight, "g2": lambda u: process.diffusion(u) ** 2,
           "none": torch.ones_like}[weighting](t)
    with torch.enable_grad():
        score = model.predict(x_t, t).score
    return x_t, score, lam


def _finish_sm(value: Tensor, lam: Tensor, num_dims: int, reduction: str, create_graph: bool) -> Tensor:
    require(reduction in ("sum", "mean"), f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")
    value = lam.to(value.dtype) * (value if reduction == "sum" else value / num_dims)
    return value if create_graph else value.detach()


def score_matching_loss(model: DiffusionModel, x0: Tensor, *, t: Tensor | float | None = None,
                        noise: Tensor | None = None, generator: Randomness = None, weighting: str = "s2",
                        reduction: str = "sum", max_dims: int = 128, steps: int = SIMULATE_STEPS) -> Tensor:
    """Hyvarinen's exact score matching, per example (Hyvarinen 2005; MATH.md 7).

    ``lambda(t) [tr(grad_x s_theta(x_t, t)) + ||s_theta(x_t, t)||^2 / 2]`` with
    ``x_t ~ p_t``: in closed form for an affine process (``noise`` is its eps),
    simulated with ``steps`` Euler-Maruyama steps for a general SDE. Its
    expectation is ``E ||s_theta - grad log p_t||^2 / 2`` minus a constant, so it
    needs no Gaussian kernel; the trace takes one backward pass per dimension,
    so ``D > max_dims`` is refused (use :func:`sliced_score_matching_loss`).
    ``weighting``: ``"s2"`` (:meth:`SDE.score_weight`: ``s(t)^2``, NCSN's
    sigma^2), ``"g2"`` or ``"none"``; ``reduction="mean"`` divides by D.
    """
    d = flat_dim(x0)
    require(d <= max_dims, f"exact score matching takes one backward pass per dimension, and the data has {d} "
            f"(max_dims={max_dims}); use sliced_score_matching_loss (--loss ssm-vr), or raise max_dims")
    create_graph = torch.is_grad_enabled()
    x_t, score, lam = _score_at_marginal(model, x0, t, noise, generator, weighting, steps)
    with torch.enable_grad():
        flat = score.reshape(score.shape[0], -1)
        trace = torch.zeros_like(flat[:, 0])
        for k in range(d):
            (g,) = torch.autograd.grad(flat[:, k].sum(), x_t, create_graph=create_graph, retain_graph=True)
            trace = trace + g.reshape(g.shape[0], -1)[:, k]
        value = trace + 0.5 * (flat**2).sum(1)
    return _finish_sm(value, lam, d, reduction, create_graph)


def _projection(shape: tuple[int, ...], distribution: str, generator: Randomness, like: Tensor) -> Tensor:
    """One projection ``v`` per example with ``E[v v^T] = I``: Rademacher, Gaussian or uniform on the
    sphere of radius ``sqrt(D)`` (Song et al. 2019)."""
    z = normal(shape, generator, device=like.device, dtype=like.dtype)
    if distribution == "rademacher":
        return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    if distribution == "sphere":
        return z * (math.sqrt(flat_dim(z)) / expand_as(z.reshape(z.shape[0], -1).norm(dim=1), z))
    return z


def sliced_score_matching_loss(model: DiffusionModel, x0: Tensor, *, projections: int = 1,
                               distribution: str = "rademacher", variance_reduced: bool = True,
                               t: Tensor | float | None = None, noise: Tensor | None = None,
                               generator: Randomness = None, weighting: str = "s2", reduction: str = "sum",
                               steps: int = SIMULATE_STEPS) -> Tensor:
    """Sliced score matching, per example (Song, Garg, Shi & Ermon 2019; MATH.md 7).

    SSM: ``lambda(t) mean_j [v_j^T (grad_x s) v_j + (v_j^T s)^2 / 2]``; SSM-VR
    (``variance_reduced``, their eq. 8): ``mean_j v_j^T (grad_x s) v_j + ||s||^2 / 2``,
    with ``projections`` draws of ``v`` (``distribution``: ``"rademacher"``,
    ``"gaussian"`` or ``"sphere"``). Each ``v^T (grad_x s) v`` is one
    Hessian-vector product (one backward pass), never a full Jacobian, so the
    cost does not grow with D. ``x_t`` and ``lambda`` are as in
    :func:`score_matching_loss`: NCSN's code perturbs and weights by sigma^2
    the same way; a general SDE simulates ``x_t``. Over ``v`` its mean is
    Hyvarinen's objective.
    """
    require(is_int(projections) and projections >= 1,
            f"projections must be a positive integer, got {projections!r}")
    require(distribution in PROJECTIONS, f"unknown projection distribution {distribution!r}; choose one of "
            f"{PROJECTIONS}")
    create_graph = torch.is_grad_enabled()
    x_t, score, lam = _score_at_marginal(model, x0, t, noise, generator, weighting, steps)
    with torch.enable_grad():
        total = torch.zeros(score.shape[0], dtype=score.dtype, device=score.device)
        for _ in range(projections):
            v = _projection(tuple(x_t.shape), distribution, generator, score)
            (jv,) = torch.autograd.grad((score * v).sum(), x_t, create_graph=create_graph, retain_graph=True)
            total = total + sum_except_batch(jv * v)
            if not variance_reduced:
                total = total + 0.5 * sum_except_batch(score * v) ** 2
        value = total / projections
        if variance_reduced:
            value = value + 0.5 * sum_except_batch(score**2)
    return _finish_sm(value, lam, flat_dim(x0), reduction, create_graph)


def _trainer(sliced: bool, variance_reduced: bool = True):
    """The trainer's score matching: per-dimension mean; a general SDE has no eps, so ``x_t`` is simulated."""
    def loss(model: DiffusionModel, x0: Tensor, *, t: Tensor | None, noise: Tensor | None, randomness: Randomness,
             simulate_steps: int, labels: Tensor | None = None, state: Any = None, **options: Any) -> Tensor:
        noise = noise if model.process.has_kind("affine") else None
        if sliced:
            return sliced_score_matching_loss(model, x0, variance_reduced=variance_reduced, t=t, noise=noise,
                                              generator=randomness, reduction="mean", steps=simulate_steps, **options)
        return score_matching_loss(model, x0, t=t, noise=noise, generator=randomness, reduction="mean",
                                   steps=simulate_steps, **options)
    return loss


_ANY_SDE = ("sde",)
_SLICED = {"projections": 1, "distribution": "rademacher", "simulate_steps": SIMULATE_STEPS}
register_objective("sm", Objective("Hyvarinen's exact score matching on x_t ~ p_t (D backward passes)", _trainer(False),
                                   _ANY_SDE, {"max_dims": 128, "simulate_steps": SIMULATE_STEPS}))
register_objective("ssm", Objective("sliced score matching (Song et al. 2019)", _trainer(True, False), _ANY_SDE,
                                    _SLICED, {"distribution": PROJECTIONS}))
register_objective("ssm-vr", Objective("sliced score matching, variance reduced (Song et al. 2019, eq. 8)",
                                       _trainer(True), _ANY_SDE, _SLICED, {"distribution": PROJECTIONS}))
