"""The noise-conditional classifier of classifier guidance: the U-Net's down path and middle, then a
pooled linear head (Dhariwal & Nichol 2021, section 4: "the downsampling trunk of the UNet model
with an attention pool at the 8x8 layer"; here a global average pool).

``EncoderClassifier(config, num_classes)(x, c) -> (N, num_classes)`` logits, with the noise
condition ``c`` embedded as in :class:`scorelab.networks.UNet`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._util import is_int, require
from .unet import ResBlock, UNetConfig, down_path, noise_embedding, run_down_path

__all__ = ["EncoderClassifier"]


class EncoderClassifier(nn.Module):
    """Images ``(N, C, H, W)`` and a noise condition ``(N,)`` -> class logits ``(N, num_classes)``."""

    def __init__(self, config: UNetConfig, num_classes: int):
        super().__init__()
        require(is_int(num_classes) and num_classes >= 2,
                f"a classifier needs at least 2 classes, got {num_classes!r}")
        self.config, self.num_classes = config, num_classes
        ch, groups = config.base_channels, config.norm_groups
        emb_dim = 4 * ch
        self.embed = noise_embedding(config)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.blocks, _, c, _ = down_path(config, emb_dim)
        self.mid = ResBlock(c, c, emb_dim, config.dropout, groups)
        self.head = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU())
        self.out = nn.Linear(c, num_classes)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"this classifier takes images of shape (N, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(x.shape)}; train one for these images")
        emb = self.embed(c.to(x.dtype))
        h = run_down_path(self.blocks, self.conv_in(x), emb)[-1]
        h = self.head(self.mid(h, emb))
        return self.out(F.adaptive_avg_pool2d(h, 1).flatten(1))

