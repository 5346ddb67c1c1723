"""Diffusion on categorical data: multinomial diffusion with factorized or autoregressive reverse
transitions (MATH.md 10; Hoogeboom et al. 2021, Austin et al. 2021, Esser et al. 2021), and masked diffusion in
continuous time (MATH.md 13; Shi et al. 2024, Sahoo et al. 2024).

Importing it registers what the rest of scorelab looks up by name: the ``"multinomial"`` and ``"masked"``
processes, the ``"categorical"``, ``"autoregressive"`` and ``"masked"`` parameterizations of a checkpoint's
model, the ``vlb``, ``vlb-ce`` and ``masked`` objectives and the ``multinomial`` and ``masked`` samplers;
the rest of scorelab looks them up by name (only the package root and the command line import from here).
"""

from ..processes import register_process
from ..store.spec import register_parameterization
from .losses import StepImportance, bits_per_dim, multinomial_loss, vlb_term
from .masked import MaskedDiffusion
from .masked_loss import masked_bits_per_dim, masked_discrete_bound, masked_loss
from .masked_model import MaskedModel
from .masked_sampler import masked_ancestral
from .models import AutoregressiveModel, CategoricalModel
from .oracle import CategoricalOracle
from .process import CategoricalProcess, MultinomialDiffusion, sample_categorical
from .sampler import multinomial_ancestral

__all__ = ["MultinomialDiffusion", "CategoricalModel", "AutoregressiveModel", "CategoricalOracle",
           "multinomial_loss", "vlb_term", "bits_per_dim", "StepImportance", "sample_categorical",
           "multinomial_ancestral", "CategoricalProcess", "MaskedDiffusion", "MaskedModel", "masked_loss",
           "masked_bits_per_dim", "masked_discrete_bound", "masked_ancestral"]

register_process("multinomial", MultinomialDiffusion)
register_parameterization("categorical", lambda spec, net, process: CategoricalModel(net, process))
register_parameterization("autoregressive", lambda spec, net, process: AutoregressiveModel(net, process))
register_process("masked", MaskedDiffusion)
register_parameterization("masked", lambda spec, net, process: MaskedModel(net, process,
                                                                         time_conditioning=spec.condition == "time"))
