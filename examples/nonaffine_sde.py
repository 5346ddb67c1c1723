"""A diffusion model on an SDE whose drift is not affine (MATH.md 7), trained and sampled end to end.

The forward SDE is one of the library's named Langevin SDEs,
``dx = -(beta(t)/2) u'(x) dt + sqrt(beta(t)) dw``, whose prior at t = 1 is ``exp(-u)``:

* ``double_well`` (default): ``u(x) = x^2/2 - log cosh(1.5 x)``, prior (N(-1.5, 1) + N(1.5, 1)) / 2
  per coordinate, so four blobs in 2-D;
* ``tanh``: ``u(x) = 2 log cosh(x/2)``, a saturating drift; prior logistic per coordinate.

There is no Gaussian kernel p(x_t | x0), so no denoising target: the trainer (``framework="sde"``)
simulates x_t by Euler-Maruyama and fits the score by sliced score matching (SSM-VR). The script

1. plots the forward marginals: two-moons data pushed through ``sde.simulate`` to t = 0, 0.05,
   0.2, 0.5, 1 next to samples of the prior (``forward_marginals.png``);
2. trains a small MLP score network with ``scorelab.training.train``;
3. samples with the reverse SDE (Euler-Maruyama, 1000 steps) and the probability-flow ODE (RK45)
   and plots them next to held-out data (``reverse_samples.png``);
4. measures each sampler's sliced Wasserstein-2 and energy distance to held-out data, with the
   same distances between two independent held-out sets of the same size as the noise floor
   (what a perfect sampler would score), and saves them with the training time (``nonaffine.json``).

Run (about 75 s on one CPU core, 60 s of it training):

    python examples/nonaffine_sde.py [--drift double_well|tanh] [--steps 3000] [--seed 0] [--out docs/score-matching]

With ``--drift tanh`` the files are named ``forward_marginals_tanh.png`` etc., so the default
run's pictures are kept.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import scorelab as sl  # noqa: E402
from scorelab.data import toy_points  # noqa: E402
from scorelab.evaluation import energy_distance, sliced_wasserstein  # noqa: E402
from scorelab.training import TrainConfig, train  # noqa: E402

TIMES = (0.0, 0.05, 0.2, 0.5, 1.0)


def scatter(ax, x: np.ndarray, title: str, lim: tuple[float, float, float, float], color: str = "C0") -> None:
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.35, c=color, linewidths=0, rasterized=True)
    ax.set_xlim(lim[0], lim[1])
    ax.set_ylim(lim[2], lim[3])
    ax.set_aspect("equal")
    ticks = (-4, 0, 4) if lim[1] > 4 else (-2, 0, 2)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drift", default="double_well", choices=sorted(sl.processes.NAMED_SDES),
                        help="the named non-affine SDE")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (batch 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", "--num", type=int, default=2000, help="samples per sampler and per held-out set")
    parser.add_argument("--out", default="docs/score-matching", help="folder for the PNGs and nonaffine.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = lambda k: torch.Generator().manual_seed(args.seed + k)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.drift == "double_well" else f"_{args.drift}"     # keep the default run's files apart

    sde = sl.named_sde(args.drift)
    data = toy_points("two_moons", 20000, seed=args.seed)                 # training set
    pool = torch.from_numpy(toy_points("two_moons", 20000, seed=args.seed + 1))  # held-out pool
    order = torch.randperm(len(pool), generator=gen(0))
    held_out, held_out_2 = pool[order[:args.num]], pool[order[args.num:2 * args.num]]

    # 1. Forward marginals: simulate the SDE from data (200 Euler-Maruyama steps per row).
    x0 = torch.from_numpy(data[:args.num])
    panels = [(f"t = {t:g}", sde.simulate(x0, t, 200, gen(1)).numpy()) for t in TIMES]
    panels.append(("prior sample", sde.prior_sample((args.num, 2), gen(2)).numpy()))
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 2.7), sharex=True, sharey=True, layout="constrained")
    for k, (ax, (title, x)) in enumerate(zip(axes, panels)):
        scatter(ax, x, title, (-6, 6, -6, 6), color="C1" if k == len(panels) - 1 else "C0")
    fig.suptitle(f"forward marginals of the {args.drift!r} SDE from two moons (simulated), and its prior",
                 fontsize=10)
    fig.savefig(out / f"forward_marginals{suffix}.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    # 2. Train a score network by sliced score matching on simulated x_t (SSM-VR, the framework's loss).
    with tempfile.TemporaryDirectory() as run_dir:
        config = TrainConfig(framework="sde", process_options={"drift": args.drift}, data="points:two_moons",
                             out=run_dir, steps=args.steps, batch_size=512, lr=2e-3, warmup=100, ema_decay=0.999,
                             network="mlp", network_options={"hidden": 128, "depth": 3}, device="cpu",
                             seed=args.seed, log_every=100, sample_every=10**9, checkpoint_every=10**9)
        result = train(config, data=data)
    model = result.model
    print(f"trained {args.steps} steps in {result.seconds:.1f} s; final loss (mean of last 100) "
          f"{np.mean(result.losses[-100:]):.4f}")

    # 3. Sample with the reverse SDE and the probability-flow ODE.
    titles = {"em": "reverse SDE (EM, 1000 steps)", "ode": "probability-flow ODE (RK45)"}
    samples, record = {}, {}
    for sampler, steps in (("em", 1000), ("ode", None)):
        t0 = time.perf_counter()
        res = sl.samplers.sample(model, (args.num, 2), sampler, steps, noise=gen(3))
        seconds = time.perf_counter() - t0
        x = res.samples.detach().float().cpu()
        samples[sampler] = x
        record[sampler] = {"nfe": res.nfe, "seconds": round(seconds, 2),
                           "sliced_wasserstein": sliced_wasserstein(x, held_out, generator=gen(4)),
                           "energy_distance": energy_distance(x, held_out)}
    floor = {"sliced_wasserstein": sliced_wasserstein(held_out_2, held_out, generator=gen(4)),
             "energy_distance": energy_distance(held_out_2, held_out)}

    # 4. Print and save the numbers.
    print(f"{'':8s} {'sliced W2':>10s} {'energy':>10s} {'NFE':>6s}")
    for sampler, r in record.items():
        print(f"{sampler:8s} {r['sliced_wasserstein']:10.4f} {r['energy_distance']:10.4f} {r['nfe']:6d}")
    print(f"{'floor':8s} {floor['sliced_wasserstein']:10.4f} {floor['energy_distance']:10.4f}   "
          f"(two independent held-out sets of {args.num})")
    (out / f"nonaffine{suffix}.json").write_text(json.dumps({
        "sde": sde.config(), "data": "points:two_moons", "train_steps": args.steps, "batch_size": 512,
        "loss": config.resolved("loss"), "network": "mlp hidden 128 depth 3", "seed": args.seed,
        "train_seconds": round(result.seconds, 1), "num_samples": args.num,
        "samplers": record, "noise_floor": floor}, indent=2) + "\n")

    lim = (-3.5, 3.5, -2.5, 2.5)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.1), sharex=True, sharey=True, layout="constrained")
    scatter(axes[0], held_out.numpy(), "held-out data", lim, color="0.4")
    for ax, (sampler, x) in zip(axes[1:], samples.items()):
        sw = record[sampler]["sliced_wasserstein"]
        scatter(ax, x.numpy(), f"{titles[sampler]}\nsliced W2 {sw:.3f} (floor {floor['sliced_wasserstein']:.3f})", lim)
    fig.suptitle(f"samples of a score network trained under the {args.drift!r} SDE ({args.steps} steps)", fontsize=10)
    fig.savefig(out / f"reverse_samples{suffix}.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote forward_marginals{suffix}.png, reverse_samples{suffix}.png and nonaffine{suffix}.json to {out}")


if __name__ == "__main__":
    main()
