"""Evaluation: distances between sample sets; FID, KID, precision/recall and IS on features; the evaluate run."""

from .classifier import DomainFeatures, fit_domain_classifier
from .distances import energy_distance, energy_distance_to, sliced_wasserstein
from .metrics import (FeatureStats, feature_stats, fid_from_features, frechet_distance, inception_score,
                      kernel_inception_distance, precision_recall, two_sample_classifier_accuracy)
from .run import EvalConfig, EvalResult, evaluate, steps_for_nfe

__all__ = ["EvalConfig", "EvalResult", "evaluate", "steps_for_nfe", "DomainFeatures", "fit_domain_classifier",
           "energy_distance", "energy_distance_to", "sliced_wasserstein", "FeatureStats", "feature_stats",
           "frechet_distance", "fid_from_features", "kernel_inception_distance", "precision_recall", "inception_score",
           "two_sample_classifier_accuracy"]
