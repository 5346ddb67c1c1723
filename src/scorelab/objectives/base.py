"""The objective registry: every training loss by name, with its options and their defaults (docs/DESIGN.md).

An :class:`Objective` says what the trainer needs to know and nothing more: the per-example loss
function, its options (the run's ``loss_options`` are checked against them and recorded in full), the
process kinds it takes, how it draws training times (the process's own distribution unless it says
otherwise), whether labels condition the model or are what it predicts, and any state it keeps over a run
(:class:`ObjectiveState`, checkpointed). ``scorelab train --loss NAME --loss-option KEY=VALUE`` reads the
same table, so a loss registered with :func:`register_objective` is trained without touching the trainer.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._util import as_time, flat_dim, mean_except_batch, require, sum_except_batch
from ..models import DiffusionModel, Prediction
from ..noise import Randomness
from ..processes import Process

__all__ = ["Objective", "ObjectiveState", "OBJECTIVES", "register_objective", "objective", "noisy_prediction",
           "reduce", "check_batch", "LossFunction"]

#: ``loss(model, x0, *, t, noise, randomness, labels, state, **options) -> per-example loss``: ``t`` and ``noise``
#: are the batch's times and eps (``noise`` None where the process has no eps), ``randomness`` the source of any
#: other draw, ``labels`` the batch's labels where the objective predicts them, ``state`` its run state.
LossFunction = Callable[..., Tensor]


class ObjectiveState(nn.Module, metaclass=ABCMeta):
    """What an objective keeps over a run (its buffers are checkpointed). With ``deferred`` the losses only
    record their terms; the trainer applies them once per optimizer step, gathered from every rank in a fixed
    order, so all ranks hold the same state (:meth:`take_pending`, :meth:`update`)."""

    deferred: bool = False

    @abstractmethod
    def take_pending(self) -> tuple[Tensor, Tensor]:
        """The recorded ``(times, terms)`` since the last call, and forget them."""

    @abstractmethod
    def update(self, t: Tensor, term: Tensor) -> None:
        """Apply a step's ``(times, terms)``, gathered from every rank."""


@dataclass(frozen=True)
class Objective:
    """One training loss (see the module's docstring)."""

    describe: str
    loss: LossFunction
    kinds: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: ``times(process, n, generator, device, **options)``: how training times are drawn; None: the process's.
    times: Callable[..., Tensor] | None = None
    #: ``"condition"``: labels condition a class-conditional model (bound to it by a wrapper); ``"argument"``: they
    #: do, and the loss hands them to the model itself; ``"target"``: they are what the model predicts.
    labels: str = "condition"
    #: The model must predict its variance (Nichol & Dhariwal's learned variance).
    learned_variance: bool = False
    #: ``state(process, **options) -> ObjectiveState | None``: what the objective keeps over a run.
    state: Callable[..., ObjectiveState | None] | None = None

    def resolve(self, name: str, given: dict[str, Any]) -> dict[str, Any]:
        """Every option's value: the defaults with ``given`` applied, each checked (one-line errors)."""
        unknown = sorted(set(given) - set(self.options))
        require(not unknown, f"the loss {name!r} takes no option {unknown}; "
                + (f"it takes {self.options}" if self.options else "it takes none"))
        out = {**self.options, **given}
        for key, value in out.items():
            default = self.options[key]
            if isinstance(default, bool):
                require(isinstance(value, bool), f"--loss-option {key} must be true or false, got {value!r}")
            elif isinstance(default, (int, float)):
                require(isinstance(value, (int, float)) and not isinstance(value, bool),
                        f"--loss-option {key} must be a number, got {value!r}")
                require(isinstance(default, float) or isinstance(value, int),
                        f"--loss-option {key} must be an integer, got {value!r}")
                out[key] = type(default)(value)
            if key in self.choices:
                require(out[key] in self.choices[key], f"--loss-option {key} must be one of {self.choices[key]}, "
                        f"got {out[key]!r}")
        return out

    def draw_times(self, process: Process, n: int, generator: torch.Generator | None,
                   device: torch.device | str | None, options: dict[str, Any]) -> Tensor:
        """The training times of a batch of ``n``."""
        if self.times is None:
            return process.sample_train_times(n, generator, device=device)
        return self.times(process, n, generator, device, **options)


#: Every training loss, by name.
OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, objective: Objective) -> None:
    """Add ``objective`` to the table under ``name`` (``scorelab train --loss NAME`` trains with it)."""
    require(isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum(),
            f"a loss name is a word such as 'my-loss', got {name!r}")
    OBJECTIVES[name] = objective


def objective(name: str) -> Objective:
    """The registered objective ``name``, or a one-line error naming the others."""
    require(name in OBJECTIVES, f"unknown loss {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


_REDUCTIONS = ("sum", "mean")


def reduce(x: Tensor, reduction: str) -> Tensor:
    """A per-example total (``"sum"``, the squared norms of MATH.md) or per-dimension mean (``"mean"``)."""
    require(reduction in _REDUCTIONS, f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")
    return sum_except_batch(x) if reduction == "sum" else mean_except_batch(x)


def check_batch(x0: Tensor) -> None:
    flat_dim(x0)
    require(bool(torch.isfinite(x0).all()), "x0 contains NaN or Inf; check the data pipeline")


def noisy_prediction(model: DiffusionModel, x0: Tensor, t: Tensor | float | None, noise: Tensor | None,
                     generator: Randomness) -> tuple[Prediction, Tensor]:
    """Draw (or take) ``t`` and ``eps``, corrupt ``x0`` by the model's affine process and ask the model;
    returns (prediction, eps)."""
    check_batch(x0)
    process = model.process
    if t is None:
        require(generator is None or isinstance(generator, torch.Generator),
                "pass the times t along with batch randomness")
        t = process.sample_train_times(x0.shape[0], generator, device=x0.device)
    x_t, noise = process.perturb(x0, t, noise=noise, generator=generator)
    return model.predict(x_t, as_time(t, x0)), noise
