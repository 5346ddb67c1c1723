"""Exponential moving average of the weights, which DDPM and score SDEs sample from."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_decay_at", "update_ema"]


def ema_decay_at(decay: float, step: int) -> float:
    """``min(decay, (1 + step) / (10 + step))``: the warm-up of TensorFlow's (and score_sde's) EMA,
    so short runs are not dominated by the random initial weights."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``ema <- decay ema + (1 - decay) net`` for parameters; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)
