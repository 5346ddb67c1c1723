"""Noise-level embeddings: how a network turns its scalar noise condition into features.

* :class:`SinusoidalEmbedding`: the Transformer's sinusoidal features, as DDPM's
  U-Net embeds its step index (Ho et al. 2020, following Vaswani et al. 2017);
  ``scale`` multiplies the input first (1000 turns VP time t in [0, 1] into
  DDPM's step units, as score_sde's DDPM++ does with ``t * 999``).
* :class:`FourierEmbedding`: random Gaussian Fourier features of the input
  (Tancik et al. 2020), as NCSN++ embeds ``log sigma`` (Song et al. 2021).

* :class:`LabelEmbedding`: a learned vector per class plus one for "no
  label", added to the noise embedding of class-conditional networks; the
  null row is what classifier-free guidance's unconditional branch sees
  (Ho & Salimans 2022).

The :class:`scorelab.models.Model` decides which scalar a network receives
(time, index, sigma or log sigma); the embedding only turns it into features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._util import require

__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "LabelEmbedding", "add_label_embedding", "make_embedding",
           "NO_LABEL"]

#: The label value meaning "no label" (the unconditional branch of classifier-free guidance).
NO_LABEL = -1


class _Frequencies(nn.Module):
    """A noise embedding ``[sin(c w), cos(c w)]`` whose frequencies ``w`` (buffer ``name``) stay float32 or wider
    when the network is cast to bfloat16 or half: rounded to 8 bits, ``c w`` at ``c`` near 1000 moves by whole
    periods. The arguments are computed at that precision; the output takes the network's dtype (``dtype``)."""

    dtype = torch.float32

    def _apply(self, fn, recurse: bool = True):
        wide = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, cast in self._buffers.items():
            self.dtype = cast.dtype
            if cast.element_size() < wide[name].element_size():
                self._buffers[name] = wide[name].to(cast.device)
        return self

    def _features(self, args: Tensor) -> Tensor:
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1).to(self.dtype)


class SinusoidalEmbedding(_Frequencies):
    """``[sin(c w_k), cos(c w_k)]`` with ``w_k = 10000^(-k / (dim/2 - 1))`` and ``c = scale * condition``."""

    def __init__(self, dim: int, scale: float = 1.0, max_period: float = 10000.0):
        super().__init__()
        require(dim % 2 == 0 and dim >= 4, f"the embedding width must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, c: Tensor) -> Tensor:
        return self._features((self.scale * c.to(self.freqs.dtype))[:, None] * self.freqs[None])


class FourierEmbedding(_Frequencies):
    """``[sin(2 pi c B), cos(2 pi c B)]`` with fixed ``B ~ N(0, scale^2)`` (NCSN++ uses scale 16)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        require(dim % 2 == 0 and dim >= 2, f"the embedding width must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weights", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c: Tensor) -> Tensor:
        return self._features(2 * math.pi * c.to(self.weights.dtype)[:, None] * self.weights[None])


def make_embedding(kind: str, dim: int, scale: float | None = None) -> nn.Module:
    """``"sinusoidal"`` (default scale 1) or ``"fourier"`` (default scale 16)."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, 1.0 if scale is None else scale)
    if kind == "fourier":
        return FourierEmbedding(dim, 16.0 if scale is None else scale)
    raise ValueError(f"unknown embedding {kind!r}; choose 'sinusoidal' (step index or scaled time) "
                     "or 'fourier' (continuous sigma, e.g. log sigma)")


class LabelEmbedding(nn.Module):
    """A learned ``dim``-vector for each of ``num_classes`` labels, and one for :data:`NO_LABEL` (-1)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        require(num_classes >= 1, f"a label embedding needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        labels = labels.long()
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape (N,), got {tuple(labels.shape)}")
        bad = (labels < NO_LABEL) | (labels >= self.num_classes)
        if not torch.compiler.is_exporting() and bool(bad.any()):     # an exported program takes them as given
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} (or {NO_LABEL} for no label), "
                             f"got {labels[bad][0].item()}")
        return self.table(torch.where(labels == NO_LABEL, self.num_classes, labels))


def add_label_embedding(emb: Tensor, label_embed: LabelEmbedding | None, labels: Tensor | None) -> Tensor:
    """``emb + label_embed(labels)``; no labels means :data:`NO_LABEL` for the whole batch."""
    if label_embed is None:
        if labels is not None:
            raise ValueError("this network is unconditional (num_classes=0) but labels were given; "
                             "train a class-conditional network or drop the labels")
        return emb
    if labels is None:
        labels = torch.full((emb.shape[0],), NO_LABEL, dtype=torch.long, device=emb.device)
    if labels.shape[0] != emb.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for a batch of {emb.shape[0]}")
    return emb + label_embed(labels.to(emb.device)).to(emb.dtype)
