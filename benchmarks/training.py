"""Training throughput on CPU: scorelab's U-Net against diffusers' UNet2DModel, fp32 and bf16.

Measures images/s of one full training step (zero_grad, forward, loss,
backward, AdamW step) of Ho et al.'s 35.7M-parameter CIFAR-10 U-Net at batch 8
on this machine's CPU, for

* scorelab: ``UNet(UNetConfig.preset("cifar10"))`` inside ``Model(net, DDPM())``,
  loss ``scorelab.losses.simple_loss`` (draw a step, perturb, predict eps, MSE:
  the library's own training step);
* diffusers: ``UNet2DModel`` in the same configuration (the constructor of
  ``tests/test_networks.py``; the parameter counts are asserted equal), with the
  equivalent step: ``t ~ U{0..999}``, ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``
  through ``DDPMScheduler.add_noise`` (DDPM's linear schedule), loss
  ``mse(unet(x_t, t).sample, eps)``;

each in fp32 and in bf16 autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``
around forward and loss; backward and optimizer step outside it). Both use
AdamW (lr 2e-4, weight decay 0, as the library's trainer by default),
``zero_grad(set_to_none=True)``, no gradient clipping and no EMA, the same
batches of data, and both networks are in train mode (dropout 0.1).

Method: every (implementation, precision) pair gets its warm-up steps, then
the timed steps run in rounds that alternate the four pairs (scorelab fp32,
diffusers fp32, scorelab bf16, diffusers bf16, again and again; the order of
the two implementations flips every round), so drift in the machine's speed
hits all of them alike. Reported: the median seconds per step and images/s,
the ratios scorelab / diffusers (images/s) in each precision, and each
implementation's bf16 / fp32 speed-up. A CPU without native bf16 instructions
(no AVX512-BF16 / AMX; see ``cpu_capability`` in the JSON) emulates bf16, so
bf16 can be much slower than fp32 there (on a 2-core AVX2 EPYC, about 20x:
some 2 minutes per bf16 step, so the default run takes over half an hour):
the numbers say what they say.

    python benchmarks/training.py           # writes benchmarks/results/training.json
    python benchmarks/training.py --quick   # 1 warm-up + 2 timed steps: a smoke run, not a measurement

Run it on a quiet machine: anything else using the cores moves the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import scorelab as sl
from scorelab.objectives import simple_loss
from scorelab.networks import UNet, UNetConfig, count_parameters

LR = 2e-4
PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device_type: str = "cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _placed(net: torch.nn.Module, device: torch.device, channels_last: bool, compile: bool):
    """``net`` on ``device`` (channels-last memory if asked); returns (the module to train, the one to call)."""
    net = net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)
    return net, (torch.compile(net) if compile else net)


# ---------------------------------------------------------------------------------------
# the two training steps
# ---------------------------------------------------------------------------------------
def scorelab_setup(seed: int, device: torch.device = torch.device("cpu"), channels_last: bool = False,
                   compile: bool = False):
    torch.manual_seed(seed)
    net, call = _placed(UNet(UNetConfig.preset("cifar10")).train(), device, channels_last, compile)
    model = sl.Model(call, sl.DDPM())
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)

    def step(x0: torch.Tensor, g: torch.Generator, precision: str) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device.type):
            loss = simple_loss(model, x0, generator=g).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return net, step


def diffusers_unet() -> torch.nn.Module:
    """diffusers' UNet2DModel in the configuration of Ho et al.'s CIFAR-10 U-Net (35,746,307 parameters)."""
    import diffusers

    return diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, norm_num_groups=32, dropout=0.1)


def diffusers_setup(seed: int, device: torch.device = torch.device("cpu"), channels_last: bool = False,
                    compile: bool = False):
    import diffusers

    torch.manual_seed(seed)
    unet, call = _placed(diffusers_unet().train(), device, channels_last, compile)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                    beta_start=1e-4, beta_end=0.02)
    opt = torch.optim.AdamW(unet.parameters(), lr=LR, weight_decay=0.0)

    def step(x0: torch.Tensor, g: torch.Generator, precision: str) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device.type):
            t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g, device=x0.device)
            eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype, device=x0.device)
            x_t = sched.add_noise(x0, eps, t)
            loss = F.mse_loss(call(x_t, t).sample, eps)
        loss.backward()
        opt.step()
        return loss.detach()

    return unet, step


# ---------------------------------------------------------------------------------------
def run(batch: int, warmup: int, steps: int, seed: int, bf16_warmup: int, bf16_steps: int,
        device: torch.device = torch.device("cpu"), channels_last: bool = False, compile: bool = False) -> dict:
    """Time both implementations' training steps (see the module's docstring); on a GPU each step is timed to
    its end (synchronized)."""
    ours, ours_step = scorelab_setup(seed, device, channels_last, compile)
    peer, peer_step = diffusers_setup(seed, device, channels_last, compile)
    n_ours, n_peer = count_parameters(ours), sum(p.numel() for p in peer.parameters())
    assert n_ours == n_peer == 35_746_307, (n_ours, n_peer)
    impls: dict[str, Callable] = {"scorelab": ours_step, "diffusers": peer_step}

    # the same data for everyone: batch k of the warm-up / timed sequence is the same tensor
    data = torch.Generator().manual_seed(seed)
    count = {"fp32": (warmup, steps), "bf16": (bf16_warmup, bf16_steps)}
    memory = torch.channels_last if channels_last else torch.contiguous_format
    batches = [(torch.rand(batch, 3, 32, 32, generator=data) * 2 - 1).to(device, memory_format=memory)
               for _ in range(max(w + n for w, n in count.values()))]

    def one(name: str, precision: str, k: int) -> tuple[float, float]:
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + k)  # same draws seed for both
        synchronize(device)
        t0 = time.perf_counter()
        loss = impls[name](batches[k], g, precision)
        synchronize(device)
        seconds = time.perf_counter() - t0
        return seconds, float(loss)

    measured = [p for p in PRECISIONS if count[p][1] > 0]          # --bf16-steps 0 turns bf16 off
    pairs = [(name, p) for p in measured for name in impls]
    times: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    losses: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for name, p in pairs:
        for k in range(count[p][0]):
            s, loss = one(name, p, k)
            print(f"  warm-up {name:9s} {p}: {s:6.2f} s  (loss {loss:.4f})", flush=True)
    for r in range(max(count[p][1] for p in measured) if measured else 0):
        for p in measured:
            if r >= count[p][1]:
                continue
            order = list(impls) if r % 2 == 0 else list(impls)[::-1]
            for name in order:
                s, loss = one(name, p, count[p][0] + r)
                times[name, p].append(s)
                losses[name, p].append(loss)
                print(f"  round {r + 1}/{count[p][1]} {name:9s} {p}: {s:6.2f} s  (loss {loss:.4f})", flush=True)
    return {"parameters": {"scorelab": n_ours, "diffusers": n_peer}, **summarize(times, losses, batch)}


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so a timer reads the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: dict[tuple[str, str], list[float]], losses: dict[tuple[str, str], list[float]],
              batch: int) -> dict:
    """Median speed per (implementation, precision) that was timed, and the ratios between those present."""
    results: dict = {}
    for (name, p), ts in times.items():
        bad = [x for x in losses[name, p] if not math.isfinite(x)]
        assert not bad, f"{name} {p}: non-finite loss {bad}"
        med = statistics.median(ts)
        results.setdefault(name, {})[p] = {
            "seconds_per_step": ts, "median_seconds_per_step": med, "images_per_s": batch / med,
            "min_seconds_per_step": min(ts), "losses": losses[name, p]}
    for r in results.values():
        if "bf16" in r and "fp32" in r:
            r["bf16_over_fp32_speedup"] = r["bf16"]["images_per_s"] / r["fp32"]["images_per_s"]
    precisions = {p for (_, p) in times}
    ratios = {p: results["scorelab"][p]["images_per_s"] / results["diffusers"][p]["images_per_s"]
              for p in PRECISIONS if p in precisions and {"scorelab", "diffusers"} <= results.keys()}
    return {"results": results, "scorelab_over_diffusers_images_per_s": ratios}


def cpu_meta() -> dict:
    meta = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_available": torch.backends.mkldnn.is_available(),
            "mkldnn_enabled": torch.backends.mkldnn.enabled}
    try:
        meta["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private op; absent in some builds
        meta["mkldnn_bf16_supported"] = None
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    meta["cpu_model"] = model or platform.processor() or None
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps: a smoke run only")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per configuration (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 5)")
    parser.add_argument("--bf16-warmup", type=int, default=None, help="bf16 warm-up steps (default: --warmup)")
    parser.add_argument("--bf16-steps", type=int, default=None,
                        help="bf16 timed steps (default: --steps); fewer where the CPU emulates bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    steps = args.steps if args.steps is not None else (2 if args.quick else 5)
    bf16_warmup = warmup if args.bf16_warmup is None else args.bf16_warmup
    bf16_steps = steps if args.bf16_steps is None else args.bf16_steps
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    import diffusers

    print(f"training step, 35.7M U-Net, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{warmup} warm-up + {steps} timed steps per configuration{' (QUICK: not a measurement)' if args.quick else ''}",
          flush=True)
    t0 = time.perf_counter()
    res = run(args.batch, warmup, steps, args.seed, bf16_warmup, bf16_steps)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "scorelab": getattr(sl, "__version__", None), "python": platform.python_version(),
            "machine": platform.machine(), "os_cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "wall_seconds": time.perf_counter() - t0, **cpu_meta()}
    setup = {"batch": args.batch, "image_shape": [3, 32, 32], "warmup_steps": warmup, "timed_steps": steps,
             "bf16_warmup_steps": bf16_warmup, "bf16_timed_steps": bf16_steps,
             "optimizer": f"AdamW(lr={LR}, weight_decay=0)", "zero_grad": "set_to_none=True",
             "grad_clip": None, "ema": None, "train_mode": True, "dropout": 0.1,
             "bf16": "torch.autocast('cpu', dtype=torch.bfloat16) around forward+loss; backward and step outside",
             "order": "rounds alternate scorelab/diffusers (order flipped each round), fp32 then bf16",
             "statistic": "median over timed steps; images_per_s = batch / median seconds"}
    path = args.out / "training.json"
    path.write_text(json.dumps({"meta": meta, "setup": setup, **res}, indent=1))

    print(f"\n{'':10s} {'precision':9s} {'median s/step':>13s} {'images/s':>9s}")
    for name, r in res["results"].items():
        for p in PRECISIONS:
            if p in r:
                print(f"{name:10s} {p:9s} {r[p]['median_seconds_per_step']:13.3f} {r[p]['images_per_s']:9.2f}")
    for p, ratio in res["scorelab_over_diffusers_images_per_s"].items():
        print(f"scorelab / diffusers images/s, {p}: {ratio:.3f}")
    for name, r in res["results"].items():
        if "bf16_over_fp32_speedup" in r:
            print(f"{name} bf16 / fp32 speed-up: {r['bf16_over_fp32_speedup']:.3f}")
    print(f"cpu capability {meta['cpu_capability']}, mkldnn bf16 supported: {meta['mkldnn_bf16_supported']}")
    print(f"wrote {path}" + ("  (quick: a smoke run, do not quote)" if args.quick else ""))


if __name__ == "__main__":
    main()
