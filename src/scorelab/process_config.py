"""Rebuild any process from the config saved beside a checkpoint (:meth:`SDE.config`).

The affine processes by their name (``"ddpm"``, ``"ncsn"``, ``"vp"``, ``"subvp"``, ``"ve"``),
a general SDE by its registered drift (``{"name": "general", "drift": NAME, **options}``), multinomial
diffusion (``"multinomial"``) by its categories, steps, schedule and kernel.
"""

from __future__ import annotations

from typing import Any

from ._util import require
from .general_sde import named_sde
from .processes import AFFINE_PROCESSES, SDE

__all__ = ["process_from_config"]


def process_from_config(config: dict[str, Any]) -> SDE:
    """Rebuild a process from :meth:`SDE.config` (as saved beside a checkpoint)."""
    config = dict(config)
    name = config.pop("name", None)
    if name == "multinomial":                           # categorical data (MATH.md 10)
        from .discrete.process import MultinomialDiffusion

        return MultinomialDiffusion(**config)  # type: ignore[return-value]
    if name == "general":                               # a named SDE with a non-affine drift
        require("drift" in config, "a general SDE's config names its drift: {'name': 'general', 'drift': NAME}")
        return named_sde(config.pop("drift"), **config)
    require(name in AFFINE_PROCESSES, f"unknown process {name!r}; choose one of "
            f"{sorted(AFFINE_PROCESSES) + ['general', 'multinomial']}")
    return AFFINE_PROCESSES[name](**config)
