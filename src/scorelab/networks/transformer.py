"""An encoder-decoder Transformer for autoregressive reverse transitions (Esser et al. 2021, ImageBART).

The encoder reads all of ``x_t`` (one token per dimension, plus the step's embedding); the decoder reads
``x_{t-1}`` shifted right by one (a start token first) under a causal mask and attends to the encoder, so
its output at ``i`` depends on ``x_{t-1,<i}`` and the whole of ``x_t`` only (Vaswani et al. 2017).
``forward(prev, x_t, c) -> logits (N, D, S)``, with ``prev`` and ``x_t`` integer states ``(N, D)``. The encoder's
output at position ``i`` is also added to the decoder's input there, so copying ``x_{t,i}`` (what most pixels do
in one step) is immediate. Sampling decodes one position at a time with cached keys and values
(:meth:`ARTransformer.decode_next`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import is_int, require, require_positive_int
from .base import Network
from .embeddings import make_embedding
from .unet import UNet, UNetConfig

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
    #: ``"unet"``: x_t is read by a small U-Net over the image ``image_shape`` = (C, H, W) (local structure
    #: for free), then by ``encoder_layers`` Transformer layers (0: none); ``"transformer"``: by those alone.
    encoder: str = "transformer"
    image_shape: tuple[int, ...] = ()
    unet_channels: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        for name in ("num_tokens", "num_states", "width", "heads", "decoder_layers", "unet_channels"):
            require_positive_int(name, getattr(self, name))
        require(is_int(self.encoder_layers) and self.encoder_layers >= 0,
                f"encoder_layers must be a non-negative integer, got {self.encoder_layers!r}")
        require(self.encoder in ("transformer", "unet"), f"encoder must be 'transformer' or 'unet', got "
                f"{self.encoder!r}")
        require(self.encoder == "transformer" or (len(self.image_shape) == 3 and
                                                  int(np.prod(self.image_shape)) == self.num_tokens),
                f"the U-Net encoder needs image_shape (C, H, W) with C*H*W = num_tokens = {self.num_tokens}, "
                f"got {self.image_shape}")
        require(self.encoder == "unet" or self.encoder_layers > 0, "a Transformer encoder needs encoder_layers >= 1")
        require(self.width % self.heads == 0, f"width {self.width} must be divisible by heads {self.heads}")
        require(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d


class ARTransformer(Network):
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

        self.unet = None
        if config.encoder == "unet":
            c, size = config.image_shape[0], config.image_shape[1]
            self.unet = UNet(UNetConfig(image_size=size, in_channels=c * config.num_states, out_channels=c * w,
                                        base_channels=config.unet_channels, num_res_blocks=1,
                                        channel_mults=(1, 2) if size % 2 == 0 else (1,),
                                        attention_resolutions=(), dropout=config.dropout,
                                        norm_groups=min(32, config.unet_channels), embedding=config.embedding,
                                        embedding_scale=config.embedding_scale))
        self.encoder = (nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), config.encoder_layers,
                                              enable_nested_tensor=False) if config.encoder_layers else nn.Identity())
        self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), config.decoder_layers)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, config.num_states))
        mask = torch.triu(torch.full((config.num_tokens, config.num_tokens), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.config.image_shape) or (self.config.num_tokens,)

    def forward(self, prev: Tensor, x_t: Tensor, c: Tensor) -> Tensor:
        return self.decode(prev, *self.encode(x_t, c))

    def encode(self, x_t: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(memory, step)``: what the decoder needs of ``x_t`` and the step, computed once per transition."""
        cfg = self.config
        require(x_t.shape[1:] == (cfg.num_tokens,), f"this transformer takes states of shape (N, {cfg.num_tokens}), "
                f"got {tuple(x_t.shape)}")
        step = self.step_embed(c.float())[:, None]
        return self.encoder(self._read(x_t, c) + self.position + step), step

    def decode(self, prev: Tensor, memory: Tensor, step: Tensor) -> Tensor:
        """Logits ``(N, D, S)`` of each ``x_{t-1,i}`` given ``prev[:, <i]`` (causal) and the encoded ``x_t``."""
        cfg = self.config
        require(prev.shape == memory.shape[:2], f"prev must have shape {tuple(memory.shape[:2])}, got "
                f"{tuple(prev.shape)}")
        start = torch.full_like(prev[:, :1], cfg.num_states)
        shifted = torch.cat([start, prev[:, :-1]], 1)
        # The encoder's output at i joins the decoder's input at i: x_{t-1,i} is mostly x_{t,i}, a copy that
        # cross-attention alone would have to learn to find by position.
        h = self.decoder(self.prev_embed(shifted) + self.position + step + memory, memory,
                         tgt_mask=self.causal_mask, tgt_is_causal=True)
        return self.head(h)

    def start_decoding(self, memory: Tensor, step: Tensor) -> dict[str, Any]:
        """A key/value cache for :meth:`decode_next`: each decoder layer's cross-attention keys and values of
        ``memory`` (computed once), and room for its self-attention keys and values, one position at a time."""
        n, d, w = memory.shape
        heads = self.config.heads
        layers = []
        for layer in self.decoder.layers:
            attn = layer.multihead_attn
            k, v = _projection(attn, memory, 1), _projection(attn, memory, 2)
            empty = memory.new_empty(n, heads, d, w // heads)
            layers.append({"cross_k": _split_heads(k, heads), "cross_v": _split_heads(v, heads),
                           "self_k": empty, "self_v": empty.clone()})
        return {"memory": memory, "step": step, "layers": layers}

    def decode_next(self, token: Tensor, i: int, cache: dict[str, Any]) -> Tensor:
        """Logits ``(N, S)`` of ``x_{t-1,i}``, given ``token`` = ``x_{t-1,i-1}`` (ignored at ``i = 0``: the start
        token) and the cache of positions ``< i``: what :meth:`decode` gives at ``i``, in ``O(D)`` instead of
        ``O(D^2)`` work, so a transition's ``D`` draws cost one decoding of the sequence (keys and values
        reused, Vaswani et al. 2017's incremental decoding). Positions must come in order 0, 1, 2, ...; for an
        evaluating network (attention dropout is not applied)."""
        memory, heads = cache["memory"], self.config.heads
        token = torch.full_like(token, self.config.num_states) if i == 0 else token
        h = (self.prev_embed(token) + self.position[i] + cache["step"][:, 0] + memory[:, i])[:, None]
        for layer, kv in zip(self.decoder.layers, cache["layers"]):
            x = layer.norm1(h)
            q, k, v = (_projection(layer.self_attn, x, j) for j in range(3))
            kv["self_k"][:, :, i:i + 1], kv["self_v"][:, :, i:i + 1] = _split_heads(k, heads), _split_heads(v, heads)
            h = h + layer.dropout1(_attend(layer.self_attn, q, kv["self_k"][:, :, :i + 1],
                                           kv["self_v"][:, :, :i + 1], heads))
            q = _projection(layer.multihead_attn, layer.norm2(h), 0)
            h = h + layer.dropout2(_attend(layer.multihead_attn, q, kv["cross_k"], kv["cross_v"], heads))
            h = h + layer._ff_block(layer.norm3(h))
        return self.head(h[:, 0])

    def _read(self, x_t: Tensor, c: Tensor) -> Tensor:
        """Per-token features of ``x_t``: its states embedded, or the U-Net's features of the one-hot image."""
        if self.unet is None:
            return self.state_embed(x_t)
        cfg = self.config
        ch, height, width = cfg.image_shape
        one_hot = F.one_hot(x_t.reshape(-1, ch, height, width), cfg.num_states).float() * 2 - 1
        features = self.unet(one_hot.permute(0, 1, 4, 2, 3).reshape(-1, ch * cfg.num_states, height, width), c)
        return features.reshape(-1, ch, cfg.width, height, width).permute(0, 1, 3, 4, 2).reshape(
            x_t.shape[0], cfg.num_tokens, cfg.width)


def _projection(attn: nn.MultiheadAttention, x: Tensor, which: int) -> Tensor:
    """``attn``'s query (0), key (1) or value (2) projection of ``x`` (its packed input weight, torch's layout)."""
    return F.linear(x, attn.in_proj_weight.chunk(3)[which], attn.in_proj_bias.chunk(3)[which])


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``(N, L, W)`` -> ``(N, heads, L, W / heads)``."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _attend(attn: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Scaled dot-product attention of the projected ``q`` over cached heads ``k, v``, then ``attn``'s output
    projection (``attn``'s own dropout is not applied: incremental decoding is for sampling)."""
    out = F.scaled_dot_product_attention(_split_heads(q, heads), k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(q.shape))
