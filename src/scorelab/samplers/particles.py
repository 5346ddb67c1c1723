"""Weighted particles: importance weights, their normalizing constants (the evidence), the effective sample size,
and systematic resampling (MATH.md 12). Shared by every sequential Monte Carlo sampler in scorelab: the
conditional one (:func:`scorelab.conditional.smc`) and the SMC sampler over noise levels
(:func:`scorelab.samplers.smc_sampler`).

``n`` independent groups of ``K`` particles each: weights ``(n, K)`` kept normalized in log space, with the
log of each level's normalizing constant added to ``log_z``, so that ``log_z`` estimates the log of the
target's normalizing constant (unbiased in ``exp(log_z)``, Del Moral et al. 2006).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..noise import Randomness, normal
from ._common import SampleResult

__all__ = ["SMCResult", "ParticleWeights", "systematic_resample", "uniform", "take"]


@dataclass(frozen=True)
class SMCResult(SampleResult):
    """:class:`~scorelab.samplers.SampleResult` of a sequential Monte Carlo sampler, per group of particles (an
    example of :func:`scorelab.conditional.smc`; the one population of :func:`scorelab.samplers.smc_sampler`):
    ``log_evidence`` ``(groups,)`` estimates the log normalizing constant (``log p(y)`` for conditional sampling);
    ``ess`` ``(levels, groups)`` is the effective sample size after each reweighting; ``resamplings``
    ``(groups,)`` counts the resampling steps; ``particles`` ``(groups, K, ...)`` and their normalized ``weights``
    ``(groups, K)``."""

    ess: Tensor | None = None
    resamplings: Tensor | None = None
    particles: Tensor | None = None
    weights: Tensor | None = None


def uniform(shape: Sequence[int], noise: Randomness, device: torch.device) -> Tensor:
    """Uniforms in (0, 1) from the normal draws of ``noise`` (its protocol): ``Phi(z)``."""
    z = normal(shape, noise, device=device, dtype=torch.float64)
    return (0.5 * torch.erfc(-z / math.sqrt(2))).clamp(1e-12, 1 - 1e-12)


def systematic_resample(weights: Tensor, uniform: Tensor) -> Tensor:
    """Systematic resampling (MATH.md 12): indices ``(N, K)`` of particles with normalized ``weights``
    ``(N, K)``; particle ``k`` of row ``n`` is the one whose cumulative weight first exceeds
    ``(uniform_n + k) / K``."""
    k = weights.shape[1]
    positions = (uniform.reshape(-1, 1) + torch.arange(k, device=weights.device, dtype=weights.dtype)) / k
    cumulative = weights.cumsum(1)
    return torch.searchsorted(cumulative, positions).clamp(max=k - 1)


def take(x: Tensor | None, picked: Tensor) -> Tensor | None:
    """Particles ``picked`` ``(n, K)`` of ``x`` ``(n, K, ...)``."""
    if x is None:
        return None
    return x.gather(1, picked.reshape(*picked.shape, *([1] * (x.ndim - 2))).expand_as(x))


class ParticleWeights:
    """The normalized log-weights ``(n, K)`` of ``n`` groups of ``K`` particles, ``log_z`` ``(n,)`` (the log of the
    product of the levels' normalizing constants), the effective sample size after each reweighting, and the
    resampling count. ``threshold``: resample a group when its ESS falls below ``threshold K``. ``cure``: the
    end of the error raised when every weight of a group underflows."""

    def __init__(self, n: int, k: int, threshold: float, noise: Randomness, device: torch.device, cure: str):
        self.n, self.k, self.threshold, self.noise, self.device, self.cure = n, k, threshold, noise, device, cure
        self.log_w = torch.full((n, k), -math.log(k), dtype=torch.float64, device=device)
        self.log_z = torch.zeros(n, dtype=torch.float64, device=device)
        self.ess: list[Tensor] = []
        self.resamplings = torch.zeros(n, dtype=torch.long, device=device)

    def reweight(self, log_inc: Tensor, level: int, levels: int) -> Tensor:
        """Multiply the weights by ``exp(log_inc)`` ``(n, K)``; returns the effective sample size ``(n,)``."""
        lw = self.log_w + log_inc.to(torch.float64)
        total = torch.logsumexp(lw, 1)
        if not bool(torch.isfinite(total).all()):
            raise FloatingPointError(f"every particle's weight underflowed at level {level + 1} of {levels} "
                                     f"{self.cure}")
        self.log_z = self.log_z + total
        self.log_w = lw - total[:, None]
        ess = torch.exp(-torch.logsumexp(2 * self.log_w, 1))
        self.ess.append(ess)
        return ess

    def resample(self, ess: Tensor) -> Tensor | None:
        """Systematic resampling of the groups whose ESS fell below the threshold: indices ``(n, K)``, or None."""
        draws = uniform((self.n, 1), self.noise, self.device)       # drawn every level: a row's stream is its own
        due = ess < self.threshold * self.k
        if not bool(due.any()):
            return None
        picked = systematic_resample(self.log_w.exp(), draws)
        keep = torch.arange(self.k, device=self.device).expand(self.n, -1)
        self.log_w = torch.where(due[:, None], torch.full_like(self.log_w, -math.log(self.k)), self.log_w)
        self.resamplings += due.long()
        return torch.where(due[:, None], picked, keep)

    def draw(self) -> Tensor:
        """One particle per group drawn by weight: indices ``(n,)``."""
        weights = self.log_w.exp()
        picked = torch.searchsorted(weights.cumsum(1), uniform((self.n, 1), self.noise, self.device))
        return picked.clamp(max=self.k - 1)[:, 0]
