"""Class conditioning, classifier-free and classifier guidance as model-to-model wrappers (MATH.md 5, 8).

A class-conditional :class:`scorelab.models.Model` takes ``predict(x, t, labels)``.
Samplers, losses and likelihoods call ``predict(x, t)`` only, so labels are
bound to the batch by a wrapper, as k-diffusion composes guidance:

* :class:`Conditional` answers for fixed labels (``-1``: no label);
* :class:`ClassifierFreeGuidance` mixes the conditional and unconditional
  answers of one network trained with label dropout (Ho & Salimans 2022, eq. 6):

      eps_guided = (1 + w) eps(x, t, y) - w eps(x, t, no label)

  ``w = 0`` is plain conditional sampling; larger ``w`` trades diversity for
  samples more typical of their class. Both branches run in one batched call.

Adaptive ODE solvers evaluate a subset of the batch (the samples still
moving); :func:`select_rows` gives the wrapper for those rows, so sample k
always keeps label k.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ._util import TimeLike, as_time, expand_as, require
from .models import DiffusionModel, ModelWrapper, Prediction, ScorePrediction, energy_method, select_rows
from .networks.embeddings import NO_LABEL

__all__ = ["Conditional", "ClassifierFreeGuidance", "ClassifierGuidance", "unconditional", "guided", "select_rows", "drop_labels", "NO_LABEL"]


def _check_labels(model: DiffusionModel, labels: Tensor) -> Tensor:
    num_classes = getattr(model, "num_classes", 0)
    require(num_classes > 0, "this model is unconditional (its network has num_classes=0); "
            "train with class labels to sample by class")
    labels = torch.as_tensor(labels).long()
    require(labels.ndim == 1, f"labels must have shape (N,), got {tuple(labels.shape)}")
    require(bool(((labels >= NO_LABEL) & (labels < num_classes)).all()),
            f"labels must lie in 0..{num_classes - 1} (or {NO_LABEL} for no label)")
    return labels


def _check_batch(labels: Tensor, x: Tensor) -> None:
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels bound to the model but the batch has {x.shape[0]} samples")


class _Labelled(ModelWrapper):
    """A wrapper bound to one label per sample; :meth:`select_rows` keeps sample k's label."""

    labels: Tensor

    def select_rows(self, rows: Tensor) -> "_Labelled":
        clone = super().select_rows(rows)
        clone.labels = self.labels[rows.to(self.labels.device)]
        return clone


class Conditional(_Labelled):
    """``model`` answering for ``labels`` ``(N,)``: ``predict(x, t) = model.predict(x, t, labels)``."""

    def __init__(self, model: DiffusionModel, labels: Tensor):
        super().__init__(model)
        self.labels = _check_labels(model, labels)

    def predict(self, x: Tensor, t: TimeLike) -> Prediction:
        _check_batch(self.labels, x)
        return self.model.predict(x, t, self.labels.to(x.device))  # type: ignore[call-arg]

    def energy(self, x: Tensor, t: TimeLike) -> Tensor:
        """The class-conditional energy of an energy model (MATH.md 9), for Metropolis corrections and products."""
        return self.energy_and_score(x, t)[0]

    def energy_and_score(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        both = energy_method(self.model, "energy_and_score")
        _check_batch(self.labels, x)
        return both(x, t, self.labels.to(x.device))


class ClassifierGuidance(_Labelled):
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 1 in score form; MATH.md 8).

    ``score(x_t | y) = score(x_t) + scale grad_x log p_phi(y | x_t, t)``, i.e.
    ``eps = eps(x_t) - scale s(t) grad_x log p_phi(y | x_t, t)``, for an unconditional ``model`` and a
    noise-conditional ``classifier(x, t) -> (N, K)`` logits trained on the model's process
    (:func:`scorelab.training.classifier.train_classifier`). ``scale = 1`` is the exact conditional score
    when the classifier is exact; larger scales sharpen the classes. Usable by every sampler.
    """

    def __init__(self, model: DiffusionModel, classifier: Callable[[Tensor, Tensor], Tensor], labels: Tensor,
                 scale: float = 1.0):
        require(scale >= 0 and math.isfinite(scale), f"the classifier scale must be >= 0, got {scale}")
        super().__init__(model)
        num_classes = getattr(classifier, "num_classes", None)
        process = getattr(classifier, "process", None)
        require(process is None or process == model.process,
                f"the classifier was trained on {process!r} but the model's process is {model.process!r}; "
                "train the classifier on the model's own process (scorelab train-classifier RUN)")
        labels = torch.as_tensor(labels).long()
        require(labels.ndim == 1, f"labels must have shape (N,), got {tuple(labels.shape)}")
        require(num_classes is None or bool(((labels >= 0) & (labels < num_classes)).all()),
                f"labels must lie in 0..{(num_classes or 1) - 1} for this classifier")
        self.classifier, self.labels, self.scale = classifier, labels, float(scale)

    def log_likelihood_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_phi(labels | x, t)`` (one backward pass through the classifier)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(xg, t), dim=1)
            picked = log_p.gather(1, self.labels.to(x.device)[:, None]).sum()
            grad, = torch.autograd.grad(picked, xg)
        return grad.to(x.dtype)

    def predict(self, x: Tensor, t: TimeLike) -> Prediction:
        _check_batch(self.labels, x)
        t = as_time(t, x)
        p = self.model.predict(x, t)
        if self.scale == 0:
            return p
        grad = self.scale * self.log_likelihood_grad(x, t)
        if not self.process.affine:
            return ScorePrediction(x, t, p.score + grad, p.variance_frac)
        return Prediction(x, t, p.a, p.s, p.eps - expand_as(p.s, x) * grad, p.variance_frac)


class ClassifierFreeGuidance(Conditional):
    """Classifier-free guidance with strength ``w`` for ``labels`` (Ho & Salimans 2022, eq. 6).

    ``eps = (1 + w) eps(x | y) - w eps(x)``; under a general SDE the same line in
    score space. The learned variance (if any) is the conditional branch's, as in GLIDE.
    """

    def __init__(self, model: DiffusionModel, labels: Tensor, w: float):
        require(w >= 0, f"the guidance strength w must be >= 0 (0 = conditional sampling), got {w}")
        super().__init__(model, labels)
        self.w = float(w)

    def predict(self, x: Tensor, t: TimeLike) -> Prediction:
        _check_batch(self.labels, x)
        t = as_time(t, x)
        n = x.shape[0]
        labels = torch.cat([self.labels, torch.full_like(self.labels, NO_LABEL)]).to(x.device)
        both = self.model.predict(torch.cat([x, x]), torch.cat([t, t]), labels)  # type: ignore[call-arg]
        frac = None if both.variance_frac is None else both.variance_frac[:n]
        if not self.process.affine:
            s_c, s_u = both.score[:n], both.score[n:]
            return ScorePrediction(x, t, s_c + self.w * (s_c - s_u), frac)
        eps_c, eps_u = both.eps[:n], both.eps[n:]
        eps = eps_c + self.w * (eps_c - eps_u)
        return Prediction(x, t, both.a[:n], both.s[:n], eps, frac)

    def energy_and_score(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(1 + w) U(x | y) - w U(x)`` and its score, for an energy model (MATH.md 9)."""
        both = energy_method(self.model, "energy_and_score")
        _check_batch(self.labels, x)
        labels = self.labels.to(x.device)
        u_c, s_c = both(x, t, labels)
        u_u, s_u = both(x, t, torch.full_like(labels, NO_LABEL))
        return u_c + self.w * (u_c - u_u), s_c + self.w * (s_c - s_u)


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
    if getattr(model, "num_classes", 0) == 0:
        return model
    return Conditional(model, torch.full((num,), NO_LABEL))


def guided(model: DiffusionModel, labels: Tensor, w: float = 0.0) -> DiffusionModel:
    """Sample toward ``labels``: plain conditional for ``w = 0``, classifier-free guidance for ``w > 0``."""
    return ClassifierFreeGuidance(model, labels, w) if w > 0 else Conditional(model, labels)
