"""What a run leaves behind, as data: checkpoints (safetensors and JSON, atomic), the model specs that
rebuild a model from a checkpoint alone, and a model exported as a ``torch.export`` program for serving.
Nothing is unpickled."""

from .checkpoints import (Checkpoint, CheckpointError, checkpoint_step, config_differences, latest_checkpoint,
                          list_checkpoints, load_checkpoint, save_checkpoint)
from .export import export_model
from .spec import (NETWORKS, PARAMETERIZATIONS, ModelSpec, build_network, load_model, network_spec,
                   register_parameterization)

__all__ = ["Checkpoint", "CheckpointError", "checkpoint_step", "config_differences", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "save_checkpoint", "ModelSpec", "build_network", "network_spec",
           "load_model", "NETWORKS", "PARAMETERIZATIONS", "register_parameterization", "export_model"]
