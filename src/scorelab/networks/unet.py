"""The DDPM U-Net (Ho et al. 2020, Appendix B), with its CIFAR-10 configuration and small presets.

Architecture, as in Ho et al.'s code: a sinusoidal embedding of the noise
condition through two dense layers (width 4 x base channels); per level
``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, plus a
projection of the embedding; GroupNorm, SiLU, dropout, 3x3 conv; a 1x1
shortcut when widths differ), single-head self-attention at the chosen
resolutions, 3x3 stride-2 convolutions down and nearest-neighbour + 3x3
convolutions up, skip connections concatenated on the way up, and a
GroupNorm-SiLU-conv head. With ``learned_variance`` the head has twice the
channels (Nichol & Dhariwal 2021). With ``num_classes > 0`` a learned label
embedding (one extra row for "no label", the null class of classifier-free
guidance, Ho & Salimans 2022) is added to the noise embedding. Attention runs through torch's
``scaled_dot_product_attention``.

``UNet(UNetConfig.preset("cifar10"))`` is the paper's 35.7M-parameter model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import is_int, require
from .base import Network
from .embeddings import LabelEmbedding, add_label_embedding, make_embedding

__all__ = ["UNetConfig", "UNet", "PRESETS"]


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of :class:`UNet`, validated on creation; saved beside checkpoints."""

    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    learned_variance: bool = False
    embedding: str = "sinusoidal"
    embedding_scale: float | None = None
    norm_groups: int = 32
    num_classes: int = 0
    out_channels: int | None = None          # default: in_channels (twice that with learned_variance)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "norm_groups"):
            value = getattr(self, name)
            require(is_int(value) and value > 0, f"UNetConfig.{name} must be a positive integer, got {value!r}")
        require(len(self.channel_mults) >= 1 and all(is_int(m) and m > 0 for m in self.channel_mults),
                f"channel_mults must be positive integers, got {self.channel_mults}")
        levels = len(self.channel_mults)
        require(self.image_size % 2 ** (levels - 1) == 0,
                f"image_size {self.image_size} must be divisible by 2^{levels - 1} for {levels} levels; "
                "resize the data or use fewer channel_mults")
        widths = {self.base_channels * m for m in self.channel_mults}
        require(all(w % self.norm_groups == 0 for w in widths),
                f"every level width {sorted(widths)} must be divisible by norm_groups={self.norm_groups}; "
                "make base_channels a multiple of norm_groups, or set norm_groups")
        require(is_int(self.num_classes) and self.num_classes >= 0,
                f"UNetConfig.num_classes must be 0 (unconditional) or the number of classes, got {self.num_classes!r}")
        require(self.out_channels is None or (is_int(self.out_channels) and self.out_channels > 0),
                f"UNetConfig.out_channels must be a positive integer or None, got {self.out_channels!r}")
        require(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        resolutions = {self.image_size // 2**i for i in range(levels)}
        require(set(self.attention_resolutions) <= resolutions,
                f"attention_resolutions {self.attention_resolutions} must be among the U-Net's "
                f"resolutions {sorted(resolutions, reverse=True)}")
        make_embedding(self.embedding, 4, self.embedding_scale)  # validates the name

    @staticmethod
    def preset(name: str, **overrides: Any) -> "UNetConfig":
        """A named configuration (see :data:`PRESETS`), with fields overridden."""
        require(name in PRESETS, f"unknown U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def require_conditioning(self) -> None:
        """Refuse a denoiser that cannot see its condition. A residual block adds the noise (and label) embedding
        per channel and then group-normalizes: with one channel a group that subtracts the embedding again, so a
        network with one channel a group at every level sees neither the noise level nor the label."""
        widths = sorted({self.base_channels * m for m in self.channel_mults})
        require(any(w > self.norm_groups for w in widths),
                f"with norm_groups={self.norm_groups} every level {widths} has one channel per group, so group "
                "normalization removes the noise and label embedding; lower norm_groups or widen a level")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mults"], d["attention_resolutions"] = list(self.channel_mults), list(self.attention_resolutions)
        return d


#: Ho et al.'s CIFAR-10 model, and small models that train on a laptop CPU. Ho et al. normalize 128 channels in
#: 32 groups; with one channel a group a block's noise and label embedding, added per channel, is normalized
#: away, so ``digits8`` uses 8 groups. ``mnist28``'s 32-channel level still has one channel a group (the
#: Fashion-MNIST figures in docs/benchmarks.md were measured with it); pass ``norm_groups=8`` to avoid that.
PRESETS: dict[str, UNetConfig] = {
    "cifar10": UNetConfig(),
    "digits8": UNetConfig(image_size=8, in_channels=1, base_channels=32, channel_mults=(1, 2),
                          num_res_blocks=2, attention_resolutions=(4,), dropout=0.0, norm_groups=8),
    "mnist28": UNetConfig(image_size=28, in_channels=1, base_channels=32, channel_mults=(1, 2, 2),
                          num_res_blocks=2, attention_resolutions=(7,), dropout=0.1),
    "cifar32-small": UNetConfig(image_size=32, in_channels=3, base_channels=64, channel_mults=(1, 2, 2),
                                num_res_blocks=2, attention_resolutions=(16,), dropout=0.1),
}


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over pixels: ``x + proj(softmax(q k^T / sqrt(C)) v)``."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)            # (n, hw, c)
        return x + self.proj(out.transpose(1, 2).reshape(n, c, h, w))


def noise_embedding(config: UNetConfig) -> nn.Sequential:
    """The noise condition's embedding: sinusoidal (or Fourier) features, then two dense layers to 4 x base."""
    ch = config.base_channels
    return nn.Sequential(make_embedding(config.embedding, ch, config.embedding_scale),
                         nn.Linear(ch, 4 * ch), nn.SiLU(), nn.Linear(4 * ch, 4 * ch))


def down_path(config: UNetConfig, emb_dim: int) -> tuple[nn.ModuleList, list[int], int, int]:
    """The U-Net's down path: per level ``num_res_blocks`` residual blocks (with attention at the chosen
    resolutions), a stride-2 convolution between levels. Returns the blocks, the width of every
    skip connection (``conv_in``'s first), and the final width and resolution."""
    ch, groups = config.base_channels, config.norm_groups
    blocks = nn.ModuleList()
    skips, c, res = [ch], ch, config.image_size
    for level, mult in enumerate(config.channel_mults):
        for _ in range(config.num_res_blocks):
            block = nn.ModuleList([ResBlock(c, ch * mult, emb_dim, config.dropout, groups)])
            c = ch * mult
            if res in config.attention_resolutions:
                block.append(Attention(c, groups))
            blocks.append(block)
            skips.append(c)
        if level + 1 < len(config.channel_mults):
            blocks.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
            skips.append(c)
            res //= 2
    return blocks, skips, c, res


def run_down_path(blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> list[Tensor]:
    """``h`` through :func:`down_path`'s blocks; every activation, ``h`` first (the skips)."""
    hs = [h]
    for block in blocks:
        if isinstance(block[0], ResBlock):
            h = block[0](h, emb)
            for extra in block[1:]:
                h = extra(h)
        else:                                                   # downsampling conv
            h = block[0](h)
        hs.append(h)
    return hs


class UNet(Network):
    """``net(x, c, labels=None)``: images ``(N, C, H, W)``, a noise condition ``(N,)`` and, for
    class-conditional configurations, labels ``(N,)`` (None or -1: no label) -> ``(N, C or 2C, H, W)``."""

    def __init__(self, config: UNetConfig | None = None, **kwargs: Any):
        super().__init__()
        config = config or UNetConfig(**kwargs)
        self.config = config
        ch, groups = config.base_channels, config.norm_groups
        emb_dim = 4 * ch
        self.embed = noise_embedding(config)
        self.label_embed = LabelEmbedding(config.num_classes, emb_dim) if config.num_classes else None
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down, skips, c, res = down_path(config, emb_dim)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, config.dropout, groups), Attention(c, groups),
                                  ResBlock(c, c, emb_dim, config.dropout, groups)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for _ in range(config.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(c + skips.pop(), ch * mult, emb_dim, config.dropout, groups)])
                c = ch * mult
                if res in config.attention_resolutions:
                    block.append(Attention(c, groups))
                self.up.append(block)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(c, c, 3, padding=1)]))
                res *= 2
        out_channels = (config.out_channels if config.out_channels is not None
                        else config.in_channels * (2 if config.learned_variance else 1))
        self.head = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1))

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.config.in_channels, self.config.image_size, self.config.image_size)

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"this U-Net takes images of shape (N, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(x.shape)}")
        emb = add_label_embedding(self.embed(c.to(x.dtype)), self.label_embed, labels)
        hs = run_down_path(self.down, self.conv_in(x), emb)
        h = hs[-1]
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = block[0](torch.cat([h, hs.pop()], dim=1), emb)
                for extra in block[1:]:
                    h = extra(h)
            else:                                                   # upsampling
                h = block[1](block[0](h))
        return self.head(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
