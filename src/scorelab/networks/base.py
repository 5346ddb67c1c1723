"""What every scorelab network declares: ``net(x, c, labels=None)``, rebuilt from its ``config``, conditioned
on ``num_classes`` classes (0: none), taking examples of shape ``data_shape``."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Network", "as_network"]


class Network(nn.Module):
    """The base of scorelab's networks; ``config`` is the dataclass that rebuilds it."""

    config: Any

    @property
    def num_classes(self) -> int:
        """The classes the network is conditioned on (0: unconditional)."""
        return int(self.config.num_classes)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """One example's shape, as the network takes it."""
        raise NotImplementedError


def as_network(net: nn.Module) -> Network | None:
    """``net`` (inside DistributedDataParallel too) as a scorelab :class:`Network`; None for any other module."""
    inner = net.module if isinstance(net, DistributedDataParallel) else net
    return inner if isinstance(inner, Network) else None
