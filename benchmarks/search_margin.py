"""How much nearer the teacher a searched grid must be before it replaces the default (``search.MARGIN``).

For every cell of ``benchmarks/few_step.py`` (mixture, process, solver, budget) the timestep search is run
once with the solver, and each of its candidates (the GITS paths and the default grid) is kept with its two
calibration measures (mean distance to the teacher's samples draw by draw, energy distance as a set, on the
256 calibration draws) and its error on the benchmark's own draws (energy distance to exact samples over the
paired noise floor, as ``few_step.py`` measures it). Then each margin m is applied to the same candidates: a
candidate replaces the default when both its measures are at most (1 - m) times the default's, the nearest
as a set kept. Reported per margin: the cells where the kept grid is more than 10% worse than the default on
the benchmark's draws, those where it is more than 10% better, the worst ratio and the geometric mean::

    python benchmarks/search_margin.py            # about 4 minutes on 2 CPU cores (two processes)

Cells: the recorded ``few_step.py`` run's (both processes on the first pair, DDPM on the held-out pair up to
20 calls). Results: ``benchmarks/results/search_margin.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
import scorelab.samplers.search as search
from scorelab import samplers as S

sys.path.insert(0, str(Path(__file__).resolve().parent))
import few_step as F  # noqa: E402

MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3)
CELLS = [(m, p) for m in F.CHOSEN_ON for p in F.PROCESSES] + [(m, "ddpm") for m in F.MIXTURES if m not in F.CHOSEN_ON]


def candidates(mixture: str, process_name: str) -> list[dict]:
    """Every cell of one mixture and process: each candidate's calibration measures and benchmark ratio."""
    torch.set_num_threads(1)
    budgets = F.BUDGETS if mixture in F.CHOSEN_ON else (5, 6, 7, 8, 10, 12, 15, 20)
    gm = sl.GaussianMixture(*F.MIXTURES[mixture]())
    model = gm.model(F.PROCESSES[process_name]())
    dist = F.Distance(gm.sample(F.N_REF, F.gen(12345), dtype=torch.float64))
    draws = [torch.randn(F.N, gm.dim, generator=F.gen(2024 + k), dtype=torch.float64) for k in range(2)]
    floors = [dist(S.dpm_solver_pp_3m(gm.model(sl.VPSDE()), z.clone(), 200, lower_order_final=False).samples)
              for z in draws]
    rows, nearness = [], search._nearness
    for solver in F.SOLVERS:
        for budget in budgets:
            grids: list[torch.Tensor] = []

            def spy(model_, x_T, sampler, times, teacher):       # the candidates' grids, in the search's order
                grids.append(times.clone())
                return nearness(model_, x_T, sampler, times, teacher)

            search._nearness = spy
            try:
                found = search.search_times(model, budget, (256, gm.dim), seed=7, sampler=solver, margin=0.0)
            finally:
                search._nearness = nearness
            cands = {}
            for label, times in zip(found.candidates, grids):
                ratios = [dist(S.sample(model, z.clone(), solver, times=times).samples) / f
                          for z, f in zip(draws, floors)]
                cands[label] = {"miss": found.candidates[label], "set": found.set_distances[label],
                                "ratio": float(np.mean(ratios))}
            rows.append({"mixture": mixture, "process": process_name, "solver": solver, "budget": budget,
                         "candidates": cands})
    return rows


def kept(cands: dict, margin: float) -> str:
    """The candidate the search keeps under ``margin`` (``search.kept_candidate``, as ``search_times``)."""
    return search.kept_candidate({k: v["miss"] for k, v in cands.items()}, {k: v["set"] for k, v in cands.items()},
                                 "default", margin)


def report(rows: list[dict]) -> str:
    lines = ["# The searched grid's margin over the default", "",
             f"`python benchmarks/search_margin.py`; {len(rows)} cells of `few_step.md`. A candidate replaces the "
             "default grid when both calibration measures are at most (1 - margin) times the default's; the "
             "benchmark ratio is the kept grid's error over the default's on the benchmark's own draws.", "",
             "| margin | cells > 10% worse | cells > 10% better | worst ratio | geometric mean |",
             "|---|---:|---:|---:|---:|"]
    for margin in MARGINS:
        r = [c["candidates"][kept(c["candidates"], margin)]["ratio"] / c["candidates"]["default"]["ratio"]
             for c in rows]
        lines.append(f"| {margin:g} | {sum(x > 1.1 for x in r)} | {sum(x < 1 / 1.1 for x in r)} | {max(r):.2f} | "
                     f"{math.exp(np.mean(np.log(r))):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=F.OUT)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for part in pool.map(candidates, *zip(*CELLS)) for r in part]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_margin.json").write_text(json.dumps({"margins": MARGINS, "rows": rows}, indent=0))
    (args.out / "search_margin.md").write_text(report(rows))
    print(report(rows))


if __name__ == "__main__":
    main()
