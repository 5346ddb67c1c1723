"""Diffusion on categorical data: multinomial diffusion with factorized or autoregressive reverse
transitions (MATH.md 10; Hoogeboom et al. 2021, Austin et al. 2021, Esser et al. 2021)."""

from .losses import StepImportance, bits_per_dim, multinomial_loss, vlb_term
from .models import AutoregressiveModel, CategoricalModel
from .oracle import CategoricalOracle
from .process import MultinomialDiffusion, sample_categorical

__all__ = ["MultinomialDiffusion", "CategoricalModel", "AutoregressiveModel", "CategoricalOracle",
           "multinomial_loss", "vlb_term", "bits_per_dim", "StepImportance", "sample_categorical"]
