"""torchrun with two gloo processes on the CPU: training equals one process with the same global
batch, and a sample job over 2 ranks gives the same images as over 1.

The reference runs are the ordinary single-process code paths; the two-rank runs are real ``torchrun``
launches of the CLI (the resume: two processes with the env:// variables torchrun gives its workers), so the
process group, DDP, the rank-0-only writes and the gathers are all exercised.
Every run is made once, by the module's fixture: the one-process runs here, then two launches (a launch's two
ranks take seconds to start): the first, by torchrun, runs the commands of every test one after another in one
group (tests/distributed_worker.py), the second is ``scorelab train --resume`` alone, in two fresh processes
that join the group themselves (env://, as torchrun's workers would) and resume the first launch's 3-step run;
they are forked from a server that has imported what a run imports (tests/preforked.py), without the seconds
of imports of a fresh interpreter (and of torchrun's agent).
"""

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import preforked
from scorelab.store import latest_checkpoint
from scorelab.cli import main

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")

# Class labels with dropout, flips and gradient accumulation: every per-example draw is sharded.
TRAIN = ["train", "--framework", "ddpm", "--data", "digits", "--batch-size", "32", "--grad-accum", "2",
         "--lr", "2e-3", "--warmup", "1", "--network", "digits8", "--network-option", "num_res_blocks=1",
         "--network-option", "base_channels=16", "--network-option", "norm_groups=8",
         "--class-conditional", "--label-dropout", "0.3", "--flip", "--device", "cpu", "--seed", "3",
         "--log-every", "1", "--sample-every", "1000", "--checkpoint-every", "3", "--keep-last", "3",
         "--num-preview", "4", "--preview-steps", "2"]
SAMPLE = ["--sampler", "ancestral", "--steps", "8", "--num-samples", "11", "--batch-size", "3", "--seed", "4",
          "--label", "2", "7", "--guidance", "1.5"]


# Sliced score matching on a non-affine SDE, DiffFlow, multinomial diffusion with importance-sampled steps: each
# trained 4 steps (a checkpoint every 2) in one process and on two ranks.
SSM = ["train", "--framework", "sde", "--process-option", "drift=double_well", "--loss", "ssm-vr",
       "--data", "points:two_moons", "--batch-size", "64", "--steps", "4", "--device", "cpu", "--seed", "5",
       "--lr", "1e-2", "--log-every", "1", "--sample-every", "1000", "--checkpoint-every", "2",
       "--num-preview", "4", "--preview-steps", "2"]
DIFFFLOW = ["train", "--framework", "diffflow", "--data", "points:two_moons", "--batch-size", "64", "--steps", "4",
            "--device", "cpu", "--seed", "5", "--lr", "1e-2", "--log-every", "1", "--sample-every", "1000",
            "--checkpoint-every", "2", "--num-preview", "4", "--process-option", "num_steps=4",
            "--loss-option", "progressive=2", "--loss-option", "stage_steps=2"]
MULTINOMIAL = ["train", "--framework", "multinomial", "--data", "digits", "--batch-size", "32", "--grad-accum", "2",
               "--steps", "4", "--lr", "2e-3", "--warmup", "0", "--process-option", "num_steps=3", "--network",
               "digits8", "--network-option", "num_res_blocks=1", "--network-option", "base_channels=16",
               "--network-option", "norm_groups=8", "--device", "cpu", "--seed", "2", "--log-every", "1",
               "--sample-every", "1000", "--checkpoint-every", "2", "--num-preview", "4", "--preview-steps", "2"]
ONE_AND_TWO = {"ssm": SSM, "diffflow": DIFFFLOW, "multinomial": MULTINOMIAL}
# --bpd-images 7 in chunks of 3: chunks 0 and 2 on rank 0, chunk 1 on rank 1.
EVALUATE = ["--samplers", "ddim,heun", "--nfe", "5", "--num-samples", "7", "--batch-size", "3", "--bpd", "vlb",
            "--bpd-images", "7", "--vlb-terms", "3", "--seed", "1"]


def _torchrun(script: list[str], nproc: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _forked_ranks(argv: list[str], log: Path, nproc: int = 2) -> None:
    """``scorelab ARGV`` on ``nproc`` ranks, each a process forked from the preloaded server with the env://
    variables of its rank, as torchrun's workers have them."""
    procs = []
    try:
        for r, env in enumerate(preforked.ranks(nproc)):
            procs.append(preforked.start(argv, Path(f"{log}.{r}"), env=env))
        for p in procs:
            p.join(600)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(15)
        preforked.stop()
    assert [p.exitcode for p in procs] == [0] * nproc, "\n".join(
        Path(f"{log}.{r}").read_text()[-3000:] for r in range(nproc))


@contextmanager
def one_thread():
    """The in-process reference runs with the workers' one thread: float sums (and so the last bit of a
    uint8 pixel) can depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _state(run: Path, step: int) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    out = {}
    for part in ("model", "ema", "optimizer"):
        out.update({f"{part}/{k}": v for k, v in load_file(ckpt / f"{part}.safetensors").items()})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_cache):
    """``one``/``two``: TRAIN in one process (6 steps), and on two ranks (3 steps, then resumed to 6); for each
    of ONE_AND_TWO, ``NAME/one`` and ``NAME/two``; ``sample/one.png``, ``sample/two.png`` (and their .npz)
    from ``one``; ``evaluate/one``, ``evaluate/two`` of ``one`` (the in-domain classifier from the test run's
    cache: fitted once, by whichever test needs it first)."""
    root = tmp_path_factory.mktemp("ddp")
    evaluate = ["evaluate", str(root / "one"), *EVALUATE]
    cache = {"SCORELAB_CACHE": str(shared_cache)}
    with one_thread(), pytest.MonkeyPatch.context() as env:
        assert main([*TRAIN, "--steps", "6", "--out", str(root / "one")]) == 0
        for name, args in ONE_AND_TWO.items():
            assert main([*args, "--out", str(root / name / "one")]) == 0
        (root / "sample").mkdir()
        assert main(["sample", str(root / "one"), *SAMPLE, "--out", str(root / "sample" / "one.png")]) == 0
        env.setenv("SCORELAB_CACHE", cache["SCORELAB_CACHE"])
        assert main([*evaluate, "--out", str(root / "evaluate" / "one")]) == 0
    # One cell is already done (a rerun): rank 0 reuses it and the other rank must skip it, not draw it.
    (root / "evaluate" / "two" / "cells").mkdir(parents=True)
    for name in ("ddim-nfe0005.npz", "ddim-nfe0005.json"):
        shutil.copy(root / "evaluate" / "one" / "cells" / name, root / "evaluate" / "two" / "cells" / name)
    commands = [([*TRAIN, "--steps", "3", "--out", str(root / "two")], {}),
                *[([*args, "--out", str(root / name / "two")], {}) for name, args in ONE_AND_TWO.items()],
                (["sample", str(root / "one"), *SAMPLE, "--out", str(root / "sample" / "two.png")], {}),
                ([*evaluate, "--out", str(root / "evaluate" / "two")], cache)]
    (root / "commands.json").write_text(json.dumps(commands))
    _torchrun([str(Path(__file__).with_name("distributed_worker.py")), str(root / "commands.json")])
    _forked_ranks([*TRAIN, "--steps", "6", "--out", str(root / "two"), "--resume"], root / "resume.log")
    return root


def _relative_gap(a: dict, b: dict, start: dict, prefix: str) -> float:
    """|| b - a || / || a - start || over the tensors under ``prefix``: the gap relative to what training moved."""
    keys = [k for k in a if k.startswith(prefix)]
    gap = torch.cat([(b[k] - a[k]).flatten() for k in keys]).norm()
    moved = torch.cat([(a[k] - start[k]).flatten() for k in keys]).norm()
    return float(gap / moved)


def test_two_gloo_ranks_train_like_one_process_with_the_same_global_batch(runs):
    one, two, start = _state(runs / "one", 6), _state(runs / "two", 6), _state(runs / "one", 3)
    assert one.keys() == two.keys()
    for k in one:
        if one[k].is_floating_point():
            # Only the order of float sums differs (DDP's all-reduce); measured max |diff| 8e-6.
            torch.testing.assert_close(two[k], one[k], rtol=1e-3, atol=1e-4, msg=k)
    # Measured 2.5e-5 for weights and EMA; a rank training on the wrong rows or noise gives O(1).
    assert _relative_gap(one, two, start, "model/") < 1e-3
    assert _relative_gap(one, two, start, "ema/") < 1e-3
    # The logged loss is the global batch's (all-reduced), row for row.
    rows = [np.loadtxt(r / "loss.csv", delimiter=",", skiprows=1) for r in (runs / "one", runs / "two")]
    np.testing.assert_allclose(rows[1][:, 1:4], rows[0][:, 1:4], rtol=1e-5)
    # Rank 0 alone wrote: one loss log, one set of checkpoints.
    assert latest_checkpoint(runs / "two" / "checkpoints").name == "step-00000006"


def _one_and_two(runs: Path, name: str) -> tuple[dict, dict, dict]:
    """The states at step 4 of ONE_AND_TWO[name] in one process and on two ranks, and the one process's at step 2."""
    return _state(runs / name / "one", 4), _state(runs / name / "two", 4), _state(runs / name / "one", 2)


def test_sliced_score_matching_on_a_non_affine_sde_trains_on_two_ranks_like_one_process(runs):
    """The simulated x_t and the SSM projections are drawn for the global batch and sharded (BatchNoise):
    two ranks equal one process (measured relative gap 5e-6; ranks drawing from the step's generator for
    their own rows alone give 2.3)."""
    one, two, start = _one_and_two(runs, "ssm")
    assert _relative_gap(one, two, start, "model/") < 1e-3


def test_diffflow_trains_on_two_ranks_like_one_process(runs):
    """DiffFlow's paths, jittered grids and progressive stage are drawn for the global batch (BatchNoise) and
    its drift network sits beside the score network under one DistributedDataParallel: two ranks equal one."""
    one, two, start = _one_and_two(runs, "diffflow")
    assert _relative_gap(one, two, start, "model/") < 1e-3
    assert {k for k in one if k.startswith("model/drift.")} and _relative_gap(one, two, start, "model/drift.") < 1e-3


def test_multinomial_diffusion_with_importance_sampled_steps_trains_on_two_ranks_like_one_process(runs):
    """Every rank records its rows' terms and the step's whole batch updates the history on all ranks, so
    the steps drawn once importance sampling takes over (step 3 here) agree with one process."""
    one, two, start = _one_and_two(runs, "multinomial")
    assert _relative_gap(one, two, start, "model/") < 1e-3
    history = [load_file(runs / "multinomial" / r / "checkpoints" / "step-00000004" / "state.safetensors")
               for r in ("one", "two")]
    assert torch.equal(history[0]["objective_state.count"], history[1]["objective_state.count"])
    assert bool((history[0]["objective_state.count"][1:] > 10).all())
    torch.testing.assert_close(history[1]["objective_state.history"], history[0]["objective_state.history"],
                               rtol=1e-4, atol=0)


def test_a_two_rank_checkpoint_resumes_on_one_process(runs, tmp_path):
    """The checkpoint holds every rank's RNG; one process resumes from it (rank 0's) and trains on alike."""
    shutil.copytree(runs / "two" / "checkpoints" / "step-00000003", tmp_path / "checkpoints" / "step-00000003")
    with one_thread():
        assert main([*TRAIN, "--steps", "6", "--out", str(tmp_path), "--resume"]) == 0
    one, resumed = _state(runs / "one", 6), _state(tmp_path, 6)
    for k in one:
        if one[k].is_floating_point():
            torch.testing.assert_close(resumed[k], one[k], rtol=1e-3, atol=1e-4, msg=k)
    assert _relative_gap(one, resumed, _state(runs / "one", 3), "model/") < 1e-3
    rng = load_file(runs / "two" / "checkpoints" / "step-00000006" / "state.safetensors")
    assert {"rng_cpu", "rng_cpu.r1"} <= rng.keys() and not torch.equal(rng["rng_cpu"], rng["rng_cpu.r1"])


def test_sampling_over_two_ranks_gives_the_images_of_one(runs):
    with np.load(runs / "sample" / "one.npz") as a, np.load(runs / "sample" / "two.npz") as b:
        assert a["x"].shape == (11, 1, 8, 8)
        np.testing.assert_array_equal(b["x"], a["x"])     # per-sample seeds, the same chunks: bit-identical
        np.testing.assert_array_equal(b["y"], a["y"])


def test_evaluate_over_two_ranks_writes_the_report_of_one(runs):
    """Sample cells and bits/dim images are shared out (uneven chunks) and gathered; rank 0 scores alike. One
    cell was already done (a rerun): rank 0 reused it and the other rank skipped it."""
    one, two = runs / "evaluate" / "one", runs / "evaluate" / "two"
    for cell in ("ddim-nfe0005", "heun-nfe0005"):
        with np.load(one / "cells" / f"{cell}.npz") as a, np.load(two / "cells" / f"{cell}.npz") as b:
            np.testing.assert_array_equal(b["x"], a["x"])
    one, two = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert [r["domain"]["fid"] for r in two["rows"]] == [r["domain"]["fid"] for r in one["rows"]]
    assert two["bits_per_dim"]["vlb"]["bits_per_dim"] == one["bits_per_dim"]["vlb"]["bits_per_dim"]
    assert (runs / "evaluate" / "two" / "report.md").is_file()


def test_work_is_shared_out_by_chunks_and_bad_splits_are_refused(monkeypatch):
    from scorelab.distributed import Ranks, chunk_ranges, current

    # 11 samples in chunks of 3 over 2 ranks: chunks 0 and 2 to rank 0, 1 and 3 to rank 1; all rows once.
    shares = [chunk_ranges(11, 3, Ranks(r, 2)) for r in range(2)]
    assert shares == [[range(0, 3), range(6, 9)], [range(3, 6), range(9, 11)]]
    assert chunk_ranges(2, 3, Ranks(1, 2)) == []                          # more ranks than chunks
    assert Ranks(1, 4).rows(32) == slice(8, 16)
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        Ranks(0, 3).rows(32)
    # A torchrun-launched process that never joined the group would train alone on the whole job.
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="has not joined the process group"):
        current()
