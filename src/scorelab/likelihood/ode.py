"""The exact likelihood of the probability-flow ODE, a continuous normalizing flow (MATH.md 4).

* :func:`ode_log_likelihood`: ``log p_0(x) = log p_1(x_1) + int_0^1 div v(x_t, t) dt``, with the divergence
  computed exactly by autograd (small D) or estimated by Hutchinson's trick with fixed Rademacher or Gaussian
  probes;
* :func:`ode_bits_per_dim`: 8-bit images through uniform dequantization and Score SDE's bits/dim convention
  (:func:`dequantize`, :func:`dequantized_bits_per_dim`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._util import flat_dim, is_int, require
from ..data import check_bytes
from ..models import DiffusionModel, device_and_dtype
from ..processes import SDE
from ..samplers._common import flow_process, resolve, trained_t_min
from ..samplers.ode import dopri5

__all__ = ["ODELikelihood", "ode_log_likelihood", "dequantize", "dequantized_bits_per_dim", "ode_bits_per_dim"]


@dataclass(frozen=True)
class ODELikelihood:
    """Result of :func:`ode_log_likelihood`.

    ``per_probe`` (N, k) holds one log-density estimate (nats) per probe
    (k = 1 with the exact divergence); ``log_prob`` is their mean and
    ``stderr`` its standard error (None when k = 1); ``latent`` is ``x_1``;
    ``nfe`` counts batched network evaluations.
    """

    per_probe: Tensor
    latent: Tensor
    prior_log_prob: Tensor
    nfe: int

    @property
    def log_prob(self) -> Tensor:
        return self.per_probe.mean(1)

    @property
    def stderr(self) -> Tensor | None:
        k = self.per_probe.shape[1]
        return self.per_probe.std(1) / math.sqrt(k) if k > 1 else None


def _divergence_exact(v: Tensor, x: Tensor) -> Tensor:
    """Sum over dimensions of dv_d/dx_d: one backward pass per dimension."""
    flat_v = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for d in range(flat_v.shape[1]):
        (g,) = torch.autograd.grad(flat_v[:, d].sum(), x, retain_graph=True)
        div = div + g.reshape(g.shape[0], -1)[:, d].double()
    return div


def _divergence_hutchinson(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """``eps^T (dv/dx) eps`` for each probe (k, N, ...): shape (N, k)."""
    k = probes.shape[0]
    return torch.stack([
        (torch.autograd.grad((v * e).sum(), x, retain_graph=j + 1 < k)[0] * e)
        .reshape(x.shape[0], -1).sum(1).double() for j, e in enumerate(probes)], dim=1)


def ode_log_likelihood(model: DiffusionModel, x: Tensor, *, process: SDE | None = None,
                       divergence: str = "hutchinson", probes: int = 1, probe: str = "rademacher",
                       t_min: float | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                       generator: torch.Generator | None = None) -> ODELikelihood:
    """``log p_{t_min}(x)`` under the probability-flow ODE (Song et al. 2021, MATH.md 4).

    Integrates ``[x, delta_1..delta_k]`` from ``t_min`` to 1 with adaptive RK45
    (rtol = atol = 1e-5). ``t_min`` defaults to the lowest noise level the model was trained at, on the
    process the ODE runs on (the VP SDE's 1e-5 as Score SDE; about 9e-4 for a DDPM model, its step 1), where
    ``d delta_j / dt`` is ``eps_j^T (dv/dx) eps_j`` for ``probes`` probes drawn
    once (one shared trajectory, one integral per probe), or the exact
    divergence with ``divergence="exact"`` (D backward passes per evaluation).
    Then ``log p(x) = log p_1(x_1) + delta``.
    """
    require(divergence in ("exact", "hutchinson"), f"unknown divergence {divergence!r}; choose 'exact' or 'hutchinson'")
    require(probe in ("rademacher", "gaussian"), f"unknown probe {probe!r}; choose 'rademacher' or 'gaussian'")
    require(is_int(probes) and probes >= 1, f"probes must be a positive integer, got {probes!r}")
    process = flow_process(model, process)
    t_min = max(process.train_t_min, trained_t_min(model, process)) if t_min is None else t_min
    model, process = resolve(model, process)
    n, shape, d = x.shape[0], tuple(x.shape), flat_dim(x)
    eps = None
    if divergence == "hutchinson":
        eps = torch.randn((probes,) + shape, generator=generator, dtype=x.dtype,
                          device=generator.device if generator is not None else x.device).to(x.device)
        if probe == "rademacher":
            eps = eps.sign()
    k = 1 if eps is None else probes

    def augmented(t: Tensor, state: Tensor, rows: Tensor) -> Tensor:
        xs = state[:, :d].reshape((len(rows),) + shape[1:]).detach().requires_grad_(True)
        with torch.enable_grad():
            v = process.probability_flow_drift(xs, t, model.select_rows(rows).predict(xs, t).score)
            div = (_divergence_exact(v, xs)[:, None] if eps is None
                   else _divergence_hutchinson(v, xs, eps[:, rows]))
        return torch.cat([v.detach().reshape(len(rows), -1), div.to(state.dtype)], dim=1)

    start = torch.cat([x.reshape(n, -1), torch.zeros(n, k, dtype=x.dtype, device=x.device)], dim=1)
    end, nfe = dopri5(augmented, start, t_min, 1.0, rtol=rtol, atol=atol)
    latent = end[:, :d].reshape(shape)
    prior = process.prior_log_prob(latent.double())
    return ODELikelihood(prior[:, None] + end[:, d:].double(), latent, prior, nfe)


def dequantize(k: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization (MATH.md 4): ``y = (k + u) / 256``, ``u ~ U[0, 1)``, returned as ``x = 2y - 1``."""
    check_bytes(k)
    u = torch.rand(k.shape, generator=generator, dtype=torch.float64,
                   device=generator.device if generator is not None else k.device).to(k.device)
    return 2 * (k.double() + u) / 256 - 1


def dequantized_bits_per_dim(log_prob: Tensor, num_dims: int, data_range: str = "[-1,1]") -> Tensor:
    """Bits/dim bound of 8-bit data from the log-density of its dequantized version (MATH.md 4).

    ``-log2 P(k) <= -log2 p_x(x) / D + 7`` for ``x`` in [-1, 1] (8 bits for
    the 1/256 bin width, minus 1 for the factor 2 of the map to [-1, 1]);
    ``+ 8`` for data on [0, 1].
    """
    require(data_range in ("[-1,1]", "[0,1]"), f"data_range must be '[-1,1]' or '[0,1]', got {data_range!r}")
    offset = 7.0 if data_range == "[-1,1]" else 8.0
    return -log_prob / (num_dims * math.log(2)) + offset


def ode_bits_per_dim(model: DiffusionModel, images: Tensor, *, draws: int = 1, probes: int = 1,
                     generator: torch.Generator | None = None, **kwargs) -> tuple[Tensor, Tensor | None]:
    """Bits/dim of 8-bit ``images`` (integers 0..255) by the ODE likelihood, Score SDE's protocol.

    Averages over ``draws`` dequantizations times ``probes`` Hutchinson probes;
    returns (bits/dim per image, standard error over those estimates, or None for one).
    """
    require(is_int(draws) and draws >= 1, f"draws must be a positive integer, got {draws!r}")
    d = flat_dim(images)
    estimates = []
    for _ in range(draws):
        x = dequantize(images, generator).to(device_and_dtype(model)[1])
        res = ode_log_likelihood(model, x, probes=probes, generator=generator, **kwargs)
        estimates.append(dequantized_bits_per_dim(res.per_probe, d))
    all_est = torch.cat(estimates, dim=1)
    stderr = all_est.std(1) / math.sqrt(all_est.shape[1]) if all_est.shape[1] > 1 else None
    return all_est.mean(1), stderr
