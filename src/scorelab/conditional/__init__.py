"""Controllable generation from an unconditional model (MATH.md 8).

* :func:`inpaint`, :func:`colorize`, :func:`linear_inverse`: posterior samples given ``y = A x + n``
  by Song et al.'s replacement, RePaint or DPS, or by sequential Monte Carlo (:func:`smc`: TDS, SMCDiff,
  MCGdiff), which converges to the exact posterior and estimates the evidence ``p(y)``;
* :func:`sdedit`: editing from a partly noised image (Meng et al. 2022);
* classifier guidance is a model wrapper, :class:`scorelab.ClassifierGuidance`.

Ground truth: :meth:`scorelab.GaussianMixture.condition` is the exact posterior mixture, and its
``model(process)`` the exact posterior at every noise level.
"""

from .editing import sdedit
from .inverse import METHODS, colorize, dps, inpaint, linear_inverse, repaint, repaint_schedule, replacement
from .operators import (MASKS, AveragePool, BoxBlur, FunctionOperator, Greyscale, LinearOperator, Mask,
                        MatrixOperator, SingularBasis, mask_from_spec)
from .smc import PROPOSALS, SMCResult, smc, systematic_resample

__all__ = ["inpaint", "colorize", "linear_inverse", "sdedit", "replacement", "repaint", "dps", "repaint_schedule",
           "METHODS", "MASKS", "LinearOperator", "Mask", "AveragePool", "BoxBlur", "Greyscale", "MatrixOperator",
           "FunctionOperator", "SingularBasis", "mask_from_spec", "smc", "SMCResult", "PROPOSALS", "systematic_resample"]
