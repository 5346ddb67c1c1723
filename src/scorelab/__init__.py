"""scorelab: DDPM, NCSN and score SDEs as one system (see docs/MATH.md and docs/DESIGN.md).

    import scorelab as sl
    process = sl.VPSDE()
    oracle = sl.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.25, 0.5])
    model = oracle.model(process)              # exact score at every t
    loss = sl.objectives.dsm_loss(model, oracle.sample(64))
    x = sl.samplers.sample(model, (64, 2), "dpm++2m", 20).samples

The layers, bottom up: ``processes`` (the noise processes and their contract), ``models`` (the model
contract, trained networks, wrappers and guidance), ``objectives`` (training losses by name), ``samplers``,
``likelihood``, ``conditional``, ``energy``, ``discrete`` (categorical data), ``store`` (checkpoints and
specs), ``training``, ``evaluation``, and the ``scorelab`` command (``cli``).
"""

from . import (conditional, data, diffflow, discrete, energy, evaluation, likelihood, models, networks, noise, objectives,
               processes, samplers, store, training)
from .energy import EnergyModel, compose
from .models import (CONDITIONS, TARGETS, ClassifierFreeGuidance, ClassifierGuidance, ClipDenoised, Conditional,
                     DiffusionModel, Model, ModelBase, ModelWrapper, Prediction, ProcessAdapter, from_eps, to_eps)
from .diffflow import DiffFlow
from .noise import PerSampleNoise
from .objectives import VLB, dsm_loss, hybrid_loss, simple_loss, vlb, vlb_term
from .oracle import ExactModel, GaussianMixture
from .processes import (DDPM, NCSN, SDE, VESDE, VPSDE, GeneralSDE, NoiseProcess, Process, SubVPSDE, named_sde,
                        process_from_config, register_process, register_sde, require_kind)
from .samplers import register_sampler, sample
from .store import ModelSpec, load_model

__version__ = "0.2.0"

__all__ = [
    "Process", "SDE", "NoiseProcess", "DDPM", "NCSN", "VPSDE", "SubVPSDE", "VESDE", "GeneralSDE", "DiffFlow", "named_sde",
    "register_sde", "register_process", "process_from_config", "require_kind",
    "Model", "ModelBase", "ModelWrapper", "ProcessAdapter", "ClipDenoised", "Prediction", "DiffusionModel",
    "TARGETS", "CONDITIONS", "to_eps", "from_eps", "Conditional", "ClassifierFreeGuidance", "ClassifierGuidance",
    "GaussianMixture", "ExactModel", "EnergyModel", "compose", "PerSampleNoise", "sample", "register_sampler",
    "ModelSpec", "load_model", "simple_loss", "dsm_loss", "vlb", "vlb_term", "VLB", "hybrid_loss",
    "processes", "models", "objectives", "samplers", "likelihood", "conditional", "energy", "discrete", "diffflow", "store",
    "training", "evaluation", "networks", "data", "noise",
]
