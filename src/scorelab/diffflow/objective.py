"""DiffFlow's loss: the KL between the forward and backward path measures, on simulated forward paths
(MATH.md 11; Zhang & Chen 2021, eq. 16).

On a grid ``0 = t_0 < ... < t_N = 1`` a reparameterized forward path ``x_{i+1} = x_i + f(x_i, t_i) dt_i +
g_i sqrt(dt_i) eps_i`` is scored by the backward chain's Gaussian kernels,

    delta_i = (x_i - x_{i+1} + [f - g^2 s](x_{i+1}, t_{i+1}) dt_i) / (g_{i+1} sqrt(dt_i)),

and :func:`path_loss` returns, per example,

    L = -log p_B(x_N) + sum_i (|delta_i|^2 - |eps_i|^2) / 2 + D sum_i log(g_{i+1} / g_i)
      = log p_F(x_{1:N} | x_0) - log p_B(x_{0:N})   (Gaussian normalizers included),

whose mean is the path KL plus the data's entropy, and an upper bound on ``-log p_B(x_0)`` (the chain's
marginal, a VAE's bound; :func:`trajectory_nll`). The ``|eps_i|^2`` and ``log g`` terms do not depend on the
parameters: they make the value the bound and cut its variance (DiffFlow's code keeps the ``|eps_i|^2``
term). Gradients reach the drift through the path and the score through ``delta``. Memory does not grow with
the activations of ``N`` steps: each step is recomputed in the backward pass from its saved state
(``recompute``; the paper's stochastic adjoint keeps the same states and recomputes the same steps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .._util import expand_as, flat_dim, is_int, require, sum_except_batch
from ..models import DiffusionModel
from ..noise import Randomness, normal, uniform
from ..objectives import Objective, ObjectiveState, register_objective
from ..objectives.base import check_batch
from ..processes import Process, require_kind
from .process import DiffFlow

__all__ = ["path_loss", "trajectory_nll", "diffflow_loss", "Progressive", "progressive_steps"]


def _step(model: DiffusionModel, x: Tensor, f: Tensor, t_next: Tensor, dt: Tensor, g: Tensor, g_next: Tensor,
          eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One forward step and its backward kernel's cost: ``(x_{i+1}, f(x_{i+1}), (|delta_i|^2 - |eps_i|^2) / 2)``."""
    process = model.process
    sqrt_dt = dt.sqrt()
    x_next = x + expand_as(dt, x) * f + expand_as(g * sqrt_dt, x) * eps
    f_next = process.drift(x_next, t_next)
    score = model.predict(x_next, t_next).score
    # delta_i with x_i - x_{i+1} = -(f dt + g sqrt(dt) eps) written out: no cancellation of two nearby states
    delta = (expand_as(dt / (g_next * sqrt_dt), x) * (f_next - f) - expand_as(g_next * sqrt_dt, x) * score
             - expand_as(g / g_next, x) * eps)
    return x_next, f_next, 0.5 * sum_except_batch(delta**2 - eps**2)


def path_loss(model: DiffusionModel, x0: Tensor, times: Tensor, randomness: Randomness = None, *,
              recompute: bool = True, check: bool = True) -> Tensor:
    """``log p_F(x_{1:N} | x_0) - log p_B(x_{0:N})`` per example, in nats, on one forward path from ``x0``
    (the module's docstring; MATH.md 11).

    ``times``: ``N + 1`` increasing times from ``t_0`` to ``t_N`` (``(N + 1,)``, or ``(B, N + 1)`` per example);
    any SDE (a DiffFlow process, or VP's fixed drift). ``recompute`` (under autograd) recomputes each step in the
    backward pass instead of keeping its activations. ``check``: a path that becomes NaN or Inf raises, naming
    its step (training passes False and lets the trainer stop or skip the batch, ``--on-nan``).
    """
    check_batch(x0)
    process = model.process
    require_kind(process, ("sde",), "DiffFlow's path loss (a drift and a diffusion)")
    times = torch.as_tensor(times, dtype=torch.float64, device=x0.device)
    if times.ndim == 1:
        times = times.expand(x0.shape[0], -1)
    require(times.ndim == 2 and times.shape[0] == x0.shape[0] and times.shape[1] >= 2,
            f"times must be (N + 1,) or (B, N + 1) with N >= 1, got {tuple(times.shape)}")
    require(bool((times[:, 1:] > times[:, :-1]).all()) and bool(((times >= 0) & (times <= 1)).all()),
            "the path's times must increase within [0, 1]")
    n, d = times.shape[1] - 1, flat_dim(x0)
    x, f = x0, process.drift(x0, times[:, 0])
    g_all = process.diffusion(times.reshape(-1)).reshape(times.shape).to(torch.float64)
    costs = []
    for i in range(n):
        t_next, dt = times[:, i + 1], times[:, i + 1] - times[:, i]
        eps = normal(x0.shape, randomness, device=x0.device, dtype=x0.dtype)
        args = (x, f, t_next, dt, g_all[:, i], g_all[:, i + 1], eps)
        if recompute and torch.is_grad_enabled():
            x, f, cost = checkpoint(_step, model, *args, use_reentrant=False)
        else:
            x, f, cost = _step(model, *args)
        costs.append(cost)
    total = sum(c.double() for c in costs) - process.prior_log_prob(x) \
        + d * torch.log(g_all[:, 1:] / g_all[:, :-1]).sum(1)
    if check and not bool(torch.isfinite(total).all()):
        bad = next((i for i, c in enumerate(costs) if not bool(torch.isfinite(c).all())), n - 1)
        raise FloatingPointError(
            f"the DiffFlow path became NaN or Inf at step {bad + 1} of {n} (t = {float(times[:, bad + 1].max()):.3g}): "
            "the drift or score network diverged; lower the learning rate, clip gradients (--grad-clip), or "
            "resume from an earlier checkpoint")
    return total


def trajectory_nll(model: DiffusionModel, x0: Tensor, *, num_steps: int | None = None, draws: int = 1,
                   randomness: Randomness = None) -> Tensor:
    """The backward chain's bound on ``-log p_B(x0)`` in nats per example (MATH.md 11), averaged over ``draws``
    forward paths on the model's grid (``num_steps`` steps of it; default the process's ``N``)."""
    require_kind(model.process, ("learned",), "the trajectory bound", "use the ODE likelihood")
    require(is_int(draws) and draws >= 1, f"draws must be a positive integer, got {draws!r}")
    times = model.process.grid(num_steps)
    with torch.no_grad():
        return torch.stack([path_loss(model, x0, times, randomness) for _ in range(draws)]).mean(0)


# ---- the registered objective -------------------------------------------------------------
def _schedule(progressive: str | int, final: int) -> list[int]:
    """``"10,20"`` -> ``[10, 20, final]``: the grid sizes of the stages, each larger than the last."""
    progressive = str(progressive)                      # the command line reads "10" as a number
    if not progressive.strip():
        return [final]
    try:
        values = [int(v) for v in progressive.split(",")]
    except ValueError:
        raise ValueError(f"--loss-option progressive takes increasing step counts such as 10,20 (then the "
                         f"process's N = {final}), got {progressive!r}") from None
    stages = values + [final]
    require(all(v >= 1 for v in values) and all(a < b for a, b in zip(stages, stages[1:])),
            f"--loss-option progressive must increase and stay below the process's N = {final} "
            f"(e.g. 10,20), got {progressive!r}")
    return stages


class Progressive(ObjectiveState):
    """Progressive training (Zhang & Chen 2021): the grid's ``N`` grows over the run, ``stage_steps``
    optimizer steps a stage; the steps done are checkpointed, so a resumed run is in the same stage."""

    def __init__(self, stages: list[int], stage_steps: int):
        super().__init__()
        self.stages, self.stage_steps = list(stages), int(stage_steps)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))

    def num_steps(self) -> int:
        """The grid's N for the step being taken."""
        return self.stages[min(int(self.steps_done) // self.stage_steps, len(self.stages) - 1)]

    def take_pending(self) -> tuple[Tensor, Tensor]:
        return torch.zeros(1), torch.zeros(1)

    def update(self, t: Tensor, term: Tensor) -> None:
        self.steps_done += 1


def progressive_steps(process: Process, state: ObjectiveState | None) -> int:
    """The N of this training step: the stage's under :class:`Progressive`, else the process's."""
    return state.num_steps() if isinstance(state, Progressive) else process.num_steps


def _progressive_state(process: DiffFlow, *, progressive: str = "", stage_steps: int = 1000, **_: Any
                       ) -> Progressive | None:
    require(stage_steps >= 1, f"--loss-option stage_steps must be a positive integer, got {stage_steps}")
    stages = _schedule(progressive, process.num_steps)
    return Progressive(stages, stage_steps) if len(stages) > 1 else None


def diffflow_loss(model: DiffusionModel, x0: Tensor, *, t: Tensor | None = None, noise: Tensor | None = None,
                  randomness: Randomness = None, labels: Tensor | None = None, state: ObjectiveState | None = None,
                  jitter: bool = True, progressive: str = "", stage_steps: int = 1000, recompute: bool = True
                  ) -> Tensor:
    """DiffFlow's training loss per example, nats per dimension (eq. 16 with its constants: the trajectory
    bound / D). ``jitter`` draws each example's grid (:func:`~scorelab.diffflow.power_grid`); ``progressive``
    grows N over the run (:class:`Progressive`); ``recompute``: see :func:`path_loss`."""
    process = model.process
    require_kind(process, ("learned",), "the diffflow loss", "train a fixed process with its own loss")
    num_steps = progressive_steps(process, state)
    uniforms = None
    if jitter and num_steps > 1:                   # uniforms from the batch's normals: rank-independent rows
        uniforms = uniform((x0.shape[0], num_steps - 1), randomness, device=x0.device)
    times = process.grid(num_steps, uniforms).to(x0.device)
    return path_loss(model, x0, times, randomness, recompute=recompute, check=False) / flat_dim(x0)


def _no_times(process: Process, n: int, generator: torch.Generator | None, device: Any, **options: Any) -> Tensor:
    """DiffFlow walks a whole grid: the batch's times are not drawn (zeros, unused)."""
    return torch.zeros(n, dtype=torch.float64, device=device)


register_objective("diffflow", Objective(
    "DiffFlow's path KL (Zhang & Chen 2021, eq. 16): the drift and the score trained together",
    diffflow_loss, ("learned",), {"jitter": True, "progressive": "", "stage_steps": 1000, "recompute": True},
    times=_no_times, state=_progressive_state))

