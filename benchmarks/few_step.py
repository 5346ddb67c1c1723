"""Few-step sampling on exact ground truth: every setting of the fast solvers, their defaults, searched grids.

Each multistep solver (DPM-Solver++(2M), (3M), UniPC, iPNDM) is driven by the exact model of a Gaussian
mixture (MATH.md 6) at budgets of 5 to 50 network evaluations, under every combination of its settings: the
grid (uniform in log sigma, EDM's rho = 7, uniform in t), where the grid stops (the process's t_min or
sigma 0.05 / 0.1, then the data prediction), its order, the lower-order final steps, iPNDM's weights
(equal-step or variable-step); and on the grid GITS searches for the model (``search_times``, a 60-step
iPNDM teacher on 256 draws). Error = energy distance (V-statistic) to 5,000 exact samples over the paired
noise floor: the same prior draws carried by the exact probability-flow map (DPM-Solver++(3M), 1000 steps),
so a ratio near 1 is as good as exact. ``default`` rows are what ``sample(model, shape, name, steps)`` gives.

Mixtures: the samplers benchmark's 2-D and 16-D pair (``tests/conftest.py``), to choose default settings
on, and a held-out pair to check them on (a 2-D ring of five narrow components, a 16-D three-component
mixture; the recorded run, ``--mixtures 2-D,16-D``, has only the first pair).
Processes: DDPM (T = 1000, linear betas) and the VP SDE.

    python benchmarks/few_step.py                  # writes benchmarks/results/few_step.{json,md}
    python benchmarks/few_step.py --defaults-only  # re-measure the default and searched rows, keep the rest
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
from scorelab import samplers as S
from scorelab.samplers import time_grid
from scorelab.samplers.search import search_times

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import mixture_16d_params, mixture_2d_params, random_spd  # noqa: E402

OUT = Path(__file__).parent / "results"
BUDGETS = (5, 6, 8, 10, 15, 20, 30, 50)
SOLVERS = {"dpm++2m": S.dpm_solver_pp_2m, "dpm++3m": S.dpm_solver_pp_3m, "unipc": S.unipc, "ipndm": S.ipndm}
OPTIONS = {
    "dpm++2m": [{"lower_order_final": b} for b in (True, False)],
    "dpm++3m": [{"lower_order_final": b} for b in (True, False)],
    "unipc": [{"order": o, "lower_order_final": b} for o in (2, 3) for b in (True, False)],
    "ipndm": [{"order": o, "variable_step": v, "lower_order_final": b}
              for o in (3, 4) for v in (False, True) for b in (True, False)],
}
GRIDS = [(kind, end) for kind in ("log_sigma", "karras", "time") for end in (None, 0.05, 0.1)] + [("gits", None)]
N, N_REF = 2000, 5000


def ring_params():
    """Held out: five narrow components on a ring, unequal weights."""
    angles = np.linspace(0, 2 * np.pi, 6)[:-1]
    means = 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1)
    covs = np.stack([np.eye(2) * s**2 for s in (0.05, 0.1, 0.15, 0.2, 0.08)])
    return np.array([0.3, 0.25, 0.2, 0.15, 0.1]), means, covs


def three_16d_params():
    """Held out: three 16-D components with condition number ~ 30."""
    rng = np.random.default_rng(32)
    return (np.array([0.5, 0.3, 0.2]), rng.normal(scale=0.7, size=(3, 16)),
            np.stack([random_spd(rng, 16, 0.01, 0.3) for _ in range(3)]))


MIXTURES = {"2-D": mixture_2d_params, "16-D": mixture_16d_params,
            "2-D ring (held out)": ring_params, "16-D three (held out)": three_16d_params}
CHOSEN_ON = ("2-D", "16-D")
PROCESSES = {"ddpm": sl.DDPM, "vp": sl.VPSDE}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Distance:
    """Energy distance (V-statistic) to one fixed exact reference, its self-term computed once."""

    def __init__(self, ref: torch.Tensor):
        self.ref = ref
        self.ref_term = float(torch.cdist(ref, ref).mean())

    def __call__(self, x: torch.Tensor) -> float:
        return float(2 * torch.cdist(x, self.ref).mean() - torch.cdist(x, x).mean()) - self.ref_term


def grid_times(process, budget: int, kind: str, end: float | None, searched: dict) -> torch.Tensor:
    if kind == "gits":
        return searched[budget]
    t_min = None if end is None else float(process.time_of_sigma(torch.tensor(end, dtype=torch.float64)))
    return time_grid(process, budget - 1, kind, t_min=t_min)


def measure(mixture: str, process_name: str, budgets, replicates: int, defaults_only: bool) -> list[dict]:
    gm = sl.GaussianMixture(*MIXTURES[mixture]())
    process = PROCESSES[process_name]()
    model = gm.model(process)
    dist = Distance(gm.sample(N_REF, gen(12345), dtype=torch.float64))
    draws = [torch.randn(N, gm.dim, generator=gen(2024 + k), dtype=torch.float64) for k in range(replicates)]
    floors = [dist(S.dpm_solver_pp_3m(gm.model(sl.VPSDE()), z.clone(), 1000, lower_order_final=False).samples)
              for z in draws]
    t0 = time.perf_counter()
    searched = {b: search_times(model, b, (256, gm.dim), seed=7).tensor() for b in budgets}
    search_seconds = (time.perf_counter() - t0) / len(budgets)
    rows = []

    def record(solver, options, grid, budget, run):
        ratios = [dist(run(z.clone()).samples) / f for z, f in zip(draws, floors)]
        rows.append({"mixture": mixture, "process": process_name, "solver": solver, "options": options,
                     "grid": grid, "budget": budget, "per_draw": ratios, "ratio": float(np.mean(ratios))})

    for budget in budgets:
        for solver, function in SOLVERS.items():
            record(solver, {}, "default", budget, lambda z: S.sample(model, z, solver, budget))
            for options in OPTIONS[solver]:
                for kind, end in GRIDS:
                    if defaults_only and kind != "gits":
                        continue
                    times = grid_times(process, budget, kind, end, searched)
                    record(solver, options, f"{kind}" + (f" to {end}" if end else ""), budget,
                           lambda z: function(model, z, times=times, **options))
    print(f"[{mixture} {process_name}] {len(rows)} runs; search {search_seconds:.2f} s per grid", flush=True)
    for r in rows:
        r["search_seconds"] = search_seconds
    return rows


def report(rows: list[dict], budgets) -> str:
    combos = sorted({(r["mixture"], r["process"]) for r in rows}, key=lambda c: (list(MIXTURES).index(c[0]), c[1]))
    lines = ["# Few-step sampling: defaults, best fixed settings and searched grids, over the noise floor", "",
             "`python benchmarks/few_step.py`; energy distance to exact samples over the paired floor (1 = as good "
             "as exact), mean of the draws. Per solver and budget: the default call, the best of its "
             f"{len(GRIDS) - 1} fixed grids x its options, and the best of its options on the GITS grid. "
             "The first two mixtures are the ones to choose default settings on; the held-out pair, run with "
             "`--mixtures`, is for checking them.", ""]
    for mixture, process in combos:
        lines += [f"## {mixture}, {process}", "", "| solver | " + " | ".join(f"{b} NFE" for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for solver in SOLVERS:
            cells = {b: [r for r in rows if r["mixture"] == mixture and r["process"] == process
                         and r["solver"] == solver and r["budget"] == b] for b in budgets}
            default = [next(r["ratio"] for r in cells[b] if r["grid"] == "default") for b in budgets]
            fixed = [min(r["ratio"] for r in cells[b] if r["grid"] not in ("default", "gits")) for b in budgets]
            gits = [min(r["ratio"] for r in cells[b] if r["grid"] == "gits") for b in budgets]
            lines.append(f"| {solver} default | " + " | ".join(f"{v:.2f}" for v in default) + " |")
            lines.append(f"| {solver} best fixed | " + " | ".join(f"{v:.2f}" for v in fixed) + " |")
            lines.append(f"| {solver} GITS grid | " + " | ".join(f"{v:.2f}" for v in gits) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--mixtures", default=",".join(MIXTURES))
    parser.add_argument("--defaults-only", action="store_true",
                        help="re-measure only the default and GITS rows; the fixed settings' rows are kept")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    budgets = [int(b) for b in args.budgets.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "few_step.json"
    kept = json.loads(path.read_text())["rows"] if path.exists() else []
    new = [r for m, p in itertools.product(args.mixtures.split(","), PROCESSES)
           for r in measure(m, p, budgets, args.replicates, args.defaults_only)]
    fresh = {(r["mixture"], r["process"], r["budget"], r["solver"], r["grid"], json.dumps(r["options"])) for r in new}
    rows = [r for r in kept if (r["mixture"], r["process"], r["budget"], r["solver"], r["grid"],
                                json.dumps(r["options"])) not in fresh] + new
    path.write_text(json.dumps({"n": N, "n_ref": N_REF, "replicates": args.replicates, "rows": rows}, indent=0))
    all_budgets = sorted({r["budget"] for r in rows})
    (args.out / "few_step.md").write_text(report(rows, all_budgets) + "\n")
    print(report(rows, all_budgets))


if __name__ == "__main__":
    main()
