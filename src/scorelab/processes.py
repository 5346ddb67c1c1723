"""Noise processes: one forward family seen through three lenses (MATH.md sections 1-4).

Every process corrupts data as ``x_t = a(t) x0 + s(t) eps`` on the time axis
``t in [0, 1]`` and is also an SDE ``dx = f(x, t) dt + g(t) dw`` whose marginals
those are. The continuous processes are :class:`VPSDE`, :class:`SubVPSDE` and
:class:`VESDE` (Song et al. 2021). The discrete ones are their grids:

* :class:`DDPM` (Ho et al. 2020) is a variance-preserving process whose step
  ``i`` sits at time ``t = i / N``. Between steps its integrated rate ``B(t)`` is
  interpolated linearly, so it is itself an exact VP SDE (piecewise-constant
  ``beta(t) = -N log alpha_i``) whose marginals equal DDPM's at every step.
  ``DDPM.continuous()`` gives the VP SDE of the paper that it discretizes.
* :class:`NCSN` (Song & Ermon 2019) is the VE SDE with its geometric sigma
  ladder: level ``i`` (1 = largest sigma) sits at ``t = (L - i) / (L - 1)``.

The number of sampling steps belongs to samplers, never to a process.
All schedules are computed in float64; coefficients returned for a time ``t``
are float64 tensors of ``t``'s shape, cast where they meet ``x``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Any, Sequence

import torch
from torch import Tensor

import numpy as np

from ._util import (Randomness, TimeLike, as_time, expand_as, flat_dim, normal, randn, require,
                    require_positive, require_positive_int, sum_except_batch)

__all__ = ["SDE", "NoiseProcess", "VPSDE", "SubVPSDE", "VESDE", "DDPM", "NCSN", "EDM", "AFFINE_PROCESSES"]


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` (``xp`` increasing), clamped at the ends."""
    xp = xp.to(x.device)
    fp = fp.to(x.device)
    x = x.clamp(xp[0], xp[-1])
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


_NOT_AFFINE = ("needs the Gaussian marginal x_t = a(t) x0 + s(t) eps of an affine process, and {name}'s "
               "drift is not affine; on a general SDE use the samplers 'em', 'pc', 'ode' or 'ld', the score target "
               "and the (sliced) score matching losses")


class SDE(ABC):
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, 1]`` (MATH.md 4).

    Subclasses give the drift ``f``, the diffusion ``g``, the prior at ``t = 1``
    and :meth:`config`; the reverse-time and probability-flow drifts, the
    Euler-Maruyama simulation of the forward marginals and the noise
    conditions a network may receive are derived here once, so any drift
    (affine or not) can be simulated, sampled and given a likelihood.
    :class:`NoiseProcess` is the affine special case, which adds the marginal
    ``x_t = a(t) x0 + s(t) eps`` and all that follows from it.
    """

    #: Smallest time samplers integrate down to (``eps_t`` in MATH.md 1).
    t_min: float = 1e-3
    #: Smallest time continuous training draws (MATH.md 1: ``t ~ U[1e-5, 1]``).
    train_t_min: float = 1e-5
    #: Whether ``q(x_t | x0)`` is the Gaussian ``N(a(t) x0, s(t)^2 I)`` (an affine drift).
    affine: bool = False
    #: The noise conditions a network under this process may receive; the first is the default.
    conditions: tuple[str, ...] = ("time",)
    #: The corrector's Langevin signal-to-noise ratio ``r`` (MATH.md 4; Song et al.: 0.01 for VP).
    langevin_snr: float = 0.01
    #: Euler-Maruyama steps :meth:`simulate` takes from 0 to t unless told (MATH.md 7).
    simulate_steps: int = 200
    #: The data's standard deviation that EDM's preconditioning and loss weighting assume (0.5 for images
    #: on [-1, 1], Karras et al. 2022); the :class:`EDM` process makes it an option.
    sigma_data: float = 0.5

    # ---- what each SDE defines -------------------------------------------------------
    @abstractmethod
    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """f(x, t) of the forward SDE (MATH.md 4)."""

    @abstractmethod
    def diffusion(self, t: TimeLike) -> Tensor:
        """g(t), the diffusion coefficient of the forward SDE (MATH.md 4)."""

    @abstractmethod
    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None, *,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw ``x_1`` from the prior ``p_1``."""

    @abstractmethod
    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Per-example log-density of the prior ``p_1``, in nats."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments plus the name: enough to rebuild the process."""

    # ---- derived once, for every SDE -------------------------------------------------
    def reverse_drift(self, x: Tensor, t: TimeLike, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE, ``f(x, t) - g(t)^2 score`` (MATH.md 4)."""
        t = as_time(t, x)
        return self.drift(x, t) - expand_as(self.diffusion(t) ** 2, x) * score

    def probability_flow_drift(self, x: Tensor, t: TimeLike, score: Tensor) -> Tensor:
        """Velocity of the probability-flow ODE, ``f(x, t) - g(t)^2 score / 2`` (MATH.md 4)."""
        t = as_time(t, x)
        return self.drift(x, t) - 0.5 * expand_as(self.diffusion(t) ** 2, x) * score

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """The forward step from ``t_next`` up to ``t > t_next`` as ``x_t = x + f_i + G_i z``: ``(f_i, G_i^2)``.

        Euler-Maruyama here, ``f_i = f(x, t) dt``, ``G_i^2 = g(t)^2 dt`` (score_sde's
        default); affine processes override it with their exact transition. The
        reverse-diffusion predictor steps ``x <- x - f_i + G_i^2 score + G_i z`` (MATH.md 4).
        """
        dt = t - t_next
        return expand_as(dt, x) * self.drift(x, t), self.diffusion(t) ** 2 * dt

    def langevin_alpha(self, t: Tensor, t_next: Tensor) -> Tensor:
        """score_sde's ``alpha_i`` of the Langevin corrector's step ``e = 2 alpha (r ||z|| / ||score||)^2``:
        1 for a general SDE."""
        return torch.ones_like(as_time(t))

    def simulate(self, x0: Tensor, t: TimeLike, steps: int | None = None, generator: Randomness = None) -> Tensor:
        """Draw ``x_t`` given ``x0`` by Euler-Maruyama on the forward SDE (MATH.md 4).

        Row ``k`` takes ``steps`` steps of ``t_k / steps`` from 0 to its own ``t_k``
        (vectorised over rows with different ``t``): ``x <- x + f(x, u) h + g(u) sqrt(h) z``.
        Weak error O(1/steps); default :attr:`simulate_steps`. ``generator`` is a
        ``torch.Generator`` or a :class:`~scorelab._util.BatchNoise` (rows of a bigger batch's draws).
        """
        steps = self.simulate_steps if steps is None else steps
        require_positive_int("steps", steps)
        t = as_time(t, x0).to(x0.device)
        require(bool(((t >= 0) & (t <= 1)).all()), "simulate's times must lie in [0, 1]")
        h = t / steps
        sqrt_h = expand_as(h.sqrt(), x0)
        times = [torch.zeros_like(t)]
        for _ in range(steps - 1):                              # u_k by the same sums as a step-by-step walk
            times.append(times[-1] + h)
        g = self.diffusion(times[0])[None]                      # checked on the first step, then ...
        if steps > 1:                                           # ... all the others at once (g is elementwise)
            later = torch.stack(times[1:])
            g = torch.cat([g, torch.broadcast_to(self._unchecked()[1](later), later.shape).to(g.dtype)])
        x, h_x = x0, expand_as(h, x0)
        drift = self.drift                                      # the drift is checked on the first step too
        for k, u in enumerate(times):
            z = normal(x0.shape, generator, device=x0.device, dtype=x0.dtype)
            x = x + h_x * drift(x, u) + expand_as(g[k], x) * sqrt_h * z
            drift = self._unchecked()[0]
        return x

    def _unchecked(self) -> tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """``(drift, diffusion)`` without the checks of user-given functions, for inner loops once checked."""
        return self.drift, self.diffusion

    def sample_marginal(self, x0: Tensor, t: TimeLike, generator: Randomness = None, *,
                        noise: Tensor | None = None, steps: int | None = None) -> Tensor:
        """Draw ``x_t ~ p_t(x_t | x0)``: simulated here (``steps`` Euler-Maruyama steps), in closed form
        for an affine process (where ``noise`` is its eps)."""
        require(noise is None, f"{type(self).__name__} has no closed-form marginal to put eps (noise) in: its "
                "x_t is simulated from the generator; pass noise only for affine processes")
        return self.simulate(x0, t, steps, generator)

    def score_weight(self, t: TimeLike) -> Tensor:
        """The score-matching weight ``lambda(t)`` that keeps every time's loss of order one (MATH.md 3-4, 7).

        ``s(t)^2`` for affine processes; here ``1 - exp(-int_0^t g(u)^2 du)``, the ``s(t)^2``
        that a VP SDE with this diffusion would have (so a general SDE whose drift is VP's
        weighs like VP), by 16-point Gauss-Legendre quadrature.
        """
        t = as_time(t)
        nodes, weights = _GAUSS_LEGENDRE
        u = 0.5 * t[..., None] * (nodes.to(t.device) + 1)             # nodes mapped to [0, t]
        g2 = self.diffusion(u.reshape(-1)).reshape(u.shape) ** 2
        return -torch.expm1(-0.5 * t * (g2 * weights.to(t.device)).sum(-1))

    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> Tensor:
        """Times at which training corrupts data: ``U[train_t_min, 1]`` for continuous processes."""
        u = torch.rand(n, generator=generator, device=device or _gen_device(generator),
                       dtype=torch.float64)
        return self.train_t_min + (1.0 - self.train_t_min) * u

    def sampling_sde(self) -> "SDE":
        """The SDE whose reverse the SDE samplers integrate: this one (NCSN and a linear DDPM: their
        VE and VP SDEs)."""
        return self

    @property
    def default_condition(self) -> str:
        """The noise condition this framework's reference code feeds its network (first of ``conditions``)."""
        return self.conditions[0]

    def noise_condition(self, condition: str, t: Tensor) -> Tensor:
        """The value a network is told at time ``t`` (float64, ``(N,)``): ``t``, ``sigma(t)``,
        ``log sigma(t)`` or the discrete index of the time."""
        require(condition in self.conditions, f"the noise condition {condition!r} does not fit "
                f"{type(self).__name__}; it takes {list(self.conditions)}")
        if condition == "time":
            return t
        if condition == "sigma":
            return self.sigma(t)
        if condition == "log_sigma":
            return torch.log(self.sigma(t))
        return self.index_of_time(t)

    def index_of_time(self, t: Tensor) -> Tensor:
        """The 0-based discrete index at time ``t`` (DDPM's step, NCSN's level)."""
        raise ValueError(f"condition 'index' needs a discrete process (DDPM or NCSN), not "
                         f"{type(self).__name__}; use 'time', 'sigma' or 'log_sigma'")

    # ---- what only an affine process has (NoiseProcess overrides them) ------------------
    def _not_affine(self, what: str):
        return ValueError(f"{what} " + _NOT_AFFINE.format(name=type(self).__name__))

    def signal_scale(self, t: TimeLike) -> Tensor:
        """a(t), the marginal signal scale (affine processes only)."""
        raise self._not_affine("a(t)")

    def noise_std(self, t: TimeLike) -> Tensor:
        """s(t), the marginal noise standard deviation (affine processes only)."""
        raise self._not_affine("s(t)")

    def coefficients(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(a(t), s(t))`` (affine processes only)."""
        raise self._not_affine("(a(t), s(t))")

    def sigma(self, t: TimeLike) -> Tensor:
        """The noise level ``s(t) / a(t)`` (affine processes only)."""
        raise self._not_affine("sigma(t)")

    def time_of_sigma(self, sigma: TimeLike) -> Tensor:
        """The time of a noise level (affine processes only)."""
        raise self._not_affine("time_of_sigma")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SDE) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(map(str, self.config().items()))))


#: 16-point Gauss-Legendre nodes and weights on [-1, 1] (exact for polynomials of degree 31).
_GAUSS_LEGENDRE = tuple(torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(16))


class NoiseProcess(SDE):
    """The affine SDE: the forward process ``x_t = a(t) x0 + s(t) eps`` (MATH.md sections 1 and 4).

    Subclasses give ``a(t)`` (:meth:`signal_scale`), ``s(t)`` (:meth:`noise_std`),
    the linear drift's coefficient, the diffusion ``g`` and the prior's scale;
    everything else (sampling ``q(x_t | x0)``, the exact discretization, the
    conditional score) is derived here once.
    """

    affine = True
    conditions = ("time", "sigma", "log_sigma")
    #: Standard deviation of the prior ``N(0, prior_std^2 I)`` at ``t = 1``.
    prior_std: float = 1.0

    # ---- what each process defines -------------------------------------------------
    @abstractmethod
    def signal_scale(self, t: TimeLike) -> Tensor:
        """a(t), the marginal signal scale (MATH.md 1)."""

    @abstractmethod
    def noise_std(self, t: TimeLike) -> Tensor:
        """s(t), the marginal noise standard deviation (MATH.md 1)."""

    @abstractmethod
    def drift_coef(self, t: TimeLike) -> Tensor:
        """c(t) with the drift ``f(x, t) = c(t) x`` (MATH.md 4; every process here is linear)."""

    @abstractmethod
    def time_of_sigma(self, sigma: TimeLike) -> Tensor:
        """The time at which :meth:`sigma` equals ``sigma`` (inverse of ``s/a``)."""

    # ---- derived once, for every process ----------------------------------------------
    def coefficients(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(a(t), s(t))`` together (one schedule lookup where the process allows it)."""
        return self.signal_scale(t), self.noise_std(t)

    def sigma(self, t: TimeLike) -> Tensor:
        """The VE-equivalent noise level ``s(t) / a(t)``: ``x_t / a = x0 + sigma eps`` (EDM's sigma)."""
        return self.noise_std(t) / self.signal_scale(t)

    def marginal(self, x0: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """Mean ``a(t) x0`` and per-example std ``s(t)`` of ``q(x_t | x0)`` (MATH.md 1)."""
        t = as_time(t, x0)
        return expand_as(self.signal_scale(t), x0) * x0, self.noise_std(t)

    def perturb(self, x0: Tensor, t: TimeLike, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``x_t = a(t) x0 + s(t) eps`` from ``q(x_t | x0)``; returns ``(x_t, eps)``."""
        t = as_time(t, x0)
        if noise is None:
            noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}; "
                             "they must match")
        x_t = expand_as(self.signal_scale(t), x0) * x0 + expand_as(self.noise_std(t), x0) * noise
        return x_t, noise

    def conditional_score(self, x_t: Tensor, x0: Tensor, t: TimeLike) -> Tensor:
        """``grad log q(x_t | x0) = -(x_t - a x0) / s^2``, the DSM regression target (MATH.md 4)."""
        t = as_time(t, x_t)
        a, s = expand_as(self.signal_scale(t), x_t), expand_as(self.noise_std(t), x_t)
        return -(x_t - a * x0) / s**2

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """f(x, t) = c(t) x of the forward SDE (MATH.md 4)."""
        return expand_as(self.drift_coef(as_time(t, x)), x) * x

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """The exact transition ``x_t = r x_{t_next} + G z`` between grid times, as ``(f_i, G_i^2)``:
        ``r = a(t) / a(t_next)``, ``f_i = (r - 1) x``, ``G_i^2 = s(t)^2 - r^2 s(t_next)^2`` (for VP
        DDPM's beta_i, for VE NCSN's ``sigma_i^2 - sigma_{i-1}^2``; MATH.md 4)."""
        ratio = self.signal_scale(t) / self.signal_scale(t_next)
        return expand_as(ratio - 1, x) * x, self.noise_std(t) ** 2 - ratio**2 * self.noise_std(t_next) ** 2

    def langevin_alpha(self, t: Tensor, t_next: Tensor) -> Tensor:
        """``alpha = (a(t) / a(t_next))^2``: 1 for VE, score_sde's ``1 - beta_i`` for VP (MATH.md 4)."""
        return (self.signal_scale(t) / self.signal_scale(t_next)) ** 2

    def sample_marginal(self, x0: Tensor, t: TimeLike, generator: Randomness = None, *,
                        noise: Tensor | None = None, steps: int | None = None) -> Tensor:
        """``x_t = a(t) x0 + s(t) eps`` in closed form (``noise``: eps, else drawn; ``steps`` unused)."""
        if noise is None:
            noise = normal(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        return self.perturb(x0, t, noise=noise)[0]

    def score_weight(self, t: TimeLike) -> Tensor:
        """``lambda(t) = s(t)^2`` (NCSN's sigma^2; MATH.md 3-4)."""
        return self.noise_std(t) ** 2

    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None, *,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """Draw from the prior ``N(0, prior_std^2 I)`` at ``t = 1``."""
        return self.prior_std * randn(shape, generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Per-example log-density of the prior ``N(0, prior_std^2 I)``, in nats."""
        d = flat_dim(x)
        var = self.prior_std**2
        return -0.5 * sum_except_batch(x**2) / var - 0.5 * d * math.log(2 * math.pi * var)



def _gen_device(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


# ---------------------------------------------------------------------------------------
# Variance preserving family: a(t) = exp(-B(t)/2), f = -beta(t) x / 2.
# ---------------------------------------------------------------------------------------
class _VarPreserving(NoiseProcess):
    """Processes with ``a(t) = exp(-B(t)/2)`` and ``f = -beta(t) x / 2`` (MATH.md 1 and 4)."""

    @abstractmethod
    def beta(self, t: TimeLike) -> Tensor:
        """The rate beta(t) of MATH.md 4."""

    @abstractmethod
    def integral_beta(self, t: TimeLike) -> Tensor:
        """``B(t) = int_0^t beta(u) du`` (MATH.md 1)."""

    @abstractmethod
    def time_of_integral_beta(self, b: Tensor) -> Tensor:
        """The inverse of :meth:`integral_beta`."""

    def signal_scale(self, t: TimeLike) -> Tensor:
        return torch.exp(-0.5 * self.integral_beta(t))

    def noise_std(self, t: TimeLike) -> Tensor:
        return self._noise_std_of(self.integral_beta(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.sqrt(torch.expm1(self.integral_beta(t)))

    def coefficients(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        b = self.integral_beta(t)
        return torch.exp(-0.5 * b), self._noise_std_of(b)

    def _noise_std_of(self, b: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-b))

    def time_of_sigma(self, sigma: TimeLike) -> Tensor:
        return self.time_of_integral_beta(torch.log1p(as_time(sigma) ** 2))

    def drift_coef(self, t: TimeLike) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: TimeLike) -> Tensor:
        return torch.sqrt(self.beta(t))


class VPSDE(_VarPreserving):
    """Variance-preserving SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)`` (MATH.md 1, 4).

    ``a(t) = exp(-B(t)/2)``, ``s(t) = sqrt(1 - exp(-B(t)))``, ``f = -beta x / 2``,
    ``g = sqrt(beta)``; prior ``N(0, I)``. Defaults are Song et al. (2021).
    """

    t_min = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        require_positive("beta_min", beta_min)
        require_positive("beta_max", beta_max)
        require(beta_min <= beta_max, f"beta_min ({beta_min}) must not exceed beta_max ({beta_max}); "
                "the rate grows with t, e.g. beta_min=0.1, beta_max=20")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: TimeLike) -> Tensor:
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def time_of_integral_beta(self, b: Tensor) -> Tensor:
        # Root of (db/2) t^2 + beta_min t - b = 0, in the form that is stable when db -> 0.
        db = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * db * b))

    def config(self) -> dict[str, Any]:
        return {"name": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max}


class SubVPSDE(VPSDE):
    """Sub-VP SDE: VP's drift, ``g = sqrt(beta (1 - exp(-2B)))``, ``s(t) = 1 - exp(-B(t))`` (MATH.md 1, 4)."""

    def _noise_std_of(self, b: Tensor) -> Tensor:
        return -torch.expm1(-b)

    def sigma(self, t: TimeLike) -> Tensor:
        # (1 - e^{-B}) / e^{-B/2} = 2 sinh(B/2)
        return 2 * torch.sinh(0.5 * self.integral_beta(t))

    def time_of_sigma(self, sigma: TimeLike) -> Tensor:
        return self.time_of_integral_beta(2 * torch.asinh(0.5 * as_time(sigma)))

    def diffusion(self, t: TimeLike) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integral_beta(t)))

    def config(self) -> dict[str, Any]:
        return {"name": "subvp", "beta_min": self.beta_min, "beta_max": self.beta_max}


class DDPM(_VarPreserving):
    """DDPM's discrete Markov chain (Ho et al. 2020; MATH.md section 2).

    ``beta_1..beta_N`` follow the ``"linear"`` schedule (Ho et al.) or the
    ``"cosine"`` one (Nichol & Dhariwal 2021, betas clipped at 0.999).
    Tables are indexed by step, with index 0 meaning "no noise":
    ``betas[0] = 0`` and ``alpha_bars[0] = 1``.

    Step ``i`` sits at time ``t = i / N``. Between steps ``B(t) = -log abar``
    is interpolated linearly, which makes DDPM an exact VP SDE with
    piecewise-constant rate ``beta(t) = -N log alpha_i`` on ``((i-1)/N, i/N]``:
    its marginals equal DDPM's at every step, so every continuous sampler can
    drive a DDPM-trained model directly. :meth:`continuous` gives the paper's
    VP SDE (``beta_min = N beta_start``, ``beta_max = N beta_end``), the limit
    of this chain as ``N`` grows (MATH.md 4).
    """

    def __init__(self, num_steps: int = 1000, schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        require_positive_int("num_steps", num_steps)
        require(schedule in ("linear", "cosine"),
                f"unknown DDPM schedule {schedule!r}; choose 'linear' or 'cosine'")
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            require(isinstance(value, (int, float)) and 0 < value < 1,
                    f"{name} must lie in (0, 1), got {value!r}; Ho et al. use 1e-4 and 0.02")
        require(beta_start <= beta_end,
                f"beta_start ({beta_start}) must not exceed beta_end ({beta_end})")
        self.num_steps = num_steps
        self.schedule = schedule
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)

        n = num_steps
        if schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        else:
            s = 0.008
            steps = torch.arange(n + 1, dtype=torch.float64) / n
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        zero = torch.zeros(1, dtype=torch.float64)
        self.betas = torch.cat([zero, betas])
        self.alphas = 1 - self.betas
        log_alpha_bars = torch.cat([zero, torch.cumsum(torch.log1p(-betas), 0)])
        self.alpha_bars = torch.exp(log_alpha_bars)
        # B(t) at t = i/N is -log abar_i; piecewise linear in between.
        self._grid = torch.arange(n + 1, dtype=torch.float64) / n
        self._integral = -log_alpha_bars
        self._device_cache: dict[torch.device, Tensor] = {}
        # beta_tilde_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i, with beta_tilde_0 := 0.
        bt = torch.zeros(n + 1, dtype=torch.float64)
        bt[1:] = -torch.expm1(log_alpha_bars[:-1]) / -torch.expm1(log_alpha_bars[1:]) * betas
        self.beta_tildes = bt

    t_min = property(lambda self: 1.0 / self.num_steps)  # step 1
    train_t_min = t_min                                     # training draws steps 1..N
    conditions = ("index", "time", "sigma", "log_sigma")

    def index_of_time(self, t: Tensor) -> Tensor:
        """DDPM's 0-based step ``N t - 1`` (Ho et al. feed it to the network; fractional between steps)."""
        return t * self.num_steps - 1

    def sampling_sde(self) -> NoiseProcess:
        """The VP SDE this chain discretizes (linear schedule); a cosine chain is its own SDE."""
        return self.continuous() if self.schedule == "linear" else self

    # ---- step <-> time --------------------------------------------------------------
    def step_to_time(self, step: int | Tensor) -> Tensor:
        """Time ``t = i / N`` of DDPM step ``i`` (its place on the VP time axis)."""
        return as_time(step) / self.num_steps

    def time_to_step(self, t: TimeLike) -> Tensor:
        """Nearest DDPM step ``round(t N)`` in ``1..N`` (a long tensor)."""
        return torch.round(as_time(t) * self.num_steps).clamp(1, self.num_steps).long()

    def _steps(self, step: int | Tensor) -> Tensor:
        step = torch.as_tensor(step)
        require(not step.is_floating_point() or bool((step == step.round()).all()),
                "DDPM steps are whole numbers 1..N; convert times with time_to_step")
        step = step.long()
        require(bool(((step >= 1) & (step <= self.num_steps)).all()),
                f"DDPM steps run from 1 to {self.num_steps}, got {step.tolist()}")
        return step

    def _table(self, table: Tensor, step: int | Tensor) -> Tensor:
        step = self._steps(step)
        return table.to(step.device)[step]

    # ---- the VP SDE this chain is ----------------------------------------------------
    def integral_beta(self, t: TimeLike) -> Tensor:
        # the grid i/N is uniform, so the piece holding t is found by indexing, not searching
        t = as_time(t)
        table = self._on(t.device)
        u = (t * self.num_steps).clamp(0, self.num_steps)
        i = u.floor().long().clamp(max=self.num_steps - 1)
        low = table[i]
        return low + (u - i) * (table[i + 1] - low)

    def _on(self, device: torch.device) -> Tensor:
        """-log abar on ``device`` (cached: samplers ask at every step)."""
        cached = self._device_cache.get(device)
        if cached is None:
            cached = self._device_cache[device] = self._integral.to(device)
        return cached

    def time_of_integral_beta(self, b: Tensor) -> Tensor:
        return _interp(as_time(b), self._integral, self._grid)

    def beta(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        i = torch.ceil(t * self.num_steps).clamp(1, self.num_steps).long()
        return -self.num_steps * torch.log(self.alphas.to(t.device)[i])

    def continuous(self) -> VPSDE:
        """The VP SDE that this chain discretizes (Song et al. 2021, MATH.md 4); linear schedule only."""
        require(self.schedule == "linear",
                "a cosine DDPM has no linear VP SDE limit; use the DDPM process itself, "
                "whose continuous-time view is exact at every step")
        n = self.num_steps
        return VPSDE(beta_min=n * self.beta_start, beta_max=n * self.beta_end)

    # ---- the discrete chain (MATH.md 2) ----------------------------------------------
    def forward_kernel(self, x_prev: Tensor, step: int | Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)`` (MATH.md 2)."""
        step = self._steps(step).to(x_prev.device).expand(x_prev.shape[0])
        alpha = self._table(self.alphas, step)
        return expand_as(alpha.sqrt(), x_prev) * x_prev, self._table(self.betas, step)

    def posterior(self, x0: Tensor, x_t: Tensor, step: int | Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``mu_tilde`` and variance ``beta_tilde_t`` of ``q(x_{t-1} | x_t, x0)`` (MATH.md 2)."""
        step = self._steps(step).to(x_t.device).expand(x_t.shape[0])
        ab, ab_prev = self._table(self.alpha_bars, step), self._table(self.alpha_bars, step - 1)
        beta, alpha = self._table(self.betas, step), self._table(self.alphas, step)
        c0 = ab_prev.sqrt() * beta / (1 - ab)
        ct = alpha.sqrt() * (1 - ab_prev) / (1 - ab)
        mean = expand_as(c0, x0) * x0 + expand_as(ct, x_t) * x_t
        return mean, self._table(self.beta_tildes, step)

    def reverse_mean(self, x_t: Tensor, eps: Tensor, step: int | Tensor) -> Tensor:
        """``mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)`` (MATH.md 2).

        Equal to the posterior mean ``mu_tilde`` with ``x0`` replaced by its
        estimate ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.
        """
        step = self._steps(step).to(x_t.device).expand(x_t.shape[0])
        beta, alpha = self._table(self.betas, step), self._table(self.alphas, step)
        ab = self._table(self.alpha_bars, step)
        return (x_t - expand_as(beta / (1 - ab).sqrt(), x_t) * eps) / expand_as(alpha.sqrt(), x_t)

    def model_log_variance(self, step: int | Tensor, kind: str = "beta",
                           frac: Tensor | None = None) -> Tensor:
        """``log sigma_t^2`` of ``p(x_{t-1} | x_t)`` (MATH.md 2).

        ``kind="beta"``: sigma_t^2 = beta_t; ``"beta_tilde"``: sigma_t^2 = beta_tilde_t;
        ``"learned"``: ``frac log beta_t + (1 - frac) log beta_tilde_t`` with ``frac`` in
        [0, 1] per element (Nichol & Dhariwal 2021, eq. 15). At step 1, where
        ``beta_tilde_1 = 0``, beta_tilde is clipped to ``beta_tilde_2`` and the fixed
        ``"beta"`` choice uses it too, as Ho et al.'s and improved-diffusion's code
        do, so the decoder ``p(x0 | x1)`` stays proper; ``"learned"`` interpolates
        between ``beta_1`` and ``beta_tilde_2`` there, as improved-diffusion does.
        """
        require(kind in ("beta", "beta_tilde", "learned"),
                f"unknown variance kind {kind!r}; choose 'beta', 'beta_tilde' or 'learned'")
        step = self._steps(step)
        first = self.beta_tildes[min(2, self.num_steps)].clamp(min=1e-20)
        log_beta = torch.log(self.betas.clone())
        log_beta_tilde = torch.log(self.beta_tildes.clone().clamp(min=1e-20))
        log_beta_tilde[1] = torch.log(first)
        if kind == "beta":
            log_beta[1] = torch.log(first)
        lb = log_beta.to(step.device)[step]
        lbt = log_beta_tilde.to(step.device)[step]
        if kind == "beta":
            return lb
        if kind == "beta_tilde":
            return lbt
        require(frac is not None, "kind='learned' needs frac, the model's interpolation in [0, 1]")
        lb, lbt = lb.to(frac.device), lbt.to(frac.device)
        lb = lb.reshape(lb.shape + (1,) * (frac.ndim - lb.ndim))
        lbt = lbt.reshape(lbt.shape + (1,) * (frac.ndim - lbt.ndim))
        return frac.double() * lb + (1 - frac.double()) * lbt

    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> Tensor:
        """Times of uniformly drawn steps ``i ~ U{1..N}`` (Ho et al., Algorithm 1)."""
        i = torch.randint(1, self.num_steps + 1, (n,), generator=generator,
                          device=device or _gen_device(generator))
        return self.step_to_time(i)

    def config(self) -> dict[str, Any]:
        return {"name": "ddpm", "num_steps": self.num_steps, "schedule": self.schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end}


# ---------------------------------------------------------------------------------------
# Variance exploding family: a(t) = 1, f = 0.
# ---------------------------------------------------------------------------------------
class VESDE(NoiseProcess):
    """Variance-exploding SDE, ``s(t) = sigma_min (sigma_max / sigma_min)^t`` (MATH.md 1, 4).

    ``a = 1``, ``f = 0``, ``g = sqrt(d s^2 / dt) = s(t) sqrt(2 log(sigma_max / sigma_min))``;
    prior ``N(0, sigma_max^2 I)``. Defaults are Song et al.'s for CIFAR-10.
    """

    t_min = 1e-5
    conditions = ("log_sigma", "time", "sigma")
    langevin_snr = 0.16

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        require_positive("sigma_min", sigma_min)
        require_positive("sigma_max", sigma_max)
        require(sigma_min < sigma_max, f"sigma_min ({sigma_min}) must be below sigma_max "
                f"({sigma_max}); e.g. sigma_min=0.01, sigma_max=50")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def signal_scale(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as_time(t))

    def noise_std(self, t: TimeLike) -> Tensor:
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def sigma(self, t: TimeLike) -> Tensor:
        return self.noise_std(t)

    def time_of_sigma(self, sigma: TimeLike) -> Tensor:
        return torch.log(as_time(sigma) / self.sigma_min) / self._log_ratio

    def drift_coef(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as_time(t))

    def diffusion(self, t: TimeLike) -> Tensor:
        return self.noise_std(t) * math.sqrt(2 * self._log_ratio)

    def config(self) -> dict[str, Any]:
        return {"name": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class NCSN(VESDE):
    """NCSN's noise ladder (Song & Ermon 2019; MATH.md section 3) on the VE SDE's time axis.

    ``sigmas[0] = sigma_max > ... > sigmas[L-1] = sigma_min``, geometric
    (NCSNv1 on CIFAR-10: 1 to 0.01, L = 10). Level ``i`` (1-based, 1 = largest
    sigma) sits at ``t = (L - i) / (L - 1)`` of :meth:`continuous`, the VE SDE
    whose ``s(t)`` passes through every rung, so NCSN-trained networks can be
    driven by the VE samplers. Training draws a level uniformly.
    """

    t_min = 0.0  # level L, sigma_min
    train_t_min = 0.0                                       # training draws levels 1..L
    conditions = ("index", "time", "sigma", "log_sigma")

    def index_of_time(self, t: Tensor) -> Tensor:
        """NCSN's 0-based level ``(L - 1)(1 - t)`` (Song & Ermon feed it to the network)."""
        return (self.num_scales - 1) * (1 - t)

    def sampling_sde(self) -> VESDE:
        return self.continuous()

    def __init__(self, sigma_max: float = 1.0, sigma_min: float = 0.01, num_scales: int = 10):
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        require_positive_int("num_scales", num_scales)
        require(num_scales >= 2, f"num_scales must be at least 2 to span sigma_max..sigma_min, "
                f"got {num_scales}; NCSNv1 uses 10")
        self.num_scales = num_scales
        self.sigmas = self.noise_std(self.level_to_time(torch.arange(1, num_scales + 1)))

    def level_to_time(self, level: int | Tensor) -> Tensor:
        """Time ``t = (L - i) / (L - 1)`` of noise level ``i`` (1 = sigma_max) on the VE axis."""
        return (self.num_scales - as_time(level)) / (self.num_scales - 1)

    def time_to_level(self, t: TimeLike) -> Tensor:
        """Nearest level ``round(L - t (L - 1))`` in ``1..L`` (a long tensor)."""
        lv = torch.round(self.num_scales - as_time(t) * (self.num_scales - 1))
        return lv.clamp(1, self.num_scales).long()

    def continuous(self) -> VESDE:
        """The VE SDE through this ladder (Song et al. 2021, MATH.md 4)."""
        return VESDE(sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> Tensor:
        """Times of uniformly drawn levels (Song & Ermon 2019, the 1/L sum of MATH.md 3)."""
        lv = torch.randint(1, self.num_scales + 1, (n,), generator=generator,
                           device=device or _gen_device(generator))
        return self.level_to_time(lv)

    def config(self) -> dict[str, Any]:
        return {"name": "ncsn", "sigma_max": self.sigma_max, "sigma_min": self.sigma_min,
                "num_scales": self.num_scales}


class EDM(VESDE):
    """EDM's process (Karras et al. 2022; MATH.md 5): ``x = x0 + sigma eps`` on the VE time axis from
    ``sigma_min = 0.002`` to ``sigma_max = 80``, training noise levels log-normal,
    ``ln sigma ~ N(P_mean, P_std^2)`` with ``P_mean = -1.2``, ``P_std = 1.2`` (clamped to the range),
    and ``sigma_data = 0.5`` for the preconditioning and the loss weighting."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, p_mean: float = -1.2, p_std: float = 1.2,
                 sigma_data: float = 0.5):
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        require(isinstance(p_mean, (int, float)) and math.isfinite(p_mean), f"p_mean must be a number, got {p_mean!r}")
        require_positive("p_std", p_std)
        require_positive("sigma_data", sigma_data)
        self.p_mean, self.p_std, self.sigma_data = float(p_mean), float(p_std), float(sigma_data)

    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> Tensor:
        """The times of log-normal noise levels ``sigma = exp(P_mean + P_std z)`` (EDM, Table 1)."""
        z = torch.randn(n, generator=generator, device=device or _gen_device(generator), dtype=torch.float64)
        sigma = torch.exp(self.p_mean + self.p_std * z).clamp(self.sigma_min, self.sigma_max)
        return self.time_of_sigma(sigma).clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"name": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "p_mean": self.p_mean,
                "p_std": self.p_std, "sigma_data": self.sigma_data}


#: The affine processes by the name their config saves.
AFFINE_PROCESSES: dict[str, type[NoiseProcess]] = {
    "ddpm": DDPM, "ncsn": NCSN, "vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDM}
