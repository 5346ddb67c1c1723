"""DiffFlow's forward process: an SDE whose drift is a network (MATH.md 11; Zhang & Chen 2021).

``dx = f_theta(x, s) ds + g dw`` on the paper's time ``s in [0, T]``, written on scorelab's ``t = s / T in
[0, 1]`` (docs/DESIGN.md, "Conventions"): the drift is ``T f_theta(x, t)`` and the diffusion ``g sqrt(T)``, so
every sampler, likelihood and simulation of an SDE runs on it unchanged. The prior is ``N(0, I)``. The process
is discretized on the grid ``t_i = (i / N)^beta`` (the paper's ``(i / N)^beta T``), which the loss walks and the
backward chain retraces; :meth:`DiffFlow.grid` also draws the paper's jittered grid.

The process holds its drift network once it is bound to one (:meth:`DiffFlow.bind`): a checkpoint stores the
numbers (:meth:`DiffFlow.config`) and the model rebuilds the pair (:class:`scorelab.diffflow.DiffFlowModel`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .._util import TimeLike, as_time, is_int, require, require_positive_int, sum_except_batch
from ..noise import normal
from ..processes import SDE

__all__ = ["DiffFlow", "power_grid"]


def power_grid(num_steps: int, beta: float, uniforms: Tensor | None = None) -> Tensor:
    """``t_i = (i / N)^beta``, ``i = 0..N`` (float64, increasing; MATH.md 11).

    ``uniforms`` ``(B, N - 1)`` in ``[0, 1)`` jitter the grid per example, as DiffFlow's code does: in
    ``v = t^(1/beta)`` the inner points fall one in each of ``N - 1`` equal cells, the ends stay at 0 and 1.
    Returns ``(N + 1,)``, or ``(B, N + 1)`` when jittered.
    """
    require_positive_int("num_steps (N)", num_steps)
    v = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if uniforms is not None and num_steps > 1:
        u = uniforms.to(torch.float64)
        require(u.ndim == 2 and u.shape[1] == num_steps - 1, f"the grid's jitter takes (B, {num_steps - 1}) "
                f"uniforms, got {tuple(u.shape)}")
        require(bool(((u >= 0) & (u <= 1)).all()), "the grid's jitter takes uniforms in [0, 1]")
        u = u.clamp(1e-9, 1 - 1e-9)                      # inner times stay strictly between their neighbours
        cells = torch.arange(num_steps - 1, dtype=torch.float64, device=u.device)
        inner = (cells + u) / (num_steps - 1)
        ends = torch.zeros(u.shape[0], 1, dtype=torch.float64, device=u.device)
        v = torch.cat([ends, inner, ends + 1], dim=1)
    return v ** beta


class DiffFlow(SDE):
    """DiffFlow's forward SDE with a learned drift (MATH.md 11).

    Args:
        num_steps: ``N``, the steps of the grid the loss walks and the backward chain retraces (``>= 1``).
        beta: the grid's exponent, ``t_i = (i / N)^beta`` (the paper: 0.9).
        horizon: the paper's ``T``, in ``(0, 1]`` (the paper: 0.05); the network's drift is scaled by it.
        g: the paper's constant diffusion ``g`` (1 for images); scorelab's is ``g sqrt(T)``.
        t_min: the smallest time the reverse-SDE and ODE samplers go down to (the probability-flow likelihood
            integrates to ``train_t_min``, 1e-5, unless given its own ``t_min``).
        drift_net: the drift network ``f_theta(x, t) -> x's shape``; None until bound (:meth:`bind`).
    """

    kinds = ("learned", "sde")
    conditions = ("time",)

    def __init__(self, num_steps: int = 30, beta: float = 0.9, horizon: float = 0.05, g: float = 1.0,
                 t_min: float = 1e-3, drift_net: nn.Module | None = None):
        require(is_int(num_steps) and num_steps >= 1,
                f"DiffFlow's num_steps N must be an integer >= 1, got {num_steps!r}; the paper trains with 10 to 100")
        for name, value in (("beta", beta), ("g", g)):
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0, f"DiffFlow's {name} must be a positive number, got {value!r}; the paper uses "
                    + ("beta = 0.9 (t_i = (i/N)^beta T)" if name == "beta" else "g = 1 for images"))
        require(isinstance(horizon, (int, float)) and not isinstance(horizon, bool) and 0 < horizon <= 1,
                f"DiffFlow's horizon T must lie in (0, 1], got {horizon!r}; the paper uses T = 0.05")
        require(isinstance(t_min, (int, float)) and 0 < t_min < 1, f"t_min must lie in (0, 1), got {t_min!r}")
        require(drift_net is None or isinstance(drift_net, nn.Module),
                f"drift_net must be a torch module f(x, t), got {type(drift_net).__name__}")
        self.num_steps, self.beta, self.horizon, self.g = num_steps, float(beta), float(horizon), float(g)
        self.t_min = float(t_min)
        self.drift_net = drift_net

    # ---- the contract ------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"name": "diffflow", "num_steps": self.num_steps, "beta": self.beta, "horizon": self.horizon,
                "g": self.g, "t_min": self.t_min}

    def bind(self, drift_net: nn.Module) -> "DiffFlow":
        """This process with ``drift_net`` as its drift network."""
        options = {k: v for k, v in self.config().items() if k != "name"}
        return DiffFlow(**options, drift_net=drift_net)

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """``T f_theta(x, t)`` (scorelab's time; MATH.md 11)."""
        require(self.drift_net is not None, "this DiffFlow process has no drift network: it is rebuilt with its "
                "model (sl.load_model(RUN) or DiffFlowModel), or bind one with process.bind(net)")
        t = as_time(t, x)
        f = self.drift_net(x, t.to(x.dtype))
        if not isinstance(f, Tensor) or f.shape != x.shape:
            got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"DiffFlow's drift network returned {got} for x of shape {tuple(x.shape)}; it must "
                             "return f(x, t) of x's shape (give it as many output as input channels)")
        return self.horizon * f

    def diffusion(self, t: TimeLike) -> Tensor:
        """``g sqrt(T)``, constant."""
        t = as_time(t)
        return torch.full_like(t, self.g * math.sqrt(self.horizon))

    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None, *,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return normal(shape, generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * sum_except_batch(x.double() ** 2) - 0.5 * x[0].numel() * math.log(2 * math.pi)

    def score_weight(self, t: TimeLike) -> Tensor:
        """``1 - exp(-g^2 T t)``: the base SDE's ``lambda(t)`` in closed form for a constant ``g``."""
        t = as_time(t)
        return -torch.expm1(-self.g**2 * self.horizon * t)

    def grid(self, num_steps: int | None = None, uniforms: Tensor | None = None) -> Tensor:
        """The discretization ``t_i = (i / N)^beta`` with ``N = num_steps`` (default the process's; see
        :func:`power_grid` for the jitter)."""
        return power_grid(self.num_steps if num_steps is None else num_steps, self.beta, uniforms)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiffFlow) and self.config() == other.config() and self.drift_net is other.drift_net

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.config().items())), id(self.drift_net)))
