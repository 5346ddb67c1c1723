"""A worker of tests/test_elastic.py: ``scorelab train`` with a fault injected into the first attempt.

    python tests/elastic_worker.py FAULT -- scorelab-arguments...        (under torchrun)
    python tests/elastic_worker.py caller STORE RANK WORLD -- scorelab-arguments...

FAULT is ``none``, ``kill-step:RANK:STEP`` (SIGKILL after that optimizer step), ``kill-write:STEP`` (rank 0,
SIGKILL inside that step's checkpoint write, after its first file), ``slow-write:STEP:SECONDS`` (rank 0's
files of that step take SECONDS longer) or ``sync-writes:`` before it (the control: rank 0 writes in its
training thread); several faults, comma-separated, fire in successive attempts. A fault fires once: fault i
leaves ``fault-fired.i`` in the run folder, and a worker started after it (a restart) arms the next fault, or
none and runs clean (torchrun's restart count is per node, so it cannot tell).

``caller`` makes its own gloo group (file:// store, no env:// variables, as Ray Train or Lightning Fabric
would), trains through the library, and checks that the group is still there and works afterwards.

The processes that torchrun does not launch run :func:`run` forked from tests/preforked.py's server: the same
command, without the seconds of imports.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def _out(argv: list[str]) -> Path:
    return Path(argv[argv.index("--out") + 1])


def _install(spec: str, argv: list[str]) -> None:
    import scorelab.store.checkpoints as checkpoints
    import scorelab.training.preview as preview
    import scorelab.training.trainer as trainer

    if spec.startswith("sync-writes:"):
        trainer.BackgroundWriter.submit = lambda self, fn, *a, holds_state=False, **k: fn(*a, **k)
        spec = spec.removeprefix("sync-writes:")
    faults, out = spec.split(","), _out(argv)
    armed = next((i for i in range(len(faults)) if not (out / f"fault-fired.{i}").exists()), None)
    if armed is None:
        return
    kind, *values = faults[armed].split(":")
    rank, marker = int(os.environ.get("RANK", "0")), out / f"fault-fired.{armed}"

    def _fired() -> None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))

    if kind == "kill-step" and rank == int(values[0]):
        update, at = trainer._update, int(values[1])

        def killing_update(run, step, *args):
            update(run, step, *args)
            if step == at:
                _fired()
                os.kill(os.getpid(), signal.SIGKILL)
        trainer._update = killing_update
    elif kind == "kill-write" and rank == 0:
        save_file, name = checkpoints.save_file, f"step-{int(values[0]):08d}"

        def killing_save(content, path):
            save_file(content, path)
            if name in path:
                _fired()
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoints.save_file = killing_save
    elif kind == "slow-write" and rank == 0:
        at, seconds = int(values[0]), float(values[1])
        save_checkpoint, save_preview = trainer.save_checkpoint, preview.save_preview

        def slow_checkpoint(directory, step, **kwargs):
            if step == at:
                _fired()
                time.sleep(seconds)
            return save_checkpoint(directory, step, **kwargs)

        def slow_preview(x, spec, step, out):
            time.sleep(seconds if step == at else 0)
            return save_preview(x, spec, step, out)
        trainer.save_checkpoint, preview.save_preview = slow_checkpoint, slow_preview


def _caller(store: str, rank: int, world: int, argv: list[str]) -> None:
    """Train as a library user whose launcher already made the process group."""
    import torch
    import torch.distributed as dist

    from scorelab.cli import main

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    assert main(argv) == 0
    assert dist.is_initialized(), "scorelab destroyed the caller's process group"
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    assert total.item() == world * (world + 1) / 2
    dist.destroy_process_group()


def run(args: list[str]) -> int:
    cut = args.index("--")
    head, scorelab_args = args[:cut], args[cut + 1:]
    if head[0] == "caller":
        _caller(head[1], int(head[2]), int(head[3]), scorelab_args)
        return 0
    if head[0] != "none":
        _install(head[0], scorelab_args)
    from scorelab.cli import main

    return main(scorelab_args)


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
