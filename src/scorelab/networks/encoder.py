"""The noise-conditional classifier of classifier guidance: the U-Net's down path and middle, then a
pooled linear head (Dhariwal & Nichol 2021, section 4: "the downsampling trunk of the UNet model
with an attention pool at the 8x8 layer"; here a global average pool).

``EncoderClassifier(config, num_classes)(x, c) -> (N, num_classes)`` logits, with the noise
condition ``c`` embedded as in :class:`scorelab.networks.UNet`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._util import require
from .embeddings import make_embedding
from .unet import Attention, ResBlock, UNetConfig

__all__ = ["EncoderClassifier"]


class EncoderClassifier(nn.Module):
    """Images ``(N, C, H, W)`` and a noise condition ``(N,)`` -> class logits ``(N, num_classes)``."""

    def __init__(self, config: UNetConfig, num_classes: int):
        super().__init__()
        require(isinstance(num_classes, int) and num_classes >= 2,
                f"a classifier needs at least 2 classes, got {num_classes!r}")
        self.config, self.num_classes = config, num_classes
        ch, groups = config.base_channels, config.norm_groups
        emb_dim = 4 * ch
        self.embed = nn.Sequential(make_embedding(config.embedding, ch, config.embedding_scale),
                                   nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.blocks = nn.ModuleList()
        c, res = ch, config.image_size
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                block = nn.ModuleList([ResBlock(c, ch * mult, emb_dim, config.dropout, groups)])
                c = ch * mult
                if res in config.attention_resolutions:
                    block.append(Attention(c, groups))
                self.blocks.append(block)
            if level + 1 < len(config.channel_mults):
                self.blocks.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                res //= 2
        self.mid = ResBlock(c, c, emb_dim, config.dropout, groups)
        self.head = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU())
        self.out = nn.Linear(c, num_classes)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"this classifier takes images of shape (N, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(x.shape)}; train one for these images")
        emb = self.embed(c.to(x.dtype))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block[0](h, emb) if isinstance(block[0], ResBlock) else block[0](h)
            for extra in block[1:]:
                h = extra(h)
        h = self.head(self.mid(h, emb))
        return self.out(F.adaptive_avg_pool2d(h, 1).flatten(1))

