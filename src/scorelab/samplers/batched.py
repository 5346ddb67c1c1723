"""Many samples in batches, over one process or a torchrun job, each with its own seed.

Sample k of a job seeded ``seed`` is drawn from ``PerSampleNoise.for_rows(seed, [k])``,
so it does not depend on the batch size of the other samples' draws or on the
number of processes. The samples are cut into chunks of ``batch_size``; chunk j
is drawn by rank ``j mod W`` and rank 0 gathers them in order
(:mod:`scorelab.distributed`). Since a chunk's content does not depend on W
either, even adaptive solvers (whose step sizes depend on the whole batch) give
bit-identical images on any number of ranks of one machine.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .._util import progress_bar
from ..distributed import Ranks, chunk_ranges, gather_chunks, gather_same
from ..models import DiffusionModel, device_and_dtype
from ..noise import PerSampleNoise
from ._common import SampleResult
from .registry import sample

__all__ = ["sample_many", "map_chunks"]

Chunk = Callable[[range, PerSampleNoise], SampleResult]


def _local_chunks(run: Chunk, num: int, batch_size: int, seeds: Callable[[range], PerSampleNoise],
                  ranks: Ranks, transform: Callable[[Tensor], Tensor] | None, progress: bool, desc: str,
                  empty_shape: Sequence[int]) -> tuple[Tensor, Tensor, Tensor | None]:
    """This rank's chunks, ``run(rows, seeds(rows))`` each: ``(samples, tallies, log evidences)`` with the tallies
    ``[most NFE, accepted proposals (weighted by rows), rows with an acceptance rate]`` and the chunks'
    ``log_evidence`` concatenated (None where the sampler gives none)."""
    chunks, nfe, accepted, proposed, evidence = [], 0, 0.0, 0, []
    for rows in progress_bar(chunk_ranges(num, batch_size, ranks), desc=desc, disable=not (progress and ranks.main),
                             leave=False):
        with torch.no_grad():
            result = run(rows, seeds(rows))
        x = result.samples.detach().float()
        chunks.append((transform(x) if transform is not None else x).cpu())
        nfe = max(nfe, int(result.nfe))
        if result.acceptance is not None:                  # each chunk's rate weighed by its samples
            accepted, proposed = accepted + result.acceptance * len(rows), proposed + len(rows)
        if result.log_evidence is not None:
            evidence.append(result.log_evidence.detach().double().cpu())
    if chunks:
        local = torch.cat(chunks)
    else:                                                  # more ranks than chunks
        empty = torch.zeros((0,) + tuple(empty_shape))
        local = transform(empty).cpu() if transform is not None else empty
    return (local, torch.tensor([float(nfe), accepted, float(proposed)], dtype=torch.float64),
            torch.cat(evidence) if evidence else None)


def _result(samples: Tensor, tallies: Sequence[Tensor], log_evidence: Tensor | None = None) -> SampleResult:
    total = torch.stack(list(tallies))
    acceptance = float(total[:, 1].sum() / total[:, 2].sum()) if float(total[:, 2].sum()) > 0 else None
    return SampleResult(samples, int(total[:, 0].max()), acceptance, log_evidence=log_evidence)


def sample_many(model_for_rows: Callable[[Tensor], DiffusionModel], shape: Sequence[int], num: int,
                sampler: str, steps: int | None = None, *, seed: int = 0, batch_size: int = 256,
                ranks: Ranks = Ranks(), transform: Callable[[Tensor], Tensor] | None = None,
                progress: bool = False, desc: str = "sampling", **options: Any) -> SampleResult | None:
    """``num`` samples of one example's ``shape`` with the named sampler.

    ``model_for_rows(rows)`` is the model for samples ``rows`` (binding their
    labels or guidance). ``transform`` maps each chunk before it is gathered
    (e.g. to uint8, to move fewer bytes). Rank 0 gets a :class:`SampleResult` with all samples on the CPU,
    the most network evaluations any chunk took and, for a Metropolis-corrected sampler, the share of
    proposals accepted over all chunks; the other ranks get None.
    """
    def run(rows: range, noise: PerSampleNoise) -> SampleResult:
        model = model_for_rows(torch.arange(rows.start, rows.stop))
        return sample(model, (len(rows),) + tuple(shape), sampler, steps, noise=noise, **options)

    device = device_and_dtype(model_for_rows(torch.arange(0)))[0]
    local, tallies, _ = _local_chunks(run, num, batch_size, lambda rows: PerSampleNoise.for_rows(seed, rows, device),
                                      ranks, transform, progress, desc, shape)
    gathered = gather_same(tallies, ranks)
    samples = gather_chunks(local, num, batch_size, ranks)
    return None if samples is None or gathered is None else _result(samples, gathered)


def map_chunks(run: Chunk, seeds: Sequence[int], *, batch_size: int = 256, device: torch.device | str = "cpu",
               progress: bool = False, desc: str = "sampling") -> SampleResult:
    """``run(rows, noise)`` on the rows of ``seeds`` in chunks of ``batch_size`` on one process, row k drawing from
    its own seed ``seeds[k]``, so its result depends neither on the other rows nor on the batch size: conditional
    sampling of many inputs (``scorelab inpaint``, ``edit``). The results' samples (and, from SMC, their
    ``log_evidence``) are concatenated in order."""
    local, tallies, evidence = _local_chunks(run, len(seeds), batch_size,
                                             lambda rows: PerSampleNoise([seeds[k] for k in rows], device), Ranks(),
                                             None, progress, desc, ())
    return _result(local, [tallies], evidence)
