"""The bound of masked diffusion (MATH.md 13): in continuous time a weighted cross-entropy on the masked
dimensions only (Shi et al. 2024, MD4; Sahoo et al. 2024, MDLM),

    -log p(x_0) <= L = int_0^1 w(t) E_{q(x_t | x_0)} [ sum_{i: x_t^i = m} -log mu_theta(x_t, t)^i[x_0^i] ] dt,

``w(t) = -alpha'_t / (1 - alpha_t)``; with T steps ``s_i = (i - 1)/T < t_i = i/T`` the discrete-time bound
``L_T = sum_i (alpha_s - alpha_t) / (1 - alpha_t) E[...at t_i]`` (each term the KL of one reverse step),
which converges to ``L`` as T grows (decreasing to it on average over the data; per example it may lie below,
since it bounds the T-step sampler's likelihood). Both are estimated without bias from draws of ``t`` and ``x_t``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._util import is_int, require
from ..noise import Randomness, uniform
from ..objectives import Objective, register_objective
from ..processes import Process, require_kind
from .losses import POSTERIOR_DTYPES, posterior_torch_dtype
from .masked import TIME_SAMPLING, MaskedDiffusion, draw_times

__all__ = ["masked_cross_entropy", "masked_loss", "masked_bits_per_dim", "masked_discrete_bound"]


def _check_model(model) -> MaskedDiffusion:
    require_kind(model.process, ("masked",), "this bound (masked diffusion's, MATH.md 13)",
                 "use --loss vlb for multinomial diffusion")
    return model.process


def masked_cross_entropy(model, x0: Tensor, x_t: Tensor, t: Tensor, labels: Tensor | None = None,
                         dtype: torch.dtype = torch.float64) -> Tensor:
    """``sum_{i: x_t^i = m} -log mu_theta(x_t, t)^i[x_0^i]`` per example (nats; SUBS's softmax over the K
    categories at the masked dimensions, computed in ``dtype`` as one fused cross-entropy, no ``(N, D, K)``
    table of logs kept)."""
    process = model.process
    x_t, t = process.check_states(x_t), process.times(t, x_t)
    logits = model.logits(x_t, t, labels).to(dtype)
    nll = F.cross_entropy(logits.reshape(-1, process.num_categories), x0.reshape(-1), reduction="none")
    return torch.where(x_t == process.mask_state, nll.reshape(x0.shape), 0.0).flatten(1).sum(1)


def masked_loss(model, x0: Tensor, *, t: Tensor | None = None, noise: Randomness = None,
                labels: Tensor | None = None, time_sampling: str = "low-discrepancy",
                reduction: str = "mean", posterior_dtype: str = "float32") -> Tensor:
    """The continuous-time bound estimated per example from one ``t`` and one ``x_t``:
    ``w(t) * sum_masked -log mu_theta[x_0]`` (unbiased for ``L``). ``t`` drawn by ``time_sampling`` unless given.
    ``reduction="mean"`` gives nats per dimension, ``"sum"`` nats per example; ``posterior_dtype``:
    the cross-entropy's dtype, float32 (training's default) or float64."""
    process = _check_model(model)
    require(reduction in ("mean", "sum"), f"unknown reduction {reduction!r}; choose 'mean' or 'sum'")
    dtype = posterior_torch_dtype(posterior_dtype)
    x0 = process.check_data(x0)
    t = draw_times(x0.shape[0], noise, x0.device, time_sampling) if t is None else process.times(t, x0)
    x_t = process.sample_marginal(x0, t, noise)
    loss = process.weight(t) * masked_cross_entropy(model, x0, x_t, t, labels, dtype)
    return (loss / x0[0].numel() if reduction == "mean" else loss).float()


@torch.no_grad()
def masked_bits_per_dim(model, x0: Tensor, noise: Randomness = None, labels: Tensor | None = None,
                        draws: int = 128) -> Tensor:
    """The continuous-time bound in bits per dimension, per example: the mean of ``draws`` terms at stratified
    times ``t_j = 1 - (j + u_j) / draws`` (one ``x_t`` each; unbiased), divided by ``D ln 2``."""
    process = _check_model(model)
    require(is_int(draws) and draws >= 1, f"draws must be a positive integer, got {draws!r}")
    x0 = process.check_data(x0)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for j in range(draws):
        t = 1 - (j + uniform((x0.shape[0],), noise, device=x0.device).clamp(max=1 - 2 ** -40)) / draws
        x_t = process.sample_marginal(x0, t, noise)
        total += process.weight(t) * masked_cross_entropy(model, x0, x_t, t, labels)
    return total / draws / (x0[0].numel() * math.log(2))


@torch.no_grad()
def masked_discrete_bound(model, x0: Tensor, steps: int, noise: Randomness = None,
                          labels: Tensor | None = None) -> Tensor:
    """``L_T`` per example (nats) with T = ``steps`` even steps, one ``x_t`` per step (unbiased): the bound of
    the T-step sampler (MATH.md 13)."""
    process = _check_model(model)
    require(is_int(steps) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    x0 = process.check_data(x0)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for i in range(1, steps + 1):
        t = torch.full((x0.shape[0],), i / steps, dtype=torch.float64, device=x0.device)
        x_t = process.sample_marginal(x0, t, noise)
        reveal = process.reveal_probability(t, torch.full_like(t, (i - 1) / steps))
        total += reveal * masked_cross_entropy(model, x0, x_t, t, labels)
    return total


def _bound(model, x0: Tensor, *, t: Tensor, randomness: Randomness, time_sampling: str, posterior_dtype: str,
           labels: Tensor | None = None, **_) -> Tensor:
    """The trainer's bound on the batch's grey levels as categories (MATH.md 13)."""
    from ..data import to_categories

    return masked_loss(model, to_categories(x0, model.process.num_categories), t=t, noise=randomness,
                       labels=labels, time_sampling=time_sampling, posterior_dtype=posterior_dtype)


def _times(process: Process, n: int, generator: torch.Generator | None, device, *, time_sampling: str,
           **_) -> Tensor:
    return draw_times(n, generator, device if device is not None else "cpu", time_sampling)


register_objective("masked", Objective("masked diffusion's continuous-time bound, a weighted cross-entropy on the "
                                       "masked dimensions (Shi et al. 2024; Sahoo et al. 2024; MATH.md 13)",
                                       _bound, ("masked",),
                                       {"time_sampling": "low-discrepancy", "posterior_dtype": "float32"},
                                       {"time_sampling": TIME_SAMPLING, "posterior_dtype": POSTERIOR_DTYPES},
                                       times=_times, labels="argument"))
