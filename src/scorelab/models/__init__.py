"""Models: the contract every model declares, trained networks, and the wrappers between models (MATH.md 1, 5, 8).

* :mod:`~scorelab.models.base`: :class:`Prediction`, the :class:`DiffusionModel` protocol, :class:`ModelBase`
  and :class:`ModelWrapper` (the one base of every wrapper);
* :mod:`~scorelab.models.model`: :class:`Model`, a network with its process, target and noise condition;
* :mod:`~scorelab.models.wrappers`: :class:`ProcessAdapter` (another process's time), :class:`ClipDenoised`;
* :mod:`~scorelab.models.guidance`: class conditioning, classifier-free and classifier guidance.
"""

from .base import (CONDITIONS, NO_ENERGY, TARGETS, DiffusionModel, ModelBase, ModelWrapper, Prediction,
                   device_and_dtype, from_eps, guide, require_energy, resolve_variance, to_eps)
from .guidance import (NO_LABEL, Classifier, ClassifierFreeGuidance, ClassifierGuidance, Conditional, drop_labels,
                       guided, unconditional)
from .model import NETWORK_TARGETS, Model, NetworkModel, resolve_condition
from .wrappers import ClipDenoised, ProcessAdapter

__all__ = ["TARGETS", "NETWORK_TARGETS", "CONDITIONS", "NO_ENERGY", "Prediction", "DiffusionModel", "ModelBase",
           "ModelWrapper", "NetworkModel", "Model", "ProcessAdapter", "ClipDenoised", "Conditional",
           "ClassifierFreeGuidance", "ClassifierGuidance", "Classifier", "unconditional", "guided", "drop_labels",
           "NO_LABEL", "to_eps", "from_eps", "guide", "require_energy", "resolve_variance", "resolve_condition",
           "device_and_dtype"]
