"""Training that survives losing a worker, on gloo and the CPU: two torchrun "nodes" on localhost with the c10d
rendezvous, workers killed (inside rank 0's checkpoint write, then mid-run), the elastic job restarted by
torchrun and resumed by ``--resume auto``: its final weights equal an uninterrupted run's bit for bit. Also a
process group made by the caller, a rank slow on I/O under a short timeout, and an unreachable rendezvous.

The faults are injected by tests/elastic_worker.py, each into one attempt. The slow-I/O run is the uninterrupted
reference too, and it and its control run in the background from the module's start: they mostly wait (on a
slow write, on a timeout), while the fault test's job uses the CPU. The processes that torchrun does not launch
(the caller's group, the unreachable rendezvous, the uneven batch) are forked from a server that has imported
what a run imports (tests/preforked.py): each is a process of its own, without the seconds of imports.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import elastic_worker
import preforked
from scorelab.store import list_checkpoints

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")

WORKER = str(Path(__file__).with_name("elastic_worker.py"))
# A small model on 2-D points, 8 steps of a global batch of 32, a checkpoint every 2. (The checkerboard is made
# by numpy alone: two_moons would import sklearn, a second more in each of the dozen training processes here.)
TRAIN = ["train", "--framework", "ddpm", "--data", "points:checkerboard", "--steps", "8", "--batch-size", "32",
         "--lr", "1e-2", "--warmup", "0", "--process-option", "num_steps=50", "--device", "cpu", "--seed", "7",
         "--log-every", "1", "--checkpoint-every", "2", "--keep-last", "5", "--sample-every", "1000",
         "--num-preview", "8", "--preview-steps", "2"]
# The slow-I/O run: a preview at step 6 too, and a 6-second process-group timeout. Rank 0's step-6 checkpoint and
# preview are slowed (step 6, so that the writer never holds more than the two checkpoint copies it allows
# before it makes training wait: with step 4's still being written, step 8's would wait for it).
SLOW_IO = ("--sample-every", "6", "--dist-timeout", "0.1")
SLOW_WRITE = "slow-write:6:12"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Job:
    """Processes whose output goes to files beside ``out`` (a job left running in the background must not block on
    a full pipe)."""

    def __init__(self, cmds: list[list[str]], out: Path, env: dict[str, str]):
        self.logs = [out.with_name(f"{out.name}-{i}.log") for i in range(len(cmds))]
        self.procs = []
        for cmd, log in zip(cmds, self.logs):
            with open(log, "w") as f:
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def kill(self) -> None:
        """A job still running (hung, or its result never asked for) must not outlive the test: SIGTERM, on which
        torchrun's agent stops its workers (they run in sessions of their own), then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in self.procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, sig)
            for p in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=15)

    def finish(self) -> tuple[int, str]:
        """The worst exit code and the end of each process's output, once all have ended (240 s at most)."""
        try:
            for p in self.procs:
                p.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
        logs = [log.read_text(errors="replace") for log in self.logs]
        return max(p.returncode for p in self.procs), "\n".join(log[-4000:] for log in logs)


class _Forked:
    """``python elastic_worker.py ARGS`` with the environment ``ENV``, for each ``(ARGS, ENV)``, forked from the
    preloaded server (:func:`preforked.call` of :func:`elastic_worker.run`), with :class:`_Job`'s methods; ``err``
    are their stderr."""

    def __init__(self, runs: list[tuple[list[str], dict[str, str]]], out: Path):
        self.logs = [out.with_name(f"{out.name}-{i}.log") for i in range(len(runs))]
        self.err = [log.with_suffix(".err") for log in self.logs]
        self.procs = [preforked.call(elastic_worker.run, (args,), log, err=err, env=env)
                      for (args, env), log, err in zip(runs, self.logs, self.err)]

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(15)

    def finish(self) -> tuple[int, str]:
        """The worst exit code and the end of each process's output (stdout, then stderr), once all have ended
        (240 s at most)."""
        try:
            for p in self.procs:
                p.join(240)
        finally:
            self.kill()
        logs = [log.read_text(errors="replace") + err.read_text(errors="replace")
                for log, err in zip(self.logs, self.err)]
        return max(p.exitcode for p in self.procs), "\n".join(log[-4000:] for log in logs)


@pytest.fixture(scope="module")
def fork_server():
    yield
    preforked.stop()


def _torchrun(launch: list[str], fault: str, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, "--monitor-interval", "0.1", WORKER, fault, "--",
            *TRAIN, *extra, "--out", str(out)]


def _standalone(fault: str, out: Path, extra: tuple[str, ...] = ()) -> _Job:
    """Two ranks of one torchrun agent."""
    cmd = _torchrun(["--standalone", "--nproc-per-node", "2"], fault, out, extra)
    return _Job([cmd], out, {**_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})


def _two_nodes(fault: str, out: Path) -> _Job:
    """Two agents, one worker each, meeting at a c10d rendezvous on localhost; up to 3 restarts. Each round's
    workers get their own store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as docs/distributed.md says): sharing the
    agents' store, a node restarted for a membership change keeps restart count 0 while the failed node's
    workers count 1, so the two read each other's stale keys and can hang (seen here)."""
    port = _free_port()
    launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
              f"127.0.0.1:{port}", "--rdzv-id", f"elastic-{port}", "--max-restarts", "3"]
    cmd = _torchrun(launch, fault, out)
    return _Job([cmd, cmd], out, {**_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})


def _weights(run: Path, step: int = 8) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    return {f"{part}/{k}": v for part in ("model", "ema", "optimizer")
            for k, v in load_file(ckpt / f"{part}.safetensors").items()}


def _assert_same_weights(run: Path, reference: Path) -> None:
    a, b = _weights(reference), _weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


class _SlowIO:
    """The slow-I/O run and its control, started in the background; :meth:`result` waits for one."""

    def __init__(self, root: Path):
        self.out = {"slow": root / "slow", "control": root / "control"}
        self.jobs = {"slow": _standalone(SLOW_WRITE, self.out["slow"], SLOW_IO)}
        # The control (and the module's other jobs) start once the slow run's rank 0 sleeps in its write: until
        # then its ranks, which meet at collectives under a 6-second timeout, have the CPU to themselves as before.
        deadline = time.monotonic() + 240
        while (self.jobs["slow"].running() and not (self.out["slow"] / "fault-fired.0").exists()
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self.jobs["control"] = _standalone(f"sync-writes:{SLOW_WRITE}", self.out["control"], SLOW_IO)
        self.results: dict[str, tuple[int, str]] = {}

    def result(self, name: str) -> tuple[Path, int, str]:
        if name not in self.results:
            self.results[name] = self.jobs[name].finish()
        return (self.out[name], *self.results[name])

    def reference(self) -> Path:
        """The uninterrupted run (two ranks of one torchrun agent): the slow-I/O run, whose slowed files change no
        number (its extra preview leaves the RNG as it was)."""
        out, code, log = self.result("slow")
        assert code == 0, log
        return out


@pytest.fixture(scope="module")
def slow_io(tmp_path_factory):
    runs = _SlowIO(tmp_path_factory.mktemp("elastic"))
    yield runs
    for job in runs.jobs.values():
        job.kill()


def test_an_elastic_job_that_loses_workers_resumes_and_ends_bit_identical(slow_io, tmp_path):
    """Two faults in successive attempts of one job. kill-write: rank 0 dies inside step 4's checkpoint write, so
    the newest complete checkpoint is step 2's; the half-written one is never loaded (and is removed). Then
    kill-step: rank 1 dies after step 5, rank 0 fails in the next all-reduce, both are restarted and resume from
    step 4."""
    out = tmp_path / "run"
    code, log = _two_nodes("kill-write:4,kill-step:1:5", out).finish()
    assert code == 0, log
    assert [(out / f"fault-fired.{i}").is_file() for i in range(2)] == [True, True], "a fault never fired"
    reference = slow_io.reference()
    _assert_same_weights(out, reference)
    # Every step was logged once, after the restarts too, with the uninterrupted run's losses.
    rows = [[r.split(",")[:4] for r in (run / "loss.csv").read_text().splitlines()] for run in (out, reference)]
    assert len(rows[0]) == 9 and rows[0] == rows[1]
    assert [p.name for p in list_checkpoints(out / "checkpoints")][-1] == "step-00000008"
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_a_process_group_made_by_the_caller_is_used_and_left_as_it_was(slow_io, fork_server, tmp_path):
    """Two processes that made their own gloo group (file:// store, no torchrun variables) train as the torchrun
    run did, bit for bit; the group is still there afterwards (the worker all-reduces on it)."""
    out, store = tmp_path / "run", tmp_path / "store"
    runs = [(["caller", str(store), str(r), "2", "--", *TRAIN, "--out", str(out)], _env()) for r in range(2)]
    code, log = _Forked(runs, out).finish()
    assert code == 0, log
    _assert_same_weights(out, slow_io.reference())


@pytest.mark.parametrize("control", [False, True])
def test_a_rank_slow_on_io_does_not_make_the_others_time_out(slow_io, control):
    """Rank 0's step-6 checkpoint and preview take 12 s longer under a 6-second process-group timeout: rank 1 trains
    on and the job finishes. The control writes in rank 0's training thread, and rank 1 times out waiting."""
    out, code, log = slow_io.result("control" if control else "slow")
    assert (out / "fault-fired.0").is_file()
    if control:
        assert code != 0 and "Timed out" in log, log
        return
    assert code == 0, log
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"step-{k:08d}" for k in (2, 4, 6, 8)]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000006.png", "step-00000008.png"]


def _ranks(world: int) -> list[dict[str, str]]:
    """The environment of each rank: the workers' and the env:// variables (rank 0 hosts the store)."""
    return [{**_env(), **rank} for rank in preforked.ranks(world)]


def test_an_unreachable_rendezvous_is_one_line(fork_server, tmp_path):
    env = _ranks(2)[1]                      # rank 1 of 2, and no rank 0 to host the store
    job = _Forked([(["none", "--", *TRAIN, "--dist-timeout", "0.01", "--out", str(tmp_path / "run")], env)],
                  tmp_path / "run")
    code, log = job.finish()
    assert code == 2, log
    stderr = job.err[0].read_text()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "could not reach the process group's store at 127.0.0.1:" in lines[0], stderr
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.safetensors"))


def test_a_world_size_that_does_not_divide_the_batch_is_one_line_on_each_rank(fork_server, tmp_path):
    out = tmp_path / "run"
    job = _Forked([(["none", "--", *TRAIN, "--batch-size", "33", "--out", str(out)], env)
                   for env in _ranks(2)], out)
    code, log = job.finish()
    assert [p.exitcode for p in job.procs] == [2, 2], log
    for who, err in zip(("scorelab train: error:", "scorelab train (rank 1): error:"), job.err):
        lines = err.read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"{who} the global batch of 33 does not split evenly over 2 processes"), log


def test_resume_auto_continues_its_own_run_and_refuses_other_data(tmp_path):
    """In one process: "auto" starts afresh in an empty folder, continues its own run (one saved before
    ``lr_decay`` existed too), and refuses a data set that changed size (its permutations, so its batches, would
    differ) and, with a decaying rate, other steps; the checkpoint records where the data stream stands: 64
    examples in batches of 32 are 2 batches an epoch, so after 4 steps epoch 2 starts."""
    from scorelab.store import CheckpointError, load_checkpoint
    from scorelab.training import TrainConfig, train

    points = torch.randn(96, 2, generator=torch.Generator().manual_seed(0)).numpy()
    config = TrainConfig(framework="ddpm", data="points:two_moons", steps=2, batch_size=32, device="cpu",
                         out=str(tmp_path / "run"), sample_every=1000, num_preview=4, preview_steps=2,
                         process_options={"num_steps": 20})
    assert train(config, data=points[:64], resume="auto", progress=False).step == 2
    meta = next((tmp_path / "run" / "checkpoints").glob("step-*")) / "meta.json"
    saved = json.loads(meta.read_text())
    del saved["config"]["train"]["lr_decay"]                # as a run saved before the option was written
    meta.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="was trained on 64 examples but 'points:two_moons' has 96 now"):
        train(config.replace(steps=4), data=points, resume="auto", progress=False)
    result = train(config.replace(steps=4), data=points[:64], resume="auto", progress=False)
    assert result.step == 4 and result.losses and len(result.losses) == 2
    # With a decaying rate the steps plan its curve: resuming with other steps is another configuration.
    decaying = config.replace(out=str(tmp_path / "decay"), lr_decay="linear", warmup=0)
    train(decaying, data=points[:64], resume="auto", progress=False)
    with pytest.raises(CheckpointError, match="steps: checkpoint has 2, this run asks for 4"):
        train(decaying.replace(steps=4), data=points[:64], resume="auto", progress=False)
    position = load_checkpoint(result.checkpoint).extra["data"]
    assert position == {"examples": 64, "seed": 0, "batch_size": 32, "grad_accum": 1, "epoch": 2, "batch": 0}
