"""Conditional sampling from an unconditional model: inpainting, colourization and linear inverse
problems ``y = A x + n`` (MATH.md 8).

Three methods, each an approximation of the posterior ``p(x | y)`` whose error scorelab measures
against the exact Gaussian-mixture posterior (:meth:`scorelab.GaussianMixture.condition`), and a fourth,
``"smc"`` (:mod:`scorelab.conditional.smc`), whose error goes to zero with its number of particles:

* ``"replace"``: Song et al. (2021, appendix I) imputation. After every step of any grid sampler
  (the ``project`` hook of :mod:`scorelab.samplers`), the observed part of ``x_t`` is overwritten
  by the observation noised to the current level, ``a(t) y + s(t) c xi``; the rest is sampled.
  It needs rows with ``A A^T = c^2 I`` (masks, pooling, grey) and treats ``y`` as exact.
* ``"repaint"``: RePaint (Lugmayr et al. 2022, Algorithm 1 with its jump schedule): ancestral
  steps with replacement, and every ``jump_length`` steps the chain is noised back up
  ``jump_length`` levels and re-denoised, ``resample`` times in all, so the unknown part can
  come to agree with the known one.
* ``"dps"``: diffusion posterior sampling (Chung et al. 2023, Algorithm 1): ancestral steps,
  each followed by ``x <- x - scale grad_x ||y - A x0_hat(x)||`` with ``x0_hat`` Tweedie's
  denoiser (one backward pass through the network per step). Any operator, any noise.

All three run on every affine process (DDPM, VP, sub-VP, VE, NCSN, EDM).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from .._util import is_int, require
from ..models import DiffusionModel
from ..noise import Randomness, randn_like
from ..processes import NoiseProcess, require_kind
from ..samplers._common import (Callback, Projection, SampleResult, SigmaView, call_back, finite_or_raise,
                                initial_noise, posterior_step, resolve)
from ..samplers.grids import ancestral_times, method_levels
from ..samplers.registry import REGISTRY, sample, sampler_entry
from .operators import Greyscale, LinearOperator, Mask
from .smc import smc

__all__ = ["METHODS", "METHOD_OPTIONS", "inpaint", "colorize", "linear_inverse", "replacement", "repaint", "dps",
           "repaint_schedule"]

#: The conditional-sampling methods, by name.
METHODS = ("replace", "repaint", "dps", "smc")
#: The options of the methods that run their paper's own loop, with their defaults (see :func:`repaint`, :func:`dps`).
METHOD_OPTIONS: dict[str, dict[str, Any]] = {"repaint": {"jump_length": 10, "resample": 10, "process": None,
                                                         "callback": None},
                                             "dps": {"scale": 1.0, "process": None, "callback": None},
                                             "smc": {"proposal": "twisted", "particles": 16, "ess_threshold": 0.5,
                                                     "eta": 1.0, "return_particles": False, "batch_size": 4096,
                                                     "process": None, "callback": None}}


def replacement(operator: LinearOperator, y: Tensor, noise: Randomness = None) -> Projection:
    """Song et al.'s imputation as a sampler's ``project`` hook (MATH.md 8): ``x`` at ``a x0 + s eps``
    becomes ``x - P x + a A^T y / c^2 + s P xi``, ``P = A^T A / c^2``, ``xi ~ N(0, I)`` of ``x``'s shape, fresh
    each call (``P xi`` has the law of ``A^T (c xi') / c^2``; drawn in ``x``'s shape, an example's draws do not
    depend on how its mask is given)."""
    c2 = operator.row_norm2
    require(c2 is not None, f"replacement needs an operator with orthogonal rows (A A^T = c^2 I), and the "
            f"{operator.name} operator's are not; use method='dps'")

    def project(x: Tensor, a: float, s: float) -> Tensor:
        known = operator.adjoint(a * y.to(x.device, x.dtype)) / c2
        if s > 0:
            known = known + s * operator.projection(randn_like(x, noise))
        return x - operator.projection(x) + known

    return project


def repaint_schedule(steps: int, jump_length: int, resample: int) -> list[int]:
    """RePaint's walk over levels ``0..steps`` (0 = the noisiest, ``steps`` = clean), as its code's
    ``get_schedule_jump``: down one level at a time; on reaching each level ``steps - 1 - k j``
    (``k = 0, 1, ...``, above the top ``j`` levels), up ``j`` levels and down again, ``resample - 1`` times."""
    require(is_int(jump_length) and jump_length >= 1, f"jump_length must be a positive integer, got {jump_length!r}")
    require(is_int(resample) and resample >= 1, f"resample must be a positive integer, got {resample!r}")
    jumps = {t: resample - 1 for t in range(0, steps - jump_length, jump_length)}
    t, walk = steps, []
    while t >= 1:                                       # t counts down as the paper's index does
        t -= 1
        walk.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                walk.append(t)
    walk.append(-1)
    return [steps - 1 - t for t in [steps] + walk][1:]   # level p = steps - 1 - t: 0 first, steps last


def _ancestral_step(y: Tensor, x0: Tensor, sigma: float, sigma_next: float, noise: Randomness) -> Tensor:
    """DDIM with eta = 1 in ``y = x / a`` (DDPM's ancestral step on any grid; MATH.md 5), to ``x0`` at the end."""
    return x0 if sigma_next == 0 else posterior_step(y, x0, sigma, sigma_next, noise)


@torch.no_grad()
def repaint(model: DiffusionModel, operator: LinearOperator, y: Tensor, shape: Sequence[int],
            steps: int | None = None, *,
            jump_length: int = 10, resample: int = 10, process: NoiseProcess | None = None,
            noise: Randomness = None, callback: Callback | None = None) -> SampleResult:
    """RePaint (Lugmayr et al. 2022, Algorithm 1; MATH.md 8) on ``steps`` levels of the model's process.

    Defaults are the paper's (250 levels, or all of a DDPM's when it has fewer; jumps of 10, 10 resamplings:
    2,410 NFE); ``resample=1`` is replacement with ancestral steps. NFE counts the network calls of the whole walk.
    """
    model, process = resolve(model, process)
    times = ancestral_times(process, method_levels(process, steps, 250))
    levels = len(times)
    view = SigmaView(model, process)
    scales, sigmas = view.grid(times)
    sigmas = sigmas + [0.0]
    project = replacement(operator, y, noise)
    x = initial_noise(process, shape, noise, model)
    state = project(x / scales[0], 1.0, sigmas[0])
    walk = repaint_schedule(levels, jump_length, resample)
    for i, (p, p_next) in enumerate(zip(walk[:-1], walk[1:])):
        if p_next > p:                                   # denoise one level, then re-impose the observation
            x0 = view.predict(state, times[p], scales[p]).x0
            state = project(_ancestral_step(state, x0, sigmas[p], sigmas[p + 1], noise), 1.0, sigmas[p + 1])
        else:                                            # RePaint's jump: q(x_{t+1} | x_t), noise added
            state = state + math.sqrt(sigmas[p_next] ** 2 - sigmas[p] ** 2) * randn_like(state, noise)
        call_back(callback, i + 1, len(walk) - 1, float(times[p_next]) if p_next < levels else 0.0, state, view.nfe)
    finite_or_raise(state, "repaint")
    return SampleResult(state, view.nfe)


def dps(model: DiffusionModel, operator: LinearOperator, y: Tensor, shape: Sequence[int], steps: int | None = None, *,
        scale: float = 1.0, process: NoiseProcess | None = None, noise: Randomness = None,
        callback: Callback | None = None) -> SampleResult:
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1; MATH.md 8).

    Each step: ``x0_hat = E[x0 | x_i]`` from the model, the ancestral step to ``x'_{i-1}``, then
    ``x_{i-1} = x'_{i-1} - scale grad_{x_i} ||y - A x0_hat||`` (the norm per sample, as the
    authors' code takes it with one image per batch; their step size ``zeta_i = scale / ||y - A x0_hat||``
    on the squared norm, up to a factor 2). ``scale = 1`` is the paper's choice for inpainting and
    super-resolution. ``steps``: the paper's 1000 by default (all of a DDPM's when it has fewer). NFE counts
    forward calls; each also takes a backward pass.
    """
    require(isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0,
            f"scale must be a positive number, got {scale!r}")
    model, process = resolve(model, process)
    times = ancestral_times(process, method_levels(process, steps, 1000))
    view = SigmaView(model, process)
    scales, sigmas = view.grid(times)
    sigmas = sigmas + [0.0]
    scales = scales + [1.0]
    x = initial_noise(process, shape, noise, model)
    obs = y.to(x.device, x.dtype)
    for i in range(len(times)):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = view.predict(xg / scales[i], times[i], scales[i]).x0
            residual = (obs - operator(x0)).reshape(x.shape[0], -1)
            grad, = torch.autograd.grad(residual.norm(dim=1).sum(), xg)
        state = _ancestral_step(x.detach() / scales[i], x0.detach(), sigmas[i], sigmas[i + 1], noise)
        x = scales[i + 1] * state - scale * grad
        call_back(callback, i + 1, len(times), float(times[i + 1]) if i + 1 < len(times) else 0.0, x, view.nfe)
    finite_or_raise(x, "dps")
    return SampleResult(x.detach(), view.nfe)


def _check_range(values: Tensor, what: str, data_range: tuple[float, float] | None) -> None:
    if data_range is not None:
        low, high = data_range
        require(bool(torch.isfinite(values).all()), f"the {what} hold NaN or Inf")
        lo, hi = float(values.min()), float(values.max())
        require(low - 1e-6 <= lo and hi <= high + 1e-6, f"the {what} lie in [{lo:.3g}, {hi:.3g}], outside the "
                f"data range [{low:g}, {high:g}]; scale images to [-1, 1] as the model was trained")


def linear_inverse(model: DiffusionModel, y: Tensor, operator: LinearOperator, noise_std: float = 0.0, *,
                   method: str = "dps", sampler: str = "ancestral", steps: int | None = None,
                   noise: Randomness = None, data_range: tuple[float, float] | None = None,
                   **options: Any) -> SampleResult:
    """Samples of ``p(x | y)`` for observations ``y = A x + n``, ``n ~ N(0, noise_std^2 I)``, one per row of
    ``y`` (repeat rows for several samples of one observation; MATH.md 8, 12).

    ``method``: ``"replace"`` runs the named ``sampler`` (any grid sampler of
    :mod:`scorelab.samplers`; default ancestral; Song et al. used ``"pc"``) with Song et al.'s
    imputation after every step; ``"repaint"`` and ``"dps"`` are their papers' ancestral
    loops (``options``: ``jump_length``, ``resample``; ``scale``); ``"smc"`` is sequential Monte Carlo
    (:func:`scorelab.conditional.smc`; ``options``: ``proposal``, ``particles``, ``ess_threshold``, ...), the one
    method whose error goes to zero as it spends more and the only one that uses ``noise_std``: ``replace`` and
    ``repaint`` take ``y`` as exact (``noise_std > 0`` is refused) and need an operator with orthogonal rows;
    ``dps`` takes any operator and noisy ``y`` without its level, and normalizes its step by the residual. ``operator`` may hold one operator per example (a stack of masks or
    matrices). ``data_range``: refuse observations outside it (images: ``(-1, 1)``).
    """
    require(method in METHODS, f"unknown method {method!r}; choose one of {list(METHODS)}")
    require(noise_std >= 0 and math.isfinite(noise_std), f"noise_std must be >= 0, got {noise_std}")
    require(noise_std == 0 or method in ("smc", "dps"), f"method {method!r} writes y into the samples, so it takes "
            f"exact observations; for y with noise (noise_std={noise_std:g}) use method='smc', which weighs by it, "
            "or 'dps', which takes noisy y without its level")
    y = torch.as_tensor(y)
    require(y.ndim >= 2, f"observations must have a batch axis, shape (N, ...); got {tuple(y.shape)}")
    x_shape = operator.x_shape(tuple(y.shape[1:]))
    operator.check_y(y, x_shape)
    operator.check_batch(y.shape[0])
    _check_range(y, "observations", data_range)
    require_kind(model.process, ("affine",), "conditional sampling (a(t) and s(t))",
                 "use scorelab edit (SDEdit simulates any SDE), or train on an affine process (--framework vp)")
    shape = (y.shape[0],) + tuple(x_shape)
    require(method == "replace" or sampler == "ancestral", f"method {method!r} runs its paper's own ancestral "
            f"loop; a sampler ({sampler!r}) is chosen for method='replace' only")
    if method != "replace":
        own = METHOD_OPTIONS[method]
        unknown = sorted(set(options) - set(own))
        require(not unknown, f"method {method!r} takes no option {unknown}; it takes {list(own)}")
    if method == "dps":
        return dps(model, operator, y, shape, **({} if steps is None else {"steps": steps}), noise=noise, **options)
    if method == "smc":
        return smc(model, operator, y, shape, steps, noise_std=noise_std, noise=noise, **options)
    require(operator.row_norm2 is not None, f"method {method!r} overwrites the observed part of x, which needs "
            f"an operator with orthogonal rows (A A^T = c^2 I); the {operator.name} operator's are not: use method='dps'")
    if method == "repaint":
        return repaint(model, operator, y, shape, **({} if steps is None else {"steps": steps}), noise=noise,
                       **options)
    entry = sampler_entry(sampler, model.process)
    stepping = [name for name, e in REGISTRY.items()
                if model.process.has_kind(*e.kinds) and e.projection]
    require(entry.projection, f"sampler {sampler!r} adapts its own steps and cannot impute "
            f"after each; use one of {stepping}")
    project = replacement(operator, y, noise)
    result = sample(model, shape, sampler, steps, noise=noise, project=project, **options)
    return replace(result, samples=project(result.samples, 1.0, 0.0))   # the observed part exactly y


def inpaint(model: DiffusionModel, known: Tensor, mask: Tensor, *, method: str = "replace",
            sampler: str = "ancestral", steps: int | None = None, noise: Randomness = None,
            **options: Any) -> SampleResult:
    """Fill in the pixels of ``known`` ``(N, ...)`` where ``mask`` is False (MATH.md 8).

    ``mask`` (True/1 = known): one example's shape (or ``(H, W)``, shared by the channels) for every example,
    or ``(N, ...)`` (images also ``(N, 1, H, W)``) for one per example; a rank that reads two ways is refused.
    The known pixels of an image batch must lie in [-1, 1]. See :func:`linear_inverse` for the methods;
    ``replace``, ``repaint`` and ``smc`` return the known pixels exactly.
    """
    known = torch.as_tensor(known)
    require(known.ndim >= 2, f"known must be a batch (N, ...), got shape {tuple(known.shape)}")
    operator = Mask(mask, tuple(known.shape[1:]))
    _check_range(operator(known), "known values", (-1.0, 1.0) if known.ndim == 4 else None)   # holes may hold anything
    return linear_inverse(model, operator(known), operator, method=method, sampler=sampler, steps=steps,
                          noise=noise, **options)


def colorize(model: DiffusionModel, grey: Tensor, *, method: str = "replace", sampler: str = "ancestral",
             steps: int | None = None, noise: Randomness = None, **options: Any) -> SampleResult:
    """Colour images whose grey version is ``grey`` ``(N, 1, H, W)`` in [-1, 1], with an RGB model
    (Song et al. 2021, appendix I.3: the grey channel ``(r + g + b) / 3`` is fixed, the two
    directions orthogonal to it sampled; MATH.md 8)."""
    channels = None if model.data_shape is None else model.data_shape[0]
    require(channels in (None, 3), f"colourization needs an RGB model (3 channels); this one has {channels}")
    grey = torch.as_tensor(grey)
    require(grey.ndim == 4 and grey.shape[1] == 1, f"grey images must have shape (N, 1, H, W), got {tuple(grey.shape)}")
    return linear_inverse(model, grey, Greyscale(), method=method, sampler=sampler, steps=steps, noise=noise,
                          data_range=(-1.0, 1.0), **options)

