"""Noise-level embeddings: how a network turns its scalar noise condition into features.

* :class:`SinusoidalEmbedding`: the Transformer's sinusoidal features, as DDPM's
  U-Net embeds its step index (Ho et al. 2020, following Vaswani et al. 2017);
  ``scale`` multiplies the input first (1000 turns VP time t in [0, 1] into
  DDPM's step units, as score_sde's DDPM++ does with ``t * 999``).
* :class:`FourierEmbedding`: random Gaussian Fourier features of the input
  (Tancik et al. 2020), as NCSN++ embeds ``log sigma`` (Song et al. 2021).

The :class:`scorelab.models.Model` decides which scalar a network receives
(time, index, sigma or log sigma); the embedding only turns it into features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._util import require

__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "make_embedding"]


class SinusoidalEmbedding(nn.Module):
    """``[sin(c w_k), cos(c w_k)]`` with ``w_k = 10000^(-k / (dim/2 - 1))`` and ``c = scale * condition``."""

    def __init__(self, dim: int, scale: float = 1.0, max_period: float = 10000.0):
        super().__init__()
        require(dim % 2 == 0 and dim >= 4, f"the embedding width must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, c: Tensor) -> Tensor:
        args = (self.scale * c.float())[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class FourierEmbedding(nn.Module):
    """``[sin(2 pi c B), cos(2 pi c B)]`` with fixed ``B ~ N(0, scale^2)`` (NCSN++ uses scale 16)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        require(dim % 2 == 0 and dim >= 2, f"the embedding width must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weights", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c: Tensor) -> Tensor:
        args = 2 * math.pi * c.float()[:, None] * self.weights[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def make_embedding(kind: str, dim: int, scale: float | None = None) -> nn.Module:
    """``"sinusoidal"`` (default scale 1) or ``"fourier"`` (default scale 16)."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, 1.0 if scale is None else scale)
    if kind == "fourier":
        return FourierEmbedding(dim, 16.0 if scale is None else scale)
    raise ValueError(f"unknown embedding {kind!r}; choose 'sinusoidal' (step index or scaled time) "
                     "or 'fourier' (continuous sigma, e.g. log sigma)")
