"""The objective of a noise-conditional classifier (Dhariwal & Nichol 2021; MATH.md 8): cross-entropy on data
corrupted by the diffusion model's own process, ``x_t = a(t) x0 + s(t) eps`` at its training times."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..models import Classifier
from .base import Objective, register_objective

__all__ = ["classifier_loss"]


def classifier_loss(classifier: Classifier, x0: Tensor, *, t: Tensor, noise: Tensor, labels: Tensor,
                    **_: Any) -> Tensor:
    """``-log p_phi(y | x_t, t)`` per example, ``x_t`` drawn from ``q(x_t | x0)`` of the classifier's process with
    the batch's eps."""
    x_t, _ = classifier.process.perturb(x0, t, noise=noise)
    return F.cross_entropy(classifier(x_t, t), labels, reduction="none")


register_objective("cross-entropy", Objective("cross-entropy of a noise-conditional classifier on x_t (Dhariwal & "
                                              "Nichol 2021)", classifier_loss, ("affine",), labels="target"))
