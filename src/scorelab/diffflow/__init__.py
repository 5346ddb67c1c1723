"""DiffFlow: a learned, stochastic forward process trained with its reverse (MATH.md 11; Zhang & Chen 2021,
"Diffusion Normalizing Flow"), the survey's bridge between diffusion models and normalizing flows.

Importing it registers what the rest of scorelab looks up by name: the ``"diffflow"`` process (an SDE of the
kind ``"learned"``), network (the drift and score pair), parameterization, objective (the path KL) and sampler
(the backward chain); the rest of scorelab looks them up by name (only the package root and the command
line import from here).
"""

from ..processes import register_process
from ..processes.base import KINDS
from ..store.spec import NETWORKS, register_parameterization
from .model import DiffFlowModel, DiffFlowNet, DiffFlowNetConfig
from .objective import Progressive, diffflow_loss, path_loss, progressive_steps, trajectory_nll
from .process import DiffFlow, power_grid
from .sampler import backward_chain

__all__ = ["DiffFlow", "DiffFlowModel", "DiffFlowNet", "DiffFlowNetConfig", "power_grid", "path_loss",
           "trajectory_nll", "diffflow_loss", "Progressive", "progressive_steps", "backward_chain"]

KINDS["learned"] = "a learned SDE (DiffFlow: its drift is a network)"
register_process("diffflow", DiffFlow)
NETWORKS["diffflow"] = (DiffFlowNet, DiffFlowNetConfig)
register_parameterization("diffflow", lambda spec, net, process: DiffFlowModel(
    net, process, data_shape=tuple(spec.data_shape) or None))
