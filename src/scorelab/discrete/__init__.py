"""Diffusion on categorical data: multinomial diffusion with factorized or autoregressive reverse
transitions (MATH.md 10; Hoogeboom et al. 2021, Austin et al. 2021, Esser et al. 2021).

Importing it registers what the rest of scorelab looks up by name: the ``"multinomial"`` process, the
``"categorical"`` and ``"autoregressive"`` parameterizations of a checkpoint's model, the ``vlb`` and
``vlb-ce`` objectives and the ``multinomial`` sampler; nothing outside this package imports it.
"""

from ..processes import register_process
from ..store.spec import register_parameterization
from .losses import StepImportance, bits_per_dim, multinomial_loss, vlb_term
from .models import AutoregressiveModel, CategoricalModel
from .oracle import CategoricalOracle
from .process import MultinomialDiffusion, sample_categorical
from .sampler import multinomial_ancestral

__all__ = ["MultinomialDiffusion", "CategoricalModel", "AutoregressiveModel", "CategoricalOracle",
           "multinomial_loss", "vlb_term", "bits_per_dim", "StepImportance", "sample_categorical",
           "multinomial_ancestral"]

register_process("multinomial", MultinomialDiffusion)
register_parameterization("categorical", lambda spec, net, process: CategoricalModel(net, process))
register_parameterization("autoregressive", lambda spec, net, process: AutoregressiveModel(net, process))
