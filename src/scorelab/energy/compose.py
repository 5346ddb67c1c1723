"""Composing models into new distributions (Du et al. 2023; MATH.md 9).

* :func:`product` ``p_1(x) p_2(x) ...``: energies and scores add;
* :func:`mixture` ``sum_k w_k p_k(x)``: needs energies, ``U = -logsumexp_k(log w_k - U_k)``, and the
  score is the responsibility-weighted sum of scores;
* :func:`temperature` ``p(x)^(1/T)``: energy and score divided by ``T``;
* :func:`guidance_product` classifier-free guidance as the product ``p(x|y)^(1+w) p(x)^(-w)``.

Each composition is a model (a :class:`~scorelab.models.ModelWrapper` of its parts), so every sampler
takes it, and the Metropolis-corrected ones when every part has an energy. At ``t > 0`` the product of
diffused densities is not the diffused product, so sampling a product with the reverse SDE alone is
biased; the corrections at each noise level reduce that bias (tests measure it on the exact oracle).

A mixture weighs each part by its *normalized* density, so its parts' energies must be normalized
(``U_k = -log p_k``): exact energies are (``GaussianMixture.energy_model``); a trained energy model's are
known only up to an unknown constant each, which shifts the mixture's weights.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .._util import TimeLike, as_time, expand_as, require
from ..models import DiffusionModel, ModelWrapper, Prediction, guide, require_energy
from ..processes import require_kind

__all__ = ["Composition", "product", "mixture", "temperature", "guidance_product"]


class Composition(ModelWrapper):
    """``sum_k c_k U_k`` (a product with powers ``c_k``) or, with ``weights``, a mixture of the parts."""

    def __init__(self, parts: Sequence[DiffusionModel], powers: Sequence[float] | None = None,
                 weights: Sequence[float] | None = None):
        parts = list(parts)
        require(len(parts) >= 1, "compose at least one model")
        process = parts[0].process
        require(all(p.process == process for p in parts), "composed models must share one process (the same "
                "noise levels at the same times); got " + ", ".join(repr(p.process) for p in parts))
        require_kind(process, ("affine",), "composition (eps = -s score)")
        super().__init__(*parts)
        self.powers = [1.0] * len(parts) if powers is None else [float(c) for c in powers]
        require(len(self.powers) == len(parts), f"{len(parts)} models but {len(self.powers)} powers")
        self.log_weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            require(w.shape == (len(parts),), f"{len(parts)} models but weights of shape {tuple(w.shape)}")
            require(bool((w > 0).all()) and abs(float(w.sum()) - 1) < 1e-6,
                    f"mixture weights must be positive and sum to 1, got {w.tolist()}")
            require(all(c == 1.0 for c in self.powers), f"a mixture weighs normalized densities, and powers "
                    f"{self.powers} would un-normalize its parts; mix the parts, then raise the mixture to a power")
            for part in parts:                     # U = -logsumexp(log w_k - U_k) needs every part's energy ...
                require_energy(part)
                require(part.normalized_energy, "a mixture weighs each part by its normalized density, and this "
                        "part's energy is known only up to a constant (a trained energy model's is): mix exact "
                        "energies, or weigh trained ones by estimates of their normalizing constants yourself")
            self.log_weights = torch.log(w)

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def learned_variance(self) -> bool:
        return False

    @property
    def normalized_energy(self) -> bool:
        """A mixture of normalized parts is normalized; a product or a power is not."""
        return self.log_weights is not None

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        require(labels is None, "a composition takes no labels; bind them to its parts (scorelab.Conditional)")
        t = as_time(t, x)
        pairs = [p.energy_and_score(x, t) for p in self.parts]
        if self.log_weights is None:
            u = sum(c * e for c, (e, _) in zip(self.powers, pairs))
            score = sum(c * s for c, (_, s) in zip(self.powers, pairs))
            return u, score
        logits = torch.stack([lw.to(x.dtype) - c * e for lw, c, (e, _) in zip(self.log_weights, self.powers, pairs)], 1)
        r = torch.softmax(logits, 1)
        score = sum(expand_as(r[:, k], x) * c * s for k, (c, (_, s)) in enumerate(zip(self.powers, pairs)))
        return -torch.logsumexp(logits, 1), score

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        return self.energy_and_score(x, t, labels)[0]

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        require(labels is None, "a composition takes no labels; bind them to its parts (scorelab.Conditional)")
        t = as_time(t, x)
        a, s = self.process.coefficients(t)
        if self.log_weights is None:                 # no energies needed: powers times the parts' eps
            eps = sum(c * p.predict(x, t).eps for c, p in zip(self.powers, self.parts))
            return Prediction(x, t, a, s, eps=eps)
        _, score = self.energy_and_score(x, t)
        return Prediction(x, t, a, s, eps=-expand_as(s, x).to(score.dtype) * score)


class _Guidance(Composition):
    """``p(x|y)^(1+w) p(x)^(-w)``: classifier-free guidance (:func:`~scorelab.models.guide`) of two models."""

    def __init__(self, conditional: DiffusionModel, unconditional: DiffusionModel, w: float):
        super().__init__([conditional, unconditional], powers=[1.0 + w, -w])
        self.w = float(w)

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        require(labels is None, "a composition takes no labels; bind them to its parts (scorelab.Conditional)")
        (u_c, s_c), (u_u, s_u) = (p.energy_and_score(x, t) for p in self.parts)
        return guide(u_c, u_u, self.w), guide(s_c, s_u, self.w)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        require(labels is None, "a composition takes no labels; bind them to its parts (scorelab.Conditional)")
        t = as_time(t, x)
        cond, uncond = (p.predict(x, t) for p in self.parts)
        return cond.guided(uncond, self.w)


def product(*models: DiffusionModel) -> Composition:
    """``p_1(x) p_2(x) ...`` (unnormalized): energies and scores add."""
    return Composition(models)


def mixture(models: Sequence[DiffusionModel], weights: Sequence[float]) -> Composition:
    """``sum_k w_k p_k(x)``: each ``p_k`` weighed by its own energy, which must be normalized (exact energies are;
    see the module's docstring)."""
    return Composition(models, weights=weights)


def temperature(model: DiffusionModel, temperature: float) -> Composition:
    """``p(x)^(1/T)``: energy and score divided by the temperature ``T`` (``T < 1`` sharpens)."""
    require(temperature > 0 and math.isfinite(temperature), f"the temperature must be positive, got {temperature}")
    return Composition([model], powers=[1.0 / temperature])


def guidance_product(conditional: DiffusionModel, unconditional: DiffusionModel, w: float) -> Composition:
    """Classifier-free guidance as a product, ``p(x|y)^(1+w) p(x)^(-w)`` (Ho & Salimans 2022, eq. 6), written as
    :func:`~scorelab.models.guide` of the two models (MATH.md 9)."""
    require(w >= 0, f"the guidance strength must be >= 0, got {w}")
    return _Guidance(conditional, unconditional, w)
