"""The energy view (MATH.md 9): energy-parameterized models, composition of models into new distributions.
The Metropolis-corrected samplers that use energies are :mod:`scorelab.samplers.mcmc` and the ``pc``
sampler's ``mala`` and ``hmc`` correctors."""

from ..store.spec import register_parameterization
from . import compose
from .compose import Composition, guidance_product, mixture, product, temperature
from .model import FORMS, EnergyModel

__all__ = ["EnergyModel", "FORMS", "Composition", "product", "mixture", "temperature", "guidance_product", "compose"]


def _energy_model(spec, net, process) -> EnergyModel:
    """A checkpoint's energy model: the norm form, ``E = |x - net(x, t)|^2 / 2`` (MATH.md 9)."""
    return EnergyModel(net, process, form="norm", condition=spec.condition, data_shape=tuple(spec.data_shape) or None)


register_parameterization("energy", _energy_model)
