"""Every process by the name its config saves, and rebuilding one from that config (docs/DESIGN.md).

``process_from_config({"name": "ddpm", "num_steps": 1000, ...})`` looks the name up in one table,
:data:`PROCESSES`, and calls its factory with the rest. The affine processes, and the general SDEs by their
registered drift (``{"name": "general", "drift": NAME, **options}``), are there from the start; other
packages add theirs with :func:`register_process` (``scorelab.discrete`` adds ``"multinomial"``), and so
can a user, with a process of their own that the trainer, the samplers and checkpoints then take.
"""

from __future__ import annotations

from typing import Any, Callable

from .._util import require
from .base import Process
from .general import named_sde
from .ve import NCSN, VESDE
from .vp import DDPM, VPSDE, SubVPSDE

__all__ = ["PROCESSES", "register_process", "process_from_config"]


def _general(drift: str | None = None, **options: Any) -> Process:
    require(drift is not None, "a general SDE's config names its drift: {'name': 'general', 'drift': NAME}")
    return named_sde(drift, **options)


#: name -> factory(**options) -> the process; ``config()["name"]`` of each process is its key here.
PROCESSES: dict[str, Callable[..., Process]] = {
    "ddpm": DDPM, "ncsn": NCSN, "vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "general": _general}


def register_process(name: str, factory: Callable[..., Process]) -> None:
    """Make ``process_from_config({"name": name, **options})`` build ``factory(**options)``: the process's
    :meth:`~scorelab.processes.Process.config` must return that dict, so its checkpoints rebuild it."""
    require(isinstance(name, str) and name and name.replace("_", "").replace("-", "").isalnum(),
            f"a process name is a word such as 'my_process', got {name!r}")
    require(callable(factory), "factory must be a class or function returning a Process")
    PROCESSES[name] = factory


def process_from_config(config: dict[str, Any]) -> Process:
    """Rebuild a process from its :meth:`~scorelab.processes.Process.config` (as saved beside a checkpoint)."""
    config = dict(config)
    name = config.pop("name", None)
    require(name in PROCESSES, f"unknown process {name!r}; choose one of {sorted(PROCESSES)} (register your own "
            "with scorelab.processes.register_process before building or loading it)")
    try:
        process = PROCESSES[name](**config)
    except TypeError as e:
        raise ValueError(f"the options {config} do not fit the process {name!r}: {e}") from None
    require(isinstance(process, Process), f"the factory of {name!r} must return a Process, got "
            f"{type(process).__name__}")
    return process
