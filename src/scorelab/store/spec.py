"""What rebuilds a trained model from a checkpoint alone: network, process, parameterization, target, condition.

A :class:`ModelSpec` is plain data (JSON in every checkpoint's ``meta.json``); :meth:`ModelSpec.build`
turns it into a model and :func:`load_model` fills in the saved weights (the EMA weights by default, as
DDPM and score SDE papers sample from them). Nothing is unpickled. Networks, processes and
parameterizations are each looked up by name in one table (:data:`NETWORKS`,
:data:`scorelab.processes.PROCESSES`, :data:`PARAMETERIZATIONS`), to which other packages add theirs
(``scorelab.energy``: ``"energy"``; ``scorelab.discrete``: ``"categorical"`` and ``"autoregressive"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .._util import require
from ..models import Model, NetworkModel
from ..networks import MLP, ARTransformer, ARTransformerConfig, MLPConfig, UNet, UNetConfig
from ..processes import Process, process_from_config
from .checkpoints import Checkpoint, CheckpointError, load_checkpoint

__all__ = ["ModelSpec", "build_network", "network_spec", "load_model", "NETWORKS", "PARAMETERIZATIONS",
           "register_parameterization"]

#: Networks by the ``kind`` their spec saves: (class, config class).
NETWORKS: dict[str, tuple[type[nn.Module], type]] = {"unet": (UNet, UNetConfig), "mlp": (MLP, MLPConfig),
                                                     "ar-transformer": (ARTransformer, ARTransformerConfig)}


def build_network(spec: dict[str, Any]) -> nn.Module:
    """``{"kind": "unet" | "mlp" | "ar-transformer", **config}`` -> the network."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    require(kind in NETWORKS, f"unknown network kind {kind!r}; choose one of {sorted(NETWORKS)}")
    net_cls, cfg_cls = NETWORKS[kind]
    try:
        return net_cls(cfg_cls(**spec))
    except TypeError as e:
        raise ValueError(f"network config does not match {cfg_cls.__name__}: {e}") from None


def network_spec(net: nn.Module) -> dict[str, Any]:
    """The inverse of :func:`build_network` for scorelab's networks."""
    for kind, (net_cls, _) in NETWORKS.items():
        if isinstance(net, net_cls):
            require(net.config is not None, f"cannot describe this {type(net).__name__}: it was built from modules, "
                    "not from a config; only scorelab's networks built from their configs are saved by spec")
            return {"kind": kind, **net.config.to_dict()}
    raise ValueError(f"cannot describe a {type(net).__name__}; only scorelab's networks are saved by spec")


@dataclass(frozen=True)
class ModelSpec:
    """Everything but the weights. ``data_shape`` is one example's shape; ``classes`` names labels;
    ``parameterization`` names how the network's output becomes the model (:data:`PARAMETERIZATIONS`);
    ``sigma_data`` is the data scale EDM's preconditioning assumes (``target="preconditioned"``)."""

    network: dict[str, Any]
    process: dict[str, Any]
    target: str = "eps"
    condition: str | None = None
    learned_variance: bool = False
    data_shape: tuple[int, ...] = ()
    classes: list[str] | None = field(default=None)
    parameterization: str = "score"
    sigma_data: float = 0.5
    #: The key it is saved under in a checkpoint's config.
    kind: ClassVar[str] = "model"

    def build(self) -> NetworkModel:
        return self.wrap(build_network(self.network), process_from_config(self.process))

    def wrap(self, net: nn.Module, process: Process | None = None) -> NetworkModel:
        """The model this spec describes around ``net`` (a built network, or DDP around one)."""
        require(self.parameterization in PARAMETERIZATIONS, f"unknown parameterization {self.parameterization!r}; "
                f"this scorelab knows {sorted(PARAMETERIZATIONS)}")
        return PARAMETERIZATIONS[self.parameterization](self, net,
                                                        process_from_config(self.process) if process is None else process)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_shape"] = list(self.data_shape)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelSpec":
        try:
            spec = ModelSpec(**_migrate(d))
        except TypeError as e:
            raise CheckpointError(f"the checkpoint's model description is not one this scorelab reads: {e}") from None
        return ModelSpec(**{**asdict(spec), "data_shape": tuple(spec.data_shape)})


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A model description written by scorelab 0.1 in today's form: EDM's process was its own (``"edm"``, with
    the training noise levels and ``sigma_data``); it is the VE SDE over EDM's range, with the preconditioned
    target and ``sigma_data`` on the model."""
    d = dict(d)
    process = dict(d.get("process") or {})
    if process.get("name") == "edm":
        d["sigma_data"] = process.get("sigma_data", 0.5)
        d["process"] = {"name": "ve", "sigma_min": process.get("sigma_min", 0.002),
                        "sigma_max": process.get("sigma_max", 80.0)}
    if d.get("target") == "edm":
        d["target"] = "preconditioned"
    return d


def _score_model(spec: ModelSpec, net: nn.Module, process: Process) -> NetworkModel:
    return Model(net, process, target=spec.target, condition=spec.condition, learned_variance=spec.learned_variance,
                 sigma_data=spec.sigma_data, data_shape=tuple(spec.data_shape) or None)


#: How a spec's network becomes its model, by ``parameterization``.
PARAMETERIZATIONS: dict[str, Callable[[ModelSpec, nn.Module, Process], NetworkModel]] = {"score": _score_model}


def register_parameterization(name: str, build: Callable[[ModelSpec, nn.Module, Process], NetworkModel]) -> None:
    """Make ``ModelSpec(..., parameterization=name)`` build its model as ``build(spec, net, process)``."""
    require(isinstance(name, str) and name, f"a parameterization is named by a word, got {name!r}")
    PARAMETERIZATIONS[name] = build


def load_model(path: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu"
               ) -> tuple[NetworkModel, ModelSpec, Checkpoint]:
    """Rebuild the model saved at ``path`` (a checkpoint folder or a run's folder: its newest).

    ``weights="ema"`` (default) or ``"model"`` (the raw training weights).
    Returns ``(model in eval mode on device, spec, checkpoint)``.
    """
    require(weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {weights!r}")
    ckpt = load_checkpoint(path, map_location="cpu")
    if "classifier" in ckpt.config:
        raise CheckpointError(f"{ckpt.path} holds a noise-conditional classifier (scorelab train-classifier), not a "
                              "diffusion model; give it to a model's sampling as --classifier, and point this "
                              "command at the diffusion run")
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
