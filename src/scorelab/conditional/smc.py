"""Sequential Monte Carlo for conditional sampling: weighted particles whose law tends to the exact posterior
``p(x0 | y)`` of ``y = A x0 + n``, ``n ~ N(0, noise_std^2 I)``, as their number grows (MATH.md 12).

``K`` particles per example run the model's own reverse kernel (DDIM's family on the ancestral grid; eta = 1
is DDPM's ancestral step) with one of three proposals, all written in the singular basis of ``A``
(:class:`~scorelab.conditional.operators.SingularBasis`), where coordinate ``j`` is observed as
``y_bar_j = x0_j + sigma*_j n``, ``sigma*_j = noise_std / s_j``:

* ``"twisted"``: TDS (Wu et al. 2023). Twist ``p~_i(y | u) = N(y; A x0_hat(u), noise_std^2 I + r_i^2 A A^T)``,
  ``r_i^2 = sigma_i^2 / (1 + sigma_i^2)`` (the variance of ``x0`` given ``u`` for unit-variance data), proposal
  the kernel's mean moved by ``v grad_u log p~_i``; one backward pass per step. Any operator, any noise.
* ``"replace"``: SMCDiff (Trippe et al. 2022). The observed coordinates follow one forward-noised path of
  ``y`` per example; the rest is proposed by the kernel; weight: the kernel's density of the observed path.
  Exact observations and orthogonal rows of one norm (masks, pooling, grey) only; no gradient.
* ``"kalman"``: MCGdiff (Cardoso et al. 2024). Each observed coordinate is ``x`` at noise level ``sigma*_j``:
  above it the kernel is multiplied by the Gaussian potential ``N(y_bar_j; u_j, sigma_i^2 - sigma*_j^2)`` (a
  Kalman step, exact for the Gaussian kernel), at it the coordinate passes through ``y_bar_j``, below it the
  kernel runs free. Any linear operator, exact or noisy; no gradient.

All three end at the grid's last level with the weight ``N(y_bar; x0_hat, sigma*^2 + r^2)`` and return
``x0_hat`` with its observed coordinates moved to their Kalman blend with ``y_bar`` (exact observations: pasted).
Resampling is systematic, when the effective sample size falls below ``ess_threshold K``. The normalizing
constants of the weights give the evidence: ``log_evidence`` estimates ``log p(y)`` (unbiased in ``p(y)``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .._util import is_int, require
from ..models import DiffusionModel, device_and_dtype
from ..noise import PerSampleNoise, Randomness, normal
from ..processes import NoiseProcess, require_kind
from ..samplers._common import Callback, SigmaView, call_back, resolve
from ..samplers.grids import ancestral_times, method_levels
from ..samplers.particles import ParticleWeights, SMCResult, systematic_resample, take
from .operators import LinearOperator, SingularBasis

__all__ = ["PROPOSALS", "SMCResult", "smc", "systematic_resample"]

#: The proposals of :func:`smc`.
PROPOSALS = ("twisted", "replace", "kalman")
_LOG_2PI = math.log(2 * math.pi)
_CURE = ("(the observation is too unlikely under every particle): use more particles, a larger noise_std, or another "
         "proposal")


def _log_normal(x: Tensor, mean: Tensor, var: Tensor | float) -> Tensor:
    return -0.5 * ((x - mean) ** 2 / var + _LOG_2PI + torch.log(torch.as_tensor(var, dtype=x.dtype)))


def _kernel(sigma: Tensor | float, sigma_next: Tensor | float, eta: float) -> tuple[Tensor, Tensor]:
    """DDIM's step from ``sigma`` to ``sigma_next`` (MATH.md 5; ``posterior_step``'s coefficients, elementwise for
    tensors of noise levels): ``u' = x0 + (c / sigma)(u - x0) + sigma_eta z``; returns ``(c / sigma, sigma_eta)``."""
    sigma, sigma_next = torch.as_tensor(sigma, dtype=torch.float64), torch.as_tensor(sigma_next, dtype=torch.float64)
    sigma_eta = eta * sigma_next * (1 - sigma_next**2 / sigma**2).clamp(min=0).sqrt()
    c = sigma_next**2 / sigma if eta == 1.0 else (sigma_next**2 - sigma_eta**2).clamp(min=0).sqrt()
    return c / sigma, sigma_eta


def _rows(noise: Randomness, rows: range) -> Randomness:
    """The randomness of examples ``rows``: their own generators (PerSampleNoise), else the same stream."""
    return noise.subset(rows) if isinstance(noise, PerSampleNoise) else noise


class _Run:
    """One group of examples: their particles, weights and evidence, in the singular basis. Per-example
    tensors are ``(n, D)``; particles ``(n, K, D)``."""

    def __init__(self, view: SigmaView, times: Tensor, scales: list[float], sigmas: list[float],
                 basis: SingularBasis, y_bar: Tensor, sigma_star: Tensor, shape: tuple[int, ...], particles: int,
                 proposal: str, eta: float, ess_threshold: float, noise: Randomness, batch_size: int,
                 device: torch.device, dtype: torch.dtype):
        self.view, self.times, self.scales, self.sigmas = view, times, scales, sigmas
        self.basis, self.shape, self.k, self.proposal = basis, shape, particles, proposal
        self.eta, self.noise, self.batch_size = eta, noise, batch_size
        self.device, self.dtype = device, dtype
        self.n = len(y_bar)
        self.rows = torch.arange(self.n, device=device).repeat_interleave(particles)
        self.y_bar, self.sigma_star = y_bar.to(device), sigma_star.to(device)      # (n, D) float64
        self.observed = torch.isfinite(self.sigma_star)
        self.yb, self.star, self.obs = self.y_bar[:, None], self.sigma_star[:, None], self.observed[:, None]  # (n, 1, D)
        self.log_q = torch.zeros(self.n, dtype=torch.float64, device=device)      # SMCDiff: its path's density
        self.path = self.prev_twist = self.ratio = None
        self.var0 = 0.0
        self.weights = ParticleWeights(self.n, particles, ess_threshold, noise, device, _CURE)

    def r2(self, i: int) -> float:
        """``r_i^2 = sigma_i^2 / (1 + sigma_i^2)``: the twist's variance of ``x0`` given ``u`` (MATH.md 12)."""
        return self.sigmas[i] ** 2 / (1 + self.sigmas[i] ** 2)

    def points(self, c: Tensor) -> Tensor:
        """Particles ``(n, K, D)`` in basis coordinates -> flat points ``(n K, *shape)``."""
        return self.basis.point(c.reshape(-1, c.shape[-1]), self.rows).reshape(-1, *self.shape)

    def denoise(self, u: Tensor, i: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``x0_hat`` ``(n, K, D)`` (basis coordinates, float64) of every particle at level ``i``; for the twisted
        proposal also the twist ``log p~_i(y | u)`` ``(n, K)`` and its gradient. The network sees at most
        ``batch_size`` rows at once."""
        t, a = self.times[i], self.scales[i]
        flat = u.reshape(-1, u.shape[-1])
        out, twists, grads = [], [], []
        for start in range(0, len(flat), self.batch_size):
            ex = self.rows[start:start + self.batch_size]
            point = self.basis.point(flat[start:start + self.batch_size], ex).to(self.dtype).reshape(-1, *self.shape)
            if self.proposal != "twisted":
                with torch.no_grad():
                    x0 = self.view.predict(point, t, a).x0
                out.append(self.basis.coordinates(x0.reshape(len(point), -1).double(), ex))
                continue
            with torch.enable_grad():
                point.requires_grad_(True)
                x0 = self.view.predict(point, t, a).x0
                x0 = self.basis.coordinates(x0.reshape(len(point), -1).double(), ex)
                observed = self.observed[ex]
                var = torch.where(observed, self.sigma_star[ex] ** 2 + self.r2(i), 1.0)
                twist = (_log_normal(self.y_bar[ex], x0, var) * observed).sum(1)
                grad, = torch.autograd.grad(twist.sum(), point)
            out.append(x0.detach())
            twists.append(twist.detach())
            grads.append(self.basis.coordinates(grad.reshape(len(point), -1).double(), ex))
        shape = (self.n, self.k, -1)
        if self.proposal != "twisted":
            return torch.cat(out).reshape(shape), None, None
        return torch.cat(out).reshape(shape), torch.cat(twists).reshape(self.n, self.k), torch.cat(grads).reshape(shape)

    # ---- the proposals (MATH.md 12) -------------------------------------------------------
    def _gaussian(self, x: Tensor, mean: Tensor | float, var: Tensor | float, where: Tensor) -> Tensor:
        """``sum_j log N(x_j; mean_j, var_j)`` over the coordinates ``where`` (variances elsewhere ignored)."""
        safe = torch.where(where, var, 1.0) if isinstance(var, Tensor) else var
        return (_log_normal(x, mean, safe) * where).sum(-1)

    def _draw(self, *shape: int) -> Tensor:
        return normal((self.n,) + shape, self.noise, device=self.device, dtype=torch.float64)

    def _step(self, i: int) -> tuple[float, float]:
        """The kernel from level ``i`` to ``i + 1``: ``(c / sigma, sigma_eta)``."""
        scale, sd = _kernel(self.sigmas[i], self.sigmas[i + 1], self.eta)
        return float(scale), float(sd)

    def _crossing(self, i: int) -> tuple[Tensor, Tensor]:
        """Observed coordinates still above level ``i + 1``, and those whose own level lies in ``[i + 1, i)``."""
        star, obs, sigma, sigma_next = self.star, self.obs, self.sigmas[i], self.sigmas[i + 1]
        return obs & (star < sigma_next), obs & (star >= sigma_next) & (star < sigma)

    def start(self) -> Tensor:
        """Particles ``(n, K, D)`` from the prior; SMCDiff's observed path starts too."""
        self.var0 = (self.view.process.prior_std / self.scales[0]) ** 2
        u = math.sqrt(self.var0) * self._draw(self.k, self.y_bar.shape[1])
        if self.proposal == "replace":                                      # one forward-noised path per example
            self.path = self.sigmas[0] * self._draw(1, u.shape[-1])
            self.log_q = self._gaussian(self.path, 0.0, self.sigmas[0] ** 2, self.obs)[:, 0]
            u = torch.where(self.obs, self.yb + self.path, u)
        return u

    def kernel_mean(self, u: Tensor, x0: Tensor, i: int) -> Tensor | None:
        """The kernel's mean from level ``i`` (None at the last level)."""
        if i == len(self.sigmas) - 1:
            return None
        return x0 + self._step(i)[0] * (u - x0)

    def weight(self, i: int, u: Tensor, x0: Tensor, mean: Tensor | None, twist: Tensor | None) -> Tensor:
        """The log incremental weight ``(n, K)`` at level ``i``: the start's, the step to ``i + 1``'s (weighed
        before the proposal for SMCDiff and MCGdiff, whose weights do not depend on it), the end's."""
        yb, star, obs, sigma = self.yb, self.star, self.obs, self.sigmas[i]
        above = obs & (star < sigma)                                        # observed at a lower level than this
        inc = torch.zeros(self.n, self.k, dtype=torch.float64, device=self.device)
        if self.proposal == "twisted":                                      # twist ratio times kernel over proposal
            return twist if i == 0 else twist - self.prev_twist + self.ratio
        if i == 0 and self.proposal == "replace":                           # the prior of the observed start
            inc = self._gaussian(u, 0.0, self.var0, obs)
        elif i == 0:                                                        # potentials, or noisier observations
            inc = self._gaussian(yb, u, torch.where(above, sigma**2 - star**2, star**2 - sigma**2), obs)
        if mean is None:                                                    # N(y_bar; x0_hat, sigma*^2 + r^2)
            inc = inc + self._gaussian(yb, x0, star**2 + self.r2(i), above)
            if self.proposal == "kalman":                                   # ... over the last potential
                inc = inc - self._gaussian(yb, u, sigma**2 - star**2, above)
            return inc
        (rho, step), sigma_next = self._step(i), self.sigmas[i + 1]
        v = step**2
        if self.proposal == "replace":                  # the path's next level by the kernel's bridge to y; its weight
            nxt = rho * self.path + step * self._draw(1, u.shape[-1])
            self.log_q = self.log_q + self._gaussian(nxt, rho * self.path, v, obs)[:, 0]
            self.path = nxt
            return inc + self._gaussian(yb + self.path, mean, v, obs)
        stay, cross = self._crossing(i)
        c1, sd1 = _kernel(sigma, torch.where(cross, star, sigma / 2), self.eta)
        return (inc + self._gaussian(yb, mean, v + sigma_next**2 - star**2, stay)
                + self._gaussian(yb, x0 + c1 * (u - x0), sd1**2, cross)
                - self._gaussian(yb, u, sigma**2 - star**2, stay | cross))

    def propose(self, i: int, u: Tensor, x0: Tensor, mean: Tensor, twist: Tensor | None,
                grad: Tensor | None) -> Tensor:
        """The particles at level ``i + 1``."""
        sd = self._step(i)[1]
        v = sd**2
        z = self._draw(self.k, u.shape[-1])
        if self.proposal == "twisted":                                      # TDS: the kernel moved up the twist
            guided = mean + v * grad
            u = guided + sd * z
            self.ratio = ((u - guided) ** 2 - (u - mean) ** 2).sum(-1) / (2 * v)   # log p(u'|u) - log q(u'|u)
            self.prev_twist = twist
            return u
        if self.proposal == "replace":
            return torch.where(self.obs, self.yb + self.path, mean + sd * z)
        stay, cross = self._crossing(i)                                     # MCGdiff's Kalman step
        yb, star, sigma_next = self.yb, self.star, self.sigmas[i + 1]
        d_next = torch.where(stay, sigma_next**2 - star**2, 1.0)
        precision = 1 / v + 1 / d_next
        blended = (mean / v + yb / d_next) / precision + z / precision.sqrt()
        c2, sd2 = _kernel(torch.where(cross, star, 1.0), torch.where(cross, sigma_next, 0.5), self.eta)
        through = x0 + c2 * (yb - x0) + sd2 * z
        return torch.where(stay, blended, torch.where(cross, through, mean + sd * z))

    def output(self, x0: Tensor, keep: bool):
        """``x0_hat`` at the last level, its observed coordinates blended with ``y_bar`` (pasted when exact);
        one particle per example drawn by weight."""
        n, k, star, yb = self.n, self.k, self.star, self.yb
        r2 = self.r2(len(self.sigmas) - 1)
        above = self.obs & (star < self.sigmas[-1])
        x0 = torch.where(above, x0 + r2 / torch.where(above, r2 + star**2, 1.0) * (yb - x0), x0)
        points = self.points(x0).to(self.dtype).reshape(n, k, *self.shape)
        pick = self.weights.draw()
        samples = points[torch.arange(n, device=self.device), pick]
        w = self.weights
        return (samples, w.log_z, self.log_q, torch.stack(w.ess), w.resamplings,
                points if keep else None, w.log_w.exp() if keep else None)


def smc(model: DiffusionModel, operator: LinearOperator, y: Tensor, shape: Sequence[int], steps: int | None = None,
        *, noise_std: float = 0.0, proposal: str = "twisted", particles: int = 16, ess_threshold: float = 0.5,
        eta: float = 1.0, return_particles: bool = False, batch_size: int = 4096, process: NoiseProcess | None = None,
        noise: Randomness = None, callback: Callback | None = None) -> SMCResult:
    """Posterior samples of ``x0`` given ``y = A x0 + n`` by sequential Monte Carlo (MATH.md 12), one per
    example (row of ``y``), each from its own ``particles`` weighted particles.

    ``proposal``: ``"twisted"`` (TDS), ``"replace"`` (SMCDiff), ``"kalman"`` (MCGdiff); see the module's text.
    ``steps``: levels of the ancestral grid (100 by default, all of a DDPM's when it has fewer); ``eta`` in
    ``(0, 1]``: DDIM's kernel (1: DDPM's ancestral step). ``ess_threshold``: resample when the effective sample
    size falls below this share of ``particles`` (0: never, 1: every step). ``batch_size``: the most particles
    the network sees at once (examples are run in groups of ``batch_size // particles``). With
    :class:`~scorelab.noise.PerSampleNoise` (one seed per example) an example's result does not depend on the
    others or on the grouping.
    """
    require(proposal in PROPOSALS, f"unknown proposal {proposal!r}; choose one of {list(PROPOSALS)}")
    require(is_int(particles) and particles >= 1, f"particles must be a positive integer, got {particles!r}")
    require(isinstance(ess_threshold, (int, float)) and 0 <= ess_threshold <= 1,
            f"ess_threshold must lie in [0, 1], got {ess_threshold!r}")
    require(isinstance(eta, (int, float)) and 0 < eta <= 1, f"eta must lie in (0, 1] (the kernel needs noise for "
            f"its weights), got {eta!r}")
    require(is_int(batch_size) and batch_size >= 1, f"batch_size must be a positive integer, got {batch_size!r}")
    require(noise_std >= 0 and math.isfinite(noise_std), f"noise_std must be >= 0, got {noise_std}")
    model, process = resolve(model, process)
    require_kind(process, ("affine",), "SMC conditional sampling (a(t) and s(t))", "train on an affine process")
    shape = tuple(shape)
    y = torch.as_tensor(y)
    require(y.shape[0] == shape[0], f"{y.shape[0]} observations for a batch of {shape[0]}")
    operator.check_batch(shape[0])
    if proposal == "replace":
        require(noise_std == 0, "proposal='replace' (SMCDiff) takes exact observations; for noise_std > 0 use "
                "proposal='kalman' or 'twisted'")
        require(operator.row_norm2 is not None, f"proposal='replace' overwrites the observed part, which needs "
                f"orthogonal rows of one norm; the {operator.name} operator's are not: use proposal='kalman' or 'twisted'")
    device, dtype = device_and_dtype(model)
    basis = operator.singular_basis(shape[1:])
    y_bar = basis.observed(y, operator)                                     # (N, D)
    s = basis.s.to(torch.float64).expand(shape[0], -1)
    sigma_star = torch.where(s > 0, noise_std / s.clamp(min=1e-300), torch.full_like(s, math.inf))
    log_jacobian = torch.where(s > 0, s.clamp(min=1e-300).log(), torch.zeros_like(s)).sum(1)   # log prod s_j
    view = SigmaView(model, process)
    times = ancestral_times(process, method_levels(process, steps, 100))
    scales, sigmas = view.grid(times)
    group = max(1, batch_size // particles)
    results = []
    for start in range(0, shape[0], group):
        rows = range(start, min(start + group, shape[0]))
        sub = SingularBasis(basis.s if basis.s.ndim == 1 else basis.s[rows.start:rows.stop],
                            basis.vh if basis.vh is None or basis.vh.ndim == 2 else basis.vh[rows.start:rows.stop],
                            None)
        run = _Run(view, times, scales, sigmas, sub, y_bar[rows.start:rows.stop], sigma_star[rows.start:rows.stop],
                   shape[1:], particles, proposal, eta, ess_threshold, _rows(noise, rows), batch_size, device, dtype)
        results.append(_chain(run, callback, return_particles))
    samples, log_z, log_q, ess, resamplings, kept, weights = (list(z) for z in zip(*results))
    nfe = particles * len(times)
    evidence = torch.cat(log_z) - torch.cat(log_q) - log_jacobian.to(device)
    return SMCResult(torch.cat(samples), nfe, log_evidence=evidence, ess=torch.cat(ess, 1),
                     resamplings=torch.cat(resamplings),
                     particles=torch.cat(kept) if return_particles else None,
                     weights=torch.cat(weights) if return_particles else None)


def _chain(run: _Run, callback: Callback | None, keep: bool):
    """The particle system of one group, level by level (MATH.md 12): denoise, weigh, resample, propose."""
    levels = len(run.sigmas)
    u = run.start()
    for i in range(levels):
        x0, twist, grad = run.denoise(u, i)
        mean = run.kernel_mean(u, x0, i)
        ess = run.weights.reweight(run.weight(i, u, x0, mean, twist), i, levels)
        if i == levels - 1:
            break
        picked = run.weights.resample(ess)
        if picked is not None:
            u, x0, mean, twist, grad = (take(t, picked) for t in (u, x0, mean, twist, grad))
        u = run.propose(i, u, x0, mean, twist, grad)
        call_back(callback, i + 1, levels, float(run.times[i + 1]), run.points(u), (i + 1) * run.k)
    return run.output(x0, keep)
