"""The variance-preserving family: ``a(t) = exp(-B(t)/2)``, ``f = -beta(t) x / 2`` (MATH.md 1, 2 and 4).

* :class:`VPSDE` and :class:`SubVPSDE` (Song et al. 2021);
* :class:`DDPM` (Ho et al. 2020), a variance-preserving process whose step ``i`` sits at time ``t = i / N``.
  Between steps its integrated rate ``B(t)`` is interpolated linearly, so it is itself an exact VP SDE
  (piecewise-constant ``beta(t) = -N log alpha_i``) whose marginals equal DDPM's at every step;
  ``DDPM.continuous()`` gives the VP SDE of the paper that it discretizes.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from .._util import TimeLike, as_time, expand_as, require, require_positive, require_positive_int
from .affine import NoiseProcess
from .base import generator_device

__all__ = ["VPSDE", "SubVPSDE", "DDPM"]


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` (``xp`` increasing), clamped at the ends."""
    xp = xp.to(x.device)
    fp = fp.to(x.device)
    x = x.clamp(xp[0], xp[-1])
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


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

    kinds = ("affine", "sde", "ddpm")
    t_min = property(lambda self: 1.0 / self.num_steps)  # step 1
    train_t_min = t_min                                     # training draws steps 1..N
    conditions = ("index", "time", "sigma", "log_sigma")

    def noise_condition(self, condition: str, t: Tensor) -> Tensor:
        """DDPM's 0-based step ``N t - 1`` for ``"index"`` (Ho et al. feed it to the network; fractional
        between steps), else as every affine process."""
        if condition == "index":
            return t * self.num_steps - 1
        return super().noise_condition(condition, t)

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
        # step i's rate on ((i - 1) / N, i / N]; a step's own time i / N can land a rounding above i when scaled
        i = torch.ceil(t * self.num_steps - 1e-6).clamp(1, self.num_steps).long()
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
                          device=device or generator_device(generator))
        return self.step_to_time(i)

    def config(self) -> dict[str, Any]:
        return {"name": "ddpm", "num_steps": self.num_steps, "schedule": self.schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end}
