"""Conditional sampling from an unconditional model, measured against the exact posterior (MATH.md 8).

Every method is driven by the exact unconditional model of a Gaussian mixture (MATH.md 6), so its
only error is its own approximation of ``p(x | y)``; the exact posterior is a mixture in closed form
(:meth:`GaussianMixture.condition`). Problems: the 2-D mixture with x1 observed and the 16-D one with
its first 8 coordinates observed, each without and with observation noise (``noise_std`` 0.2), for
``--observations`` observations ``y = A x* + n`` of prior draws ``x*``.

Error = energy distance (V-statistic, floor of order 1/n) between ``--n`` samples of the method and
``2 n`` exact posterior samples, averaged over the observations, reported over the noise floor (the
same distance for ``n`` exact posterior samples). Methods at several budgets of network evaluations:
replacement (Song et al.) in the ancestral sampler and in DPM-Solver++(2M), RePaint (ours, and
diffusers' RePaintScheduler with eta = 1 on the same levels, jumps and resamplings: the peer), DPS at
several step sizes, and the exact posterior model itself (a perfect conditional model) with DPM-Solver++(2M).

    python benchmarks/conditional.py            # writes benchmarks/results/conditional.{json,md}
    python benchmarks/conditional.py --quick    # one observation, fewer budgets: a smoke run
    python benchmarks/conditional.py --render   # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
from scorelab import conditional as C
from scorelab.evaluation import energy_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import mixture_16d_params, mixture_2d_params  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NOISES = (0.0, 0.2)
DDPM = sl.DDPM()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def problems() -> dict[str, tuple[sl.GaussianMixture, torch.Tensor]]:
    """name -> (mixture, mask of observed coordinates)."""
    m2, m16 = sl.GaussianMixture(*mixture_2d_params()), sl.GaussianMixture(*mixture_16d_params())
    return {"2d": (m2, torch.tensor([True, False])), "16d": (m16, torch.arange(16) < 8)}


def diffusers_repaint(model, y: torch.Tensor, mask: torch.Tensor, n: int, levels: int, jump: int, resample: int,
                      seed: int) -> tuple[torch.Tensor, int]:
    """diffusers' RePaintScheduler (eta = 1, the paper's ancestral steps) driven by the exact eps."""
    from diffusers import RePaintScheduler

    sched = RePaintScheduler(num_train_timesteps=DDPM.num_steps, beta_schedule="linear", eta=1.0, clip_sample=False)
    sched.set_timesteps(levels, jump_length=jump, jump_n_sample=resample)
    g = gen(seed)
    d = mask.numel()
    original = torch.zeros(n, d, dtype=torch.float64)
    original[:, mask] = y
    m = mask.double().expand(n, d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    nfe, t_last = 0, sched.timesteps[0] + 1
    for t in sched.timesteps:
        if t < t_last:
            eps = model.predict(x, DDPM.step_to_time(int(t) + 1)).eps
            nfe += 1
            x = sched.step(eps, int(t), x, original, m, generator=g).prev_sample
        else:
            x = sched.undo_step(x, int(t_last), generator=g)
        t_last = t
    return x, nfe


def methods(quick: bool):
    """(label, family, NFE-ish budget, runner(model, op, y, n, seed, mask) -> (samples, nfe))."""
    out = []
    for steps in ((50, 250) if quick else (50, 100, 250, 1000)):
        out.append((f"replace, ancestral {steps}", "replace", lambda mo, op, y, n, s, mk, k=steps: C.linear_inverse(
            mo, y.expand(n, -1), op, method="replace", steps=k, noise=gen(s))))
    for steps in ((20,) if quick else (10, 20, 50)):
        out.append((f"replace, dpm++2m {steps}", "replace", lambda mo, op, y, n, s, mk, k=steps: C.linear_inverse(
            mo, y.expand(n, -1), op, method="replace", sampler="dpm++2m", steps=k, noise=gen(s))))
    for levels, jump, r in ((50, 5, 1), (50, 5, 5)) if quick else ((50, 5, 1), (50, 5, 3), (50, 5, 10), (100, 10, 10)):
        out.append((f"repaint, {levels} levels, j={jump}, r={r}", "repaint",
                    lambda mo, op, y, n, s, mk, L=levels, j=jump, rr=r: C.linear_inverse(
                        mo, y.expand(n, -1), op, method="repaint", steps=L, jump_length=j, resample=rr,
                        noise=gen(s))))
        out.append((f"diffusers repaint, {levels} levels, j={jump}, r={r}", "peer",
                    lambda mo, op, y, n, s, mk, L=levels, j=jump, rr=r: diffusers_repaint(
                        mo, y, mk, n, L, j, rr, s)))
    for steps in ((250,) if quick else (100, 250, 1000)):
        for scale in ((0.1,) if quick else (0.03, 0.1, 0.3, 1.0)):
            out.append((f"dps {steps}, scale {scale}", "dps", lambda mo, op, y, n, s, mk, k=steps, z=scale:
                        C.linear_inverse(mo, y.expand(n, -1), op, method="dps", steps=k, scale=z, noise=gen(s))))
    return out


def run(args) -> dict:
    table: dict[str, dict] = {}
    for name, (mixture, mask) in problems().items():
        model = mixture.model(DDPM)
        op = C.Mask(mask)
        for noise_std in NOISES:
            key = f"{name}, noise {noise_std}"
            print(f"== {key}", flush=True)
            stars = mixture.sample(args.observations, gen(100))
            cells: dict[str, list] = {}
            floors = []
            for k in range(args.observations):
                y = op(stars[k:k + 1].double()) + noise_std * torch.randn(1, int(mask.sum()), generator=gen(200 + k),
                                                                          dtype=torch.float64)
                post = mixture.condition(op, y[0], noise_std)
                reference = post.sample(2 * args.n, gen(300 + k), dtype=torch.float64)
                floors.append(energy_distance(post.sample(args.n, gen(400 + k)), reference, unbiased=False))
                exact = sl.samplers.sample(post.model(DDPM), (args.n, mixture.dim), "dpm++2m", 50, noise=gen(500 + k))
                cells.setdefault("exact posterior model, dpm++2m 50", []).append(
                    (energy_distance(exact.samples, reference, unbiased=False), exact.nfe, 0.0))
                for label, family, runner in methods(args.quick):
                    for seed in range(args.seeds):
                        start = time.perf_counter()
                        out = runner(model, op, y, args.n, 600 + 10 * k + seed, mask)
                        samples, nfe = (out.samples, out.nfe) if hasattr(out, "samples") else out
                        err = energy_distance(samples.double(), reference, unbiased=False)
                        cells.setdefault(label, []).append((err, nfe, time.perf_counter() - start))
            floor = float(np.mean(floors))
            rows = {}
            for label, values in cells.items():
                errs = [v[0] for v in values]
                err, se = float(np.mean(errs)), float(np.std(errs, ddof=1) / np.sqrt(len(errs))) if len(errs) > 1 else 0.0
                rows[label] = {"nfe": int(values[0][1]), "error": err, "stderr": se, "over_floor": err / floor,
                               "stderr_over_floor": se / floor, "seconds": float(np.mean([v[2] for v in values]))}
                print(f"  {label:45s} NFE {rows[label]['nfe']:5d}  error {err:.5f} +- {se:.5f}  x{err / floor:6.1f}",
                      flush=True)
            table[key] = {"floor": floor, "rows": rows}
    return table


def reach(rows: dict, family_prefix: str, threshold: float) -> int | None:
    """The fewest NFE of a method family whose error over the floor is at most ``threshold``."""
    hits = [r["nfe"] for label, r in rows.items() if label.startswith(family_prefix) and r["over_floor"] <= threshold]
    return min(hits) if hits else None


def markdown(table: dict, meta: dict) -> str:
    keys = list(table)
    lines = ["# Conditional sampling against the exact posterior", "",
             f"`python benchmarks/conditional.py` ({meta['date']}, {meta['machine']}; {meta['n']} samples, "
             f"{meta['observations']} observations per problem, {meta['seeds']} noise draws each). Error: energy "
             "distance to the exact posterior over the noise floor (1.0 = as good as exact samples), mean ± "
             "standard error over the draws. Exact unconditional model throughout.", "",
             "| method | NFE | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    labels = list(next(iter(table.values()))["rows"])
    for label in labels:
        nfe = table[keys[0]]["rows"][label]["nfe"]
        lines.append(f"| {label} | {nfe} | " + " | ".join(
            f"{table[k]['rows'][label]['over_floor']:.1f} ± {table[k]['rows'][label]['stderr_over_floor']:.1f}"
            for k in keys) + " |")
    lines += ["", "Fewest NFE to come within 50x / 10x of the noise floor (- : none of the budgets and settings "
              "tried; for DPS, at its best step size):", "",
              "| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for prefix in ("replace, ancestral", "replace, dpm++2m", "repaint", "diffusers repaint", "dps"):
        cells = []
        for k in keys:
            a, b = reach(table[k]["rows"], prefix, 50.0), reach(table[k]["rows"], prefix, 10.0)
            cells.append(f"{a or '-'} / {b or '-'}")
        lines.append(f"| {prefix} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="samples per method and observation")
    p.add_argument("--observations", type=int, default=3)
    p.add_argument("--seeds", type=int, default=2, help="noise draws per method and observation")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "conditional"))
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = p.parse_args()
    if args.render:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(saved["results"], saved["meta"]))
        return
    if args.quick:
        args.observations, args.seeds = 1, 1
    torch.set_num_threads(2)
    table = run(args)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, torch {torch.__version__}",
            "n": args.n, "observations": args.observations, "seeds": args.seeds, "quick": args.quick}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": table}, indent=1))
    out.with_suffix(".md").write_text(markdown(table, meta))
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
