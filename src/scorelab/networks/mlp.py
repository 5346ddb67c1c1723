"""An MLP with a noise-level embedding, for point data (N, D)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._util import is_int, require
from .base import Network
from .embeddings import LabelEmbedding, add_label_embedding, make_embedding

__all__ = ["MLPConfig", "MLP"]


@dataclass(frozen=True)
class MLPConfig:
    """Constructor arguments of :class:`MLP`, validated on creation."""

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    embedding: str = "sinusoidal"
    embedding_dim: int = 64
    embedding_scale: float | None = None
    num_classes: int = 0

    def __post_init__(self) -> None:
        require(is_int(self.num_classes) and self.num_classes >= 0,
                f"MLPConfig.num_classes must be 0 (unconditional) or the number of classes, got {self.num_classes!r}")
        for name in ("dim", "hidden", "depth", "embedding_dim"):
            value = getattr(self, name)
            require(is_int(value) and value > 0, f"MLPConfig.{name} must be a positive integer, got {value!r}")
        make_embedding(self.embedding, self.embedding_dim, self.embedding_scale)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MLP(Network):
    """``net(x, c, labels=None)``: points ``(N, D)`` and a noise condition ``(N,)`` -> ``(N, D)``.

    The embedded condition (plus a label embedding when ``num_classes > 0``) is
    concatenated to the input and added after every hidden layer (SiLU activations).
    """

    def __init__(self, config: MLPConfig | None = None, **kwargs: Any):
        super().__init__()
        config = config or MLPConfig(**kwargs)
        self.config = config
        self.embed = nn.Sequential(make_embedding(config.embedding, config.embedding_dim, config.embedding_scale),
                                   nn.Linear(config.embedding_dim, config.hidden), nn.SiLU())
        self.label_embed = LabelEmbedding(config.num_classes, config.hidden) if config.num_classes else None
        self.inp = nn.Linear(config.dim + config.hidden, config.hidden)
        self.layers = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.depth - 1))
        self.out = nn.Linear(config.hidden, config.dim)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.config.dim,)

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"this MLP takes points of shape (N, {self.config.dim}), got {tuple(x.shape)}")
        e = add_label_embedding(self.embed(c.to(x.dtype)), self.label_embed, labels)
        h = torch.nn.functional.silu(self.inp(torch.cat([x, e], dim=1)))
        for layer in self.layers:
            h = torch.nn.functional.silu(layer(h) + e)
        return self.out(h)
