"""scorelab: DDPM, NCSN and score SDEs as one system (see ../shared/docs/MATH.md).

    import scorelab as sl
    process = sl.VPSDE()
    oracle = sl.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.25, 0.5])
    model = oracle.model(process)              # exact score at every t
    loss = sl.losses.dsm_loss(model, oracle.sample(64))
"""

from . import checkpoints, compose, conditional, data, evaluation, guidance, likelihood, losses, modelspec, networks, samplers, training
from .guidance import ClassifierFreeGuidance, ClassifierGuidance, Conditional
from .losses import VLB, dsm_loss, hybrid_loss, simple_loss, vlb, vlb_term
from .models import (CONDITIONS, TARGETS, DiffusionModel, Model, Prediction, ProcessAdapter, ScorePrediction,
                     from_eps, to_eps)
from .modelspec import ModelSpec, load_model
from .oracle import ExactModel, GaussianMixture
from .energy import EnergyModel
from .processes import DDPM, EDM, NCSN, SDE, VESDE, VPSDE, NoiseProcess, SubVPSDE
from .process_config import process_from_config
from .general_sde import GeneralSDE, named_sde, register_sde

__version__ = "0.1.0"

__all__ = [
    "DDPM", "NCSN", "VPSDE", "SubVPSDE", "VESDE", "EDM", "NoiseProcess", "process_from_config",
    "SDE", "GeneralSDE", "named_sde", "register_sde",
    "Model", "ProcessAdapter", "Prediction", "ScorePrediction", "DiffusionModel", "TARGETS", "CONDITIONS",
    "to_eps", "from_eps", "GaussianMixture", "ExactModel", "EnergyModel", "compose",
    "Conditional", "ClassifierFreeGuidance", "ClassifierGuidance", "guidance", "ModelSpec", "load_model", "modelspec", "training",
    "samplers", "conditional", "likelihood", "evaluation", "networks", "data", "checkpoints", "losses", "simple_loss", "dsm_loss", "vlb", "vlb_term", "VLB", "hybrid_loss",
]
