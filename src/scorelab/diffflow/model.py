"""DiffFlow's two networks and the model they make (MATH.md 11).

:class:`DiffFlowNet` holds the drift network ``f_theta`` and the score network ``s_phi`` as one module, so the
trainer's one optimizer, EMA copy, DistributedDataParallel wrapper and checkpoint cover both; called as a
network it is the score network. :class:`DiffFlowModel` binds the process to the drift network and answers
with the score, scaled as score_sde's ``scale_by_sigma``: ``s = out / sqrt(lambda(t))``,
``lambda(t) = 1 - exp(-g^2 T t)`` (the noise the forward SDE has added by ``t``), so the network's output stays
of order one while the score grows as ``t -> 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .._util import TimeLike, as_time, expand_as, require
from ..models import NetworkModel, Prediction
from ..networks import Network, as_network
from ..processes import Process, require_kind
from ..store.spec import build_network
from .process import DiffFlow

__all__ = ["DiffFlowNet", "DiffFlowNetConfig", "DiffFlowModel"]


@dataclass(frozen=True)
class DiffFlowNetConfig:
    """The two networks' specs (``{"kind": ..., **config}`` each, as :func:`scorelab.store.build_network` takes)."""

    drift: dict[str, Any]
    score: dict[str, Any]

    def __post_init__(self) -> None:
        for name in ("drift", "score"):
            spec = getattr(self, name)
            require(isinstance(spec, dict) and spec.get("kind") not in (None, "diffflow"),
                    f"DiffFlow's {name} network is given by a network spec such as {{'kind': 'mlp', 'dim': 2}}, "
                    f"got {spec!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"drift": dict(self.drift), "score": dict(self.score)}


class DiffFlowNet(Network):
    """The drift network ``f_theta(x, t)`` and the score network ``s_phi(x, t)`` (called as this module).

    Built from a :class:`DiffFlowNetConfig` (as checkpoints do), or from two modules ``drift`` and ``score``
    (any ``net(x, t) -> x's shape``; such a pair trains and samples, but only scorelab's networks are saved by
    spec)."""

    def __init__(self, config: DiffFlowNetConfig | None = None, *, drift: nn.Module | None = None,
                 score: nn.Module | None = None):
        super().__init__()
        require((config is None) != (drift is None and score is None) and (drift is None) == (score is None),
                "DiffFlowNet takes a DiffFlowNetConfig, or both modules drift= and score=")
        self.config = config
        self.drift = build_network(config.drift) if config is not None else drift
        self.score = build_network(config.score) if config is not None else score
        for name, net in (("drift", self.drift), ("score", self.score)):
            inner = as_network(net)
            require(isinstance(net, nn.Module) and (inner is None or inner.num_classes == 0),
                    f"DiffFlow's {name} network must be an unconditional torch module (num_classes=0)")

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        inner = as_network(self.score)
        return inner.data_shape if inner is not None else None

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None) -> Tensor:
        require(labels is None, "DiffFlow's networks are unconditional; sample it without labels")
        return self.score(x, c)


class DiffFlowModel(NetworkModel):
    """The score model of a DiffFlow pair: ``predict(x, t).score = s_phi(x, t) / sqrt(lambda(t))`` under the
    process whose drift is the pair's drift network (MATH.md 11)."""

    parameterization = "diffflow"
    target = "score"

    def __init__(self, net: nn.Module, process: Process, *, data_shape: tuple[int, ...] | None = None):
        require_kind(process, ("learned",), "a DiffFlowModel", "use scorelab.Model for a fixed process")
        pair = as_network(net)
        require(isinstance(pair, DiffFlowNet), f"a DiffFlowModel takes the pair of networks (DiffFlowNet), got "
                f"{type(net).__name__}")
        require(isinstance(process, DiffFlow), f"a DiffFlowModel runs on a DiffFlow process, got {type(process).__name__}")
        if process.drift_net is not pair.drift:
            process = process.bind(pair.drift)
        super().__init__(net, process, num_classes=0, data_shape=data_shape)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        """One score-network evaluation at ``(x, t)``."""
        require(labels is None, "a DiffFlow model is unconditional; sample it without labels")
        t = as_time(t, x)
        out = self.net(x, t.to(x.dtype))
        if out.shape != x.shape:
            raise ValueError(f"DiffFlow's score network returned shape {tuple(out.shape)} for input "
                             f"{tuple(x.shape)}; it must return x's shape")
        scale = self.process.score_weight(t).clamp(min=1e-12).rsqrt()
        return Prediction(x, t, score=out * expand_as(scale, out))

    def forward(self, x: Tensor, t: TimeLike) -> Prediction:
        return self.predict(x, t)


