"""Noise processes: one forward family seen through three lenses (MATH.md sections 1-4, 7).

* :mod:`~scorelab.processes.base`: the contract every process declares (:class:`Process`, its
  :attr:`~Process.kinds`, :func:`require_kind`) and the SDE base ``dx = f dt + g dw`` (:class:`SDE`);
* :mod:`~scorelab.processes.affine`: the affine case ``x_t = a(t) x0 + s(t) eps`` (:class:`NoiseProcess`);
* :mod:`~scorelab.processes.vp`, :mod:`~scorelab.processes.ve`: VP, sub-VP and DDPM; VE and NCSN;
* :mod:`~scorelab.processes.general`: SDEs with any drift (:class:`GeneralSDE`, the named Langevin SDEs);
* :mod:`~scorelab.processes.config`: every process by name (:func:`register_process`,
  :func:`process_from_config`).

The number of sampling steps belongs to samplers, never to a process; sampler and training settings
(a Langevin corrector's signal-to-noise ratio, EDM's training noise levels) live with the samplers and
objectives.
"""

from .affine import NoiseProcess
from .base import KINDS, SIMULATE_STEPS, SDE, Process, generator_device, kind_error, require_kind
from .config import PROCESSES, process_from_config, register_process
from .general import (NAMED_SDES, DoubleWellPotential, GeneralSDE, LogisticPotential, Potential, langevin_sde,
                      named_sde, register_sde)
from .ve import NCSN, VESDE
from .vp import DDPM, VPSDE, SubVPSDE

__all__ = ["Process", "SDE", "NoiseProcess", "VPSDE", "SubVPSDE", "VESDE", "DDPM", "NCSN", "GeneralSDE",
           "KINDS", "require_kind", "kind_error", "SIMULATE_STEPS", "generator_device", "PROCESSES", "register_process", "process_from_config",
           "NAMED_SDES", "named_sde", "register_sde", "langevin_sde", "Potential", "LogisticPotential",
           "DoubleWellPotential"]
