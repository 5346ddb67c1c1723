"""Multinomial diffusion: a forward process on categorical data (MATH.md 10).

``q(x_t | x_{t-1}) = Cat(alpha_t x_{t-1} + (1 - alpha_t) pi)`` per dimension, with ``pi`` uniform over
the ``K`` categories (Hoogeboom et al. 2021) or a point mass on an extra [MASK] state (Austin et al.
2021's absorbing kernel). Everything follows from ``alpha_bar_t = prod_{s <= t} alpha_s``:

* marginal ``q(x_t | x_0) = Cat(alpha_bar_t x_0 + (1 - alpha_bar_t) pi)``;
* between any two steps ``s < t``, ``q(x_t | x_s) = Cat(a x_s + (1 - a) pi)``, ``a = alpha_bar_t / alpha_bar_s``;
* posterior ``q(x_s | x_t, x_0) ∝ q(x_t | x_s) q(x_s | x_0)`` (Bayes, per dimension);
* reverse kernel of a model ``p(x_0 | x_t)``: ``sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)``, in O(K) as
  ``A_j (alpha_bar_s w_j + (1 - alpha_bar_s) pi_j sum_k w_k)`` with ``A_j = q(x_t | x_s = j)`` and
  ``w_k = p(x_0 = k | x_t) / q(x_t | x_0 = k)``.

States are integer tensors ``(N, *dims)``; probabilities carry the states in a last axis. Steps are
integers ``t`` in ``1..T``; ``t = 0`` is the data. Tables are float64 and logs are taken in log space
(``log(1 - alpha_bar)`` by ``log1mexp``), since ``1 - alpha_bar_t`` is tiny at small ``t``; each example's
``log a`` and ``log(1 - a)`` are formed in float64 from them, and only then cast to the dtype of the
``(N, *dims, S)`` work (float64 by default; the training loss runs it in float32, MATH.md 10).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .._util import is_int, require
from ..noise import Randomness, uniform
from ..processes import Process

__all__ = ["CategoricalProcess", "MultinomialDiffusion", "KERNELS", "SCHEDULES", "log1mexp"]

KERNELS = ("uniform", "absorbing")
SCHEDULES = ("cosine", "linear")
_LOG_ZERO = -1e30                         # log 0 kept finite, so that differences never give nan


def log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(a))`` for ``a <= 0``, accurate at both ends (Maechler 2012)."""
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _alpha_bar(schedule: str, num_steps: int, kernel: str = "uniform") -> np.ndarray:
    """``alpha_bar_t``, t = 0..T (alpha_bar_0 = 1).

    ``"cosine"``: Hoogeboom et al.'s code, the square root of Nichol & Dhariwal's cos^2 schedule (their
    alpha is the Gaussian sqrt(alpha)), each step's ratio clipped at sqrt(0.001) as theirs;
    ``"linear"``: ``alpha_bar_t = 1 - t / T``, Austin et al.'s ``beta_t = 1 / (T - t + 1)`` (the
    mutual-information schedule of the absorbing kernel), which ends exactly at the prior. The absorbing
    kernel's prior is all [MASK], which any ``alpha_bar_T > 0`` can miss, so there the last step absorbs all.
    """
    t = np.arange(num_steps + 1, dtype=np.float64)
    if schedule == "linear":
        return 1 - t / num_steps
    s = 0.008
    f = np.cos((t / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    ratios = np.clip(f[1:] / f[:-1], 0.001, 1.0)
    out = np.concatenate([[1.0], np.cumprod(np.sqrt(ratios))])
    if kernel == "absorbing":
        out[-1] = 0.0
    return out


class CategoricalProcess(Process):
    """What every process on categories shares (MATH.md 10, 13): ``num_categories`` values ``0..K-1`` per
    dimension, plus the [MASK] state ``K`` when the process absorbs into it (``mask_state``; ``num_states``
    counts both), and the checks of data and states against them."""

    num_categories: int
    num_states: int
    mask_state: int | None

    def check_data(self, x0: Tensor, what: str = "data") -> Tensor:
        """``x0`` as integer categories in ``0..K-1``, or a one-line error."""
        x0 = torch.as_tensor(x0)
        require(not x0.is_floating_point() or bool(torch.isfinite(x0).all()),
                f"{what} for categorical diffusion holds NaN or Inf; it must be integer categories "
                f"0..{self.num_categories - 1}")
        require(not (x0.is_floating_point() or x0.is_complex()) or bool((x0 == x0.round()).all()),
                f"{what} for categorical diffusion must be integer categories 0..{self.num_categories - 1}, got "
                "fractional values; quantize them first (scorelab.data.to_categories)")
        require(x0.dtype != torch.bool, f"{what} must be integer categories, got booleans; use x.long()")
        x0 = x0.long()
        if x0.numel():
            lo, hi = int(x0.min()), int(x0.max())
            if self.mask_state is not None and hi == self.mask_state:
                raise ValueError(f"{what} holds the value {self.mask_state}, the absorbing kernel's [MASK] state; "
                                 f"data takes the categories 0..{self.num_categories - 1} only")
            require(lo >= 0 and hi < self.num_categories, f"{what} values must lie in 0..{self.num_categories - 1} "
                    f"(num_categories={self.num_categories}), got {lo}..{hi}")
        return x0

    def check_states(self, x: Tensor, what: str = "x_t") -> Tensor:
        """States ``x`` as integers in ``0..S-1`` (data or [MASK]), or a one-line error."""
        x = torch.as_tensor(x)
        require(not x.is_floating_point() or bool((torch.isfinite(x) & (x == x.round())).all()),
                f"{what} must hold integer states 0..{self.num_states - 1}, got fractional or non-finite values")
        x = x.long()
        require(x.numel() == 0 or (int(x.min()) >= 0 and int(x.max()) < self.num_states),
                f"{what} must hold states 0..{self.num_states - 1} (K={self.num_categories}"
                f"{' and [MASK]' if self.mask_state is not None else ''}), got {int(x.min())}..{int(x.max())}")
        return x

    def _keep_or_prior(self, x0: Tensor, keep: Tensor, noise: Randomness) -> Tensor:
        """``x0`` kept with probability ``keep`` (one per example), else a draw from the prior ``pi``: [MASK] when
        the process has it, else a uniform category. A forward marginal ``keep x_0 + (1 - keep) pi`` drawn as
        the mixture it is, without an ``(N, *dims, S)`` table."""
        u = uniform(x0.shape + (1 if self.mask_state is not None else 2,), noise, device=x0.device)
        kept = u[..., 0] < keep.reshape((-1,) + (1,) * (x0.ndim - 1))
        if self.mask_state is not None:
            return torch.where(kept, x0, self.mask_state)
        other = (u[..., 1] * self.num_categories).long().clamp(max=self.num_categories - 1)
        return torch.where(kept, x0, other)


class MultinomialDiffusion(CategoricalProcess):
    """Categorical diffusion over ``num_categories`` values per dimension (MATH.md 10).

    Args:
        num_categories: ``K``, the data's categories ``0..K-1`` (K >= 2).
        num_steps: ``T``.
        schedule: ``"cosine"`` (Hoogeboom et al.) or ``"linear"`` (alpha_bar_t = 1 - t/T).
        kernel: ``"uniform"`` (noise towards Cat(1/K)) or ``"absorbing"`` (towards [MASK], state ``K``).
    """

    #: A categorical process: there is no Gaussian kernel, eps or score.
    kinds = ("categorical", "multinomial")

    def __init__(self, num_categories: int, num_steps: int = 1000, schedule: str = "cosine",
                 kernel: str = "uniform"):
        require(is_int(num_categories) and num_categories >= 2,
                f"num_categories must be an integer >= 2, got {num_categories!r}")
        require(is_int(num_steps) and num_steps >= 1,
                f"num_steps must be a positive integer, got {num_steps!r}")
        require(schedule in SCHEDULES, f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
        require(kernel in KERNELS, f"unknown kernel {kernel!r}; choose one of {KERNELS}")
        self.num_categories, self.num_steps, self.schedule, self.kernel = num_categories, num_steps, schedule, kernel
        #: States a dimension can take: the K categories, and [MASK] for the absorbing kernel.
        self.num_states = num_categories + (kernel == "absorbing")
        self.mask_state = num_categories if kernel == "absorbing" else None
        alpha_bar = torch.from_numpy(_alpha_bar(schedule, num_steps, kernel))
        self.log_alpha_bar = torch.log(alpha_bar).clamp(min=_LOG_ZERO)
        self.log_1m_alpha_bar = log1mexp(self.log_alpha_bar.clamp(max=-1e-300)).clamp(min=_LOG_ZERO)
        self.log_1m_alpha_bar[0] = _LOG_ZERO
        if kernel == "uniform":
            self.log_pi = torch.full((self.num_states,), -math.log(num_categories), dtype=torch.float64)
        else:
            self.log_pi = torch.full((self.num_states,), _LOG_ZERO, dtype=torch.float64)
            self.log_pi[-1] = 0.0

    # ---------------------------------------------------------------------------------- bookkeeping
    def config(self) -> dict[str, Any]:
        return {"name": "multinomial", "num_categories": self.num_categories, "num_steps": self.num_steps,
                "schedule": self.schedule, "kernel": self.kernel}

    @property
    def alpha_bar(self) -> Tensor:
        return self.log_alpha_bar.exp()

    def _steps(self, t: int | Tensor, like: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=like.device)
        require(not t.is_floating_point() or bool((t == t.round()).all()),
                "multinomial diffusion's steps are integers 0..T")
        t = t.long()
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        require(t.shape == (like.shape[0],), f"t must be one step per example, shape ({like.shape[0]},), "
                f"got {tuple(t.shape)}")
        require(t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) <= self.num_steps),
                f"steps must lie in 0..{self.num_steps}")
        return t

    def _table(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` (looked up in float64) in ``like``'s dtype, shaped to broadcast against its
        ``(N, *dims, S)``."""
        return table.to(like.device)[t].to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))

    def _log_pi(self, like: Tensor) -> Tensor:
        return self.log_pi.to(like.device, like.dtype)

    def _log_one_hot(self, x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.nn.functional.one_hot(x, self.num_states).to(dtype).log().clamp(min=_LOG_ZERO)

    # ---------------------------------------------------------------------------------- the process
    def _log_mix(self, log_x: Tensor, log_a: Tensor, log_1m_a: Tensor) -> Tensor:
        """``log(a x + (1 - a) pi)`` from ``log x`` (the last axis holds the states)."""
        return torch.logaddexp(log_a + log_x, log_1m_a + self._log_pi(log_x))

    def _log_ratio(self, t: Tensor, s: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``log a`` and ``log(1 - a)`` for ``a = alpha_bar_t / alpha_bar_s``, the ``s -> t`` transition (formed in
        float64, returned in ``like``'s dtype)."""
        table = self.log_alpha_bar.to(like.device)
        log_a = (table[t] - table[s]).clamp(max=0)
        log_1m_a = log1mexp(log_a.clamp(max=-1e-300)).masked_fill(log_a >= 0, _LOG_ZERO)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return log_a.to(like.dtype).reshape(shape), log_1m_a.to(like.dtype).reshape(shape)

    def log_q_probs(self, x0: Tensor, t: int | Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """``log q(x_t | x_0)``, shape ``(N, *dims, S)``."""
        log_x = self._log_one_hot(x0, dtype)
        t = self._steps(t, x0)
        return self._log_mix(log_x, self._table(self.log_alpha_bar, t, log_x), self._table(self.log_1m_alpha_bar, t,
                                                                                              log_x))

    def q_probs(self, x0: Tensor, t: int | Tensor) -> Tensor:
        """The marginal ``q(x_t | x_0) = Cat(alpha_bar_t x_0 + (1 - alpha_bar_t) pi)``."""
        return self.log_q_probs(self.check_data(x0), t).exp()

    def step_probs(self, x_prev: Tensor, t: int | Tensor, s: int | Tensor | None = None) -> Tensor:
        """``q(x_t | x_s)`` (``s = t - 1`` by default): ``Cat(a x_s + (1 - a) pi)``,
        ``a = alpha_bar_t / alpha_bar_s``."""
        x_prev = self.check_states(x_prev, "x_s")
        t = self._steps(t, x_prev)
        s = t - 1 if s is None else self._steps(s, x_prev)
        log_x = self._log_one_hot(x_prev.long())
        return self._log_mix(log_x, *self._log_ratio(t, s, log_x)).exp()

    def _log_likelihood_of_x_t(self, x_t: Tensor, t: Tensor, s: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """``log A_j = log q(x_t | x_s = j)`` for every state ``j``, shape ``(N, *dims, S)``."""
        log_a, log_1m_a = self._log_ratio(t, s, x_t.unsqueeze(-1).to(dtype))
        log_pi_at = self.log_pi.to(x_t.device, dtype)[x_t].unsqueeze(-1)
        return torch.logaddexp(log_a + self._log_one_hot(x_t, dtype), log_1m_a + log_pi_at)

    def log_posterior(self, x_t: Tensor, log_x0: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``log sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` with ``log_x0 = log p(x_0 | x_t)`` over the S states
        (a one-hot ``x_0`` gives the posterior itself); x_0 values that cannot reach ``x_t`` are dropped. Computed
        in ``log_x0``'s dtype."""
        log_a_t = self._log_likelihood_of_x_t(x_t, t, s, log_x0.dtype)     # log q(x_t | x_s = j)
        zeros = torch.zeros_like(t)
        log_z = self._log_likelihood_of_x_t(x_t, t, zeros, log_x0.dtype)   # log q(x_t | x_0 = k)
        reachable = log_z > _LOG_ZERO / 2
        log_p = torch.where(reachable, log_x0, _LOG_ZERO)
        log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
        log_w = torch.where(reachable, log_p - log_z, _LOG_ZERO)          # w_k = p_k / q(x_t | x_0 = k)
        log_ab_s, log_1m_ab_s = self._table(self.log_alpha_bar, s, log_w), self._table(self.log_1m_alpha_bar, s, log_w)
        mixed = torch.logaddexp(log_ab_s + log_w,
                                log_1m_ab_s + self._log_pi(log_w) + torch.logsumexp(log_w, -1, keepdim=True))
        out = log_a_t + mixed
        return out - torch.logsumexp(out, -1, keepdim=True)                # exact up to rounding; renormalized

    def posterior_probs(self, x_t: Tensor, x0: Tensor, t: int | Tensor, s: int | Tensor | None = None) -> Tensor:
        """``q(x_s | x_t, x_0)`` (``s = t - 1`` by default), shape ``(N, *dims, S)``."""
        x0, x_t = self.check_data(x0), self.check_states(x_t)
        t = self._steps(t, x_t)
        s = t - 1 if s is None else self._steps(s, x_t)
        require(bool((s < t).all()), "the posterior goes back in time: s must be below t")
        reachable = self._log_likelihood_of_x_t(x_t, t, torch.zeros_like(t)).gather(-1, x0.unsqueeze(-1))
        require(bool((reachable > _LOG_ZERO / 2).all()), "x_t cannot be reached from this x_0 (under the absorbing "
                "kernel an unmasked x_t equals x_0), so there is no posterior q(x_s | x_t, x_0)")
        return self.log_posterior(x_t, self._log_one_hot(x0), t, s).exp()

    def sample_marginal(self, x0: Tensor, t: int | Tensor, noise: Randomness = None) -> Tensor:
        """``x_t ~ q(x_t | x_0)`` (``noise``: a generator, or see :func:`sample_categorical`)."""
        x0 = self.check_data(x0)
        return self._draw_marginal(x0, self._steps(t, x0), noise)

    def _draw_marginal(self, x0: Tensor, t: Tensor, noise: Randomness) -> Tensor:
        """``x_t ~ alpha_bar_t x_0 + (1 - alpha_bar_t) pi`` for checked categories and steps."""
        return self._keep_or_prior(x0, self.alpha_bar.to(x0.device)[t], noise)

    # ---------------------------------------------------------------------------------- the prior
    def prior_log_probs(self, shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        """``log pi`` per dimension, shape ``(*shape, S)``: the stationary distribution ``p(x_T)``."""
        return self.log_pi.to(device).expand(*shape, self.num_states)

    def prior_sample(self, shape: Sequence[int], noise: Randomness = None,
                     device: torch.device | str = "cpu") -> Tensor:
        """``x_T ~ pi`` per dimension: uniform categories, or all [MASK] under the absorbing kernel."""
        return sample_categorical(self.prior_log_probs(shape, device), noise)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """``KL(q(x_T | x_0) || pi)`` summed over dimensions, per example (nats)."""
        log_q = self.log_q_probs(x0, self.num_steps)
        return categorical_kl(log_q, self.prior_log_probs(x0.shape, x0.device)).flatten(1).sum(1)

    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> Tensor:
        """Steps uniform on ``1..T`` (the loss may importance-sample them instead)."""
        u = torch.rand(n, generator=generator, device=generator.device if generator is not None else device)
        return (u * self.num_steps).long().clamp(max=self.num_steps - 1).add(1).to(device)


def initial_states(process: CategoricalProcess, shape_or_x: Sequence[int] | Tensor, noise: Randomness,
                   device: torch.device | str) -> Tensor:
    """A categorical sampler's start: the given states, checked, or ``(N, *dims)`` drawn from the prior."""
    if isinstance(shape_or_x, Tensor):
        return process.check_states(shape_or_x, "the starting states").to(device)
    shape = tuple(shape_or_x)
    require(len(shape) >= 2, f"shape must include the batch, e.g. (16, 1, 8, 8); got {shape}")
    return process.prior_sample(shape, noise, device=device)


def categorical_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` over the last axis, from logs (zero-probability states of ``p`` add nothing)."""
    p = log_p.exp()
    return (p * (log_p - log_q)).sum(-1).clamp(min=0)


def sample_categorical(log_probs: Tensor, noise: Randomness = None) -> Tensor:
    """One draw per position from ``Cat(exp(log_probs))`` (states in the last axis) by the Gumbel-max trick.
    ``noise``: a ``torch.Generator`` or a :class:`~scorelab.noise.Noise` (the samplers' per-sample seeds, the
    trainer's batch noise); its normals become uniforms through the normal CDF."""
    u = uniform(log_probs.shape, noise, device=log_probs.device).clamp(1e-300, 1 - 1e-16)
    return (log_probs.double() - torch.log(-torch.log(u))).argmax(-1)
