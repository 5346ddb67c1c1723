"""Running on several processes: ``torchrun`` launches, each process is a *rank*.

scorelab follows the usual torch.distributed recipe (DistributedDataParallel;
NCCL on GPUs, gloo on CPUs) with one rule that makes results independent of
the number of ranks: **every random draw is made for the whole job and each
rank keeps its share**.

* Training: the global batch of a step (its indices, flips, label dropout,
  times and noise) is drawn from ``(seed, step)`` on every rank, and rank r
  trains on rows ``[r B/W, (r+1) B/W)``. DDP averages the gradients, so K
  ranks take the same step as one process with the same global batch, up to
  the order of float sums.
* Sampling: sample k is seeded by ``(seed, k)`` (:meth:`PerSampleNoise.for_rows`),
  the samples are cut into chunks of ``batch_size`` and chunk j is drawn by
  rank ``j mod W``; rank 0 gathers them. Chunks do not depend on W, so the
  images are bit-identical on 1, 2 or 8 ranks of the same machine.

A :class:`Ranks` says who this process is; functions take it as an argument
(``Ranks()`` is the single process), so nothing depends on hidden state.
"""

from __future__ import annotations

import datetime
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from ._util import require

__all__ = ["resolve_device", "Ranks", "launched", "under_torchrun", "start", "session", "current", "rank_device",
           "broadcast_flag", "all_equal", "all_mean", "gather_chunks", "gather_same", "chunk_ranges", "barrier",
           "timeout"]

def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:K or mps") from None
    if device.type == "cuda":
        require(torch.cuda.is_available(), f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
        require(device.index is None or device.index < torch.cuda.device_count(),
                f"--device {name} asked for, but there are {torch.cuda.device_count()} CUDA GPUs; use cuda:0..")
    if device.type == "mps":
        require(torch.backends.mps.is_available(), "--device mps asked for, but MPS is not available; use --device cpu")
    return device


def timeout(minutes: float | None = None) -> datetime.timedelta:
    """How long a rank waits for the others at a collective, and for the rendezvous: ``minutes`` (the
    ``--dist-timeout`` option), else ``$SCORELAB_DIST_TIMEOUT_MIN``, else 60."""
    if minutes is None:
        text = os.environ.get("SCORELAB_DIST_TIMEOUT_MIN", "60")
        try:
            minutes = float(text)
        except ValueError:
            minutes = -1.0
        require(minutes > 0, f"SCORELAB_DIST_TIMEOUT_MIN={text!r} must be a positive number of minutes")
    require(0 < minutes < 1e6, f"the process-group timeout must be a positive number of minutes, got {minutes!r}")
    return datetime.timedelta(minutes=minutes)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, writes checkpoints and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rows(self, total: int) -> slice:
        """This rank's contiguous share of a global batch of ``total`` rows (``total`` divisible by W)."""
        require(total % self.world_size == 0, f"the global batch of {total} does not split evenly over "
                f"{self.world_size} processes; pick a batch size divisible by the number of processes")
        per = total // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def launched() -> bool:
    """True in a process started by ``torchrun`` (or any launcher that sets the env:// variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def under_torchrun() -> bool:
    """True in a worker that torchrun's agent started (it may be restarted: ``scorelab train`` resumes by itself)."""
    return launched() and "TORCHELASTIC_RUN_ID" in os.environ


def current() -> Ranks:
    """The Ranks of the initialised process group, or the single process."""
    if not (dist.is_available() and dist.is_initialized()):
        require(not launched() or int(os.environ["WORLD_SIZE"]) == 1,
                "this process was launched by torchrun but has not joined the process group; call "
                "scorelab.distributed.start() (or use `with scorelab.distributed.session():`) first")
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), _local_rank())


def _local_rank() -> int:
    """``LOCAL_RANK`` (torchrun, Ray Train, Lightning Fabric and accelerate set it), else the GPU this process
    selected (``torch.cuda.set_device``), else 0."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0


def rank_device(name: str, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda`` (or ``auto`` on a GPU machine) means ``cuda:LOCAL_RANK``."""

    device = resolve_device(name)
    if ranks.distributed and device.type == "cuda":
        require(device.index is None or name == "auto",
                f"--device {name} names one GPU, but under torchrun each process takes cuda:LOCAL_RANK; "
                "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        require(ranks.local_rank < torch.cuda.device_count(),
                f"local rank {ranks.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc-per-node)")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


def shared_store_may_hang() -> bool:
    """A torchrun job of several nodes that may restart its workers while they share the agents' store: each
    node counts its own restarts (a node restarted for another's failure keeps count 0), torch separates
    attempts by that count, so the restarted workers can read a previous attempt's keys and hang."""
    env = os.environ
    return (env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(env.get("GROUP_WORLD_SIZE", "1")) > 1
            and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0)


def start(device: str = "auto", timeout_minutes: float | None = None) -> tuple[Ranks, torch.device]:
    """This process's place in the job and its device; returns (ranks, device).

    A process group that already exists (made by torchrun's workers before, or by the caller: Ray Train,
    Lightning Fabric, accelerate, a script's own ``init_process_group``) is used as it is: never
    re-initialized. Otherwise a process launched with the env:// variables (by ``torchrun`` with one process
    too) joins the group (NCCL for CUDA, else gloo) with a timeout of ``timeout_minutes`` (:func:`timeout`);
    outside both this is the single process on ``device``.
    """
    if dist.is_available() and dist.is_initialized():
        ranks = current()
        return ranks, rank_device(device, ranks)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    require(world == 1 or launched(), f"WORLD_SIZE={world} is set but not RANK, MASTER_ADDR and MASTER_PORT; "
            "launch with torchrun, which sets them all")
    if world == 1 and not under_torchrun():          # the single process (env:// variables a scheduler left too)
        ranks = Ranks()
        return ranks, rank_device(device, ranks)
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), _local_rank())
    dev = rank_device(device, ranks)
    if ranks.main and shared_store_may_hang():
        print("scorelab: warning: torchrun shares its rendezvous store with the workers of every restart, so after "
              "a failure the nodes' workers can read each other's stale keys and hang; launch with "
              "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/distributed.md)", file=sys.stderr)
    if dev.type == "cuda":                                  # NCCL's collectives run on this rank's own GPU
        torch.cuda.set_device(dev)
    wait = timeout(timeout_minutes)
    host = os.environ["MASTER_ADDR"]
    where = f"[{host}]:{os.environ['MASTER_PORT']}" if ":" in host else f"{host}:{os.environ['MASTER_PORT']}"
    advice = ("check that the rendezvous address is reachable from every node and that every node was started "
              "(or raise --dist-timeout)")
    if not ranks.main or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":    # someone else hosts the store
        _reach(host, int(os.environ["MASTER_PORT"]), wait.total_seconds(),
               f"rank {ranks.rank} could not reach the process group's store at {where} within "
               f"{wait.total_seconds():g} s; {advice}")
    try:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=wait)
    except (RuntimeError, TimeoutError) as e:               # DistNetworkError, DistStoreError, gloo's mesh
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"rank {ranks.rank} could not join the process group at {where} within "
                         f"{wait.total_seconds():g} s ({first}); {advice}") from None
    return ranks, dev


def _reach(host: str, port: int, seconds: float, message: str) -> None:
    """Wait until ``host:port`` accepts a connection (the store's host may start later), else a one-line error
    (before torch's own store client, whose failure is pages of C++ log)."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise ValueError(message) from None
            time.sleep(0.2)


@contextmanager
def session(device: str = "auto", timeout_minutes: float | None = None) -> Iterator[tuple[Ranks, torch.device]]:
    """``with session(args.device) as (ranks, device):`` joins the group, and leaves it after only if it joined
    it here (a group the caller made is the caller's to destroy)."""
    joined = dist.is_available() and dist.is_initialized()
    ranks, dev = start(device, timeout_minutes)
    try:
        yield ranks, dev
    finally:
        if not joined and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's ``flag`` on every rank (so that all ranks take the same branch)."""
    if not ranks.distributed:
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_gather_same(x: Tensor, ranks: Ranks) -> Tensor:
    """Every rank's ``x`` (the same shape on all) concatenated in rank order, on every rank."""
    if not ranks.distributed:
        return x
    y = x.to(_comm_device()).contiguous()
    parts = [torch.empty_like(y) for _ in range(ranks.world_size)]
    dist.all_gather(parts, y)
    return torch.cat(parts).to(x.device)


def all_equal(value: int, ranks: Ranks) -> bool:
    """Whether every rank holds the same ``value`` (the same answer on all ranks)."""
    if not ranks.distributed:
        return True
    t = torch.tensor([value, -value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == -int(t[1])


def all_mean(x: Tensor, ranks: Ranks) -> Tensor:
    """The mean of ``x`` over the ranks (``x`` itself for the single process); detached."""
    if not ranks.distributed:
        return x.detach()
    y = x.detach().to(_comm_device(), torch.float64).clone()
    dist.all_reduce(y)
    return (y / ranks.world_size).to(x.device, x.dtype)


def chunk_ranges(num: int, batch_size: int, ranks: Ranks) -> list[range]:
    """This rank's chunks of ``range(num)``: chunk j = ``[j b, (j+1) b)`` goes to rank ``j mod W``."""
    require(num >= 1 and batch_size >= 1, f"need num >= 1 and batch_size >= 1, got {num} and {batch_size}")
    starts = range(0, num, batch_size)
    return [range(s, min(s + batch_size, num)) for j, s in enumerate(starts) if j % ranks.world_size == ranks.rank]


def gather_chunks(local: Tensor, num: int, batch_size: int, ranks: Ranks) -> Tensor | None:
    """Rank 0 gets all ``num`` rows in order from the ranks' :func:`chunk_ranges` rows (concatenated in
    ``local``); other ranks get None. The single process gets ``local``.

    Gathered one round of W chunks at a time, so a GPU holds at most W chunks
    of the gather at once; rank 0 assembles the result on the CPU.
    """
    if not ranks.distributed:
        return local
    mine = chunk_ranges(num, batch_size, ranks)
    require(len(local) == sum(len(r) for r in mine),
            f"rank {ranks.rank} holds {len(local)} rows, expected {sum(len(r) for r in mine)}")
    device = _comm_device()
    rest = tuple(local.shape[1:])
    out = torch.empty((num,) + rest, dtype=local.dtype) if ranks.main else None
    num_chunks = -(-num // batch_size)
    at = 0
    for k in range(-(-num_chunks // ranks.world_size)):         # round k: chunk k W + r from rank r
        send = torch.zeros((batch_size,) + rest, dtype=local.dtype, device=device)
        if k < len(mine):
            send[:len(mine[k])] = local[at:at + len(mine[k])].to(device)
            at += len(mine[k])
        parts = [torch.empty_like(send) for _ in range(ranks.world_size)] if ranks.main else None
        dist.gather(send, parts, dst=0)
        if out is not None and parts is not None:
            for r, part in enumerate(parts):
                j = k * ranks.world_size + r
                if j < num_chunks:
                    lo, hi = j * batch_size, min((j + 1) * batch_size, num)
                    out[lo:hi] = part[:hi - lo].cpu()
    return out


def gather_same(x: Tensor, ranks: Ranks) -> list[Tensor] | None:
    """Every rank's ``x`` (same shape and dtype on all), in rank order, on rank 0; None on the others."""
    if not ranks.distributed:
        return [x]
    device = _comm_device()
    y = x.to(device)
    parts = [torch.empty_like(y) for _ in range(ranks.world_size)] if ranks.main else None
    dist.gather(y, parts, dst=0)
    return [p.cpu() for p in parts] if parts is not None else None
