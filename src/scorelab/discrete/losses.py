"""The variational bound of multinomial diffusion, and the importance sampling of its steps (MATH.md 10).

``-log p(x_0) <= KL(q(x_T | x_0) || pi) + sum_{t=2}^T E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
- E_q log p(x_0 | x_1)`` (Hoogeboom et al. 2021, Austin et al. 2021). A factorized model's KL terms are
in closed form; an autoregressive model's are ``-H(q(x_{t-1} | x_t, x_0)) - log p(x_{t-1} | x_t)`` at one
draw of ``x_{t-1}`` from the posterior (unbiased: the entropy in closed form, ``log p`` by the chain rule).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import require
from ..noise import Randomness
from ..objectives import Objective, ObjectiveState, register_objective
from ..processes import Process, require_kind
from .process import categorical_kl, sample_categorical

__all__ = ["vlb_term", "multinomial_loss", "bits_per_dim", "StepImportance"]


def _check_model(model) -> None:
    require_kind(model.process, ("multinomial",), "this loss (multinomial diffusion's bound, MATH.md 10)")


def vlb_term(model, x0: Tensor, t: Tensor, x_t: Tensor | None = None, noise=None,
             labels: Tensor | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """``L_{t-1}`` per example (nats, summed over dimensions): the decoder ``-log p(x_0 | x_1)`` where
    ``t = 1``, else ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` at ``x_t ~ q(x_t | x_0)`` (drawn from
    ``noise`` unless given). ``dtype``: of the ``(N, *dims, S)`` posterior work (float32 halves its memory;
    tests/test_discrete.py bounds what it changes)."""
    process = model.process
    x0 = process.check_data(x0)
    t = process._steps(t, x0)
    require(bool((t >= 1).all()), "the bound's terms are for steps 1..T")
    return _vlb_term(model, x0, t, None if x_t is None else process.check_states(x_t), noise, labels, dtype)


def _vlb_term(model, x0: Tensor, t: Tensor, x_t: Tensor | None, noise, labels: Tensor | None,
              dtype: torch.dtype = torch.float64) -> Tensor:
    """:func:`vlb_term` on checked categories and steps (the losses' inner loop checks them once)."""
    process = model.process
    if x_t is None:
        x_t = process._draw_marginal(x0, t, noise)
    s = t - 1
    log_post = process.log_posterior(x_t, process._log_one_hot(x0, dtype), t, s)
    decoder = t == 1
    if model.factorized:                                       # KL in closed form
        log_p = model.log_reverse(x_t, t, s, labels, dtype=dtype)
        kl = categorical_kl(log_post, log_p).flatten(1).sum(1)
        nll = -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
        return torch.where(decoder, nll, kl)
    x_s = torch.where(decoder.reshape((-1,) + (1,) * (x0.ndim - 1)), x0, sample_categorical(log_post, noise))
    neg_entropy = (log_post.exp() * log_post).sum(-1).flatten(1).sum(1)
    return torch.where(decoder, 0.0, neg_entropy) - model.log_prob_reverse(x_s, x_t, t, s, labels)


class StepImportance(ObjectiveState):
    """Hoogeboom et al.'s importance sampling of ``t``: ``p(t) ∝ sqrt(E[L_t^2])`` from a running average
    (``0.1 L_t^2 + 0.9 history``) once every step has been seen more than 10 times, uniform before; the decoder's
    weight is the first KL term's. Its buffers (a state dict) stay on the CPU, where the update is
    deterministic; a step seen several times in a batch is updated once, with the mean of its L_t^2 (their
    code keeps one of them; summed in a fixed order, so the order of the batch does not matter), and
    non-finite terms are left out. With ``deferred`` the losses only :meth:`record` their terms, and the
    owner applies them (the trainer: once per step, gathered from every rank, so all ranks agree)."""

    def __init__(self, num_steps: int):
        super().__init__()
        self.num_steps = num_steps
        self.register_buffer("history", torch.zeros(num_steps + 1, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(num_steps + 1, dtype=torch.long))
        self._pending: list[tuple[Tensor, Tensor]] = []

    def record(self, t: Tensor, term: Tensor) -> None:
        """A batch's steps and terms: applied now, or kept for :meth:`take_pending` when ``deferred``."""
        if self.deferred:
            self._pending.append((t.detach().cpu().long(), term.detach().cpu().double()))
        else:
            self.update(t, term)

    def take_pending(self) -> tuple[Tensor, Tensor]:
        """The recorded ``(t, term)`` since the last call, concatenated, and forgotten."""
        t = torch.cat([p[0] for p in self._pending]) if self._pending else torch.zeros(0, dtype=torch.long)
        term = torch.cat([p[1] for p in self._pending]) if self._pending else torch.zeros(0, dtype=torch.float64)
        self._pending = []
        return t, term

    @property
    def ready(self) -> bool:
        return bool((self.count[1:] > 10).all())

    def probabilities(self) -> Tensor:
        """``p(t)`` for ``t = 0..T`` (``p(0) = 0``)."""
        if not self.ready:
            p = torch.full((self.num_steps + 1,), 1.0 / self.num_steps, dtype=torch.float64)
        else:
            root = torch.sqrt(self.history + 1e-10) + 1e-4
            if self.num_steps > 1:
                root[1] = root[2]
            p = root / root[1:].sum()
        p[0] = 0
        return p.to(self.history.device)

    def sample(self, n: int, noise=None, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(t, p(t))`` for ``n`` examples."""
        p = self.probabilities()
        t = sample_categorical(p.clamp(min=1e-300).log().expand(n, -1).to(device), noise)
        return t, p.to(device)[t]

    @torch.no_grad()
    def update(self, t: Tensor, term: Tensor) -> None:
        t, term = t.detach().cpu().long(), term.detach().cpu().double()
        keep = torch.isfinite(term)
        t, square = t[keep], term[keep] ** 2
        if not len(t):
            return
        order = torch.argsort(square, stable=True)                    # a canonical order of the sums
        t, square = t[order], square[order]
        order = torch.argsort(t, stable=True)
        t, square = t[order], square[order]
        steps, inverse, seen = torch.unique(t, return_inverse=True, return_counts=True)
        mean = torch.zeros(len(steps), dtype=torch.float64).index_add_(0, inverse, square) / seen
        self.history[steps] = 0.1 * mean + 0.9 * self.history[steps]
        self.count[steps] += seen


def multinomial_loss(model, x0: Tensor, *, t: Tensor | None = None, noise=None, ce_weight: float = 0.0,
                     importance: StepImportance | None = None, labels: Tensor | None = None,
                     reduction: str = "mean", posterior_dtype: str = "float32") -> Tensor:
    """The bound, estimated per example from one step: ``L_{t-1} / p(t) + KL(q(x_T | x_0) || pi)``, plus
    ``ce_weight * (-log p(x_0 | x_t))`` summed over dimensions (D3PM's hybrid, lambda = 0.001 in Austin et
    al.; a factorized model only). ``t`` uniform on ``1..T`` unless given or ``importance`` samples it (and
    learns from this batch). ``reduction="mean"`` gives nats per dimension, ``"sum"`` nats per example.
    ``posterior_dtype``: the posterior work in float32 (half the memory of training at many categories) or float64."""
    _check_model(model)
    require(reduction in ("mean", "sum"), f"unknown reduction {reduction!r}; choose 'mean' or 'sum'")
    dtype = posterior_torch_dtype(posterior_dtype)
    process = model.process
    x0 = process.check_data(x0)
    n, big_t = x0.shape[0], process.num_steps
    if t is not None:
        t, p_t = process._steps(t, x0), torch.full((n,), 1.0 / big_t, dtype=torch.float64, device=x0.device)
        require(bool((t >= 1).all()), "the bound's terms are for steps 1..T")
    elif importance is not None:
        t, p_t = importance.sample(n, noise, device=x0.device)
    else:
        u = sample_categorical(torch.zeros(n, big_t, dtype=torch.float64, device=x0.device), noise)
        t, p_t = u + 1, torch.full((n,), 1.0 / big_t, dtype=torch.float64, device=x0.device)
    x_t = process._draw_marginal(x0, t, noise)
    term = _vlb_term(model, x0, t, x_t, noise, labels, dtype)
    if importance is not None:
        importance.record(t, term)
    loss = term / p_t.to(term.dtype) + process.prior_kl(x0).to(term.dtype)
    if ce_weight:
        require(model.factorized, "the cross-entropy term needs a model of p(x_0 | x_t) (a factorized "
                "CategoricalModel); drop ce_weight for an autoregressive one")
        log_x0 = model.log_x0(x_t, t, labels, dtype=dtype)
        loss = loss - ce_weight * log_x0.gather(-1, x0.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
    dims = x0[0].numel()
    return (loss / dims if reduction == "mean" else loss).float()


@torch.no_grad()
def bits_per_dim(model, x0: Tensor, noise=None, labels: Tensor | None = None) -> Tensor:
    """The whole bound in bits per dimension, per example: every one of the T terms (one draw of ``x_t``
    each) and the prior's KL, divided by ``D ln 2``."""
    _check_model(model)
    process = model.process
    x0 = process.check_data(x0)
    total = process.prior_kl(x0)
    for step in range(1, process.num_steps + 1):
        total = total + _vlb_term(model, x0, torch.full((x0.shape[0],), step, device=x0.device), None, noise, labels)
    return total / (x0[0].numel() * math.log(2))


#: How multinomial diffusion's training draws its steps.
STEP_SAMPLING = ("importance", "uniform")
#: The dtypes the training loss may run its posterior work in.
POSTERIOR_DTYPES = ("float32", "float64")


def posterior_torch_dtype(name: str) -> torch.dtype:
    """The ``posterior_dtype`` option of the categorical losses, checked, as a torch dtype."""
    require(name in POSTERIOR_DTYPES, f"unknown posterior_dtype {name!r}; choose one of {POSTERIOR_DTYPES}")
    return getattr(torch, name)


def _bound(model, x0: Tensor, *, t: Tensor | None, randomness: Randomness, ce_weight: float, posterior_dtype: str,
           state: StepImportance | None = None, labels: Tensor | None = None, **_) -> Tensor:
    """The trainer's bound on the batch's grey levels as categories (MATH.md 10); with ``state`` (Hoogeboom et
    al.'s importance sampling) its steps are drawn from the history instead of the given ``t``."""
    from ..data import to_categories

    return multinomial_loss(model, to_categories(x0, model.process.num_categories),
                            t=None if state is not None else t, noise=randomness, ce_weight=ce_weight,
                            importance=state, labels=labels, posterior_dtype=posterior_dtype)


def _importance(process: Process, *, step_sampling: str, **_) -> StepImportance | None:
    """Hoogeboom et al.'s step history, kept on the CPU where its update is deterministic."""
    return StepImportance(process.num_steps) if step_sampling == "importance" else None


_OPTIONS = {"step_sampling": "importance", "posterior_dtype": "float32"}
_CHOICES = {"step_sampling": STEP_SAMPLING, "posterior_dtype": POSTERIOR_DTYPES}
register_objective("vlb", Objective("multinomial diffusion's variational bound (Hoogeboom et al. 2021; MATH.md 10)",
                                    _bound, ("multinomial",), {"ce_weight": 0.0, **_OPTIONS},
                                    _CHOICES, labels="argument", state=_importance))
register_objective("vlb-ce", Objective("the bound plus D3PM's cross-entropy on x_0, lambda = 0.001 (Austin et al. "
                                       "2021)", _bound, ("multinomial",), {"ce_weight": 0.001, **_OPTIONS},
                                       _CHOICES, labels="argument", state=_importance))
