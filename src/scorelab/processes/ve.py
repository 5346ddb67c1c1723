"""The variance-exploding family: ``a(t) = 1``, ``f = 0`` (MATH.md 1, 3 and 4).

* :class:`VESDE` (Song et al. 2021), also EDM's process with ``sigma`` in [0.002, 80] (Karras et al. 2022);
* :class:`NCSN` (Song & Ermon 2019): the VE SDE with its geometric sigma ladder, level ``i``
  (1 = largest sigma) at ``t = (L - i) / (L - 1)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._util import TimeLike, as_time, require, require_positive, require_positive_int
from .affine import NoiseProcess
from .base import generator_device

__all__ = ["VESDE", "NCSN"]


class VESDE(NoiseProcess):
    """Variance-exploding SDE, ``s(t) = sigma_min (sigma_max / sigma_min)^t`` (MATH.md 1, 4).

    ``a = 1``, ``f = 0``, ``g = sqrt(d s^2 / dt) = s(t) sqrt(2 log(sigma_max / sigma_min))``;
    prior ``N(0, sigma_max^2 I)``. Defaults are Song et al.'s for CIFAR-10.
    """

    t_min = 1e-5
    conditions = ("log_sigma", "time", "sigma")

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        require_positive("sigma_min", sigma_min)
        require_positive("sigma_max", sigma_max)
        require(sigma_min < sigma_max, f"sigma_min ({sigma_min}) must be below sigma_max "
                f"({sigma_max}); e.g. sigma_min=0.01, sigma_max=50")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def signal_scale(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as_time(t))

    def noise_std(self, t: TimeLike) -> Tensor:
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def sigma(self, t: TimeLike) -> Tensor:
        return self.noise_std(t)

    def time_of_sigma(self, sigma: TimeLike) -> Tensor:
        return torch.log(as_time(sigma) / self.sigma_min) / self._log_ratio

    def drift_coef(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as_time(t))

    def diffusion(self, t: TimeLike) -> Tensor:
        return self.noise_std(t) * math.sqrt(2 * self._log_ratio)

    def config(self) -> dict[str, Any]:
        return {"name": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class NCSN(VESDE):
    """NCSN's noise ladder (Song & Ermon 2019; MATH.md section 3) on the VE SDE's time axis.

    ``sigmas[0] = sigma_max > ... > sigmas[L-1] = sigma_min``, geometric
    (NCSNv1 on CIFAR-10: 1 to 0.01, L = 10). Level ``i`` (1-based, 1 = largest
    sigma) sits at ``t = (L - i) / (L - 1)`` of :meth:`continuous`, the VE SDE
    whose ``s(t)`` passes through every rung, so NCSN-trained networks can be
    driven by the VE samplers. Training draws a level uniformly.
    """

    kinds = ("affine", "sde", "ncsn")
    t_min = 0.0  # level L, sigma_min
    train_t_min = 0.0                                       # training draws levels 1..L
    conditions = ("index", "time", "sigma", "log_sigma")

    def noise_condition(self, condition: str, t: Tensor) -> Tensor:
        """NCSN's 0-based level ``(L - 1)(1 - t)`` for ``"index"`` (Song & Ermon feed it to the network),
        else as every affine process."""
        if condition == "index":
            return (self.num_scales - 1) * (1 - t)
        return super().noise_condition(condition, t)

    def sampling_sde(self) -> VESDE:
        return self.continuous()

    def __init__(self, sigma_max: float = 1.0, sigma_min: float = 0.01, num_scales: int = 10):
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max)
        require_positive_int("num_scales", num_scales)
        require(num_scales >= 2, f"num_scales must be at least 2 to span sigma_max..sigma_min, "
                f"got {num_scales}; NCSNv1 uses 10")
        self.num_scales = num_scales
        self.sigmas = self.noise_std(self.level_to_time(torch.arange(1, num_scales + 1)))

    def level_to_time(self, level: int | Tensor) -> Tensor:
        """Time ``t = (L - i) / (L - 1)`` of noise level ``i`` (1 = sigma_max) on the VE axis."""
        return (self.num_scales - as_time(level)) / (self.num_scales - 1)

    def time_to_level(self, t: TimeLike) -> Tensor:
        """Nearest level ``round(L - t (L - 1))`` in ``1..L`` (a long tensor)."""
        lv = torch.round(self.num_scales - as_time(t) * (self.num_scales - 1))
        return lv.clamp(1, self.num_scales).long()

    def continuous(self) -> VESDE:
        """The VE SDE through this ladder (Song et al. 2021, MATH.md 4)."""
        return VESDE(sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def sample_train_times(self, n: int, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> Tensor:
        """Times of uniformly drawn levels (Song & Ermon 2019, the 1/L sum of MATH.md 3)."""
        lv = torch.randint(1, self.num_scales + 1, (n,), generator=generator,
                           device=device or generator_device(generator))
        return self.level_to_time(lv)

    def config(self) -> dict[str, Any]:
        return {"name": "ncsn", "sigma_max": self.sigma_max, "sigma_min": self.sigma_min,
                "num_scales": self.num_scales}
