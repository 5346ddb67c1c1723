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

from ..distributed import Ranks, chunk_ranges, gather_chunks, gather_same
from ..models import DiffusionModel, device_and_dtype
from ..noise import PerSampleNoise
from ._common import SampleResult
from .registry import sample

__all__ = ["sample_many"]


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
    from tqdm.auto import tqdm

    chunks, nfe, accepted, proposed = [], 0, 0.0, 0
    for rows in tqdm(chunk_ranges(num, batch_size, ranks), desc=desc, disable=not (progress and ranks.main),
                     leave=False):
        index = torch.arange(rows.start, rows.stop)
        model = model_for_rows(index)
        noise = PerSampleNoise.for_rows(seed, rows, device_and_dtype(model)[0])
        with torch.no_grad():
            result = sample(model, (len(rows),) + tuple(shape), sampler, steps, noise=noise, **options)
        x = result.samples.detach().float()
        chunks.append((transform(x) if transform is not None else x).cpu())
        nfe = max(nfe, int(result.nfe))
        if result.acceptance is not None:                  # each chunk's rate weighed by its samples
            accepted, proposed = accepted + result.acceptance * len(rows), proposed + len(rows)
    if chunks:
        local = torch.cat(chunks)
    else:                                                  # more ranks than chunks
        empty = torch.zeros((0,) + tuple(shape))
        local = transform(empty).cpu() if transform is not None else empty
    tallies = gather_same(torch.tensor([float(nfe), accepted, float(proposed)], dtype=torch.float64), ranks)
    samples = gather_chunks(local, num, batch_size, ranks)
    if samples is None or tallies is None:
        return None
    total = torch.stack(tallies)
    acceptance = float(total[:, 1].sum() / total[:, 2].sum()) if float(total[:, 2].sum()) > 0 else None
    return SampleResult(samples, int(total[:, 0].max()), acceptance)
