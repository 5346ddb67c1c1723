"""Where randomness comes from: a ``torch.Generator``, or a :class:`Noise` that decides which draws each
row of a batch gets. One protocol for every sampler, loss and process (docs/DESIGN.md: randomness is an
argument, never global).

* :class:`PerSampleNoise`: one generator per sample, so sample ``k`` is the same whatever the batch size
  (as EDM's code does); the samplers' ``noise=``.
* :class:`BatchNoise`: every draw made for a whole global batch and these rows kept, so a row's numbers do
  not depend on how the batch is split over processes; the trainer's.

:func:`normal` draws from any of them (``None``: the global generator); :func:`uniform` turns those draws into
uniforms through the normal CDF, so that they too follow the rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor

from ._util import require

__all__ = ["Noise", "PerSampleNoise", "BatchNoise", "Randomness", "normal", "uniform", "randn_like"]


class Noise(ABC):
    """A source of standard normal draws for a batch: ``randn(shape, dtype=, device=)`` with ``shape[0]`` rows."""

    @abstractmethod
    def randn(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        """Draws of ``shape`` for the batch's rows."""


#: Any source of randomness scorelab takes.
Randomness = torch.Generator | Noise | None


def normal(shape: Sequence[int], source: Randomness = None, *, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of ``shape``. From a generator the draw happens on the generator's device and is
    then moved to ``device``, so a CPU generator serves CUDA data and gives the same numbers on any device."""
    if isinstance(source, Noise):
        return source.randn(shape, dtype=dtype, device=device)
    if source is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    x = torch.randn(tuple(shape), generator=source, device=source.device, dtype=dtype)
    return x if device is None else x.to(device)


def uniform(shape: Sequence[int], source: Randomness = None, *, device: torch.device | str | None = None) -> Tensor:
    """Uniforms on (0, 1) of ``shape``, float64: :func:`normal` draws through the normal CDF (so a :class:`Noise`
    gives each row its own, as it does normals)."""
    return torch.special.ndtr(normal(shape, source, device=device, dtype=torch.float64))


def randn_like(x: Tensor, source: Randomness) -> Tensor:
    """Standard normal noise shaped like ``x``, on its device and in its dtype."""
    return normal(x.shape, source, device=x.device, dtype=x.dtype)


class BatchNoise(Noise):
    """Standard normals for ``rows`` of a batch of ``batch_size``: every draw is made for the whole
    batch from ``generator`` and these rows are kept, so the numbers a row gets do not depend on how
    the batch is split over processes (torchrun ranks)."""

    def __init__(self, generator: torch.Generator | None, batch_size: int, rows: slice | Tensor = slice(None)):
        self.generator, self.batch_size, self.rows = generator, batch_size, rows

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        full = normal((self.batch_size,) + tuple(shape[1:]), self.generator, device=device, dtype=dtype)
        return full[self.rows]


class PerSampleNoise(Noise):
    """One generator per sample, seeded ``seeds[k]``: sample k's noise ignores the batch size."""

    #: Sample k of a job seeded ``seed`` is drawn from ``seed * SEED_STRIDE + k``.
    SEED_STRIDE = 1_000_003

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        require(len(seeds) > 0, "PerSampleNoise needs at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(device).manual_seed(s) for s in self.seeds]

    @classmethod
    def for_rows(cls, seed: int, rows: Sequence[int] | Tensor, device: torch.device | str = "cpu"
                 ) -> "PerSampleNoise":
        """The noise of samples ``rows`` of a job seeded ``seed``: sample k's own seed ignores batching
        and the number of processes (``seed * 1_000_003 + k``)."""
        return cls([int(seed) * cls.SEED_STRIDE + int(k) for k in rows], device)

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, rows: Sequence[int] | range) -> "PerSampleNoise":
        """The noise of some of these samples: their own generators, shared (draws from either advance both)."""
        part = object.__new__(PerSampleNoise)
        part.seeds = [self.seeds[k] for k in rows]
        part.generators = [self.generators[k] for k in rows]
        return part

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        require(shape[0] == len(self.generators),
                f"batch of {shape[0]} but PerSampleNoise has {len(self.generators)} seeds")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device=g.device) for g in self.generators]
        return torch.stack([r.to(device or r.device) for r in rows])
