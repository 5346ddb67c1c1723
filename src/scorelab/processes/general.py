"""SDEs whose drift is not affine (MATH.md 7).

When the drift ``f(x, t)`` of ``dx = f(x, t) dt + g(t) dw`` is not affine in ``x``,
``p_t(x_t | x0)`` is no longer Gaussian: there is no ``a(t), s(t)``, no
denoising target and no eps/x0/v parameterization. What remains is the SDE
itself: its forward marginals can be simulated (:meth:`SDE.simulate`), a score
network can be trained by (sliced) score matching on the simulated ``x_t``
(:mod:`scorelab.losses`), and the reverse SDE, the probability-flow ODE and its
likelihood need only ``f``, ``g`` and the score.

:class:`GeneralSDE` wraps any drift and diffusion. The built-in named SDEs are
*overdamped Langevin diffusions* towards a stationary density
``pi(x) = prod_i exp(-u(x_i)) / Z``,

    dx = -(beta(t) / 2) u'(x) dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min),

whose prior at ``t = 1`` is ``pi`` itself. With ``u(x) = x^2 / 2`` this is the
VP SDE; the named ones replace the Gaussian potential by a non-quadratic one:

* ``"tanh"``: ``u(x) = 2 log cosh(x / 2)``, a saturating drift ``-(beta/2) tanh(x/2)``;
  ``pi`` is the logistic distribution (sampled and evaluated in closed form).
* ``"double_well"``: ``u(x) = x^2 / 2 - log cosh(w x)``, VP's drift plus a saturating
  push ``(beta/2) w tanh(w x)`` towards wells near ``+-w`` (default 1.5);
  ``pi = (N(-w, 1) + N(w, 1)) / 2``, in closed form.

``beta_max`` defaults to 40 rather than VP's 20: these potentials pull back more
slowly than a Gaussian one (and a double well must be crossed), so reaching the
prior takes longer. From toy data within +-4 the total variation between
``p_1`` and ``pi`` is below 0.03 (Fokker-Planck solutions; see the tests).

A model trained under a named SDE saves ``{"name": "general", "drift": NAME, **options}``
and is rebuilt from it; :func:`register_sde` adds names, each with its options and their defaults.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .._util import TimeLike, as_time, expand_as, require, sum_except_batch
from .base import SDE

__all__ = ["GeneralSDE", "register_sde", "named_sde", "NAMED_SDES", "langevin_sde",
           "Potential", "LogisticPotential", "DoubleWellPotential"]


class GeneralSDE(SDE):
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` with any drift (MATH.md 7).

    Args:
        drift: ``drift(x, t) -> Tensor`` of ``x``'s shape, for a batch ``x`` and
            per-example times ``t`` of shape ``(N,)`` (float64).
        diffusion: ``diffusion(t) -> Tensor`` of shape ``(N,)``, positive.
        prior_sample: ``prior_sample(shape, generator=None) -> Tensor``, a draw from ``p_1``.
        prior_log_prob: ``prior_log_prob(x) -> Tensor`` of shape ``(N,)``, ``log p_1(x)`` in nats.
        t_min: the smallest time samplers integrate down to and training draws.
        name, options: set by :func:`named_sde`; a named SDE can be saved in a
            checkpoint and rebuilt from ``{"name": "general", "drift": name, **options}``.
    """

    def __init__(self, drift: Callable[[Tensor, Tensor], Tensor], diffusion: Callable[[Tensor], Tensor],
                 prior_sample: Callable[..., Tensor], prior_log_prob: Callable[[Tensor], Tensor], *,
                 t_min: float = 1e-3, name: str | None = None, options: dict[str, Any] | None = None):
        for what, fn in (("drift", drift), ("diffusion", diffusion), ("prior_sample", prior_sample),
                         ("prior_log_prob", prior_log_prob)):
            require(callable(fn), f"{what} must be a function, got {type(fn).__name__}")
        require(isinstance(t_min, (int, float)) and 0 < t_min < 1,
                f"t_min must lie in (0, 1), got {t_min!r}; e.g. 1e-3")
        self._drift, self._diffusion = drift, diffusion
        self._prior_sample, self._prior_log_prob = prior_sample, prior_log_prob
        self.t_min = self.train_t_min = float(t_min)
        self.name = name
        self.options = dict(options or {})

    def _unchecked(self):
        """The user's drift and diffusion as they are (``simulate`` checks them on its first step)."""
        return (lambda x, t: self._drift(x, as_time(t, x)),
                lambda t: torch.as_tensor(self._diffusion(as_time(t))))

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        t = as_time(t, x)
        f = self._drift(x, t)
        if not isinstance(f, Tensor) or f.shape != x.shape:
            got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"the drift of {self._label()} returned {got} for x of shape {tuple(x.shape)}; "
                             "it must return a tensor of x's shape, f(x, t) for every example")
        if not torch.compiler.is_exporting() and not bool(torch.isfinite(f).all()):
            raise ValueError(f"the drift of {self._label()} returned NaN or Inf at times in "
                             f"[{float(t.min()):.3g}, {float(t.max()):.3g}]; check it for overflow at large |x| "
                             "(or take more steps so the state stays in range)")
        return f

    def diffusion(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        g = torch.as_tensor(self._diffusion(t))
        if g.ndim == 0:
            g = g.expand(t.shape)
        if g.shape != t.shape:
            raise ValueError(f"the diffusion of {self._label()} returned shape {tuple(g.shape)} for times of "
                             f"shape {tuple(t.shape)}; it must return g(t) per example")
        if not torch.compiler.is_exporting() and not bool((torch.isfinite(g) & (g > 0)).all()):
            raise ValueError(f"the diffusion of {self._label()} must be positive and finite, got values in "
                             f"[{float(g.min()):.3g}, {float(g.max()):.3g}] for t in "
                             f"[{float(t.min()):.3g}, {float(t.max()):.3g}]; use g(t) > 0 on [0, 1]")
        return g

    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None, *,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        x = self._prior_sample(tuple(shape), generator)
        require(isinstance(x, Tensor) and tuple(x.shape) == tuple(shape),
                f"prior_sample of {self._label()} must return a tensor of the asked shape {tuple(shape)}")
        return x.to(device=device, dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        out = self._prior_log_prob(x)
        require(isinstance(out, Tensor) and tuple(out.shape) == (x.shape[0],),
                f"prior_log_prob of {self._label()} must return one log-density per example, shape "
                f"({x.shape[0]},)")
        return out

    def config(self) -> dict[str, Any]:
        if self.name is None or self.name not in NAMED_SDES:
            raise ValueError("this GeneralSDE's drift is a Python function that a checkpoint cannot store; "
                             "register a factory with sl.register_sde('my_sde', factory, defaults) and build the "
                             "SDE with sl.named_sde('my_sde', **options) so that the checkpoint can rebuild it")
        return {"name": "general", "drift": self.name, **self.options}

    def _label(self) -> str:
        return f"GeneralSDE {self.name!r}" if self.name else "the GeneralSDE"

    def __repr__(self) -> str:
        if self.name is None:
            return f"GeneralSDE(drift={self._drift!r}, t_min={self.t_min})"
        return f"GeneralSDE({self.name!r}, {', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    def __eq__(self, other: object) -> bool:
        if self.name is None or not isinstance(other, GeneralSDE) or other.name is None:
            return self is other
        return self.config() == other.config()

    def __hash__(self) -> int:
        return id(self) if self.name is None else super().__hash__()


# ---------------------------------------------------------------------------------------
# Stationary densities of the built-in Langevin SDEs.
# ---------------------------------------------------------------------------------------
class Potential(ABC):
    """A per-coordinate potential ``u`` and its density ``pi(x) = prod_i exp(-u(x_i)) / Z``."""

    @abstractmethod
    def grad(self, x: Tensor) -> Tensor:
        """``u'(x)`` elementwise."""

    @abstractmethod
    def log_density(self, x: Tensor) -> Tensor:
        """``-u(x) - log Z`` elementwise (float64)."""

    @abstractmethod
    def sample(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """Independent draws from the 1-D density, float64, on the generator's device."""

    def log_prob(self, x: Tensor) -> Tensor:
        """``log pi(x)`` per example."""
        return sum_except_batch(self.log_density(x.double()))


class LogisticPotential(Potential):
    """``u(x) = 2 log cosh(x / 2)``: ``u' = tanh(x / 2)``, ``pi`` the logistic density ``e^-x / (1 + e^-x)^2``."""

    def grad(self, x: Tensor) -> Tensor:
        return torch.tanh(0.5 * x)

    def log_density(self, x: Tensor) -> Tensor:
        a = x.abs()
        return -a - 2 * torch.log1p(torch.exp(-a))

    def sample(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else None)
        u = u.clamp(1e-300, 1.0)
        return torch.log(u) - torch.log1p(-u.clamp(max=1 - 1e-16))     # the logistic quantile


class DoubleWellPotential(Potential):
    """``u(x) = x^2 / 2 - log cosh(w x)``: ``u' = x - w tanh(w x)``, wells near ``+-w``, a barrier at 0.

    ``pi = (N(-w, 1) + N(w, 1)) / 2`` exactly (``phi(x) e^{-w^2/2} cosh(w x)``), so it is
    sampled and evaluated in closed form; ``u''`` stays in ``[1 - w^2, 1]``, so the drift
    is never stiff and its tails pull back as fast as the VP SDE's.
    """

    def __init__(self, width: float):
        self.w = float(width)

    def grad(self, x: Tensor) -> Tensor:
        return x - self.w * torch.tanh(self.w * x)

    def log_density(self, x: Tensor) -> Tensor:
        a = (self.w * x).abs()
        log_cosh = a + torch.log1p(torch.exp(-2 * a)) - math.log(2)
        return -0.5 * x**2 - 0.5 * self.w**2 + log_cosh - 0.5 * math.log(2 * math.pi)

    def sample(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else None
        z = torch.randn(tuple(shape), generator=generator, dtype=torch.float64, device=device)
        side = torch.rand(tuple(shape), generator=generator, dtype=torch.float64, device=device) < 0.5
        return z + torch.where(side, self.w, -self.w)


def langevin_sde(potential: Potential, beta_min: float = 0.1, beta_max: float = 40.0,
                 t_min: float = 1e-3) -> GeneralSDE:
    """``dx = -(beta(t)/2) u'(x) dt + sqrt(beta(t)) dw`` towards ``pi = exp(-u) / Z`` (MATH.md 7).

    ``pi`` is stationary at every ``t``, so it is the prior; ``beta`` is the VP SDE's
    linear rate. With ``u = x^2 / 2`` this would be the VP SDE.
    """
    require(isinstance(beta_min, (int, float)) and isinstance(beta_max, (int, float)) and 0 < beta_min <= beta_max,
            f"need 0 < beta_min <= beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}; e.g. 0.1 and 20")

    def beta(t: Tensor) -> Tensor:
        return beta_min + t * (beta_max - beta_min)

    def drift(x: Tensor, t: Tensor) -> Tensor:
        return -0.5 * expand_as(beta(t), x) * potential.grad(x)

    def diffusion(t: Tensor) -> Tensor:
        return torch.sqrt(beta(t))

    def prior_sample(shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        return potential.sample(shape, generator)

    return GeneralSDE(drift, diffusion, prior_sample, potential.log_prob, t_min=t_min)


def _tanh_sde(beta_min: float = 0.1, beta_max: float = 40.0, t_min: float = 1e-3) -> GeneralSDE:
    return langevin_sde(LogisticPotential(), beta_min, beta_max, t_min)


def _double_well_sde(beta_min: float = 0.1, beta_max: float = 40.0, width: float = 1.5,
                     t_min: float = 1e-3) -> GeneralSDE:
    require(isinstance(width, (int, float)) and width > 0, f"width must be positive, got {width!r}")
    return langevin_sde(DoubleWellPotential(width), beta_min, beta_max, t_min)


#: Named SDEs a checkpoint can rebuild: name -> (factory(**options) -> GeneralSDE, every option's default).
NAMED_SDES: dict[str, tuple[Callable[..., GeneralSDE], dict[str, Any]]] = {
    "tanh": (_tanh_sde, {"beta_min": 0.1, "beta_max": 40.0, "t_min": 1e-3}),
    "double_well": (_double_well_sde, {"beta_min": 0.1, "beta_max": 40.0, "width": 1.5, "t_min": 1e-3}),
}


def register_sde(name: str, factory: Callable[..., GeneralSDE], defaults: dict[str, Any]) -> None:
    """Make ``named_sde(name, **options)`` build ``factory(**{**defaults, **options})``, so checkpoints can
    rebuild it; ``defaults`` names every option the factory takes (a checkpoint stores them all)."""
    require(isinstance(name, str) and name and name.replace("_", "").replace("-", "").isalnum(),
            f"an SDE name is a word such as 'my_sde', got {name!r}")
    require(callable(factory), "factory must be a function returning a GeneralSDE")
    require(isinstance(defaults, dict) and all(isinstance(k, str) for k in defaults),
            "defaults must be a dict of every option the factory takes and its default, e.g. {'rate': 1.0}")
    NAMED_SDES[name] = (factory, dict(defaults))


def named_sde(name: str, **options: Any) -> GeneralSDE:
    """The registered SDE ``name`` built with ``options`` (built-in: ``"tanh"``, ``"double_well"``)."""
    require(name in NAMED_SDES, f"unknown SDE drift {name!r}; the named ones are {sorted(NAMED_SDES)} "
            "(register your own with sl.register_sde(name, factory, defaults) before building or loading it)")
    factory, defaults = NAMED_SDES[name]
    unknown = sorted(set(options) - set(defaults))
    require(not unknown, f"options {unknown} do not fit the SDE {name!r}; it takes {sorted(defaults)}")
    options = {**defaults, **options}                       # the checkpoint stores every option, defaults included
    sde = factory(**options)
    require(isinstance(sde, GeneralSDE), f"the factory of {name!r} must return a GeneralSDE, "
            f"got {type(sde).__name__}")
    sde.name, sde.options = name, dict(options)
    return sde
