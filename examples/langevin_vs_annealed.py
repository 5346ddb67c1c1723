"""Why annealing: Langevin dynamics on one score gets the mode weights wrong (Song & Ermon 2019, Fig. 3).

The data are the mixture 0.2 N((-5,-5), I) + 0.8 N((5,5), I); both samplers start from the
same uniform points on [-8, 8]^2 and use the *exact* score (no network), so any error is the
sampler's:

* Langevin dynamics on the score of p itself (1000 steps of size 0.1): each point rolls into
  the nearer mode and never crosses the low-density gap, so the modes keep the start's
  half-half split instead of 0.2 / 0.8;
* annealed Langevin through NCSN's ladder sigma = 20 ... 1 (10 levels, 100 steps each): at
  large sigma the perturbed modes overlap and points move between them in proportion to
  their weights, so the split comes out right. (Its modes come out narrower than the data's:
  the ladder stops at sigma = 1, and the final denoising step returns the mean E[x0 | x_sigma].)

Each panel is titled with the measured weight of the (-5,-5) mode (true 0.2). Run:

    python examples/langevin_vs_annealed.py [--out docs/score-matching] [--seed 0] [-n 2000]

It writes ``langevin.png`` and ``langevin.json`` under ``--out`` (a few seconds on one core).
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import scorelab as sl  # noqa: E402


def first_mode_weight(x: torch.Tensor) -> float:
    """The fraction of points on the (-5,-5) side of the line x + y = 0."""
    return float((x.sum(1) < 0).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/score-matching", help="folder for langevin.png / langevin.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", "--num", type=int, default=2000, help="points per panel")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = lambda k: torch.Generator().manual_seed(args.seed + k)  # noqa: E731

    mixture = sl.GaussianMixture(weights=[0.2, 0.8], means=[[-5.0, -5.0], [5.0, 5.0]], covariances=[1.0, 1.0])
    start = 16 * torch.rand(args.num, 2, generator=gen(0), dtype=torch.float64) - 8

    # Langevin on one score: the exact score of p (a VE model at sigma_min = 1e-3, i.e. p itself).
    exact = mixture.model(sl.VESDE(sigma_min=1e-3, sigma_max=20.0))
    plain = sl.samplers.langevin_dynamics(exact, start, 1000, 0.1, noise=gen(1))
    # Annealed Langevin: the exact scores of p convolved with N(0, sigma^2 I), sigma = 20 ... 1.
    ladder = sl.NCSN(sigma_max=20.0, sigma_min=1.0, num_scales=10)
    annealed = sl.samplers.annealed_langevin(mixture.model(ladder), start, epsilon=0.1, steps_per_level=100,
                                             noise=gen(1))
    truth = mixture.sample(args.num, generator=gen(2))

    panels = [("true mixture\n(samples)", truth), ("Langevin dynamics, exact score\n1000 steps of size 0.1", plain.samples),
              ("annealed Langevin, exact scores\n$\\sigma$ = 20 to 1, 10 levels x 100 steps", annealed.samples)]
    weights = {"true_samples": first_mode_weight(truth), "start": first_mode_weight(start),
               "langevin": first_mode_weight(plain.samples), "annealed": first_mode_weight(annealed.samples)}
    stderr = math.sqrt(0.2 * 0.8 / args.num)
    for name, w in weights.items():
        print(f"weight of the (-5,-5) mode, {name:13s}: {w:.3f}")
    print(f"(true weight 0.2; one standard error at n={args.num}: {stderr:.3f})")

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), sharex=True, sharey=True, layout="constrained")
    for ax, (title, x), w in zip(axes, panels, (weights["true_samples"], weights["langevin"], weights["annealed"])):
        x = x.numpy()
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.4, c="C0", linewidths=0, rasterized=True)
        ax.plot([-10, 10], [10, -10], lw=0.6, c="0.6", ls="--")       # the line splitting the modes
        ax.set_title(f"{title}\nweight of (-5,-5): {w:.2f} (true 0.2)", fontsize=9)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_aspect("equal")
        ax.set_xticks([-8, -4, 0, 4, 8])
        ax.set_yticks([-8, -4, 0, 4, 8])
        ax.tick_params(labelsize=7)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "langevin.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    record = {"mixture": "0.2 N((-5,-5), I) + 0.8 N((5,5), I)", "n": args.num, "seed": args.seed,
              "mode_weight_true": 0.2, "mode_weight": weights, "standard_error": stderr,
              "langevin": {"steps": 1000, "step_size": 0.1, "nfe": plain.nfe},
              "annealed": {"sigmas": "20 to 1, 10 levels", "steps_per_level": 100, "epsilon": 0.1,
                           "nfe": annealed.nfe}}
    (out / "langevin.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'langevin.png'} and {out / 'langevin.json'}")


if __name__ == "__main__":
    main()
