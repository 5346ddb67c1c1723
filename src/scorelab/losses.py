"""Training losses of the three frameworks, each returning a per-example loss (MATH.md 2-4).

One identity ties the denoising losses together: with ``x_t = a x0 + s eps``
and ``score = -eps / s``,

    lambda(t) || s_theta(x_t, t) - grad log q(x_t | x0) ||^2 = lambda(t) / s(t)^2 || eps_theta - eps ||^2.

So DDPM's L_simple is denoising score matching with ``lambda = s^2`` at
uniformly drawn steps, NCSN's loss is the same at uniformly drawn levels
(``lambda(sigma) = sigma^2``), and the continuous DSM of score SDEs draws
``t ~ U[1e-5, 1]`` with ``lambda = s^2`` or the likelihood weighting
``lambda = g^2``. :func:`dsm_loss` computes all of them in eps space (well
conditioned as ``s -> 0``); the process decides how times are drawn
(:meth:`NoiseProcess.sample_train_times`) and the model decides how its
output becomes eps, so the objective does not depend on the network's
target. :func:`vlb` and :func:`hybrid_loss` are DDPM's variational bound and
Nichol & Dhariwal's hybrid objective.

Score matching without a Gaussian kernel (MATH.md 7): :func:`score_matching_loss`
is Hyvarinen's exact objective ``tr(grad_x s) + ||s||^2 / 2`` and
:func:`sliced_score_matching_loss` its sliced form (Song, Garg, Shi & Ermon
2019), both on ``x_t ~ p_t`` drawn in closed form for an affine process or
simulated for a general SDE, where denoising score matching does not apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._util import (Randomness, as_time, expand_as, flat_dim, mean_except_batch, normal, require,
                    sum_except_batch)
from .models import DiffusionModel, Prediction, resolve_variance
from .processes import DDPM

__all__ = ["dsm_loss", "simple_loss", "score_matching_loss", "sliced_score_matching_loss", "PROJECTIONS", "normal_kl", "discretized_gaussian_log_likelihood",
           "prior_kl", "vlb_term", "vlb", "VLB", "hybrid_loss", "bits_per_dim"]

_REDUCTIONS = ("sum", "mean")


def _reduce(x: Tensor, reduction: str) -> Tensor:
    require(reduction in _REDUCTIONS, f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")
    return sum_except_batch(x) if reduction == "sum" else mean_except_batch(x)


def _check_batch(x0: Tensor) -> None:
    flat_dim(x0)
    require(bool(torch.isfinite(x0).all()), "x0 contains NaN or Inf; check the data pipeline")


def _noisy_prediction(model: DiffusionModel, x0: Tensor, t: Tensor | float | None,
                      noise: Tensor | None, generator: torch.Generator | None
                      ) -> tuple[Prediction, Tensor]:
    """Draw (or take) ``t`` and ``eps``, corrupt ``x0`` and ask the model; returns (prediction, eps)."""
    _check_batch(x0)
    process = model.process
    if t is None:
        t = process.sample_train_times(x0.shape[0], generator, device=x0.device)
    x_t, noise = process.perturb(x0, t, noise=noise, generator=generator)
    return model.predict(x_t, as_time(t, x0)), noise


def dsm_loss(model: DiffusionModel, x0: Tensor, *, weighting: str = "s2",
             t: Tensor | float | None = None, noise: Tensor | None = None,
             generator: torch.Generator | None = None, reduction: str = "sum", gamma: float = 5.0) -> Tensor:
    """Denoising score matching, per example (MATH.md 3 and 4).

    ``lambda(t) || s_theta(x_t, t) - grad log q(x_t | x0) ||^2`` with
    ``lambda = s(t)^2`` (``weighting="s2"``; NCSN's ``sigma^2``), the
    likelihood weighting ``lambda = g(t)^2`` (``"g2"``, Song et al. 2021b), or
    Min-SNR-gamma (``"min-snr"``, Hang et al. 2023): ``min(SNR, gamma) ||x0_theta - x0||^2``
    with ``SNR = a^2 / s^2 = 1 / sigma^2``, which in eps space is the ``s^2`` loss
    times ``min(SNR, gamma) / SNR = min(1, gamma sigma^2)`` (gamma = 5, the paper's), or
    EDM's ``lambda(sigma) ||D - y0||^2`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``
    (``"edm"``, Karras et al. 2022): the eps loss times ``(sigma^2 + sd^2) / sd^2``.
    Times come from ``model.process.sample_train_times`` unless ``t`` is given:
    uniform levels for :class:`NCSN` (Song & Ermon's loss), ``U[1e-5, 1]``
    for the SDEs. ``reduction="sum"`` is the squared norm of MATH.md;
    ``"mean"`` divides by the number of dimensions.
    """
    require(weighting in ("s2", "g2", "min-snr", "edm"), f"unknown weighting {weighting!r}; choose 's2' (lambda = "
            "s^2), 'g2' (likelihood weighting, lambda = g^2), 'min-snr' (Min-SNR-gamma) or 'edm'")
    require(gamma > 0, f"gamma must be positive, got {gamma}; Hang et al. use 5")
    require(model.process.affine, f"denoising score matching regresses on the Gaussian kernel q(x_t | x0) of an "
            f"affine process, and {type(model.process).__name__}'s drift is not affine; train it with "
            "sliced_score_matching_loss (--loss ssm-vr) or score_matching_loss")
    pred, noise = _noisy_prediction(model, x0, t, noise, generator)
    sq = (pred.eps - noise) ** 2
    process = model.process
    if weighting == "g2":
        sq = sq * expand_as(process.diffusion(pred.t) ** 2 / process.noise_std(pred.t) ** 2, sq)
    elif weighting == "min-snr":
        sq = sq * expand_as((gamma * process.sigma(pred.t) ** 2).clamp(max=1.0), sq)
    elif weighting == "edm":
        sq = sq * expand_as((process.sigma(pred.t) ** 2 + process.sigma_data**2) / process.sigma_data**2, sq)
    return _reduce(sq, reduction)


def simple_loss(model: DiffusionModel, x0: Tensor, *, t: Tensor | float | None = None,
                noise: Tensor | None = None, generator: torch.Generator | None = None,
                reduction: str = "mean") -> Tensor:
    """DDPM's ``L_simple = || eps - eps_theta(x_t, t) ||^2`` per example (Ho et al. eq. 14, MATH.md 2).

    Steps are drawn uniformly from 1..T by the DDPM process. The default
    ``reduction="mean"`` averages over dimensions as Ho et al.'s code does;
    it is :func:`dsm_loss` with ``lambda = s^2``.
    """
    return dsm_loss(model, x0, weighting="s2", t=t, noise=noise, generator=generator,
                    reduction=reduction)


# ---------------------------------------------------------------------------------------
# Score matching on x_t ~ p_t, for any SDE (MATH.md 7)
# ---------------------------------------------------------------------------------------
#: Distributions of the sliced score matching projections v (each with E[v v^T] = I).
PROJECTIONS = ("rademacher", "gaussian", "sphere")
_WEIGHTINGS = ("s2", "g2", "none")


def _score_at_marginal(model: DiffusionModel, x0: Tensor, t: Tensor | float | None, noise: Tensor | None,
                       generator: Randomness, weighting: str, steps: int | None
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``t`` (unless given) and ``x_t ~ p_t(x_t | x0)``; return ``(x_t, score(x_t, t), lambda(t))``
    with ``x_t`` a leaf that requires grad and the score built under autograd."""
    _check_batch(x0)
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
    require(reduction in _REDUCTIONS, f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")
    value = lam.to(value.dtype) * (value if reduction == "sum" else value / num_dims)
    return value if create_graph else value.detach()


def score_matching_loss(model: DiffusionModel, x0: Tensor, *, t: Tensor | float | None = None,
                        noise: Tensor | None = None, generator: Randomness = None, weighting: str = "s2",
                        reduction: str = "sum", max_dims: int = 128, steps: int | None = None) -> Tensor:
    """Hyvarinen's exact score matching, per example (Hyvarinen 2005; MATH.md 7).

    ``lambda(t) [tr(grad_x s_theta(x_t, t)) + ||s_theta(x_t, t)||^2 / 2]`` with
    ``x_t ~ p_t``: in closed form for an affine process (``noise`` is its eps),
    simulated with ``steps`` Euler-Maruyama steps for a general SDE (default
    its ``simulate_steps``). Its
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
                               steps: int | None = None) -> Tensor:
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
    require(isinstance(projections, int) and not isinstance(projections, bool) and projections >= 1,
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


# ---------------------------------------------------------------------------------------
# DDPM's variational bound (MATH.md 2)
# ---------------------------------------------------------------------------------------
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi``, accurate in both tails."""
    flip = lo > 0  # use Phi(-lo) - Phi(-hi) where both ends are in the upper tail
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor,
                                        num_bins: int = 256) -> Tensor:
    """Elementwise ``log P(x)`` of the discretized Gaussian decoder (Ho et al. eq. 13, MATH.md 2).

    ``x`` lies on the ``num_bins`` levels of [-1, 1]; each level owns the
    interval ``x +- 1 / (num_bins - 1)``, and the end levels extend to
    ``-inf`` and ``+inf``.
    """
    half = 1.0 / (num_bins - 1)
    std = torch.exp(0.5 * log_var)
    lo = torch.where(x <= -1 + half / 2, torch.full_like(x, -math.inf), (x - half - mean) / std)
    hi = torch.where(x >= 1 - half / 2, torch.full_like(x, math.inf), (x + half - mean) / std)
    return _log_normal_mass(lo, hi)


def bits_per_dim(nats: Tensor, num_dims: int) -> Tensor:
    """Convert a per-example negative log-likelihood in nats to bits per dimension (MATH.md 2)."""
    return nats / (num_dims * math.log(2))


def _ddpm(model: DiffusionModel) -> DDPM:
    process = model.process
    require(isinstance(process, DDPM), "the variational bound is DDPM's (MATH.md 2); the model's "
            f"process is {type(process).__name__}: use the probability-flow ODE likelihood instead")
    return process


def _check_images(x0: Tensor) -> None:
    _check_batch(x0)
    require(float(x0.min()) >= -1 - 1e-6 and float(x0.max()) <= 1 + 1e-6,
            "the VLB's decoder expects data scaled to [-1, 1] (8-bit levels k -> 2k/255 - 1); "
            f"got values in [{float(x0.min()):.3g}, {float(x0.max()):.3g}]")


def prior_kl(process: DDPM, x0: Tensor) -> Tensor:
    """``L_T = KL(q(x_T | x0) || N(0, I))`` per example, in nats (MATH.md 2)."""
    ab = process.alpha_bars[-1].item()
    mean = math.sqrt(ab) * x0.double()
    logvar = torch.full_like(mean, math.log1p(-ab))
    zero = torch.zeros_like(mean)
    return sum_except_batch(normal_kl(mean, logvar, zero, zero))


def _vlb_term(process: DDPM, x0: Tensor, step: Tensor, pred: Prediction, variance: str,
              detach_mean: bool, num_bins: int) -> Tensor:
    """The L_vlb term at per-example ``step`` given the model's prediction at ``x_t = pred.x``."""
    x_t = pred.x
    eps = pred.eps.detach() if detach_mean else pred.eps
    mean = process.reverse_mean(x_t, eps, step)
    log_var = process.model_log_variance(step, variance, pred.variance_frac)
    log_var = (expand_as(log_var, x_t) if log_var.ndim == 1 else log_var.to(x_t.dtype)).expand_as(x_t)
    decoder = -sum_except_batch(discretized_gaussian_log_likelihood(x0, mean, log_var, num_bins))
    first = step == 1
    if bool(first.all()):
        return decoder
    q_mean, q_var = process.posterior(x0, x_t, step.clamp(min=2))
    q_logvar = expand_as(torch.log(q_var), x_t).expand_as(x_t)
    kl = sum_except_batch(normal_kl(q_mean, q_logvar, mean, log_var))
    return torch.where(first, decoder, kl)


def vlb_term(model: DiffusionModel, x0: Tensor, step: int | Tensor, *, variance: str | None = None,
             noise: Tensor | None = None, generator: torch.Generator | None = None,
             detach_mean: bool = False, num_bins: int = 256) -> Tensor:
    """One term of L_vlb per example, in nats (MATH.md 2), for ``x_t ~ q(x_t | x0)``.

    Step ``t >= 2``: ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))``;
    step 1: ``L_0 = -log p(x0 | x1)`` under the discretized Gaussian decoder.
    ``variance`` is ``"beta"``, ``"beta_tilde"`` or ``"learned"`` (default:
    learned if the model has it, else beta). ``detach_mean`` stops the
    gradient through the mean, as Nichol & Dhariwal's hybrid loss does.
    """
    process = _ddpm(model)
    variance = resolve_variance(model, variance)
    _check_images(x0)
    step = torch.as_tensor(step, device=x0.device).long().expand(x0.shape[0])
    pred, _ = _noisy_prediction(model, x0, process.step_to_time(step), noise, generator)
    return _vlb_term(process, x0, step, pred, variance, detach_mean, num_bins)


@dataclass(frozen=True)
class VLB:
    """DDPM's variational bound per example, with its breakdown (MATH.md 2).

    ``terms[:, 0]`` is the decoder ``L_0``; ``terms[:, i]`` is ``L_i`` for
    ``i = 1..T-1`` (the KL at step ``i + 1``); ``prior`` is ``L_T``. Nats.
    """

    prior: Tensor
    terms: Tensor
    num_dims: int

    @property
    def total(self) -> Tensor:
        """``L_vlb = L_T + sum_t L_{t-1} + L_0`` per example, in nats."""
        return self.prior + self.terms.sum(dim=1)

    @property
    def bits_per_dim(self) -> Tensor:
        """``L_vlb / (D ln 2)`` per example."""
        return bits_per_dim(self.total, self.num_dims)


@torch.no_grad()
def vlb(model: DiffusionModel, x0: Tensor, *, variance: str | None = None,
        generator: torch.Generator | None = None, num_bins: int = 256,
        callback: Callable[[int], None] | None = None) -> VLB:
    """The full L_vlb of ``x0`` (one network call per step, ``T`` in all), in nats (MATH.md 2).

    Each term draws its own ``x_t ~ q(x_t | x0)``, so the total is an
    unbiased single-sample estimate of the bound. ``callback(step)`` reports progress.
    """
    process = _ddpm(model)
    _check_images(x0)
    levels = (x0.double() + 1) * (num_bins - 1) / 2
    require(bool(((levels - levels.round()).abs() < 1e-3).all()),
            f"the VLB is a bound for discrete data on the {num_bins} levels 2k/{num_bins - 1} - 1; "
            "scale 8-bit images with scorelab.data.to_model_range (or pass num_bins)")
    terms = torch.empty(x0.shape[0], process.num_steps, dtype=torch.float64, device=x0.device)
    for step in range(1, process.num_steps + 1):
        terms[:, step - 1] = vlb_term(model, x0, step, variance=variance, generator=generator,
                                      num_bins=num_bins).double()
        if callback is not None:
            callback(step)
    return VLB(prior=prior_kl(process, x0), terms=terms, num_dims=flat_dim(x0))


def hybrid_loss(model: DiffusionModel, x0: Tensor, *, lambda_vlb: float = 1e-3,
                t: Tensor | float | None = None, noise: Tensor | None = None,
                generator: torch.Generator | None = None, num_bins: int = 256) -> Tensor:
    """``L_hybrid = L_simple + lambda L_vlb`` per example (Nichol & Dhariwal 2021, eq. 16; MATH.md 2).

    The model must predict its variance (``learned_variance=True``). For a
    drawn step ``t``, ``L_vlb`` is estimated by ``T * L_{t-1}`` in bits per
    dimension with the mean's gradient stopped, so it trains only the variance,
    exactly as improved-diffusion does; ``lambda = 0.001`` is the paper's.
    """
    process = _ddpm(model)
    require(getattr(model, "learned_variance", False),
            "hybrid_loss trains a learned variance; wrap the network with Model(..., learned_variance=True)")
    _check_images(x0)
    pred, noise = _noisy_prediction(model, x0, t, noise, generator)
    simple = mean_except_batch((pred.eps - noise) ** 2)
    step = process.time_to_step(pred.t)
    term = _vlb_term(process, x0, step, pred, "learned", True, num_bins)
    return simple + lambda_vlb * process.num_steps * bits_per_dim(term, flat_dim(x0)).to(simple.dtype)
