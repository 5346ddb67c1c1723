"""Bits per dimension of any categorical model: the bound of its process (MATH.md 10, 13), looked up by the
process's most specific kind."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .._util import require
from ..noise import Randomness
from .losses import bits_per_dim
from .masked_loss import masked_bits_per_dim

__all__ = ["categorical_bits_per_dim", "BOUNDS"]

#: Each categorical process's bound in bits per dimension: multinomial diffusion's T terms, masked diffusion's
#: continuous-time bound.
BOUNDS: dict[str, Callable[..., Tensor]] = {"multinomial": bits_per_dim, "masked": masked_bits_per_dim}


def categorical_bits_per_dim(model, x0: Tensor, noise: Randomness = None, labels: Tensor | None = None) -> Tensor:
    """The model's bound on the categories ``x0`` in bits per dimension, per example."""
    kind = next((k for k in reversed(model.process.kinds) if k in BOUNDS), None)
    require(kind is not None, f"no bits/dim for {type(model.process).__name__}: it is not a categorical process")
    return BOUNDS[kind](model, x0, noise, labels)
