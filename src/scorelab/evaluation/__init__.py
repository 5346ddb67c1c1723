"""Evaluation: distances between sample sets (and, later, FID, KID, precision/recall)."""

from .distances import energy_distance, sliced_wasserstein

__all__ = ["energy_distance", "sliced_wasserstein"]
