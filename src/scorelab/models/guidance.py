"""Class conditioning, classifier-free and classifier guidance as model-to-model wrappers (MATH.md 5, 8).

A class-conditional model takes ``predict(x, t, labels)``. Samplers, losses and likelihoods call
``predict(x, t)`` only, so labels are bound to the batch by a wrapper, as k-diffusion composes guidance:

* :class:`Conditional` answers for fixed labels (``-1``: no label);
* :class:`ClassifierFreeGuidance` mixes the conditional and unconditional
  answers of one network trained with label dropout (Ho & Salimans 2022, eq. 6):

      eps_guided = (1 + w) eps(x, t, y) - w eps(x, t, no label)

  ``w = 0`` is plain conditional sampling; larger ``w`` trades diversity for
  samples more typical of their class. Both branches run in one batched call.
* :class:`ClassifierGuidance` adds a noise-conditional classifier's gradient to an unconditional score
  (Dhariwal & Nichol 2021).

Each keeps an energy where its model has one (the guided energy), so the Metropolis-corrected samplers take
them. Adaptive ODE solvers evaluate a subset of the batch (the samples still moving); ``select_rows`` gives
the wrapper for those rows, so sample k always keeps label k.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from .._util import TimeLike, as_time, require
from ..networks.embeddings import NO_LABEL
from ..processes import Process
from .base import DiffusionModel, ModelWrapper, Prediction, guide

__all__ = ["Conditional", "ClassifierFreeGuidance", "ClassifierGuidance", "Classifier", "unconditional", "guided",
           "drop_labels", "NO_LABEL"]


def _check_labels(model: DiffusionModel, labels: Tensor) -> Tensor:
    num_classes = model.num_classes
    require(num_classes > 0, "this model is unconditional (its network has num_classes=0); "
            "train with class labels to sample by class")
    labels = torch.as_tensor(labels).long()
    require(labels.ndim == 1, f"labels must have shape (N,), got {tuple(labels.shape)}")
    require(bool(((labels >= NO_LABEL) & (labels < num_classes)).all()),
            f"labels must lie in 0..{num_classes - 1} (or {NO_LABEL} for no label)")
    return labels


class _Labelled(ModelWrapper):
    """A wrapper bound to one label per sample; :meth:`select_rows` keeps sample k's label. To its callers it
    is unconditional (its labels are bound), so it refuses more."""

    labels: Tensor

    @property
    def num_classes(self) -> int:
        return 0

    def select_rows(self, rows: Tensor) -> "_Labelled":
        clone = super().select_rows(rows)
        clone.labels = self.labels[rows.to(self.labels.device)]
        return clone

    def _bound(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """The bound labels for batch ``x`` (refusing labels given again)."""
        require(labels is None, "this model's labels are bound already; pass none")
        if self.labels.shape[0] != x.shape[0]:
            raise ValueError(f"{self.labels.shape[0]} labels bound to the model but the batch has {x.shape[0]} "
                             "samples")
        return self.labels.to(x.device)


class Conditional(_Labelled):
    """``model`` answering for ``labels`` ``(N,)``: ``predict(x, t) = model.predict(x, t, labels)``; its energy is
    the class-conditional one for an energy model (MATH.md 9)."""

    def __init__(self, model: DiffusionModel, labels: Tensor):
        super().__init__(model)
        self.labels = _check_labels(model, labels)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        return self.model.predict(x, t, self._bound(x, labels))

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.model.energy_and_score(x, t, self._bound(x, labels))

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        return self.energy_and_score(x, t, labels)[0]


class ClassifierFreeGuidance(Conditional):
    """Classifier-free guidance with strength ``w`` for ``labels`` (Ho & Salimans 2022, eq. 6).

    ``eps = (1 + w) eps(x | y) - w eps(x)`` (:func:`~scorelab.models.guide`); under a general SDE the same line
    in score space, and for an energy model in energies and scores (MATH.md 9). The learned variance (if any)
    is the conditional branch's, as in GLIDE.
    """

    def __init__(self, model: DiffusionModel, labels: Tensor, w: float):
        require(w >= 0, f"the guidance strength w must be >= 0 (0 = conditional sampling), got {w}")
        super().__init__(model, labels)
        self.w = float(w)

    @property
    def normalized_energy(self) -> bool:
        return False                                          # a power of densities is not normalized

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        bound = self._bound(x, labels)
        t = as_time(t, x)
        n = x.shape[0]
        both = self.model.predict(torch.cat([x, x]), torch.cat([t, t]),
                                  torch.cat([bound, torch.full_like(bound, NO_LABEL)]))
        return both.rows(slice(None, n)).guided(both.rows(slice(n, None)), self.w)

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(1 + w) U(x | y) - w U(x)`` and its score, for an energy model (MATH.md 9)."""
        bound = self._bound(x, labels)
        u_c, s_c = self.model.energy_and_score(x, t, bound)
        u_u, s_u = self.model.energy_and_score(x, t, torch.full_like(bound, NO_LABEL))
        return guide(u_c, u_u, self.w), guide(s_c, s_u, self.w)


class Classifier(Protocol):
    """A noise-conditional classifier ``classifier(x, t) -> (N, K)`` logits (or log-probabilities) trained on
    ``process``: :class:`scorelab.training.NoiseClassifier`, or the exact ``GaussianMixture.classifier``."""

    num_classes: int
    process: Process

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


class ClassifierGuidance(_Labelled):
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 1 in score form; MATH.md 8).

    ``score(x_t | y) = score(x_t) + scale grad_x log p_phi(y | x_t, t)``, i.e.
    ``eps = eps(x_t) - scale s(t) grad_x log p_phi(y | x_t, t)``, for an unconditional ``model`` and a
    noise-conditional ``classifier`` (:class:`Classifier`) trained on the model's process
    (``scorelab train-classifier``). ``scale = 1`` is the exact conditional score when the classifier is
    exact; larger scales sharpen the classes. Usable by every sampler; for an energy model its energy is
    ``U(x) - scale log p_phi(y | x, t)``.
    """

    def __init__(self, model: DiffusionModel, classifier: Classifier, labels: Tensor, scale: float = 1.0):
        require(scale >= 0 and math.isfinite(scale), f"the classifier scale must be >= 0, got {scale}")
        super().__init__(model)
        require(classifier.process == model.process,
                f"the classifier was trained on {classifier.process!r} but the model's process is {model.process!r}; "
                "train the classifier on the model's own process (scorelab train-classifier RUN)")
        labels = torch.as_tensor(labels).long()
        require(labels.ndim == 1, f"labels must have shape (N,), got {tuple(labels.shape)}")
        require(bool(((labels >= 0) & (labels < classifier.num_classes)).all()),
                f"labels must lie in 0..{classifier.num_classes - 1} for this classifier")
        self.classifier, self.labels, self.scale = classifier, labels, float(scale)

    @property
    def normalized_energy(self) -> bool:
        return False                                          # p(x) p(y | x)^scale is not normalized

    def log_likelihood_and_grad(self, x: Tensor, t: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``log p_phi(labels | x, t)`` per sample and its gradient in ``x`` (one backward pass)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(xg, t), dim=1)
            picked = log_p.gather(1, labels[:, None])[:, 0]
            grad, = torch.autograd.grad(picked.sum(), xg)
        return picked.detach(), grad.to(x.dtype)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        bound = self._bound(x, labels)
        t = as_time(t, x)
        p = self.model.predict(x, t)
        if self.scale == 0:
            return p
        return p.with_score_added(self.scale * self.log_likelihood_and_grad(x, t, bound)[1])

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        bound = self._bound(x, labels)
        t = as_time(t, x)
        u, score = self.model.energy_and_score(x, t)
        log_p, grad = self.log_likelihood_and_grad(x, t, bound)
        return u - self.scale * log_p.to(u.dtype), score + self.scale * grad.to(score.dtype)


def drop_labels(labels: Tensor, p: float, generator: torch.Generator | None = None, *,
                share: tuple[int, slice] | None = None) -> Tensor:
    """Replace each label by :data:`NO_LABEL` with probability ``p`` (label dropout for guidance training).

    ``share = (total, rows)``: ``labels`` are rows ``rows`` of a batch of
    ``total``; the draws are made for the whole batch and sliced, so each
    rank's share equals those rows of one process's result.
    """
    require(0.0 <= p <= 1.0, f"label dropout must lie in [0, 1], got {p}")
    if p == 0.0:
        return labels
    total, rows = share if share is not None else (len(labels), slice(None))
    u = torch.rand((total,), generator=generator,
                   device=generator.device if generator is not None else labels.device)[rows].to(labels.device)
    return torch.where(u < p, torch.full_like(labels, NO_LABEL), labels)


def unconditional(model: DiffusionModel, num: int) -> DiffusionModel:
    """``model`` asked without labels (the null class) for ``num`` samples; unconditional models as they are."""
    if model.num_classes == 0:
        return model
    return Conditional(model, torch.full((num,), NO_LABEL))


def guided(model: DiffusionModel, labels: Tensor, w: float = 0.0) -> DiffusionModel:
    """Sample toward ``labels``: plain conditional for ``w = 0``, classifier-free guidance for ``w > 0``."""
    return ClassifierFreeGuidance(model, labels, w) if w > 0 else Conditional(model, labels)
