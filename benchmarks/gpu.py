"""GPU readiness: training and sampling throughput on one CUDA GPU against diffusers, and the NCCL path.

    python benchmarks/gpu.py                      # writes benchmarks/results/gpu.json and prints a table
    python benchmarks/gpu.py --quick              # 1 warm-up + 2 timed steps: a smoke run, not a measurement
    python benchmarks/gpu.py --device cpu --quick --no-compile --precisions fp32   # the script's check on a CPU

Without a CUDA GPU it stops with one line (exit status 2), unless ``--device cpu`` asks for that check.

1. **Training**: images/s of a full training step (zero_grad, forward, loss, backward, AdamW) of Ho et al.'s
   35.7M-parameter CIFAR-10 U-Net, scorelab's ``UNet`` against diffusers' ``UNet2DModel`` in the same
   configuration, on the same batches (the steps and the alternating timing of ``benchmarks/training.py``,
   synchronized with the GPU), in fp32 and bf16 autocast, each with ``torch.compile`` off and on, in
   channels-last memory (``--no-channels-last``: the default layout).
2. **Sampling**: images/s of DDIM with 50 network evaluations (eta = 0) in eval mode, fp32 and bf16:
   ``scorelab.sample(model, shape, "ddim", 50)`` against diffusers' ``DDIMScheduler`` loop around the
   ``UNet2DModel`` (both untrained: throughput does not depend on the weights).
3. **NCCL**: ``torchrun --standalone --nproc-per-node G -m scorelab.cli train`` (G = the GPUs seen, at least
   1) for a few steps on the digits with ``--device cuda``, then ``sample`` from that run: every process
   joins an NCCL group; only with G >= 2 do gradients and samples cross it (one GPU checks the group's set-up
   and the device placement). Reported: exit status and seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import PRECISIONS, autocast, diffusers_unet, run, synchronize  # noqa: E402

import scorelab as sl  # noqa: E402
from scorelab.networks import UNet, UNetConfig  # noqa: E402


def sampling(device: torch.device, batch: int, nfe: int, rounds: int, seed: int,
             precisions: tuple[str, ...] = PRECISIONS) -> dict:
    """Median seconds of one batch of DDIM samples, per (implementation, precision), timed in alternation."""
    import diffusers

    torch.manual_seed(seed)
    ours = sl.Model(UNet(UNetConfig.preset("cifar10")).to(device).eval(), sl.DDPM())
    peer = diffusers_unet().to(device).eval()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02, clip_sample=False)
    shape = (batch, 3, 32, 32)

    @torch.no_grad()
    def scorelab_batch(precision: str) -> int:
        with autocast(precision, device.type):
            result = sl.sample(ours, shape, "ddim", nfe, noise=torch.Generator(device).manual_seed(seed))
        return result.nfe

    @torch.no_grad()
    def diffusers_batch(precision: str) -> int:
        sched.set_timesteps(nfe)
        x = torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)
        with autocast(precision, device.type):
            for t in sched.timesteps:
                x = sched.step(peer(x, t).sample, t, x, eta=0.0).prev_sample
        return len(sched.timesteps)

    impls = {"scorelab": scorelab_batch, "diffusers": diffusers_batch}
    times: dict[str, dict[str, list[float]]] = {name: {p: [] for p in precisions} for name in impls}
    for r in range(rounds + 1):                                   # round 0 warms up
        for p in precisions:
            for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                synchronize(device)
                t0 = time.perf_counter()
                used = impls[name](p)
                synchronize(device)
                assert used == nfe, f"{name} took {used} network evaluations, not {nfe}"
                if r > 0:
                    times[name][p].append(time.perf_counter() - t0)
                print(f"  sampling round {r}/{rounds} {name:9s} {p}: {time.perf_counter() - t0:6.2f} s", flush=True)
    out: dict = {name: {p: {"seconds": ts, "images_per_s": batch / sorted(ts)[len(ts) // 2]}
                        for p, ts in per.items()} for name, per in times.items()}
    out["scorelab_over_diffusers_images_per_s"] = {
        p: out["scorelab"][p]["images_per_s"] / out["diffusers"][p]["images_per_s"] for p in precisions}
    return out


def nccl_path(device: torch.device, steps: int) -> dict:
    """``scorelab train`` and ``sample`` under torchrun with one process per GPU (CPU check: gloo, 1 process)."""
    procs = max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    report: dict = {"processes": procs, "backend": "nccl" if device.type == "cuda" else "gloo"}
    with tempfile.TemporaryDirectory() as tmp:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                  "-m", "scorelab.cli"]
        commands = {
            "train": ["train", "--data", "digits", "--steps", str(steps), "--batch-size", str(64 * procs),
                      "--network", "digits8", "--device", device.type, "--sample-every", "1000", "--checkpoint-every",
                      str(steps), "--out", f"{tmp}/run"],
            "sample": ["sample", f"{tmp}/run", "--sampler", "ddim", "--steps", "10", "--num-samples", "64",
                       "--device", device.type, "--out", f"{tmp}/samples.png"]}
        for name, args in commands.items():
            t0 = time.perf_counter()
            try:
                done = subprocess.run(launch + args, capture_output=True, text=True, timeout=900)
                code, text = done.returncode, done.stdout + done.stderr
            except subprocess.TimeoutExpired as e:            # a hung collective
                code, text = None, f"timed out after 900 s: {e.stdout or ''}"
            report[name] = {"returncode": code, "seconds": time.perf_counter() - t0,
                            "last_lines": str(text).strip().splitlines()[-3:]}
            print(f"  {name} under torchrun ({procs} x {report['backend']}): exit {code}, "
                  f"{report[name]['seconds']:.1f} s", flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cuda:K; cpu checks the script only")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps: a smoke run only")
    parser.add_argument("--batch", type=int, default=128, help="training batch")
    parser.add_argument("--sample-batch", type=int, default=256, help="sampling batch")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the default memory layout")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU here (torch sees none); run it on a GPU machine, or pass --device cpu "
              "to check the script", file=sys.stderr)
        return 2
    precisions = tuple(args.precisions.split(","))
    if not set(precisions) <= set(PRECISIONS):
        parser.error(f"--precisions takes {', '.join(PRECISIONS)}")
    warmup, steps = (1, 2) if args.quick else (3, 10)
    bf16 = (warmup, steps) if "bf16" in precisions else (0, 0)
    batch, sample_batch = (8, 8) if device.type == "cpu" else (args.batch, args.sample_batch)
    t0 = time.perf_counter()
    training = {}
    for compiled in [False] + ([] if args.no_compile else [True]):
        key = "compile" if compiled else "eager"
        print(f"training, {key}, batch {batch}, channels-last {not args.no_channels_last}", flush=True)
        training[key] = run(batch, warmup if "fp32" in precisions else 0, steps if "fp32" in precisions else 0,
                            args.seed, *bf16, device,
                            channels_last=not args.no_channels_last, compile=compiled)
    print(f"sampling, DDIM 50 NFE, batch {sample_batch}", flush=True)
    sample = sampling(device, sample_batch, 50 if not args.quick else 5, 1 if args.quick else 3, args.seed,
                      precisions)
    print("the NCCL path", flush=True)
    nccl = nccl_path(device, 20)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "batch": batch, "sample_batch": sample_batch, "channels_last": not args.no_channels_last,
            "wall_seconds": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("gpu.json" if device.type == "cuda" else "gpu-cpu-check.json")
    path.write_text(json.dumps({"meta": meta, "training": training, "sampling": sample, "nccl": nccl}, indent=1))

    print(f"\n{'':22s} {'scorelab img/s':>14s} {'diffusers img/s':>15s} {'ratio':>6s}")
    for key, res in training.items():
        for p in precisions:
            a, b = (res["results"][n][p]["images_per_s"] for n in ("scorelab", "diffusers"))
            print(f"{'train ' + key + ' ' + p:22s} {a:14.1f} {b:15.1f} {a / b:6.2f}")
    for p in precisions:
        a, b = (sample[n][p]["images_per_s"] for n in ("scorelab", "diffusers"))
        print(f"{'sample ddim ' + p:22s} {a:14.1f} {b:15.1f} {a / b:6.2f}")
    ok = all(nccl[c]["returncode"] == 0 for c in ("train", "sample"))
    crossed = "" if nccl["processes"] > 1 else ": group joined, but one process sends nothing across it"
    print(f"NCCL path ({nccl['processes']} x {nccl['backend']}): {'ok' if ok else 'FAILED'}{crossed}")
    print(f"wrote {path}" + ("  (quick: a smoke run, do not quote)" if args.quick else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
