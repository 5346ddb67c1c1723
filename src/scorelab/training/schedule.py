"""The learning rate at each optimizer step: linear warm-up, then constant or decayed to 0 (MATH.md 5)."""

from __future__ import annotations

import math

from .._util import require

__all__ = ["learning_rate", "LR_DECAYS"]

#: Learning-rate decays after the warm-up.
LR_DECAYS = ("none", "cosine", "linear")


def learning_rate(step: int, peak: float, warmup: int, steps: int, decay: str = "none") -> float:
    """The rate of optimizer step ``step`` (1-based) of ``steps``: ``peak * step / warmup`` during the warm-up
    (Ho et al. 2020's 5,000 steps), then ``peak`` (``decay="none"``), ``peak (1 + cos(pi u)) / 2`` (``"cosine"``,
    Loshchilov & Hutter 2017) or ``peak (1 - u)`` (``"linear"``), with ``u = (step - W) / (steps - W)``,
    ``W = max(warmup, 1)``: the peak at step ``W``, 0 at the last step (torch's LinearLR warm-up, then its
    CosineAnnealingLR or LinearLR, read before each step). The rate depends on ``steps``: a run resumed with
    other ``steps`` continues on the new curve."""
    require(decay in LR_DECAYS, f"unknown learning-rate decay {decay!r}; use one of {list(LR_DECAYS)}")
    if step < warmup:
        return peak * step / warmup
    start = max(warmup, 1)
    if decay == "none" or steps <= start:
        return peak
    u = min(1.0, (step - start) / (steps - start))
    return peak * (0.5 * (1.0 + math.cos(math.pi * u)) if decay == "cosine" else 1.0 - u)
