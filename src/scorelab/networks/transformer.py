"""An encoder-decoder Transformer for autoregressive reverse transitions (Esser et al. 2021, ImageBART).

The encoder reads all of ``x_t`` (one token per dimension, plus the step's embedding); the decoder reads
``x_{t-1}`` shifted right by one (a start token first) under a causal mask and attends to the encoder, so
its output at ``i`` depends on ``x_{t-1,<i}`` and the whole of ``x_t`` only (Vaswani et al. 2017).
``forward(prev, x_t, c) -> logits (N, D, S)``, with ``prev`` and ``x_t`` integer states ``(N, D)``. The encoder's output at position ``i`` is also added to the
decoder's input there, so copying ``x_{t,i}`` (what most pixels do in one step) is immediate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._util import require, require_positive_int
from .embeddings import make_embedding

__all__ = ["ARTransformer", "ARTransformerConfig"]


@dataclass(frozen=True)
class ARTransformerConfig:
    """``num_tokens`` = D (the flattened dimensions), ``num_states`` = S per token."""

    num_tokens: int = 64
    num_states: int = 17
    width: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    dropout: float = 0.0
    embedding: str = "sinusoidal"
    embedding_scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_tokens", "num_states", "width", "heads", "encoder_layers", "decoder_layers"):
            require_positive_int(name, getattr(self, name))
        require(self.width % self.heads == 0, f"width {self.width} must be divisible by heads {self.heads}")
        require(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ARTransformer(nn.Module):
    def __init__(self, config: ARTransformerConfig | None = None, **kwargs: Any):
        super().__init__()
        config = config or ARTransformerConfig(**kwargs)
        self.config = config
        w = config.width
        self.state_embed = nn.Embedding(config.num_states, w)
        self.prev_embed = nn.Embedding(config.num_states + 1, w)           # the last row: the start token
        self.position = nn.Parameter(torch.randn(config.num_tokens, w) * 0.02)
        self.step_embed = nn.Sequential(make_embedding(config.embedding, w, config.embedding_scale),
                                        nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))

        def layer(kind: type) -> nn.Module:
            return kind(w, config.heads, 4 * w, config.dropout, activation="gelu", batch_first=True, norm_first=True)

        self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), config.encoder_layers,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), config.decoder_layers)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, config.num_states))
        mask = torch.triu(torch.full((config.num_tokens, config.num_tokens), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, prev: Tensor, x_t: Tensor, c: Tensor) -> Tensor:
        cfg = self.config
        require(x_t.shape[1:] == (cfg.num_tokens,) and prev.shape == x_t.shape,
                f"this transformer takes states of shape (N, {cfg.num_tokens}), got {tuple(x_t.shape)} and "
                f"{tuple(prev.shape)}")
        step = self.step_embed(c.float())[:, None]
        memory = self.encoder(self.state_embed(x_t) + self.position + step)
        start = torch.full_like(prev[:, :1], cfg.num_states)
        shifted = torch.cat([start, prev[:, :-1]], 1)
        # The encoder's output at i joins the decoder's input at i: x_{t-1,i} is mostly x_{t,i}, a copy that
        # cross-attention alone would have to learn to find by position.
        h = self.decoder(self.prev_embed(shifted) + self.position + step + memory, memory,
                         tgt_mask=self.causal_mask, tgt_is_causal=True)
        return self.head(h)
