"""Ground truth for multinomial diffusion: a categorical distribution over all ``K^D`` joint states (MATH.md 10).

For a small ``p_0`` (say K = 3, D = 3) everything is a matrix over the ``S^D`` joint states, built from
the one-step kernels alone (``q(x_t | x_s) = Q_{s+1} ... Q_t``, a Kronecker product over dimensions),
never from the closed forms the library uses: the marginals ``q(x_t)``, the joint reverse kernel
``q(x_s | x_t)`` by Bayes' rule, ``p(x_0 | x_t)``. From them, three exact models:

* :meth:`CategoricalOracle.model`: the exact per-dimension ``p(x_{0,i} | x_t)`` in the library's
  factorized kernel: the best factorized reverse transition, wrong wherever dimensions depend on each other;
* :meth:`CategoricalOracle.autoregressive_model`: the exact conditionals
  ``q(x_{s,i} | x_{s,<i}, x_t)``, whose product is the joint kernel itself, so exact at every T;
* :meth:`CategoricalOracle.masked_model`: masked diffusion's exact ``mu(x_t)^i = p_0(x_0^i | the unmasked
  dimensions of x_t)`` (MATH.md 13), or any other table of conditionals given to it.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from .._util import require
from .masked import MaskedDiffusion
from .masked_model import MaskedModel
from .models import AutoregressiveModel, CategoricalModel
from .process import MultinomialDiffusion

__all__ = ["CategoricalOracle"]


class CategoricalOracle:
    """An exact categorical distribution ``p_0`` over ``K^D`` states: ``probs`` of shape ``(K,) * D``."""

    def __init__(self, probs: np.ndarray | Tensor):
        p = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
        require(p.ndim >= 1 and len(set(p.shape)) == 1 and p.shape[0] >= 2,
                f"probs must have shape (K,) * D with K >= 2, got {tuple(p.shape)}")
        require(bool((p >= 0).all()) and abs(float(p.sum()) - 1) < 1e-5, "probs must be non-negative and sum to 1")
        p = p / p.sum()
        self.probs, self.num_categories, self.dims = p, p.shape[0], p.ndim

    def states(self, num_states: int | None = None) -> Tensor:
        """All joint states in row-major order, ``(S^D, D)``."""
        s = num_states or self.num_categories
        return torch.tensor(list(itertools.product(range(s), repeat=self.dims)), dtype=torch.long)

    def index(self, x: Tensor, num_states: int) -> Tensor:
        """Row-major index of each joint state in ``x`` ``(N, D)``."""
        weights = num_states ** torch.arange(self.dims - 1, -1, -1)
        return (x.long() * weights).sum(-1)

    def p0(self, num_states: int) -> Tensor:
        """``p_0`` over the ``S^D`` joint states (states holding [MASK] get 0)."""
        full = torch.zeros((num_states,) * self.dims, dtype=torch.float64)
        full[(slice(0, self.num_categories),) * self.dims] = self.probs
        return full.flatten()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.multinomial(self.probs.flatten(), n, replacement=True, generator=generator)
        return self.states()[idx]

    # ------------------------------------------------------------------------------ the joint chain
    def transition(self, process: MultinomialDiffusion, t: int, s: int) -> Tensor:
        """``M[a, b] = q(x_t = b | x_s = a)`` over joint states, from the one-step kernels only."""
        return _transition(process, self.dims, t, s)

    def marginal(self, process: MultinomialDiffusion, t: int) -> Tensor:
        """``q(x_t)`` over the ``S^D`` joint states."""
        return self.p0(process.num_states) @ self.transition(process, t, 0)

    def reverse_kernel(self, process: MultinomialDiffusion, t: int, s: int) -> Tensor:
        """``R[b, a] = q(x_s = a | x_t = b)`` by Bayes' rule on the joint (rows of unreachable ``x_t``: 0)."""
        joint = self.marginal(process, s)[:, None] * self.transition(process, t, s)          # q(x_s = a, x_t = b)
        q_t = joint.sum(0)
        return (joint / torch.where(q_t > 0, q_t, 1.0)).T

    def posterior_x0(self, process: MultinomialDiffusion, t: int) -> Tensor:
        """``P[b, a] = q(x_0 = a | x_t = b)`` (``a`` over the ``S^D`` states)."""
        return self.reverse_kernel(process, t, 0)

    def log_likelihood(self, chain: Tensor) -> Tensor:
        """``log p_0`` of joint states ``(N, D)`` of data."""
        return torch.log(self.probs.flatten()[self.index(chain, self.num_categories)])

    # ------------------------------------------------------------------------------ exact models
    def model(self, process: MultinomialDiffusion) -> CategoricalModel:
        """The exact ``p(x_{0,i} | x_t)`` per dimension in the library's factorized kernel."""
        return _FactorizedOracle(self, process)

    def autoregressive_model(self, process: MultinomialDiffusion) -> AutoregressiveModel:
        """The exact joint reverse kernel, written as conditionals in raster order."""
        return AutoregressiveModel(_OracleConditionals(self, process), process)

    def masked_conditionals(self) -> Tensor:
        """``log p_0(x_0^i = k | x_t's unmasked dimensions)`` for every joint state ``x_t`` over K + 1 states
        (row-major, [MASK] = K), shape ``((K+1)^D, D, K)``; a state no ``x_0`` reaches gets uniform rows."""
        k, d = self.num_categories, self.dims
        x_t, x0 = self.states(k + 1), self.states(k)
        agree = ((x_t[:, None, :] == k) | (x_t[:, None, :] == x0[None, :, :])).all(-1)     # (S^D, K^D)
        w = agree.double() * self.probs.flatten()[None, :]
        onehot = torch.nn.functional.one_hot(x0, k).double()                              # (K^D, D, K)
        mu = torch.einsum("ba,aik->bik", w, onehot)
        mu = torch.where(mu.sum(-1, keepdim=True) > 0, mu, torch.ones_like(mu))
        return (mu / mu.sum(-1, keepdim=True)).clamp(min=1e-300).log().reshape((k + 1) ** d, d, k)

    def masked_model(self, process: MaskedDiffusion, table: Tensor | None = None) -> MaskedModel:
        """Masked diffusion's model from a table of ``log mu`` like :meth:`masked_conditionals` (default: that
        exact one), read at ``x_t`` whatever ``t`` is."""
        require(process.num_categories == self.num_categories, "the process's categories are not the oracle's")
        return _MaskedOracle(self, process, self.masked_conditionals() if table is None else table)


@lru_cache(maxsize=256)
def _step_matrix(process: MultinomialDiffusion, t: int) -> Tensor:
    """One dimension's ``Q_t[j, i] = q(x_t = i | x_{t-1} = j) = alpha_t [i = j] + (1 - alpha_t) pi_i``, with
    ``alpha_t = alpha_bar_t / alpha_bar_{t-1}`` from the schedule's table."""
    alpha = float(process.alpha_bar[t] / process.alpha_bar[t - 1]) if process.alpha_bar[t - 1] > 0 else 1.0
    pi = process.log_pi.exp()
    return alpha * torch.eye(process.num_states, dtype=torch.float64) + (1 - alpha) * pi[None, :]


@lru_cache(maxsize=256)
def _transition(process: MultinomialDiffusion, dims: int, t: int, s: int) -> Tensor:
    one = torch.eye(process.num_states, dtype=torch.float64)
    for u in range(s + 1, t + 1):
        one = one @ _step_matrix(process, u)
    joint = one
    for _ in range(dims - 1):
        joint = torch.kron(joint, one)
    return joint


class _FactorizedOracle(CategoricalModel):
    def __init__(self, oracle: CategoricalOracle, process: MultinomialDiffusion):
        super().__init__(nn.Identity(), process)
        self.oracle = oracle

    def x0_logits(self, x_t: Tensor, t: int | Tensor, labels: Tensor | None = None) -> Tensor:
        o, p = self.oracle, self.process
        t = p._steps(t, x_t)
        out = torch.empty(*x_t.shape, p.num_categories, dtype=torch.float64)
        rows = o.index(x_t, p.num_states)
        for step in t.unique().tolist():
            at = t == step
            post = o.posterior_x0(p, int(step))[rows[at]].reshape(-1, *(p.num_states,) * o.dims)
            for i in range(o.dims):                       # the marginal of x_{0,i} given all of x_t
                dims = tuple(d + 1 for d in range(o.dims) if d != i)
                out[at, i] = post.sum(dims)[:, : p.num_categories].clamp(min=1e-300).log()
        return out


class _OracleConditionals(nn.Module):
    """A causal "network" giving ``log q(x_{s,i} | x_{s,<i}, x_t)`` from the exact joint kernel."""

    def __init__(self, oracle: CategoricalOracle, process: MultinomialDiffusion):
        super().__init__()
        self.oracle, self.process = oracle, process

    def forward(self, prev: Tensor, x_t: Tensor, c: Tensor) -> Tensor:
        o, p = self.oracle, self.process
        n, s_ = prev.shape[0], p.num_states
        t = c.round().long() + 1
        out = torch.empty(n, o.dims, s_, dtype=torch.float64)
        rows = o.index(x_t, s_)
        for step in t.unique().tolist():
            at = torch.nonzero(t == step)[:, 0]
            kernel = o.reverse_kernel(p, int(step), int(step) - 1)[rows[at]].reshape(-1, *(s_,) * o.dims)
            for i in range(o.dims):
                cond_i = kernel[(torch.arange(len(at)),) + tuple(prev[at, j] for j in range(i))]   # fix x_{s,<i}
                cond_i = cond_i.flatten(2).sum(2) if cond_i.ndim > 2 else cond_i                  # sum out x_{s,>i}
                out[at, i] = cond_i.clamp(min=1e-300).log()
        return out


class _MaskedOracle(MaskedModel):
    def __init__(self, oracle: CategoricalOracle, process: MaskedDiffusion, table: Tensor):
        super().__init__(nn.Identity(), process)
        self.oracle, self.table = oracle, torch.as_tensor(table, dtype=torch.float64)

    def logits(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.table[self.oracle.index(x_t, self.process.num_states)]
