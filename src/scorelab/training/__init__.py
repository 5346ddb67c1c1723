"""Training: one loop for every framework (DDPM, NCSN, VP, sub-VP, VE, EDM, general SDEs, multinomial
diffusion, and classifier guidance's classifiers) with its paper's defaults; the losses are the objectives of
:mod:`scorelab.objectives`, by name."""

from .classifier import ClassifierSpec, NoiseClassifier, load_classifier, train_classifier
from .config import FRAMEWORKS, Framework, TrainConfig, make_model_spec, make_process
from .ema import ema_decay_at, update_ema
from .trainer import Spec, TrainResult, batch_indices, resolve_device, step_generator, train, training_loss

__all__ = ["TrainConfig", "FRAMEWORKS", "Framework", "make_model_spec", "make_process", "train",
           "training_loss", "TrainResult", "Spec", "resolve_device", "step_generator", "batch_indices",
           "ema_decay_at", "update_ema", "NoiseClassifier", "ClassifierSpec", "train_classifier", "load_classifier"]
