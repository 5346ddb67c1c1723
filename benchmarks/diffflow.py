"""DiffFlow against the fixed VP process at equal training time, on 2-D toys and the 8x8 digits (MATH.md 11).

For each data set both models train for the same wall-clock seconds (DiffFlow: its path KL on jittered grids,
N growing 5 -> 10 -> 20 on the toys, 5 -> 10 on the digits, each step kept in memory (no recomputation); VP: denoising score matching, Song et al. 2021), then sample with N = 5, 10, 20, 50,
100 steps: DiffFlow its backward chain, VP its ancestral chain (DDPM's step on VP's grid). Quality: on the toys
the energy distance of 2000 samples to 2000 held-out points, beside the floor of two held-out draws; on the
digits the classifier two-sample test (0.5: indistinguishable) against the held-out digits. Likelihood: the
probability-flow ODE's NLL of held-out points (nats per point; exact divergence on the toys), and DiffFlow's
trajectory bound at each N. Pictures: learned forward trajectories beside VP's.

    python benchmarks/diffflow.py [--seconds 60] [--digits-seconds 300] [--only toys|digits|memory]
    python benchmarks/diffflow.py --only digits-likelihood --scratch DIR     # the saved digits runs' bits/dim

writes benchmarks/results/diffflow-{toys,digits,memory}.json, benchmarks/results/diffflow.md and docs/diffflow/*.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
from scorelab.data import load_digits, to_model_range, toy_points
from scorelab.evaluation.distances import energy_distance
from scorelab.evaluation.metrics import two_sample_classifier_accuracy
from scorelab.imaging import save_grid
from scorelab.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PICTURES = ROOT / "docs" / "diffflow"
STEPS = (5, 10, 20, 50, 100)
TOYS = ("checkerboard", "swiss_roll", "two_moons", "gaussian_mixture")


def _config(framework: str, out: Path, steps: int, network: str, options: dict, lr: float, **extra) -> TrainConfig:
    return TrainConfig(framework=framework, out=str(out), steps=steps, batch_size=256 if network == "mlp" else 64,
                       lr=lr, warmup=0 if framework == "diffflow" else 100, ema_decay=0.999, network=network,
                       network_options=options, sample_every=10**7, checkpoint_every=10**7, num_preview=16,
                       log_every=50, **extra)


def _seconds_per_step(config: TrainConfig, data, probe: int) -> float:
    """Training seconds a step, from a short run."""
    res = train(config.replace(steps=probe, out=config.out + f"-probe{probe}"), data=data, progress=False)
    return res.seconds / probe


def train_pair(name: str, data, seconds: float, network: str, options: dict, lr: float, scratch: Path,
               num_steps: int, progressive: str) -> dict:
    """DiffFlow (equal stages of N through ``progressive``, then ``num_steps``) and VP, each trained for about
    ``seconds``: DiffFlow's steps from the mean cost of its stages, VP's run extended (resumed exactly) until it
    has had as long."""
    stages = [int(v) for v in progressive.split(",")] + [num_steps]
    per_step = np.mean([_seconds_per_step(_config("diffflow", scratch / f"{name}-diffflow-{n}", 1, network, options,
                                                  lr, process_options={"num_steps": n},
                                                  loss_options={"recompute": False}), data, 10) for n in stages])
    steps = max(len(stages), int(seconds / per_step))
    config = _config("diffflow", scratch / f"{name}-diffflow", steps, network, options, lr,
                     process_options={"num_steps": num_steps},
                     loss_options={"progressive": progressive, "recompute": False,
                                   "stage_steps": max(1, steps // len(stages))})
    out = {}
    result = train(config, data=data, progress=True)
    out["diffflow"] = {"model": result.model, "steps": steps, "seconds": result.seconds}
    config = _config("vp", scratch / f"{name}-vp", max(10, int(seconds / _seconds_per_step(
        _config("vp", scratch / f"{name}-vp", 1, network, options, lr), data, 50))), network, options, lr)
    result = train(config, data=data, progress=True)
    spent, target = result.seconds, out["diffflow"]["seconds"]
    for _ in range(3):                                    # resume (exactly) until it has trained as long as DiffFlow
        more = int((target - spent) / (result.seconds / max(1, len(result.losses))))
        if spent >= 0.95 * target or more < 1:
            break
        config = config.replace(steps=config.steps + more)
        result = train(config, data=data, progress=True, resume=True)
        spent += result.seconds
    out["vp"] = {"model": result.model, "steps": config.steps, "seconds": spent}
    for key, entry in out.items():
        entry["seconds_per_step"] = entry["seconds"] / entry["steps"]
        print(f"{name} {key}: {entry['steps']} steps in {entry['seconds']:.0f} s", flush=True)
    return out


def draw(model, shape, sampler: str, steps: int, seed: int) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    x = sl.samplers.sample(model, shape, sampler, steps, noise=torch.Generator().manual_seed(seed)).samples
    return x, time.perf_counter() - t0


SAMPLER = {"diffflow": "diffflow", "vp": "ancestral"}


def toys(seconds: float, scratch: Path, names=TOYS) -> dict:
    report = {}
    for toy in names:
        data, held_out = toy_points(toy, 20000, seed=0), torch.from_numpy(toy_points(toy, 4000, seed=1))
        reference, other = held_out[:2000], held_out[2000:]
        pair = train_pair(toy, data, seconds, "mlp", {"hidden": 128, "depth": 3}, 2e-3, scratch, 20, "5,10")
        row = {"floor": energy_distance(other, reference), "models": {}}
        for key, run in pair.items():
            model = run["model"]
            entry = {k: v for k, v in run.items() if k != "model"}
            test = held_out[:1000]
            nll = -sl.likelihood.ode_log_likelihood(model, test, divergence="exact").log_prob
            entry["ode_nll"] = float(nll.mean())
            entry["by_steps"] = {}
            for n in STEPS:
                x, sec = draw(model, (2000, 2), SAMPLER[key], n, seed=n)
                cell = {"energy_distance": energy_distance(x, reference), "sample_seconds": sec}
                if key == "diffflow":
                    bound = sl.diffflow.trajectory_nll(model, test, num_steps=n,
                                                       randomness=torch.Generator().manual_seed(n))
                    cell["trajectory_nll"] = float(bound.mean())
                entry["by_steps"][n] = cell
                if n == 10:
                    sl.training.plots.plot_points(x.numpy(), PICTURES / f"{toy}-{key}-N10.png",
                                                  reference=reference.numpy()[:1000], title=f"{key}, N = 10")
            row["models"][key] = entry
            print(toy, key, json.dumps(entry["by_steps"]), entry["ode_nll"], flush=True)
        trajectories(toy, pair, held_out[:1500])
        report[toy] = row
    return report


def trajectories(toy: str, pair: dict, x0: torch.Tensor) -> None:
    """The learned forward process beside VP's: the same points at five times of each."""
    plt = sl.training.plots.pyplot()
    times = (0.0, 0.1, 0.3, 0.6, 1.0)
    fig, axes = plt.subplots(2, len(times), figsize=(2.2 * len(times), 4.6))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for r, key in enumerate(("diffflow", "vp")):
            process = pair[key]["model"].process
            for c, t in enumerate(times):
                x = x0 if t == 0 else process.sample_marginal(x0, t, gen, steps=100) if key == "diffflow" \
                    else process.sample_marginal(x0, t, gen)
                ax = axes[r, c]
                ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.4)
                ax.set_xlim(-4.5, 4.5)
                ax.set_ylim(-4.5, 4.5)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{'DiffFlow' if key == 'diffflow' else 'VP'}, t = {t}", fontsize=8)
    fig.tight_layout()
    PICTURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(PICTURES / f"{toy}-trajectories.png", dpi=110)
    plt.close(fig)


def digits(seconds: float, scratch: Path) -> dict:
    train_set, test_set = load_digits("train"), load_digits("test")
    real = to_model_range(torch.from_numpy(test_set.images)).reshape(len(test_set.images), -1)
    options = {"base_channels": 32, "norm_groups": 8}
    pair = train_pair("digits", train_set, seconds, "digits8", options, 1e-3, scratch, 10, "5")
    floor_a = to_model_range(torch.from_numpy(train_set.images[:len(real)])).reshape(len(real), -1)
    row = {"floor": two_sample_classifier_accuracy(floor_a.numpy(), real.numpy()), "models": {}}
    for key, run in pair.items():
        model = run["model"]
        entry = {k: v for k, v in run.items() if k != "model"}
        entry["by_steps"] = {}
        for n in STEPS:
            x, sec = draw(model, (len(real), 1, 8, 8), SAMPLER[key], n, seed=n)
            x = x.clamp(-1, 1)
            entry["by_steps"][n] = {"c2st": two_sample_classifier_accuracy(x.reshape(len(x), -1).numpy(),
                                                                           real.numpy()),
                                    "sample_seconds": sec}
            if n in (10, 100):
                save_grid(x[:64], PICTURES / f"digits-{key}-N{n}.png")
            print("digits", key, n, entry["by_steps"][n], flush=True)
        row["models"][key] = entry
    return row


def digits_likelihood(scratch: Path, num: int = 100) -> None:
    """Held-out bits/dim of the digits runs the ``digits`` part trained (in ``scratch``), added to its results:
    the probability-flow ODE's for both (RK45, rtol 1e-4, one Hutchinson probe) and DiffFlow's trajectory bound
    at each N (one path per image), on ``num`` test digits, uniformly dequantized."""
    from scorelab.likelihood import dequantize, dequantized_bits_per_dim, ode_bits_per_dim

    path = RESULTS / "diffflow-digits.json"
    saved = json.loads(path.read_text())
    images = torch.from_numpy(load_digits("test").images[:num])
    for key in ("diffflow", "vp"):
        model, _, _ = sl.load_model(scratch / f"digits-{key}")
        gen = torch.Generator().manual_seed(0)
        bpd, _ = ode_bits_per_dim(model, images, generator=gen, rtol=1e-4, atol=1e-4)
        entry = saved["results"]["models"][key]
        entry["ode_bits_per_dim"] = float(bpd.mean())
        print("digits", key, "ode bits/dim", float(bpd.mean()), flush=True)
        if key == "diffflow":
            for n in STEPS:
                x = dequantize(images, torch.Generator().manual_seed(n)).float()
                nll = sl.diffflow.trajectory_nll(model, x, num_steps=n, randomness=torch.Generator().manual_seed(n))
                entry["by_steps"][str(n)]["trajectory_bits_per_dim"] = float(
                    dequantized_bits_per_dim(-nll, x[0].numel()).mean())
                print("digits trajectory", n, entry["by_steps"][str(n)]["trajectory_bits_per_dim"], flush=True)
    saved["likelihood_images"] = num
    path.write_text(json.dumps(saved, indent=1))


def _memory_probe(n: int, recompute: bool) -> int:
    """Peak resident memory added by one training loss and its backward pass (bytes; Linux, a fresh process)."""
    import resource

    from scorelab.diffflow import diffflow_loss
    from scorelab.training import make_model_spec

    train_set = load_digits("train")
    config = TrainConfig(framework="diffflow", network="digits8", process_options={"num_steps": n},
                         network_options={"base_channels": 32, "norm_groups": 8})
    model = make_model_spec(config, train_set).build()
    x0 = to_model_range(torch.from_numpy(train_set.images[:64]))
    before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()    # resident now
    diffflow_loss(model, x0, randomness=torch.Generator().manual_seed(0), recompute=recompute).mean().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before       # the peak, less that


def memory() -> dict:
    """Peak memory of one training step against N, keeping every step's activations or recomputing each step
    in the backward pass: the digits U-Net at batch 64, each measurement in a fresh process."""
    import subprocess
    import sys

    out = {}
    for n in STEPS:
        for mode in ("keep", "recompute"):
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import diffflow; "
                    f"print(diffflow._memory_probe({n}, {mode == 'recompute'}))")
            out[f"{n}/{mode}"] = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                    text=True).stdout.split()[-1])
            print("memory", n, mode, out[f"{n}/{mode}"] / 2**20, "MiB", flush=True)
    return out


def write_markdown() -> None:
    lines = ["# DiffFlow against VP at equal training time", "",
             "Generated by `benchmarks/diffflow.py` (see its docstring for the protocol).", ""]
    for part in ("toys", "digits"):
        path = RESULTS / f"diffflow-{part}.json"
        if not path.is_file():
            continue
        saved = json.loads(path.read_text())
        lines += [f"Machine: {saved['machine']}", ""]
        rows = saved["results"] if part == "toys" else {"digits (8x8)": saved["results"]}
        metric = "energy distance" if part == "toys" else "two-sample accuracy"
        key = "energy_distance" if part == "toys" else "c2st"
        lines += [f"| data | model | train steps (s/step) | ODE NLL | {metric} at N = " + ", ".join(map(str, STEPS))
                  + " | floor |", "|---|---|---|---|---|---|"]
        for name, row in rows.items():
            for model, entry in row["models"].items():
                values = ", ".join(f"{entry['by_steps'][str(n)][key]:.4f}" if part == "toys" else
                                   f"{entry['by_steps'][str(n)][key]:.3f}" for n in STEPS)
                nll = f"{entry['ode_nll']:.3f}" if "ode_nll" in entry else \
                    f"{entry['ode_bits_per_dim']:.3f} bits/dim" if "ode_bits_per_dim" in entry else "-"
                lines.append(f"| {name} | {model} | {entry['steps']} ({entry['seconds_per_step']:.3f}) | {nll} | "
                             f"{values} | {row['floor']:.4f} |")
        bound = rows.get("digits (8x8)", {}).get("models", {}).get("diffflow", {}).get("by_steps", {})
        if bound and "trajectory_bits_per_dim" in bound[str(STEPS[0])]:
            lines += ["", "DiffFlow's trajectory bound on the digits (bits/dim) at N = " + ", ".join(map(str, STEPS))
                      + ": " + ", ".join(f"{bound[str(n)]['trajectory_bits_per_dim']:.3f}" for n in STEPS)]
        if part == "toys":
            lines += ["", "DiffFlow's trajectory bound (nats per point) at N = " + ", ".join(map(str, STEPS)) + ":", ""]
            for name, row in rows.items():
                bound = row["models"]["diffflow"]["by_steps"]
                lines.append(f"* {name}: " + ", ".join(f"{bound[str(n)]['trajectory_nll']:.3f}" for n in STEPS))
        lines.append("")
    path = RESULTS / "diffflow-memory.json"
    if path.is_file():
        saved = json.loads(path.read_text())["results"]
        lines += ["Peak memory added by one training step (digits U-Net, batch 64), MiB:", "",
                  "| N | " + " | ".join(map(str, STEPS)) + " |", "|---|" + "---|" * len(STEPS)]
        for mode in ("keep", "recompute"):
            lines.append(f"| {mode} | " + " | ".join(f"{saved[f'{n}/{mode}'] / 2**20:.1f}" for n in STEPS) + " |")
        lines.append("")
    (RESULTS / "diffflow.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training seconds per toy model")
    parser.add_argument("--digits-seconds", type=float, default=300.0, help="training seconds per digits model")
    parser.add_argument("--only", choices=("toys", "digits", "memory", "digits-likelihood"), default=None)
    parser.add_argument("--scratch", default="/tmp/diffflow-bench")
    parser.add_argument("--toys", default=",".join(TOYS), help="comma-separated toy sets")
    args = parser.parse_args()
    torch.manual_seed(0)
    scratch = Path(args.scratch)
    PICTURES.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    runs = (("toys", lambda sec, d: toys(sec, d, args.toys.split(",")), args.seconds),
            ("digits", digits, args.digits_seconds), ("memory", lambda sec, d: memory(), 0))
    if args.only == "digits-likelihood":                  # the saved digits runs, their bits/dim added
        digits_likelihood(scratch)
        write_markdown()
        return
    for part, run, seconds in runs:
        if args.only not in (None, part):
            continue
        results = run(seconds, scratch)
        (RESULTS / f"diffflow-{part}.json").write_text(json.dumps(
            {"machine": machine, "seconds": seconds, "steps": STEPS, "results": results}, indent=1))
    write_markdown()


if __name__ == "__main__":
    main()
