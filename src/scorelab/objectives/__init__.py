"""Training objectives (MATH.md 2-5, 7, 8), each a per-example loss registered by name with its options.

* :mod:`~scorelab.objectives.denoising`: denoising score matching and its weightings (``simple``, ``dsm``,
  ``dsm-likelihood``, ``min-snr``, ``edm``);
* :mod:`~scorelab.objectives.score_matching`: Hyvarinen's exact and sliced score matching (``sm``, ``ssm``,
  ``ssm-vr``), for any SDE;
* :mod:`~scorelab.objectives.vlb`: DDPM's variational bound and the hybrid objective (``hybrid``);
* :mod:`~scorelab.objectives.classifier`: a noise-conditional classifier's cross-entropy (``cross-entropy``);
* :mod:`~scorelab.objectives.base`: the table (:data:`OBJECTIVES`, :func:`register_objective`).

Categorical data's bound (``vlb``, ``vlb-ce``) is registered by :mod:`scorelab.discrete`.
"""

from . import classifier, denoising, score_matching
from .base import OBJECTIVES, LossFunction, Objective, ObjectiveState, noisy_prediction, objective, register_objective
from .classifier import classifier_loss
from .denoising import WEIGHTINGS, dsm_loss, lognormal_times, simple_loss
from .score_matching import PROJECTIONS, score_matching_loss, sliced_score_matching_loss
from .vlb import VLB, discretized_gaussian_log_likelihood, hybrid_loss, normal_kl, prior_kl, vlb, vlb_term

__all__ = ["OBJECTIVES", "Objective", "ObjectiveState", "LossFunction", "objective", "register_objective",
           "noisy_prediction", "dsm_loss", "simple_loss", "WEIGHTINGS", "lognormal_times", "score_matching_loss",
           "sliced_score_matching_loss", "PROJECTIONS", "vlb", "vlb_term", "VLB", "hybrid_loss", "prior_kl",
           "normal_kl", "discretized_gaussian_log_likelihood", "classifier_loss", "classifier", "denoising",
           "score_matching"]
