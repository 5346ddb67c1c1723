"""Categorical and Gaussian diffusion on binarized MNIST at equal training cost (MATH.md 2, 10, 13).

The data: MNIST's 10,000 test images (all this repository's shared data holds of MNIST), thresholded at
mid-grey, the first 9,000 for training and the last 1,000 held out. Each model gets the same compute: the
U-Net models (one 0.28M U-Net) 1,000 steps of batch 64 (0.64 s a step alone on one CPU thread), the
autoregressive transitions, whose steps cost about five times more (3 s), 210; one recipe (Adam 1e-3, 100
warm-up steps, EMA 0.999). The Gaussian DDPM twice: Ho et al.'s eps target, and the v target with Min-SNR-5
weighting (the recipe behind the Fashion-MNIST figures):

    python benchmarks/binarized_mnist.py --prepare          # writes runs/bmnist/{train,test}.npz
    U="--network mnist28 --network-option base_channels=16 --network-option norm_groups=8 \\
       --network-option num_res_blocks=1 --network-option dropout=0.0"
    C="--data array:runs/bmnist/train.npz --batch-size 64 --warmup 100 --ema-decay 0.999 --lr 1e-3 --seed 0"
    scorelab train $C $U --framework masked --categories 2 --steps 1000 --out runs/bmnist/masked
    scorelab train $C $U --framework multinomial --categories 2 --process-option kernel=absorbing \\
        --process-option schedule=linear --steps 1000 --out runs/bmnist/absorbing
    scorelab train $C $U --framework multinomial --categories 2 --steps 1000 --out runs/bmnist/uniform
    scorelab train $C $U --framework ddpm --steps 1000 --out runs/bmnist/ddpm
    scorelab train $C $U --framework ddpm --target v --loss min-snr --steps 1000 --out runs/bmnist/ddpm-v
    scorelab train $C --framework multinomial --transitions autoregressive --categories 2 --steps 210 \\
        --network-option width=64 --network-option heads=2 --network-option decoder_layers=1 \\
        --network-option unet_channels=16 --out runs/bmnist/ar
    python benchmarks/binarized_mnist.py --masked runs/bmnist/masked --absorbing runs/bmnist/absorbing \\
        --uniform runs/bmnist/uniform --ddpm runs/bmnist/ddpm --ddpm-v runs/bmnist/ddpm-v \
        --autoregressive runs/bmnist/ar

Measured per model: held-out bits/dim on 2 levels (the first 500 held-out images; each bound estimated
without bias from 125 network calls an image (the autoregressive one from 32): masked diffusion's at
stratified times, the T = 1000 bounds'
steps stratified in 125 blocks of 8, the Gaussian DDPM's with its decoder binned to 2 levels; the 4-step
autoregressive bound from 8 draws of each term, 32 calls), and 100 samples thresholded at mid-grey against the 1,000
held-out images (precision / recall in pixels and in an in-domain classifier's features, the classifier
two-sample test), with network calls and seconds a sample. Any subset of the runs may be given; rows are
merged into benchmarks/results/binarized_mnist.{json,md}; sample grids go to docs/multinomial/.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
from scorelab.data import from_categories, load_array, load_mnist, to_categories, to_model_range
from scorelab.demo import fidelity_and_diversity
from scorelab.discrete import masked_bits_per_dim, vlb_term
from scorelab.evaluation import fit_domain_classifier
from scorelab.imaging import save_grid
from scorelab.models import unconditional
from scorelab.objectives.vlb import ddpm_of, prior_kl
from scorelab.objectives.vlb import vlb_term as gaussian_vlb_term

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multinomial import training_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "runs" / "bmnist"
RESULTS = ROOT / "benchmarks" / "results" / "binarized_mnist"
PICTURES = ROOT / "docs" / "multinomial"
CALLS = 125
#: Draws of each of the autoregressive bound's 4 terms (each a teacher-forced pass of the Transformer over 784
#: pixels, several times a U-Net call's cost).
AR_REPEATS = 8
SAMPLERS = {"masked": ("masked", 256), "absorbing": ("multinomial", 250), "uniform": ("multinomial", 250),
            "autoregressive": ("multinomial", None), "ddpm": ("dpm++2m", 50), "ddpm-v": ("dpm++2m", 50)}
#: The Gaussian models (their bound's decoder binned to 2 levels).
GAUSSIAN = ("ddpm", "ddpm-v")


def prepare(mnist: Path) -> None:
    """MNIST's test split thresholded at mid-grey (values 0 / 255): 9,000 to train on, 1,000 held out."""
    images = load_mnist(mnist, "test")
    binary = np.where(images.images > 127, 255, 0).astype(np.uint8)
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez(DATA / "train.npz", x=binary[:9000], y=images.labels[:9000])
    np.savez(DATA / "test.npz", x=binary[9000:], y=images.labels[9000:])
    print(f"wrote {DATA}/train.npz (9,000) and test.npz (1,000); {binary.mean() / 255:.3f} of pixels are on")


def _stratified_steps(n: int, block: int, j: int, gen: torch.Generator) -> torch.Tensor:
    """One step per example, uniform in the ``j``-th block of ``block`` steps of ``1..num_steps``."""
    return j * block + 1 + torch.randint(0, block, (n,), generator=gen)


@torch.no_grad()
def bits(name: str, model, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Bits/dim per image on 2 levels, each an unbiased estimate of the model's bound from :data:`CALLS` calls."""
    n, dims = x.shape[0], x[0].numel()
    cats = to_categories(x, 2)
    if name == "masked":
        return masked_bits_per_dim(model, cats, gen, draws=CALLS)
    process = model.process
    if name == "autoregressive":
        repeats = AR_REPEATS
        total = sum(vlb_term(model, cats, torch.full((n,), t), noise=gen).double()
                    for _ in range(repeats) for t in range(1, process.num_steps + 1)) / repeats
        return (total + process.prior_kl(cats)) / (dims * math.log(2))
    block = process.num_steps // CALLS
    total = torch.zeros(n, dtype=torch.float64)
    for j in range(CALLS):
        t = _stratified_steps(n, block, j, gen)
        if name in GAUSSIAN:
            term = gaussian_vlb_term(unconditional(model, n), x, t, generator=gen, num_bins=2)
        else:
            term = vlb_term(model, cats, t, noise=gen)
        total += block * term.double()
    total += prior_kl(ddpm_of(model), x).double() if name in GAUSSIAN else process.prior_kl(cats)
    return total / (dims * math.log(2))


def samples(name: str, model, count: int, seed: int) -> tuple[torch.Tensor, int, float]:
    """``count`` samples thresholded at mid-grey, the sampler's network calls a sample, and seconds a sample."""
    sampler, steps = SAMPLERS[name]
    t0 = time.perf_counter()
    m = unconditional(model, count) if name in GAUSSIAN else model
    res = sl.samplers.sample(m, (count, 1, 28, 28), sampler, steps, noise=torch.Generator().manual_seed(seed))
    seconds = (time.perf_counter() - t0) / count
    return from_categories(to_categories(res.samples.clamp(-1, 1), 2), 2), res.nfe, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="write runs/bmnist/{train,test}.npz and stop")
    parser.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                        help="a folder with MNIST's t10k idx files")
    for name in SAMPLERS:
        parser.add_argument(f"--{name}", help=f"the {name} run")
    parser.add_argument("--images", type=int, default=500, help="held-out images the bound is measured on")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.prepare:
        prepare(Path(args.mnist))
        return
    torch.manual_seed(args.seed)
    train, test = load_array(DATA / "train.npz"), load_array(DATA / "test.npz")
    real = to_model_range(torch.from_numpy(test.images))
    features = fit_domain_classifier(train, test, seed=args.seed, progress=False)
    pick = np.random.default_rng(args.seed).choice(len(train), args.samples, replace=False)
    floor = fidelity_and_diversity(to_model_range(torch.from_numpy(train.images[pick])), test.images, features,
                                   args.seed)
    old = json.loads(RESULTS.with_suffix(".json").read_text()) if RESULTS.with_suffix(".json").exists() else {}
    rows: dict[str, dict] = dict(old.get("rows", {}))
    PICTURES.mkdir(parents=True, exist_ok=True)
    for name in SAMPLERS:
        run = getattr(args, name.replace("-", "_"))
        if run is None:
            continue
        model, spec, ckpt = sl.load_model(run)
        row = {"run": run, "train_steps": ckpt.step, "train_seconds": training_seconds(run),
               "parameters": sum(p.numel() for p in model.net.parameters()), "measured": time.strftime("%Y-%m-%d")}
        t0 = time.perf_counter()
        bpd = bits(name, model, real[:args.images], torch.Generator().manual_seed(args.seed))
        row["bits_per_dim"] = (float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd))))
        row["bits_seconds"] = time.perf_counter() - t0
        fake, row["nfe"], row["seconds_per_sample"] = samples(name, model, args.samples, args.seed)
        row["sampler"], row["steps"] = SAMPLERS[name]
        row.update(fidelity_and_diversity(fake, test.images, features, args.seed))
        save_grid(fake[:100], PICTURES / f"bmnist_{name}.png", nrow=10)
        rows[name] = row
        print(name, row, flush=True)
    env = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}
    RESULTS.with_suffix(".json").write_text(json.dumps({"floor": floor, "rows": rows, "env": env}, indent=1))
    RESULTS.with_suffix(".md").write_text(render(rows, floor, env, args))
    print(RESULTS.with_suffix(".md").read_text())


def render(rows: dict, floor: dict, env: dict, args) -> str:
    lines = ["# Binarized MNIST: categorical and Gaussian diffusion at equal training cost", "",
             f"Held-out bits/dim on 2 levels (the first {args.images} of 1,000 held-out images; each image's bound "
             f"estimated without bias from {CALLS} network calls, the autoregressive one's from {4 * AR_REPEATS}; "
             "uniform pixels: 1 bit/dim). Samples: "
             f"{args.samples} draws thresholded at mid-grey against the 1,000 held-out images (precision/recall "
             "k = 3; two-sample accuracy: 0.5 is indistinguishable). Train: steps (wall-clock seconds on one CPU "
             "thread of a 2-core machine shared with other jobs).", "",
             "| model | train steps (s) | parameters | bits/dim | sampler (steps) | NFE | precision px / feat | "
             "recall px / feat | two-sample acc. | s / sample | measured |",
             "|---|---|---:|---|---|---:|---|---|---|---:|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["bits_per_dim"][0]):
        mean, se = r["bits_per_dim"]
        lines.append(f"| {name} | {r['train_steps']} ({r['train_seconds']:.0f}) | {r['parameters']:,} | "
                     f"{mean:.4f} +- {se:.4f} | {r['sampler']} ({r['steps'] or 'all'}) | {r['nfe']} | "
                     f"{r['precision_pixels']:.2f} / {r['precision_features']:.2f} | {r['recall_pixels']:.2f} / "
                     f"{r['recall_features']:.2f} | {r['two_sample_accuracy']:.2f} | {r['seconds_per_sample']:.3f} | "
                     f"{r['measured']} |")
    lines.append(f"| real training images (floor) | | | | | | {floor['precision_pixels']:.2f} / "
                 f"{floor['precision_features']:.2f} | {floor['recall_pixels']:.2f} / {floor['recall_features']:.2f} | "
                 f"{floor['two_sample_accuracy']:.2f} | | |")
    lines += ["", f"Machine: {env}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
