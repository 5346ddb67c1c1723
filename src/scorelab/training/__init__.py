"""Training: one loop for every framework (DDPM, NCSN, VP, sub-VP, VE) with its paper's defaults."""

from .config import FRAMEWORKS, LOSSES, Framework, TrainConfig, make_model_spec, make_process
from .ema import ema_decay_at, update_ema
from .trainer import TrainResult, batch_indices, resolve_device, step_generator, train, training_loss

__all__ = ["TrainConfig", "FRAMEWORKS", "LOSSES", "Framework", "make_model_spec", "make_process", "train",
           "training_loss", "TrainResult", "resolve_device", "step_generator", "batch_indices",
           "ema_decay_at", "update_ema"]
