"""Reverse transitions of multinomial diffusion (MATH.md 10): factorized over dimensions, or autoregressive.

Every discrete model gives, for steps ``s < t``,

* ``log_prob_reverse(x_s, x_t, t, s)``: ``log p(x_s | x_t)`` per example (exact, by the chain rule for an
  autoregressive one);
* ``sample_reverse(x_t, t, s, generator)``: a draw of ``x_s``.

:class:`CategoricalModel` predicts ``p(x_0 | x_t)`` per dimension and its reverse kernel is
``sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` (any ``s < t``, so it samples on a subsequence of steps);
it also gives the per-dimension ``log_reverse`` from which the loss takes KL terms in closed form.
:class:`AutoregressiveModel` writes ``p(x_{t-1} | x_t) = prod_i p(x_{t-1,i} | x_{t-1,<i}, x_t)`` (Esser et
al. 2021): a causal network sees all of ``x_t`` and the dimensions of ``x_{t-1}`` before ``i``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import TimeLike, require
from ..models import NetworkModel, guide
from ..noise import Randomness
from ..networks import ARTransformer, as_network
from ..processes import Process, require_kind
from .process import _LOG_ZERO, CategoricalProcess, MultinomialDiffusion, sample_categorical

__all__ = ["CategoricalModel", "AutoregressiveModel", "CategoricalPrediction", "reverse_draw", "one_hot_input",
           "network_logits", "finite_logits"]


def one_hot_input(x: Tensor, num_states: int) -> Tensor:
    """States ``(N, C, H, W)`` (or ``(N, D)``) as network input: one-hot channels ``(N, C*S, H, W)`` in
    {-1, 1} (``(N, D*S)`` for vectors)."""
    h = F.one_hot(x.long(), num_states).float() * 2 - 1
    if x.ndim == 4:
        n, c, hh, ww, s = h.shape
        return h.permute(0, 1, 4, 2, 3).reshape(n, c * s, hh, ww)
    return h.reshape(x.shape[0], -1)


def network_logits(net: nn.Module, x_t: Tensor, c: Tensor, labels: Tensor | None,
                   process: CategoricalProcess) -> Tensor:
    """Logits of ``p(x_0 | x_t)`` from ``net(one_hot(x_t), c) -> (N, C*K, H, W)`` (``(N, D*K)`` for vectors),
    shaped ``(*x_t.shape, K)``, or a one-line error naming the shape the network should have given."""
    inp = one_hot_input(x_t, process.num_states)
    out = net(inp, c) if labels is None else net(inp, c, labels)
    k = process.num_categories
    require(out.numel() == x_t.numel() * k, f"the network returned {tuple(out.shape)} for x_t of shape "
            f"{tuple(x_t.shape)}: it must give K={k} logits per dimension ({x_t[0].numel() * k} per example)")
    if x_t.ndim == 4:
        n, _, h, w = out.shape
        out = out.reshape(n, x_t.shape[1], k, h, w).permute(0, 1, 3, 4, 2)
    else:
        out = out.reshape(*x_t.shape, k)
    require(out.shape == (*x_t.shape, k), f"the network returned logits of shape {tuple(out.shape)}, not "
            f"{(*x_t.shape, k)}: it must give K={k} outputs per dimension")
    return out


def finite_logits(logits: Tensor) -> Tensor:
    """Logits to sample from, or the one-line error of a network that returned NaN or Inf (a draw from NaN
    logits would be category 0 everywhere, silently)."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("the network returned NaN or Inf logits; check its weights (a diverged "
                                 "checkpoint: resume from an earlier one, or lower the learning rate)")
    return logits


class CategoricalPrediction:
    """What a factorized categorical model says about states ``x_t`` at steps ``t``: ``log p(x_0 | x_t)`` over the
    S states, shape ``(*x_t.shape, S)`` (MATH.md 10). Like :class:`scorelab.models.Prediction` it gives the rows of
    a batch and classifier-free guidance, so the label wrappers of :mod:`scorelab.models` take categorical models
    too."""

    __slots__ = ("x", "t", "log_x0")

    def __init__(self, x: Tensor, t: Tensor, log_x0: Tensor):
        self.x, self.t, self.log_x0 = x, t, log_x0

    def rows(self, index: slice) -> "CategoricalPrediction":
        return CategoricalPrediction(self.x[index], self.t[index], self.log_x0[index])

    def guided(self, uncond: "CategoricalPrediction", w: float) -> "CategoricalPrediction":
        """Classifier-free guidance in log space, ``p(x_0 | x_t, y)^(1+w) p(x_0 | x_t)^(-w)`` renormalized per
        dimension (Ho & Salimans 2022's eq. 6 for a categorical prediction; MATH.md 10)."""
        return CategoricalPrediction(self.x, self.t, torch.log_softmax(guide(self.log_x0, uncond.log_x0, w), -1))


def reverse_draw(process: MultinomialDiffusion, x_t: Tensor, log_x0: Tensor, t: Tensor, s: Tensor,
                 noise: Randomness = None) -> Tensor:
    """``x_s ~ sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` per dimension, from ``log p(x_0 | x_t)`` (MATH.md 10)."""
    return sample_categorical(finite_logits(process.log_posterior(x_t.long(), log_x0, t, s)), noise)


class _Discrete(NetworkModel):
    """What both kinds share: the process, the step a network is told, and states' checks."""

    process: MultinomialDiffusion

    def __init__(self, net: nn.Module, process: Process, *, num_classes: int | None = None,
                 data_shape: tuple[int, ...] | None = None):
        require_kind(process, ("multinomial",), "a multinomial diffusion model",
                     "use scorelab.Model for continuous data, MaskedModel for masked diffusion")
        super().__init__(net, process, num_classes=num_classes, data_shape=data_shape)

    def _steps(self, t: int | Tensor, s: int | Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        t = self.process._steps(t, like)
        s = t - 1 if s is None else self.process._steps(s, like)
        require(bool((s < t).all()), "a reverse transition goes back in time: s must be below t")
        return t, s

    def _condition(self, t: Tensor) -> Tensor:
        """The network is told the step ``t`` (DDPM's index condition, 0-based ``t - 1``)."""
        return (t - 1).double()


class CategoricalModel(_Discrete):
    """``p(x_0 | x_t)`` per dimension from ``net(one_hot(x_t), t - 1) -> logits`` (Hoogeboom et al. 2021).

    The network maps ``(N, C*S, H, W)`` to ``(N, C*K, H, W)`` (``(N, D*S) -> (N, D*K)`` for vectors).
    """

    parameterization = "categorical"
    target = "x0"
    #: Its reverse kernel factorizes over dimensions (``log_reverse``), on any gap ``s < t``.
    factorized = True

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        """The categories' shape: the network's input holds one-hot channels, S per channel (or dimension)."""
        shape = super().data_shape
        return None if shape is None else (shape[0] // self.process.num_states,) + tuple(shape[1:])

    def x0_logits(self, x_t: Tensor, t: int | Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits of ``p(x_0 | x_t)``, shape ``(*x_t.shape, K)``."""
        x_t = self.process.check_states(x_t)
        return self.logits(x_t, self.process._steps(t, x_t), labels)

    def logits(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """:meth:`x0_logits` for checked states and steps ``(N,)`` (what an exported program computes)."""
        return network_logits(self.net, x_t, self._condition(t).float(), labels, self.process)

    def log_x0(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None,
               dtype: torch.dtype = torch.float64) -> Tensor:
        """``log p(x_0 | x_t)`` over all S states (the [MASK] state, never data, gets log 0), in ``dtype``."""
        log_p = torch.log_softmax(self.x0_logits(x_t, t, labels).to(dtype), -1)
        extra = self.process.num_states - self.process.num_categories
        return F.pad(log_p, (0, extra), value=_LOG_ZERO) if extra else log_p

    def log_reverse(self, x_t: Tensor, t: int | Tensor, s: int | Tensor | None = None,
                    labels: Tensor | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``log p(x_s | x_t) = log sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` per dimension, ``(*x_t.shape, S)``,
        computed in ``dtype``."""
        t, s = self._steps(t, s, x_t)
        return self.process.log_posterior(x_t.long(), self.log_x0(x_t, t, labels, dtype), t, s)

    def log_prob_reverse(self, x_s: Tensor, x_t: Tensor, t: int | Tensor, s: int | Tensor | None = None,
                         labels: Tensor | None = None) -> Tensor:
        log_p = self.log_reverse(x_t, t, s, labels)
        x_s = self.process.check_states(x_s, "x_s")
        return log_p.gather(-1, x_s.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> CategoricalPrediction:
        """``log p(x_0 | x_t)`` at states ``x`` and steps ``t`` (the samplers' and the label wrappers' call)."""
        x = self.process.check_states(x)
        t = self.process._steps(t, x)
        return CategoricalPrediction(x, t, self.log_x0(x, t, labels))

    def sample_reverse(self, x_t: Tensor, t: int | Tensor, s: int | Tensor | None = None,
                       generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        t, s = self._steps(t, s, x_t)
        return reverse_draw(self.process, x_t, self.log_x0(x_t, t, labels), t, s, generator)

    def forward(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        return self.x0_logits(x_t, t)


class AutoregressiveModel(_Discrete):
    """``p(x_{t-1} | x_t) = prod_i p(x_{t-1,i} | x_{t-1,<i}, x_t)`` over the raster order of ``x``'s
    dimensions (Esser et al. 2021's transitions), from a causal network
    ``net(x_prev, x_t, t - 1) -> logits (N, D, S)`` over the flattened states ``(N, D)``, whose output at
    ``i`` reads ``x_prev[:, <i]`` only (and all of ``x_t``).

    States ``x_{t-1}`` that cannot reach ``x_t`` (under the absorbing kernel: anything but ``x_t`` where
    ``x_t`` is not [MASK]) get probability 0, so the model spends nothing on them.
    """

    parameterization = "autoregressive"
    target = "x_prev"
    #: Single steps only, drawn dimension by dimension.
    factorized = False

    def _support(self, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """``log q(x_t | x_s = j) > log 0`` per dimension and state: where ``x_s`` may lie (at ``s = 0``, data:
        never [MASK])."""
        support = self.process._log_likelihood_of_x_t(x_t.long(), t, s) > _LOG_ZERO / 2
        if self.process.mask_state is not None:
            at_data = (s == 0).reshape((-1,) + (1,) * x_t.ndim)
            is_mask = torch.arange(self.process.num_states, device=x_t.device) == self.process.mask_state
            support = support & ~(at_data & is_mask)
        return support

    def conditional_logits(self, x_s: Tensor, x_t: Tensor, t: int | Tensor, s: int | Tensor | None = None,
                           labels: Tensor | None = None) -> Tensor:
        """``log p(x_{s,i} | x_{s,<i}, x_t)`` for every dimension ``i`` and state (teacher forcing), normalized,
        shape ``(*x_t.shape, S)``."""
        x_s = self.process.check_states(x_s, "x_s")
        x_t, t, s, _, _, network = self._transition(x_t, t, s, labels)
        return self._normalized(network(x_s.reshape(x_t.shape[0], -1)), x_t, t, s)

    def _transition(self, x_t: Tensor, t: int | Tensor, s: int | Tensor | None, labels: Tensor | None):
        """Checked ``(x_t, t, s)``, the network's step input ``c``, the flat ``x_t`` and ``prev -> raw logits``."""
        x_t = self.process.check_states(x_t)
        t, s = self._steps(t, s, x_t)
        require(bool((s == t - 1).all()), "an autoregressive model is trained for single steps: s must be t - 1")
        c = self._condition(t).float()
        cond = x_t.long().reshape(x_t.shape[0], -1)
        extra = () if labels is None else (labels,)
        return x_t, t, s, c, cond, lambda prev: self.net(prev, cond, c, *extra)

    def _next_logits(self, cond: Tensor, c: Tensor, labels: Tensor | None, whole):
        """``(prev, i) -> raw logits (N, S)`` of dimension ``i``: an :class:`~scorelab.networks.ARTransformer`
        reads ``x_t`` once, then decodes incrementally (keys and values cached) when evaluating, or re-runs its
        decoder on the whole of ``prev`` in training mode; any other network is re-run whole for each ``i``."""
        net = as_network(self.net)
        if labels is None and isinstance(net, ARTransformer):
            memory, step = net.encode(cond, c)
            if net.training:
                return lambda prev, i: net.decode(prev, memory, step)[:, i]
            cache = net.start_decoding(memory, step)
            return lambda prev, i: net.decode_next(prev[:, i - 1] if i else prev[:, 0], i, cache)
        return lambda prev, i: whole(prev)[:, i]

    def _normalized(self, raw: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        return _log_softmax_on(raw.reshape(*x_t.shape, self.process.num_states), self._support(x_t, t, s))

    def log_prob_reverse(self, x_s: Tensor, x_t: Tensor, t: int | Tensor, s: int | Tensor | None = None,
                         labels: Tensor | None = None) -> Tensor:
        log_p = self.conditional_logits(x_s, x_t, t, s, labels)
        return log_p.gather(-1, x_s.long().unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)

    @torch.no_grad()
    def sample_reverse(self, x_t: Tensor, t: int | Tensor, s: int | Tensor | None = None,
                       generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        """Dimension by dimension in raster order: ``D`` network calls (with the Transformer: ``x_t`` read once,
        and each call the one new position's work)."""
        x_t, t, s, c, cond, whole = self._transition(x_t, t, s, labels)
        next_logits = self._next_logits(cond, c, labels, whole)
        support = self._support(x_t, t, s).reshape(x_t.shape[0], -1, self.process.num_states)
        flat = torch.zeros_like(cond)
        for i in range(flat.shape[1]):
            log_p = _log_softmax_on(finite_logits(next_logits(flat, i)), support[:, i])
            flat[:, i] = sample_categorical(log_p, generator)
        return flat.reshape(x_t.shape)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> CategoricalPrediction:
        raise ValueError("an autoregressive model draws x_{t-1} dimension by dimension, from no single prediction: "
                         "sample it as it is, with the multinomial sampler")

    def forward(self, x_s: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        return self.conditional_logits(x_s, x_t, t)


def _log_softmax_on(raw: Tensor, support: Tensor) -> Tensor:
    """``log_softmax`` of ``raw`` logits over the states where ``support`` holds (log 0 elsewhere), float64."""
    return torch.log_softmax(raw.double().masked_fill(~support, _LOG_ZERO), -1)
