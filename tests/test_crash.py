"""A real training process killed with SIGKILL at random moments, resumed each time, ends bit-identical to an
uninterrupted run. With a checkpoint every step, kills often land while a checkpoint is being written
(the half-written folder it leaves behind is counted and printed).

The processes are forked from a server that has imported scorelab (tests/preforked.py): each is a process of its
own that starts as a fresh ``python -m scorelab.cli`` would, without the seconds of imports."""

import random
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import preforked
from scorelab.store import latest_checkpoint

ARGS = ["train", "--data", "digits", "--steps", "24", "--batch-size", "16", "--lr", "1e-3", "--warmup", "0",
        "--checkpoint-every", "1", "--keep-last", "2", "--sample-every", "1000", "--log-every", "1",
        "--process-option", "num_steps=50", "--network-option", "base_channels=16", "--network-option",
        "norm_groups=8", "--network-option", "num_res_blocks=1", "--network-option", "attention_resolutions=[]",
        "--network-option", "dropout=0.1", "--class-conditional"]


def _command(out: Path, resume: bool) -> list[str]:
    return [*ARGS, "--out", str(out), *(["--resume"] if resume else [])]


def _logged_steps(out: Path) -> int:
    try:
        return len((out / "loss.csv").read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.fixture
def fork_server():
    yield
    preforked.stop()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, fork_server):
    reference = tmp_path / "reference"
    proc = preforked.start(_command(reference, False), tmp_path / "reference.log")
    proc.join(600)
    assert proc.exitcode == 0, (tmp_path / "reference.log").read_text()[-3000:]
    # Seconds per step on this machine (loss.csv's cumulative 'seconds'): kills land within about two
    # steps, so four of them fit in the 24 steps on a fast machine as on a slow one.
    seconds = [float(r.split(",")[-1]) for r in (reference / "loss.csv").read_text().splitlines()[1:]]
    per_step = (seconds[-1] - seconds[0]) / (len(seconds) - 1)

    crashed = tmp_path / "crashed"
    rng = random.Random(0)
    kills = interrupted_writes = 0
    for attempt in range(20):
        # Left behind by a kill mid-write (each start clears them): count them before the next start.
        interrupted_writes += len(list((crashed / "checkpoints").glob(".tmp-*")))
        log = tmp_path / f"attempt-{attempt}.log"
        proc = preforked.start(_command(crashed, attempt > 0), log)
        if kills < 4:
            # Wait until this process trains (its loss log grows), then die within the next few steps;
            # every step writes a checkpoint, so some kills land inside a write.
            before = _logged_steps(crashed)
            while proc.is_alive() and _logged_steps(crashed) <= before:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 2 * per_step))
            if proc.is_alive():
                proc.kill()                               # SIGKILL
                kills += 1
        proc.join(600)
        assert proc.exitcode in (0, -signal.SIGKILL), log.read_text()[-3000:]
        last = latest_checkpoint(crashed / "checkpoints")
        if proc.exitcode == 0 and last is not None and last.name == "step-00000024":
            break
    assert kills >= 3, "the run finished before it could be killed: make it longer"
    print(f"{kills} kills, {interrupted_writes} of them during a checkpoint write")
    final_ref = latest_checkpoint(reference / "checkpoints")
    final = latest_checkpoint(crashed / "checkpoints")
    assert final.name == final_ref.name == "step-00000024"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(final_ref / name)), load_file(str(final / name))
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all(), (name, key)
    # Every step's loss was logged exactly once, and equals the uninterrupted run's.
    ref_rows = [r.split(",")[:2] for r in (reference / "loss.csv").read_text().splitlines()[1:]]
    rows = [r.split(",")[:2] for r in (crashed / "loss.csv").read_text().splitlines()[1:]]
    assert rows == ref_rows
