"""What rebuilds a trained model from a checkpoint alone: network, process, target, condition.

A :class:`ModelSpec` is plain data (JSON in every checkpoint's ``meta.json``);
:meth:`ModelSpec.build` turns it into a :class:`scorelab.models.Model` and
:func:`load_model` fills in the saved weights (the EMA weights by default, as
DDPM and score SDE papers sample from them). Nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._util import require
from .checkpoints import Checkpoint, CheckpointError, load_checkpoint
from .models import Model
from .networks import MLP, ARTransformer, ARTransformerConfig, MLPConfig, UNet, UNetConfig
from .process_config import process_from_config

__all__ = ["ModelSpec", "build_network", "load_model"]

_NETWORKS: dict[str, tuple[type, type]] = {"unet": (UNet, UNetConfig), "mlp": (MLP, MLPConfig),
                                           "ar-transformer": (ARTransformer, ARTransformerConfig)}


def build_network(spec: dict[str, Any]) -> nn.Module:
    """``{"kind": "unet" | "mlp", **config}`` -> the network."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    require(kind in _NETWORKS, f"unknown network kind {kind!r}; choose one of {sorted(_NETWORKS)}")
    net_cls, cfg_cls = _NETWORKS[kind]
    try:
        return net_cls(cfg_cls(**spec))
    except TypeError as e:
        raise ValueError(f"network config does not match {cfg_cls.__name__}: {e}") from None


def network_spec(net: nn.Module) -> dict[str, Any]:
    """The inverse of :func:`build_network` for scorelab's networks."""
    for kind, (net_cls, _) in _NETWORKS.items():
        if isinstance(net, net_cls):
            return {"kind": kind, **net.config.to_dict()}
    raise ValueError(f"cannot describe a {type(net).__name__}; only scorelab's UNet and MLP are saved by spec")


@dataclass(frozen=True)
class ModelSpec:
    """Everything but the weights. ``data_shape`` is one example's shape; ``classes`` names labels."""

    network: dict[str, Any]
    process: dict[str, Any]
    target: str = "eps"
    condition: str | None = None
    learned_variance: bool = False
    data_shape: tuple[int, ...] = ()
    classes: list[str] | None = field(default=None)
    parameterization: str = "score"          # "energy": EnergyModel, E = |x - net(x)|^2 / 2 (MATH.md 9);
    # "categorical" / "autoregressive": multinomial diffusion's factorized or autoregressive model (MATH.md 10)

    def build(self) -> Model:
        return self.wrap(build_network(self.network), process_from_config(self.process))

    def wrap(self, net: nn.Module, process=None) -> Model:
        """The model this spec describes around ``net`` (a built network, or DDP around one)."""
        process = process_from_config(self.process) if process is None else process
        if self.parameterization in ("categorical", "autoregressive"):      # multinomial diffusion (MATH.md 10)
            from .discrete import AutoregressiveModel, CategoricalModel

            kind = CategoricalModel if self.parameterization == "categorical" else AutoregressiveModel
            return kind(net, process)  # type: ignore[return-value]
        if self.parameterization == "energy":
            from .energy import EnergyModel

            return EnergyModel(net, process, form="norm", condition=self.condition)  # type: ignore[return-value]
        return Model(net, process, target=self.target, condition=self.condition,
                     learned_variance=self.learned_variance)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_shape"] = list(self.data_shape)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelSpec":
        try:
            spec = ModelSpec(**d)
        except TypeError as e:
            raise CheckpointError(f"the checkpoint's model description is not one this scorelab reads: {e}") from None
        return ModelSpec(**{**asdict(spec), "data_shape": tuple(spec.data_shape)})

    @staticmethod
    def of(model: Model, data_shape: tuple[int, ...] = (), classes: list[str] | None = None) -> "ModelSpec":
        energy = getattr(model, "target", None) == "energy"
        return ModelSpec(network_spec(model.net), model.process.config(), "eps" if energy else model.target,
                         model.condition, model.learned_variance, tuple(data_shape), classes,
                         "energy" if energy else "score")


def require_gaussian(spec: ModelSpec, what: str) -> None:
    """Refuse a multinomial diffusion model where only a Gaussian one will do, in one line."""
    require(spec.process.get("name") != "multinomial", f"{what} works on Gaussian diffusion models, and this "
            "checkpoint is multinomial diffusion (categorical data): it samples (scorelab sample) and gives its "
            "bits/dim (scorelab nll)")


def load_model(path: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu"
               ) -> tuple[Model, ModelSpec, Checkpoint]:
    """Rebuild the model saved at ``path`` (a checkpoint folder or a run's folder: its newest).

    ``weights="ema"`` (default) or ``"model"`` (the raw training weights).
    Returns ``(model in eval mode on device, spec, checkpoint)``.
    """
    require(weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir() and not (path / "meta.json").exists():
        path = path / "checkpoints"
    ckpt = load_checkpoint(path, map_location="cpu")
    if "model" not in ckpt.config:
        raise CheckpointError(f"{ckpt.path} holds no model description; it was not written by scorelab's trainer")
    spec = ModelSpec.from_dict(ckpt.config["model"])
    model = spec.build()
    state = ckpt.ema if weights == "ema" and ckpt.ema is not None else ckpt.model
    try:
        model.net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {ckpt.path} do not fit the network it describes: "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), spec, ckpt
