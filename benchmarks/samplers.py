"""Sampler accuracy per network evaluation, scorelab against diffusers, on exact ground truth.

Every sampler, ours and diffusers' schedulers, is driven by the exact model of a
Gaussian mixture (MATH.md 6): each is handed the exact eps (or score) at the
noise level it itself believes it is at, so the only error left is the
sampler's. Error = energy distance (V-statistic, so always positive with a
floor of order 1/n) between its samples and a larger exact sample, averaged
over ``--replicates`` independent noise draws (one at 1000 NFE); all samplers start from the same
noise. The noise floor is what an exact sampler scores from the same draws: the
probability-flow ODE solved to convergence (DPM-Solver++(3M), 1000 steps) maps
each draw to exact samples, and its energy distance, averaged the same way, is
the floor each sampler's ratio is taken against. (Single draws of the floor
vary by 8x between seeds; pairing the draws makes the ratio of a deterministic
sampler precise to a few percent.) Also measures sampler overhead: wall time per
NFE when driving a U-Net, divided by one U-Net call.

    python benchmarks/samplers.py                 # writes benchmarks/results/samplers.{json,png}
    python benchmarks/samplers.py --quick         # smaller, for a smoke run
    python benchmarks/samplers.py --overhead-only # re-measure only the overhead section
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import scorelab as sl
from scorelab import samplers as S
from scorelab.evaluation import energy_distance
from scorelab.samplers import time_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import mixture_16d_params, mixture_2d_params  # noqa: E402

BUDGETS = [10, 20, 50, 100, 1000]
VE = sl.VESDE(0.01, 50.0)
#: The targets: best error over the noise floor at 10 and 20 NFE.
TARGETS = {10: 1.5, 20: 1.1}
#: Log-sigma grids that stop at these noise levels (then one data prediction) instead of DDPM's 0.01.
SIGMA_ENDS = (0.05, 0.1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# scorelab's samplers at a budget of network evaluations
# ---------------------------------------------------------------------------------------
#: The multistep solvers' settings of their papers and diffusers (their defaults from 20 steps), so these rows
#: measure the solvers on a fixed grid at every budget; benchmarks/few_step.py measures the step-count defaults.
PAPER = {"grid": "log_sigma", "lower_order_final": True}


def ours(budget: int):
    """name -> (process of the exact model, function(model, x_T) -> SampleResult), all within budget."""
    ladder = sl.NCSN(sigma_max=20.0, sigma_min=0.01, num_scales=10)
    pc_steps = max(1, (budget - 1) // 2)
    return {
        "ancestral (beta)": (sl.DDPM(), lambda m, x: S.ddpm_ancestral(m, x, budget, noise=gen(1))),
        "ancestral (beta_tilde)": (sl.DDPM(), lambda m, x: S.ddpm_ancestral(m, x, budget, variance="beta_tilde", noise=gen(1))),
        "ddim": (sl.DDPM(), lambda m, x: S.ddim(m, x, budget)),
        "ode euler": (sl.DDPM(), lambda m, x: S.ode_euler(m, x, budget)),
        "ode heun (edm)": (sl.DDPM(), lambda m, x: S.ode_heun(m, x, (budget + 1) // 2)),
        "dpm-solver++(2m)": (sl.DDPM(), lambda m, x: S.dpm_solver_pp_2m(m, x, budget, **PAPER)),
        "dpm-solver++(3m)": (sl.DDPM(), lambda m, x: S.dpm_solver_pp_3m(m, x, budget, **PAPER)),
        "unipc (2)": (sl.DDPM(), lambda m, x: S.unipc(m, x, budget, order=2, **PAPER)),
        "unipc (3)": (sl.DDPM(), lambda m, x: S.unipc(m, x, budget, order=3, **PAPER)),
        **{name: run for end in SIGMA_ENDS for name, run in _ending_at(budget, end).items()},
        "euler-maruyama (vp)": (sl.VPSDE(), lambda m, x: S.euler_maruyama(m, x, budget - 1, noise=gen(1))),
        "pc (vp)": (sl.VPSDE(), lambda m, x: S.predictor_corrector(m, x, pc_steps, snr_norm="batch", noise=gen(1))),
        "pc (ve)": (VE, lambda m, x: S.predictor_corrector(m, x, pc_steps, snr_norm="batch", noise=gen(1))),
        "annealed langevin": (ladder, lambda m, x: S.annealed_langevin(
            m, x, steps_per_level=budget // 10, final_denoise=False, noise=gen(1))),
    }


def _ending_at(budget: int, sigma_end: float) -> dict:
    """The multistep solvers on ``budget`` times uniform in log sigma from DDPM's t = 1 down to ``sigma_end``."""
    ddpm = sl.DDPM()
    t_end = float(ddpm.time_of_sigma(torch.tensor(sigma_end, dtype=torch.float64)))
    times = time_grid(ddpm, budget - 1, "log_sigma", t_min=t_end) if budget > 1 else torch.ones(1)
    return {
        f"dpm-solver++(3m), sigma_end {sigma_end}": (ddpm, lambda m, x: S.dpm_solver_pp_3m(
            m, x, times=times, lower_order_final=False)),
        f"unipc (2), sigma_end {sigma_end}": (ddpm, lambda m, x: S.unipc(m, x, times=times, order=2,
                                                                           lower_order_final=True)),
        f"unipc (3), sigma_end {sigma_end}": (ddpm, lambda m, x: S.unipc(m, x, times=times, order=3,
                                                                           lower_order_final=True)),
    }


def rk45_runs(gm, x_vp, x_ve):
    out = []
    for tol in (1e-1, 3e-2, 1e-2, 1e-3, 1e-5):
        for name, process, x in (("ode rk45 (vp)", sl.VPSDE(), x_vp), ("ode rk45 (ve)", VE, x_ve)):
            t0 = time.perf_counter()
            res = S.ode_rk45(gm.model(process), x.clone(), rtol=tol, atol=tol)
            out.append((f"{name}, rtol {tol:g}", res, time.perf_counter() - t0))
    return out


# ---------------------------------------------------------------------------------------
# diffusers' schedulers, fed the exact eps / score
# ---------------------------------------------------------------------------------------
def exact_eps(gm, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
    n = x.shape[0]
    a_t, s_t = torch.full((n,), a, dtype=torch.float64), torch.full((n,), s, dtype=torch.float64)
    return (-s * gm.score_at(x, a_t, s_t)).to(x.dtype)


def diffusers_runs(gm, x_vp: torch.Tensor, x_ve: torch.Tensor, budget: int):
    import diffusers

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    runs = {}

    def discrete(name, sched, steps, **step_kw):
        sched.set_timesteps(steps)
        ac = sched.alphas_cumprod.double()
        x, g = x_vp.clone(), gen(1)
        t0 = time.perf_counter()
        for t in sched.timesteps:
            a = math.sqrt(ac[int(t)])
            eps = exact_eps(gm, x, a, math.sqrt(1 - a * a))
            if "generator" in inspect.signature(sched.step).parameters:
                step_kw = {**step_kw, "generator": g}
            x = sched.step(eps, t, x, **step_kw).prev_sample
        runs[name] = (x, len(sched.timesteps), time.perf_counter() - t0)

    def sigma_based(name, sched, steps):
        sched.set_timesteps(steps)
        x = x_vp.clone() * sched.init_noise_sigma
        t0 = time.perf_counter()
        nfe = 0
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            sigma = float(sched.sigmas[sched.step_index])
            a = 1 / math.sqrt(sigma**2 + 1)
            eps = exact_eps(gm, x_in, a, sigma * a)
            x = sched.step(eps, t, x).prev_sample
            nfe += 1
        runs[name] = (x, nfe, time.perf_counter() - t0)

    discrete("diffusers DDPM", diffusers.DDPMScheduler(**common, clip_sample=False, variance_type="fixed_large"), budget)
    discrete("diffusers DDIM", diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True), budget)
    discrete("diffusers DPMSolverMultistep", diffusers.DPMSolverMultistepScheduler(**common), budget)
    discrete("diffusers UniPCMultistep", diffusers.UniPCMultistepScheduler(**common), budget)
    sigma_based("diffusers EulerDiscrete", diffusers.EulerDiscreteScheduler(**common), budget)
    sigma_based("diffusers HeunDiscrete", diffusers.HeunDiscreteScheduler(**common), (budget + 1) // 2)

    # ScoreSdeVe: predictor-corrector on the VE SDE, one corrector step per predictor step.
    steps = max(1, budget // 2)
    sched = diffusers.ScoreSdeVeScheduler(sigma_min=VE.sigma_min, sigma_max=VE.sigma_max, snr=0.16, correct_steps=1)
    sched.set_timesteps(steps)
    sched.set_sigmas(steps)
    x, g = x_ve.clone(), gen(1)
    t0 = time.perf_counter()
    for i, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[i])
        x = sched.step_correct(exact_eps(gm, x, 1.0, sigma) / -sigma, x, generator=g).prev_sample
        out = sched.step_pred(exact_eps(gm, x, 1.0, sigma) / -sigma, t, x, generator=g)
        x, x_mean = out.prev_sample, out.prev_sample_mean
    runs["diffusers ScoreSdeVe"] = (x_mean, 2 * steps, time.perf_counter() - t0)
    return runs


# ---------------------------------------------------------------------------------------
# overhead against a U-Net-sized network
# ---------------------------------------------------------------------------------------
class _UNet(nn.Module):
    def __init__(self):
        super().__init__()
        import diffusers
        self.unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                          block_out_channels=(64, 128, 128),
                                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))

    def forward(self, x, c):
        return self.unet(x, c).sample


class _Zero(nn.Module):
    def forward(self, x, c):
        return torch.zeros_like(x)


def _sampler_runs(model, shape, nfe: int) -> dict:
    return {
        "ddpm_ancestral": lambda: S.ddpm_ancestral(model, shape, nfe, noise=gen(0)),
        "ddim": lambda: S.ddim(model, shape, nfe, noise=gen(0)),
        "ode_heun": lambda: S.ode_heun(model, shape, (nfe + 1) // 2, noise=gen(0)),
        "dpm_solver_pp_2m": lambda: S.dpm_solver_pp_2m(model, shape, nfe, noise=gen(0)),
        "euler_maruyama": lambda: S.euler_maruyama(model, shape, nfe - 1, noise=gen(0)),
        "predictor_corrector": lambda: S.predictor_corrector(model, shape, (nfe - 1) // 2,
                                                             corrector="annealed_langevin", noise=gen(0)),
    }


@torch.no_grad()
def overhead(batch: int, nfe: int, repeats: int = 3) -> dict:
    """Per NFE: a sampler's wall time over one bare U-Net call (min over interleaved repeats,
    since timings on a shared CPU wander by 10%), and its own cost with a no-op network."""
    torch.manual_seed(0)
    net = _UNet().eval()
    model = sl.Model(net, sl.DDPM())
    shape = (batch, 3, 32, 32)
    x = torch.randn(shape)

    def bare() -> float:
        t0 = time.perf_counter()
        for i in range(nfe):
            net(x, torch.full((batch,), 999.0 - i))
        return (time.perf_counter() - t0) / nfe

    bare()
    result = {"unet_params_millions": sum(p.numel() for p in net.parameters()) / 1e6, "batch": batch,
              "nfe": nfe, "samplers": {}}
    calls = []
    for name, run in _sampler_runs(model, shape, nfe).items():
        per_nfe, base = [], []
        for _ in range(repeats):
            base.append(bare())
            t0 = time.perf_counter()
            res = run()
            per_nfe.append((time.perf_counter() - t0) / res.nfe)
        calls += base
        result["samplers"][name] = {"seconds_per_nfe": min(per_nfe), "overhead_ratio": min(per_nfe) / min(base)}
    result["seconds_per_unet_call"] = min(calls)
    zero = sl.Model(_Zero(), sl.DDPM())
    for name, run in _sampler_runs(zero, shape, 200).items():
        run()
        t0 = time.perf_counter()
        res = run()
        result["samplers"][name]["ms_per_step_without_network"] = 1e3 * (time.perf_counter() - t0) / res.nfe
    return result


# ---------------------------------------------------------------------------------------
def evaluate(label: str, gm, n: int, n_ref: int, budgets: list[int], replicates: int) -> dict:
    ref = gm.sample(n_ref, gen(12345), dtype=torch.float64)
    independent = [energy_distance(gm.sample(n, gen(777 + k), dtype=torch.float64), ref, unbiased=False)
                   for k in range(replicates)]
    draws = [torch.randn(n, gm.dim, generator=gen(2024 + k), dtype=torch.float64) for k in range(replicates)]
    exact = [S.dpm_solver_pp_3m(gm.model(sl.VPSDE()), z.clone(), 1000, lower_order_final=False).samples
             for z in draws]
    floors = [energy_distance(x, ref, unbiased=False) for x in exact]
    floor = float(np.mean(floors))
    cells: dict[tuple, dict] = {}

    def record(family, name, samples, nfe, seconds, budget):
        cell = cells.setdefault((family, name, budget), {"family": family, "sampler": name, "budget": budget,
                                                          "nfe": int(nfe), "per_draw": [], "draws": [],
                                                          "seconds": 0.0})
        cell["per_draw"].append(energy_distance(samples, ref, unbiased=False))
        cell["draws"].append(k)
        cell["seconds"] += seconds

    for k, z in enumerate(draws):
        x_vp, x_ve = z.clone(), z * VE.sigma_max
        for budget in budgets:
            if budget > 100 and k > 0:                  # 1000 NFE: one draw (most of the run's time otherwise)
                continue
            for name, (process, run) in ours(budget).items():
                x = x_ve if process.prior_std != 1.0 else x_vp
                t0 = time.perf_counter()
                res = run(gm.model(process), x.clone())
                record("scorelab", name, res.samples, res.nfe, time.perf_counter() - t0, budget)
            for name, (samples, nfe, seconds) in diffusers_runs(gm, x_vp, x_ve, budget).items():
                record("diffusers", name, samples, nfe, seconds, budget)
        for name, res, seconds in rk45_runs(gm, x_vp, x_ve):
            budget = next((b for b in budgets if res.nfe <= b), None)
            if budget is not None and (budget <= 100 or k == 0):
                record("scorelab", name, res.samples, res.nfe, seconds, budget)
        print(f"[{label}] draw {k + 1}/{replicates} done", flush=True)
    rows = []
    for cell in cells.values():                          # each cell against the floor of its own draws
        cell["energy_distance"] = float(np.mean(cell["per_draw"]))
        cell["over_floor"] = cell["energy_distance"] / float(np.mean([floors[k] for k in cell["draws"]]))
        rows.append(cell)
        print(f"[{label}] {cell['family']:9s} {cell['sampler']:34s} budget={cell['budget']:5d} nfe={cell['nfe']:5d} "
              f"ED={cell['energy_distance']:.5f} ({cell['over_floor']:.2f}x floor)", flush=True)
    summary = {}
    for budget in budgets:
        best = {fam: min((r for r in rows if r["family"] == fam and r["budget"] == budget
                          and math.isfinite(r["energy_distance"])),
                         key=lambda r: r["over_floor"]) for fam in ("scorelab", "diffusers")}
        summary[budget] = {
            "scorelab_best": (best["scorelab"]["sampler"], best["scorelab"]["energy_distance"]),
            "diffusers_best": (best["diffusers"]["sampler"], best["diffusers"]["energy_distance"]),
            "scorelab_over_floor": best["scorelab"]["over_floor"],
            "diffusers_over_floor": best["diffusers"]["over_floor"],
            "target_over_floor": TARGETS.get(budget),
            "ratio": best["scorelab"]["energy_distance"] / best["diffusers"]["energy_distance"],
            "diffusers_failed": sorted(r["sampler"] for r in rows if r["family"] == "diffusers"
                                       and r["budget"] == budget and not math.isfinite(r["energy_distance"])),
        }
    return {"mixture": label, "n": n, "n_ref": n_ref, "replicates": replicates, "noise_floor": floor,
            "noise_floor_per_draw": floors,
            "independent_floor": float(np.mean(independent)), "independent_floor_per_draw": independent,
            "rows": rows, "summary": summary}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results) + 4, 6.5))
    axes = np.atleast_1d(axes)
    for ax, res in zip(axes, results):
        names = sorted({(r["family"], r["sampler"]) for r in res["rows"]})
        cmap = plt.get_cmap("tab20")
        for i, (family, name) in enumerate(names):
            pts = sorted((r["nfe"], max(r["energy_distance"], 1e-5)) for r in res["rows"]
                         if r["family"] == family and r["sampler"] == name)
            ax.plot(*zip(*pts), ("--" if family == "diffusers" else "-"), marker="o", ms=3,
                    color=cmap(i % 20), label=name)
        ax.axhline(res["noise_floor"], color="k", lw=0.8, ls=":", label="noise floor (exact ODE map)")
        ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)",
               ylabel="energy distance to exact samples", title=f"{res['mixture']} Gaussian mixture")
        ax.grid(alpha=0.3)
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and budgets")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--replicates", type=int, default=4, help="independent noise draws averaged per cell")
    parser.add_argument("--budgets", default=None,
                        help="comma-separated NFE budgets to (re)measure; their cells replace those of an existing "
                             "samplers.json, the other budgets and the overhead are kept")
    parser.add_argument("--overhead-only", action="store_true",
                        help="re-measure only the overhead section of an existing samplers.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.overhead_only:
        path = args.out / "samplers.json"
        saved = json.loads(path.read_text())
        saved["overhead"] = over = overhead(batch=4, nfe=20)
        path.write_text(json.dumps(saved, indent=1))
        report_overhead(over)
        return
    n, n_ref = (1000, 2000) if args.quick else (4000, 10000)
    budgets = [10, 50] if args.quick else [int(b) for b in args.budgets.split(",")] if args.budgets else BUDGETS
    reps = 2 if args.quick else args.replicates
    results = [evaluate("2-D", sl.GaussianMixture(*mixture_2d_params()), n, n_ref, budgets, reps),
               evaluate("16-D", sl.GaussianMixture(*mixture_16d_params()), n, n_ref, budgets, reps)]
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads()}
    if args.budgets:                                       # merge into the saved run
        saved = json.loads((args.out / "samplers.json").read_text())
        for old, new in zip(saved["accuracy"], results):
            old["rows"] = [r for r in old["rows"] if r["budget"] not in budgets] + new["rows"]
            old["summary"].update({str(b): v for b, v in new["summary"].items()})
        results, over = saved["accuracy"], saved["overhead"]
        meta["remeasured_budgets"] = budgets
    else:
        over = overhead(batch=4, nfe=10 if args.quick else 20)
    (args.out / "samplers.json").write_text(json.dumps({"meta": meta, "accuracy": results, "overhead": over}, indent=1))
    plot(results, args.out / "samplers.png")
    for res in results:
        print(f"\n{res['mixture']}: noise floor {res['noise_floor']:.5f} (independent draws: "
              f"{res['independent_floor']:.5f})")
        for budget, s in res["summary"].items():
            target = f", target {s['target_over_floor']}x" if s["target_over_floor"] else ""
            print(f"  NFE {int(budget):5d}: scorelab {s['scorelab_best'][0]} {s['scorelab_over_floor']:.2f}x floor{target} | "
                  f"diffusers {s['diffusers_best'][0]} {s['diffusers_over_floor']:.2f}x | ratio {s['ratio']:.3f}")
    report_overhead(over)


def report_overhead(over: dict) -> None:
    print(f"\noverhead against a {over['unet_params_millions']:.1f}M U-Net at batch {over['batch']} "
          f"({over['seconds_per_unet_call'] * 1e3:.0f} ms per call):")
    for k, v in over["samplers"].items():
        print(f"  {k:22s} time per NFE / U-Net call = {v['overhead_ratio']:.3f}; "
              f"{v['ms_per_step_without_network']:.2f} ms per step with a no-op network")


if __name__ == "__main__":
    main()
