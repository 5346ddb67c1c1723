"""The process contract and the SDE base (MATH.md 4; docs/DESIGN.md, "Contracts").

Every noise process declares what it is in :attr:`Process.kinds`, most specific last, its *kind* first:

* ``"affine"``: an SDE whose marginal is ``x_t = a(t) x0 + s(t) eps`` (:class:`~scorelab.processes.NoiseProcess`:
  VP, sub-VP, VE, and their grids DDPM (also ``"ddpm"``) and NCSN (also ``"ncsn"``));
* ``"sde"``: an SDE with any drift (:class:`~scorelab.processes.GeneralSDE`); affine processes are SDEs too;
* ``"categorical"``: diffusion on categories: multinomial diffusion's discrete-time chain (also
  ``"multinomial"``, :class:`scorelab.discrete.MultinomialDiffusion`) or masked diffusion in continuous time
  (also ``"masked"``, :class:`scorelab.discrete.MaskedDiffusion`).

Code that needs a kind asks :func:`require_kind` (one error that says what is needed and what to use
instead) or :meth:`Process.has_kind`; nothing probes a process for methods. :class:`SDE` is the base of
the continuous processes: it gives the drift ``f``, the diffusion ``g`` and a prior, and derives the rest
once, so any drift can be simulated, sampled and given a likelihood.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

from .._util import TimeLike, as_time, expand_as, require, require_positive_int
from ..noise import Randomness, normal

__all__ = ["Process", "SDE", "KINDS", "require_kind", "kind_error", "SIMULATE_STEPS", "generator_device"]

#: What a process can be (see the module's docstring).
KINDS: dict[str, str] = {
    "affine": "an affine process (x_t = a(t) x0 + s(t) eps: DDPM, NCSN, VP, sub-VP, VE)",
    "sde": "an SDE (a drift and a diffusion)",
    "categorical": "a categorical process (multinomial or masked diffusion)",
    "multinomial": "a categorical process in discrete time (multinomial diffusion)",
    "masked": "a categorical process in continuous time (masked diffusion)",
    "ddpm": "DDPM's discrete chain",
    "ncsn": "NCSN's noise ladder",
}

#: Euler-Maruyama steps :meth:`SDE.simulate` takes from 0 to t unless told otherwise (MATH.md 7).
SIMULATE_STEPS = 200


def generator_device(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


class Process(ABC):
    """A forward noising process on ``t in [0, 1]``: what it is (:attr:`kinds`) and how to rebuild it
    (:meth:`config`, whose ``name`` is the one :func:`scorelab.processes.register_process` knows it by)."""

    #: What the process is; the first entry is its kind (see the module's docstring).
    kinds: ClassVar[tuple[str, ...]] = ()

    @property
    def kind(self) -> str:
        return self.kinds[0]

    def has_kind(self, *kinds: str) -> bool:
        """Whether the process is any of ``kinds``."""
        return any(k in self.kinds for k in kinds)

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments plus the name: enough to rebuild the process."""

    @abstractmethod
    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> Tensor:
        """Times at which training corrupts data (the process's own training distribution)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(map(str, self.config().items()))))


def kind_error(process: Process, kinds: Sequence[str], what: str, instead: str = "") -> ValueError:
    """The one error for "``what`` needs a process of ``kinds``" (see :func:`require_kind`)."""
    needs = " or ".join(KINDS.get(k, k) for k in kinds)
    have = KINDS.get(process.kind, process.kind)
    return ValueError(f"{what} needs {needs}, and {type(process).__name__} is {have}"
                      + (f"; {instead}" if instead else ""))


def require_kind(process: Process, kinds: Sequence[str], what: str, instead: str = "") -> None:
    """Refuse, in one line, a process that is none of ``kinds``: what needs it, what it is, and ``instead``
    (what to use)."""
    if not process.has_kind(*kinds):
        raise kind_error(process, kinds, what, instead)


class SDE(Process):
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, 1]`` (MATH.md 4).

    Subclasses give the drift ``f``, the diffusion ``g``, the prior at ``t = 1``
    and :meth:`config`; the reverse-time and probability-flow drifts, the
    Euler-Maruyama simulation of the forward marginals and the noise
    conditions a network may receive are derived here once, so any drift
    (affine or not) can be simulated, sampled and given a likelihood.
    :class:`~scorelab.processes.NoiseProcess` is the affine special case, which adds the marginal
    ``x_t = a(t) x0 + s(t) eps`` and all that follows from it.
    """

    kinds = ("sde",)
    #: Smallest time samplers integrate down to (``eps_t`` in MATH.md 1).
    t_min: float = 1e-3
    #: Smallest time continuous training draws (MATH.md 1: ``t ~ U[1e-5, 1]``).
    train_t_min: float = 1e-5
    #: The noise conditions a network under this process may receive; the first is the default.
    conditions: tuple[str, ...] = ("time",)

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

    def simulate(self, x0: Tensor, t: TimeLike, steps: int = SIMULATE_STEPS, generator: Randomness = None) -> Tensor:
        """Draw ``x_t`` given ``x0`` by Euler-Maruyama on the forward SDE (MATH.md 4).

        Row ``k`` takes ``steps`` steps of ``t_k / steps`` from 0 to its own ``t_k``
        (vectorised over rows with different ``t``): ``x <- x + f(x, u) h + g(u) sqrt(h) z``.
        Weak error O(1/steps). ``generator``: a ``torch.Generator`` or a
        :class:`~scorelab.noise.Noise` (e.g. rows of a bigger batch's draws).
        """
        require_positive_int("steps", steps)
        t = as_time(t, x0).to(x0.device)
        require(bool(((t >= 0) & (t <= 1)).all()), "simulate's times must lie in [0, 1]")
        h = t / steps
        # u_k by the same sums as a step-by-step walk (a cumulative sum adds in that order)
        times = torch.cat([torch.zeros_like(t)[None], h[:, None].repeat(1, steps - 1).cumsum(1).T])
        g = self.diffusion(times[0])[None]                      # checked on the first step, then ...
        if steps > 1:                                           # ... all the others at once (g is elementwise)
            later = times[1:]
            g = torch.cat([g, torch.broadcast_to(self._unchecked()[1](later), later.shape).to(g.dtype)])
        # Every step's coefficients at once, in x's dtype: h and g(u_k) sqrt(h), per row.
        per_row = (len(t),) + (1,) * (x0.ndim - 1)
        h_x = h.to(x0.dtype).reshape(per_row)
        g_sqrt_h = (g * h.sqrt()).to(device=x0.device, dtype=x0.dtype).reshape((steps,) + per_row)
        x, drift = x0, self.drift                               # the drift is checked on the first step too
        for k in range(steps):
            z = normal(x0.shape, generator, device=x0.device, dtype=x0.dtype)
            x = torch.addcmul(torch.addcmul(x, h_x, drift(x, times[k])), g_sqrt_h[k], z)
            drift = self._unchecked()[0]
        return x

    def _unchecked(self) -> tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """``(drift, diffusion)`` without the checks of user-given functions, for inner loops once checked."""
        return self.drift, self.diffusion

    def sample_marginal(self, x0: Tensor, t: TimeLike, generator: Randomness = None, *,
                        noise: Tensor | None = None, steps: int = SIMULATE_STEPS) -> Tensor:
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
        u = torch.rand(n, generator=generator, device=device or generator_device(generator),
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
        """The value a network is told at time ``t`` (float64, ``(N,)``) for a ``condition`` of
        :attr:`conditions`: here ``"time"``, ``t`` itself; affine processes add noise levels."""
        self._check_condition(condition)
        return t

    def _check_condition(self, condition: str) -> None:
        require(condition in self.conditions, f"the noise condition {condition!r} does not fit "
                f"{type(self).__name__}; it takes {list(self.conditions)}")


#: 16-point Gauss-Legendre nodes and weights on [-1, 1] (exact for polynomials of degree 31).
_GAUSS_LEGENDRE = tuple(torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(16))
