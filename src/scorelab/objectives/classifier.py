"""The objective of a noise-conditional classifier (Dhariwal & Nichol 2021; MATH.md 8): cross-entropy on data
corrupted by the diffusion model's own process at its training times: ``x_t = a(t) x0 + s(t) eps``, or on a
general SDE ``x_t`` simulated from ``x0`` (MATH.md 7)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..models import Classifier
from ..noise import Randomness
from .base import Objective, register_objective

__all__ = ["classifier_loss"]


def classifier_loss(classifier: Classifier, x0: Tensor, *, t: Tensor, noise: Tensor, labels: Tensor,
                    randomness: Randomness = None, **_: Any) -> Tensor:
    """``-log p_phi(y | x_t, t)`` per example, ``x_t ~ p_t(x_t | x0)`` of the classifier's process: with the batch's
    eps under an affine process, simulated from ``randomness`` under a general SDE."""
    process = classifier.process
    x_t = process.sample_marginal(x0, t, randomness, noise=noise if process.has_kind("affine") else None)
    return F.cross_entropy(classifier(x_t, t), labels, reduction="none")


register_objective("cross-entropy", Objective("cross-entropy of a noise-conditional classifier on x_t (Dhariwal & "
                                              "Nichol 2021)", classifier_loss, ("sde",), labels="target"))
