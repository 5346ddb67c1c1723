"""The learning rate at each optimizer step: linear warm-up, then constant or decayed to 0 (MATH.md 5)."""

from __future__ import annotations

import math

from .._util import require

__all__ = ["learning_rate"]


def learning_rate(step: int, peak: float, warmup: int, steps: int, decay: str = "none") -> float:
    """The rate of optimizer step ``step`` (1-based) of ``steps``: ``peak * step / warmup`` during the warm-up
    (Ho et al. 2020's 5,000 steps), then ``peak`` (``decay="none"``), ``peak (1 + cos(pi u)) / 2`` (``"cosine"``,
    Loshchilov & Hutter 2017) or ``peak (1 - u)`` (``"linear"``), where ``u`` in [0, 1] is the share of the steps
    after the warm-up already taken: the last step's rate is 0 (a run resumed with more ``steps`` decays anew)."""
    require(decay in ("none", "cosine", "linear"), f"unknown learning-rate decay {decay!r}; use none, cosine or linear")
    if warmup > 0 and step < warmup:
        return peak * step / warmup
    if decay == "none" or steps <= warmup:
        return peak
    u = min(1.0, (step - warmup) / (steps - warmup))
    return peak * (0.5 * (1.0 + math.cos(math.pi * u)) if decay == "cosine" else 1.0 - u)
