"""Particle (SMC) conditional sampling against the exact posterior and the exact evidence (MATH.md 12).

The problems of benchmarks/conditional.py (the 2-D mixture with x1 observed, the 16-D one with its first 8
coordinates observed; exact and noisy y) and a harder one modelled on MCGdiff's (Cardoso et al. 2024): a
25-component mixture whose means lie on a 5x5 grid (D = 8), observed through a random 2 x 8 operator with
singular values in (0.1, 1) and noise 0.05. Every method is driven by the exact unconditional model, so its
error is its own. For each proposal that applies (replace: exact observations and orthogonal rows), at
K = 1, 4, 16, 64, 256 particles on the 100-level ancestral grid:

* error: energy distance between ``--n`` SMC samples (one per run of K particles) and ``2 n`` exact posterior
  samples, over the noise floor (the same distance for n exact samples), averaged over the observations;
* evidence: the mean absolute error of the estimated ``log p(y)`` against its closed form, per run.

DPS at its best step sizes runs on the grid problem for the equal-NFE picture (the other problems' replace,
RePaint and DPS rows come from benchmarks/results/conditional.json).

    python benchmarks/smc.py                    # writes benchmarks/results/smc.{json,md}, docs/conditional/smc-nfe.png
    python benchmarks/smc.py --problems 2d      # some problems only (merged into the existing .json)
    python benchmarks/smc.py --render           # rewrite the .md and the picture from the .json
    python benchmarks/smc.py --problems 16d --particles 256 --levels 200 --out benchmarks/results/smc-256
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
from scorelab import conditional as C
from scorelab.evaluation import energy_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditional import DDPM, RESULTS, gen, problems  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PICTURE = ROOT / "docs" / "conditional" / "smc-nfe.png"
PARTICLES = (1, 4, 16, 64, 256)
LEVELS = 100
FLOOR_DRAWS = 20


def grid_problem() -> tuple[sl.GaussianMixture, C.MatrixOperator, float]:
    """MCGdiff's 25-component mixture on a 5x5 grid (here D = 8, means 1.5 apart, component std 0.3), a random
    2 x 8 operator with singular values drawn in (0.1, 1), noise 0.05."""
    rng = np.random.default_rng(25)
    d = 8
    grid = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=float) * 1.5
    means = np.tile(grid, (1, d // 2))
    weights = rng.uniform(0.5, 1.5, 25)
    covs = np.stack([0.09 * np.eye(d)] * 25)
    u, _ = np.linalg.qr(rng.normal(size=(2, 2)))
    v, _ = np.linalg.qr(rng.normal(size=(d, 2)))
    a = u @ np.diag(rng.uniform(0.1, 1.0, 2)) @ v.T
    return sl.GaussianMixture(weights / weights.sum(), means, covs), C.MatrixOperator(torch.tensor(a)), 0.05


def all_problems() -> dict[str, tuple[sl.GaussianMixture, C.LinearOperator, float]]:
    out = {}
    for name, (mixture, mask) in problems().items():
        for noise_std in (0.0, 0.2):
            out[f"{name}, noise {noise_std}"] = (mixture, C.Mask(mask), noise_std)
    out["grid 25, noise 0.05"] = grid_problem()
    return out


def exact_log_evidence(mixture: sl.GaussianMixture, a: torch.Tensor, y: torch.Tensor, noise_std: float) -> float:
    """``log p(y) = log sum_k w_k N(y; A m_k, A C_k A^T + noise_std^2 I)`` (MATH.md 12)."""
    cov = a @ mixture.covariances() @ a.T + noise_std**2 * torch.eye(len(a), dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(mixture.means @ a.T, cov)
    return float(torch.logsumexp(comp.log_prob(y) + mixture.weights.log(), 0))


def observation(mixture, op, noise_std: float, n: int, k: int, count: int):
    """Observation ``k`` of ``count`` of a problem (the same at every run): ``y``, the exact posterior and its ``2 n``
    reference samples."""
    a = op.matrix((mixture.dim,))
    star = mixture.sample(count, gen(100))[k:k + 1]
    y = op(star.double()) + noise_std * torch.randn(1, a.shape[0], generator=gen(200 + k), dtype=torch.float64)
    post = mixture.condition(op, y[0], noise_std)
    return y, post, post.sample(2 * n, gen(300 + k), dtype=torch.float64)


def exact_distances(post, reference: torch.Tensor, n: int, k: int) -> list[float]:
    """Energy distances of ``FLOOR_DRAWS`` independent sets of ``n`` exact posterior samples to the reference: their
    mean is the noise floor, their spread what exact sampling scores."""
    return [energy_distance(post.sample(n, gen(400 + k + 1000 * s)), reference, unbiased=False)
            for s in range(FLOOR_DRAWS)]


def chain_error(post, reference: torch.Tensor, n: int, levels: int, k: int) -> float:
    """The error of the exact posterior's own model sampled by the ``levels``-level ancestral chain: what the grid
    alone costs, which no number of particles removes."""
    out = sl.samplers.sample(post.model(DDPM), (n, post.dim), "ancestral", levels, noise=gen(800 + k))
    return energy_distance(out.samples.double(), reference, unbiased=False)


def floor_summary(distances: list[list[float]]) -> tuple[float, list[float]]:
    """The noise floor (mean over observations of each one's mean exact distance) and the 10%-90% band of exact
    samples' error over it (their mean over observations, per draw)."""
    floor = float(np.mean([np.mean(d) for d in distances]))
    per_draw = np.mean(np.array(distances), 0) / floor
    return floor, [float(np.percentile(per_draw, 10)), float(np.percentile(per_draw, 90))]


def run_problem(name: str, mixture, op, noise_std: float, args) -> dict:
    model = mixture.model(DDPM)
    d = mixture.dim
    a = op.matrix((d,))
    proposals = [p for p in C.PROPOSALS if p != "replace" or (noise_std == 0 and op.row_norm2 is not None)]
    cells: dict[str, list] = {}
    distances = []
    for k in range(args.observations):
        y, post, reference = observation(mixture, op, noise_std, args.n, k, args.observations)
        distances.append(exact_distances(post, reference, args.n, k))
        cells.setdefault(f"chain, L={args.levels}", []).append(
            (chain_error(post, reference, args.n, args.levels, k), args.levels, 0.0, math.nan, math.nan))
        truth = exact_log_evidence(mixture, a, y[0], noise_std)
        ys = y.expand(args.n, -1)
        for proposal in proposals:
            for particles in args.particles:
                start = time.perf_counter()
                out = C.smc(model, op, ys, (args.n, d), args.levels, noise_std=noise_std, proposal=proposal,
                            particles=particles, noise=gen(600 + k))
                err = energy_distance(out.samples.double(), reference, unbiased=False)
                ev = out.log_evidence
                cells.setdefault(f"smc {proposal}, K={particles}", []).append(
                    (err, out.nfe, time.perf_counter() - start, float((ev - truth).abs().mean()),
                     float(torch.logsumexp(ev, 0) - math.log(len(ev)) - truth)))
                print(f"  {name} obs {k} {proposal:8s} K={particles:3d}: x{err / np.mean(distances[-1]):6.2f}  "
                      f"|log Z err| {cells[f'smc {proposal}, K={particles}'][-1][3]:.3f}  "
                      f"{time.perf_counter() - start:.0f}s", flush=True)
        if op.row_norm2 is None:                                   # replace/RePaint do not apply: DPS for the picture
            for steps, scale in ((100, 0.1), (100, 0.3), (250, 0.1), (1000, 0.03)):
                out = C.linear_inverse(model, ys, op, noise_std, method="dps", steps=steps, scale=scale,
                                       noise=gen(700 + k))
                err = energy_distance(out.samples.double(), reference, unbiased=False)
                cells.setdefault(f"dps {steps}, scale {scale}", []).append((err, out.nfe, 0.0, math.nan, math.nan))
    floor, band = floor_summary(distances)
    rows = {}
    for label, values in cells.items():
        errs = np.array([v[0] for v in values])
        rows[label] = {"nfe": int(values[0][1]), "error": float(errs.mean()), "over_floor": float(errs.mean()) / floor,
                       "stderr_over_floor": float(errs.std(ddof=1) / np.sqrt(len(errs))) / floor if len(errs) > 1 else 0.0,
                       "seconds": float(np.mean([v[2] for v in values])),
                       "log_evidence_abs_error": float(np.mean([v[3] for v in values])),
                       "log_mean_evidence_error": float(np.mean([v[4] for v in values]))}
    return {"floor": floor, "exact_band": band, "rows": rows}


def refloor(table: dict, meta: dict) -> None:
    """Recompute each problem's floor from ``FLOOR_DRAWS`` exact draws per observation (the same observations) and
    rescale its rows (results saved with one draw per observation)."""
    problems_ = all_problems()
    for name, entry in table.items():
        mixture, op, noise_std = problems_[name]
        count, levels = meta["observations"], meta.get("levels", LEVELS)
        distances, chain = [], []
        for k in range(count):
            post, reference = observation(mixture, op, noise_std, meta["n"], k, count)[1:]
            distances.append(exact_distances(post, reference, meta["n"], k))
            chain.append(chain_error(post, reference, meta["n"], levels, k))
        floor, band = floor_summary(distances)
        entry["rows"][f"chain, L={levels}"] = {"nfe": levels, "error": float(np.mean(chain)), "stderr_over_floor": 0.0,
                                             "seconds": 0.0, "log_evidence_abs_error": math.nan,
                                             "log_mean_evidence_error": math.nan}
        for row in entry["rows"].values():
            row["over_floor"] = row["error"] / floor
            row["stderr_over_floor"] *= entry["floor"] / floor
        entry["floor"], entry["exact_band"] = floor, band


def markdown(table: dict, meta: dict) -> str:
    lines = ["# Particle (SMC) conditional sampling against the exact posterior", "",
             f"`python benchmarks/smc.py` ({meta['date']}, {meta['machine']}; {meta['n']} samples, each drawn from "
             f"its own run of K particles on the {meta.get('levels', LEVELS)}-level ancestral grid; {meta['observations']} observations "
             "per problem). Error: energy distance to the exact posterior over the noise floor (1.0 = as good as "
             "exact samples). Evidence against the closed form. Exact unconditional model throughout.", ""]
    keys = list(table)
    levels = meta.get("levels", LEVELS)
    chain = f"chain, L={levels}"
    lines += ["Exact posterior samples, the same test: 10%-90% of " + str(FLOOR_DRAWS) + " draws over the floor:", "",
              "| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys),
              "| exact samples | " + " | ".join("{:.2f}-{:.2f}".format(*table[k]["exact_band"]) if "exact_band" in table[k]
                                              else "-" for k in keys) + " |",
              f"| the exact posterior's model, {levels}-level ancestral chain | " + " | ".join(
                  "{:.2f}".format(table[k]["rows"][chain]["over_floor"]) if chain in table[k]["rows"] else "-"
                  for k in keys) + " |", ""]
    for proposal in C.PROPOSALS:
        lines += [f"## proposal = {proposal!r}", "", "| K | NFE | " + " | ".join(keys) + " |",
                  "|---:|---:|" + "---:|" * len(keys)]
        for particles in meta.get("particles", PARTICLES):
            label = f"smc {proposal}, K={particles}"
            cells = []
            for k in keys:
                row = table[k]["rows"].get(label)
                cells.append("-" if row is None else f"{row['over_floor']:.2f} ({row['log_evidence_abs_error']:.2f}, "
                             f"{row['log_mean_evidence_error']:+.2f})")
            lines.append(f"| {particles} | {particles * meta.get('levels', LEVELS)} | " + " | ".join(cells) + " |")
        lines.append("")
    dps = [label for label in table.get("grid 25, noise 0.05", {}).get("rows", {}) if label.startswith("dps")]
    if dps:
        lines += ["## DPS on the grid problem", "", "| method | NFE | error over floor |", "|---|---:|---:|"]
        for label in dps:
            row = table["grid 25, noise 0.05"]["rows"][label]
            lines.append(f"| {label} | {row['nfe']} | {row['over_floor']:.1f} |")
        lines.append("")
    lines += ["Cells: error over the floor (in brackets: the mean |log p̂(y) - log p(y)| of one run, and the error "
              "of the log of the runs' mean p̂(y), which is unbiased in p(y)). `-`: the proposal does not apply "
              "(replace: exact observations through orthogonal rows only). Picture: docs/conditional/smc-nfe.png.", ""]
    return "\n".join(lines)


def picture(table: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers_file = RESULTS / "conditional.json"
    peers = json.loads(peers_file.read_text())["results"] if peers_file.exists() else {}
    more_file = RESULTS / "smc-256.json"                # K = 256 on a finer grid, where it was run
    more = json.loads(more_file.read_text())["results"] if more_file.exists() else {}
    keys = list(table)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.8), sharey=True)
    colours = {"twisted": "C0", "replace": "C1", "kalman": "C2", "replace (Song)": "C7", "repaint": "C4", "dps": "C3"}
    for ax, key in zip(np.atleast_1d(axes), keys):
        rows = table[key]["rows"]
        for proposal in C.PROPOSALS:
            pts = [(rows[f"smc {proposal}, K={p}"]["nfe"], rows[f"smc {proposal}, K={p}"]["over_floor"])
                   for p in PARTICLES if f"smc {proposal}, K={p}" in rows]  # whichever were run
            if pts:
                ax.plot(*zip(*pts), "o-", color=colours[proposal], label=f"SMC {proposal}")
            row = more.get(key, {}).get("rows", {}).get(f"smc {proposal}, K=256")
            if row:
                ax.plot([row["nfe"]], [row["over_floor"]], "*", ms=11, color=colours[proposal],
                        label=f"SMC {proposal}, K = 256, 200 levels" if key == keys[0] else None)
        other = peers.get(key, {}).get("rows", {}) | {k: v for k, v in rows.items() if k.startswith("dps")}
        for family, prefix in (("replace (Song)", "replace, ancestral"), ("repaint", "repaint"), ("dps", "dps")):
            pts = sorted((v["nfe"], v["over_floor"]) for label, v in other.items() if label.startswith(prefix))
            best: dict[int, float] = {}
            for nfe, err in pts:
                best[nfe] = min(err, best.get(nfe, math.inf))
            if best:
                ax.plot(list(best), list(best.values()), "s--", color=colours[family], alpha=0.8, label=family)
        for label in (k for k in rows if k.startswith("chain")):             # what the grid alone costs
            ax.axhline(rows[label]["over_floor"], color="C5", lw=0.8, ls="--", label="exact posterior, same chain")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("NFE per sample")
    np.atleast_1d(axes)[0].set_ylabel("error / noise floor")
    first = np.atleast_1d(axes)[0]
    fig.legend(*first.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PICTURE, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="samples (SMC runs) per proposal, K and observation")
    p.add_argument("--observations", type=int, default=2)
    p.add_argument("--problems", nargs="*", default=None, help="substrings of the problems to run")
    p.add_argument("--particles", type=int, nargs="+", default=list(PARTICLES), help="numbers of particles K")
    p.add_argument("--levels", type=int, default=LEVELS, help="levels of the ancestral grid")
    p.add_argument("--out", default=str(RESULTS / "smc"), help="results file stem (the picture: the default's only)")
    p.add_argument("--render", action="store_true", help="only rewrite the .md and the picture from the .json")
    p.add_argument("--refloor", action="store_true", help="recompute the saved results' floors from "
                   f"{FLOOR_DRAWS} exact draws per observation, then render")
    args = p.parse_args()
    out = Path(args.out)
    saved = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else None
    if args.refloor:
        refloor(saved["results"], saved["meta"])
        out.with_suffix(".json").write_text(json.dumps(saved, indent=1))
    elif not args.render:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        table = dict(saved["results"]) if saved else {}
        for name, (mixture, op, noise_std) in all_problems().items():
            if args.problems and not any(s in name for s in args.problems):
                continue
            print(f"== {name}", flush=True)
            table[name] = run_problem(name, mixture, op, noise_std, args)
            order = list(all_problems())
            table = {k: table[k] for k in order if k in table}
            meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, torch {torch.__version__}",
                    "n": args.n, "observations": args.observations, "particles": args.particles, "levels": args.levels}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": table}, indent=1))
        saved = {"meta": meta, "results": table}
    out.with_suffix(".md").write_text(markdown(saved["results"], saved["meta"]))
    if out == RESULTS / "smc":
        picture(saved["results"])
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
