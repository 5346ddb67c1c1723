"""DPM-Solver++(2M)'s lower-order step before the last: diffusers' heuristic against the official rule.

scorelab's ``lower_order_final`` takes a first-order step before the last one (the last ending at sigma > 0)
when there are fewer than 15 steps: diffusers' heuristic on a grid that ends at sigma_min. The official
DPM-Solver code lowers only the final step, and only below 10 steps, as does diffusers on its current grid
ending at sigma = 0; scorelab's last step (to sigma = 0) is always first order, so both are
``lower_order_final=False`` here. Both are
driven by the exact model of the tests' 2-D and 16-D Gaussian mixtures (MATH.md 6); error = energy distance
to 6000 exact samples, mean over 3 seeds of 3000 samples each (same noise for both rules).

    python benchmarks/dpm_lower_order.py      # about 1 minute; writes benchmarks/results/dpm_lower_order.json
"""

import json
import sys
from pathlib import Path

import torch

import scorelab as sl
from scorelab import samplers as S
from scorelab.evaluation import energy_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import mixture_16d_params, mixture_2d_params  # noqa: E402


def main() -> None:
    rows = []
    for label, params in [("2d", mixture_2d_params()), ("16d", mixture_16d_params())]:
        gm = sl.GaussianMixture(*params)
        ref = gm.sample(6000, torch.Generator().manual_seed(99))
        for process in (sl.DDPM(), sl.VPSDE()):
            model = gm.model(process)
            for steps in (5, 6, 8, 10, 12, 14):
                error = {}
                for rule, lower in (("diffusers", True), ("official", False)):
                    eds = []
                    for seed in range(3):
                        x_T = torch.randn(3000, gm.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                        x = S.dpm_solver_pp_2m(model, x_T, steps, grid="log_sigma",
                                               lower_order_final=lower).samples
                        eds.append(float(energy_distance(x, ref)))
                    error[rule] = sum(eds) / len(eds)
                rows.append({"mixture": label, "process": type(process).__name__, "steps": steps, **error})
                print(f"{label:4s} {type(process).__name__:6s} {steps:3d} steps: diffusers' rule {error['diffusers']:.5f}"
                      f"  official {error['official']:.5f}", flush=True)
    wins = sum(r["diffusers"] < r["official"] for r in rows)
    print(f"diffusers' rule more accurate in {wins} of {len(rows)} cases")
    out = Path(__file__).parent / "results" / "dpm_lower_order.json"
    out.write_text(json.dumps({"rows": rows, "diffusers_rule_wins": wins, "cases": len(rows)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
