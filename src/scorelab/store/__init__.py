"""What a run leaves behind, as data: checkpoints (safetensors and JSON, atomic) and the model specs that
rebuild a model from a checkpoint alone. Nothing is unpickled."""

from .checkpoints import (Checkpoint, CheckpointError, config_differences, latest_checkpoint, list_checkpoints,
                          load_checkpoint, save_checkpoint)
from .spec import (NETWORKS, PARAMETERIZATIONS, ModelSpec, build_network, load_model, network_spec,
                   register_parameterization)

__all__ = ["Checkpoint", "CheckpointError", "config_differences", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "save_checkpoint", "ModelSpec", "build_network", "network_spec", "load_model",
           "NETWORKS", "PARAMETERIZATIONS", "register_parameterization"]
