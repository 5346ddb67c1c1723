"""The energy parameterization's cost, and what its Metropolis corrections buy (MATH.md 9).

1. Training cost on the digits U-Net (``digits8``, batch 128, L_simple): seconds per step (forward,
   loss, backward; the energy form differentiates its energy in x first, so its backward is a double
   backward) and the bytes of activations autograd saves for the backward pass (a saved-tensor hook
   counts them: the memory a step needs beyond the weights), score form against energy form, measured
   in alternating rounds.
2. Sampling a product of two exact mixtures (the composition test's problem) at equal NFE: the reverse
   SDE alone, with the unadjusted Langevin corrector (ULA), with MALA and with HMC; energy distance to
   the exact product over the noise floor (mean of 3 seeds).

    python benchmarks/energy.py     # writes benchmarks/results/energy.{json,md}

3. With ``--smc``: a product whose modes separate as the noise falls (a 3-component times a 2-component
   mixture), where annealed MALA/HMC freeze the modes' weights where they part: the predictor-corrector
   sampler with MALA and HMC correctors against the SMC sampler over the noise levels (``smc``: the same
   moves between importance reweightings and resamplings), at equal NFE; energy distance over the noise
   floor, the narrow mode's weight, and SMC's estimate of log Z, the product's normalizing constant
   (benchmarks/results/energy-smc.{json,md}, picture docs/energy/smc-product.png).

4. With ``--run RUN`` (a class-conditional energy model: ``scorelab train --parameterization energy
   --class-conditional ...``), only a picture: two classes alone and their product, sampled with the
   reverse SDE alone and with MALA corrections (docs/energy/composition-digits.png).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
from scorelab import compose
from scorelab.evaluation import energy_distance
from scorelab.networks import UNet, UNetConfig

RESULTS = Path(__file__).resolve().parent / "results" / "energy"
SMC_RESULTS = Path(__file__).resolve().parent / "results" / "energy-smc"


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves while ``fn()`` builds its graph."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def training_cost(rounds: int = 5) -> dict:
    torch.manual_seed(0)
    data = sl.data.load_digits("train")
    x0 = sl.data.to_model_range(torch.from_numpy(data.images[:128]))
    process = sl.DDPM()
    models = {"score": sl.Model(UNet(UNetConfig.preset("digits8")), process),
              "energy": sl.EnergyModel(UNet(UNetConfig.preset("digits8")), process, form="norm")}
    times = {k: [] for k in models}
    memory = {}
    for r in range(rounds + 1):
        for name, model in models.items():
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            g = torch.Generator().manual_seed(r)
            start = time.perf_counter()
            nbytes, loss = saved_bytes(lambda: sl.simple_loss(model, x0, generator=g).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if r > 0:                                   # round 0 warms up
                times[name].append(time.perf_counter() - start)
            memory[name] = nbytes
    out = {name: {"seconds_per_step": float(np.median(v)), "saved_activation_mb": memory[name] / 2**20}
           for name, v in times.items()}
    out["energy_over_score_time"] = out["energy"]["seconds_per_step"] / out["score"]["seconds_per_step"]
    out["energy_over_score_memory"] = memory["energy"] / memory["score"]
    return out


def composition_quality(seeds: int = 3, n: int = 2000) -> dict:
    p1 = sl.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.3, 0.3])
    p2 = sl.GaussianMixture([0.3, 0.7], [[0.0, -1.0], [0.0, 1.0]], [[1.5, 0.05], [1.5, 0.05]])
    process = sl.VPSDE()
    model = compose.product(p1.energy_model(process), p2.energy_model(process))
    exact = p1.product(p2)
    floors = [energy_distance(exact.sample(n, torch.Generator().manual_seed(100 + s)),
                              exact.sample(2 * n, torch.Generator().manual_seed(200 + s)), unbiased=False)
              for s in range(seeds)]
    floor = float(np.mean(floors))
    rows = {}
    for budget in (400, 800, 1600):
        configs = {
            "reverse SDE (em)": ("em", budget - 1, {}),
            "pc + ULA (annealed rule, snr 0.5)": ("pc", budget // 3, {"corrector": "annealed_langevin",
                                                                     "corrector_steps": 2, "target_snr": 0.5}),
            "pc + MALA (snr 0.5)": ("pc", budget // 4, {"corrector": "mala", "corrector_steps": 2, "target_snr": 0.5}),
            "pc + HMC (3 leapfrogs, snr 0.4)": ("pc", budget // 5, {"corrector": "hmc", "target_snr": 0.4}),
            "pc + ULA, large step (snr 1.2)": ("pc", budget // 3, {"corrector": "annealed_langevin",
                                                                   "corrector_steps": 2, "target_snr": 1.2}),
            "pc + MALA, large step (snr 1.2)": ("pc", budget // 4, {"corrector": "mala", "corrector_steps": 2,
                                                                    "target_snr": 1.2}),
            "pc + HMC, large step (snr 1.0)": ("pc", budget // 5, {"corrector": "hmc", "target_snr": 1.0}),
        }
        for label, (sampler, steps, options) in configs.items():
            errs, nfe, acc = [], None, None
            try:
                for s in range(seeds):
                    out = sl.samplers.sample(model, (n, 2), sampler, steps, noise=torch.Generator().manual_seed(s),
                                             **options)
                    reference = exact.sample(2 * n, torch.Generator().manual_seed(200 + s))
                    errs.append(energy_distance(out.samples, reference, unbiased=False))
                    nfe, acc = out.nfe, out.acceptance
            except FloatingPointError:                   # the chain left for infinity
                rows.setdefault(label, {})[budget] = {"nfe": None, "diverged": True, "acceptance": None}
                print(f"{label:36s} diverged", flush=True)
                continue
            rows.setdefault(label, {})[budget] = {"nfe": nfe, "over_floor": float(np.mean(errs)) / floor,
                                                  "stderr_over_floor": float(np.std(errs, ddof=1) / np.sqrt(seeds)) / floor,
                                                  "acceptance": acc}
            print(f"{label:36s} NFE {nfe:5d}  x{float(np.mean(errs)) / floor:6.2f}  acc {acc}", flush=True)
    return {"floor": floor, "rows": rows}


def separated_product() -> tuple:
    """The product of :func:`smc_comparison` (``tests/test_energy.py`` samples it too): its parts, model, exact."""
    p1 = sl.GaussianMixture([0.1, 0.5, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.15, 0.6, 0.4])
    p2 = sl.GaussianMixture([0.3, 0.7], [[-2.0, 0.3], [2.0, 0.5]], [0.2, 0.7])
    process = sl.VPSDE()
    return p1, p2, process, compose.product(p1.energy_model(process), p2.energy_model(process)), p1.product(p2)


def smc_comparison(seeds: int = 3, n: int = 2000) -> dict:
    p1, p2, process, model, exact = separated_product()
    log_z = p1.diffused(process.t_min, process).log_overlap(p2.diffused(process.t_min, process))
    narrow = lambda x: float((x[:, 0] < 0).double().mean())                   # noqa: E731  the mode at x = -2
    references = [exact.sample(2 * n, torch.Generator().manual_seed(200 + s)) for s in range(seeds)]
    floor = float(np.mean([energy_distance(exact.sample(n, torch.Generator().manual_seed(100 + s)), references[s],
                                           unbiased=False) for s in range(seeds)]))
    rows, pictures = {}, {}
    for budget in (600, 1200, 2400):
        configs = {
            "pc + MALA (2 steps, snr 0.5)": ("pc", budget // 4, {"corrector": "mala", "corrector_steps": 2,
                                                                 "target_snr": 0.5}),
            "pc + HMC (3 leapfrogs, snr 0.4)": ("pc", budget // 5, {"corrector": "hmc", "target_snr": 0.4}),
            "smc, no moves": ("smc", budget, {"corrector": "none"}),
            "smc + MALA (2 steps, snr 0.5)": ("smc", budget // 3, {}),
            "smc + HMC (1 of 3 leapfrogs, snr 0.4)": ("smc", budget // 4, {"corrector": "hmc", "corrector_steps": 1,
                                                                             "target_snr": 0.4}),
        }
        for label, (sampler, steps, options) in configs.items():
            errs, weights, evidence = [], [], []
            for s in range(seeds):
                out = sl.samplers.sample(model, (n, 2), sampler, steps, noise=torch.Generator().manual_seed(s),
                                         **options)
                errs.append(energy_distance(out.samples, references[s], unbiased=False))
                weights.append(narrow(out.samples))
                if sampler == "smc":
                    evidence.append(float(out.log_evidence[0]))
                if budget == 1200 and s == 0:
                    pictures[label] = out.samples
            row = {"nfe": out.nfe, "over_floor": float(np.mean(errs)) / floor,
                   "stderr_over_floor": float(np.std(errs, ddof=1) / np.sqrt(seeds)) / floor,
                   "narrow_weight": float(np.mean(weights)), "narrow_weight_range": [min(weights), max(weights)],
                   "acceptance": out.acceptance,
                   "log_evidence_error": [e - log_z for e in evidence] if evidence else None}
            rows.setdefault(label, {})[budget] = row
            print(f"{label:40s} NFE {out.nfe:5d}  x{row['over_floor']:6.2f}  narrow {row['narrow_weight']:.3f}  "
                  f"logZ err {row['log_evidence_error']}", flush=True)
    _smc_picture(exact, pictures, n)
    return {"floor": floor, "narrow_weight": narrow(references[0]), "log_z": log_z, "rows": rows}


def _smc_picture(exact, pictures: dict, n: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"exact product": exact.sample(n, torch.Generator().manual_seed(7)),
              "pc + MALA (1,200 NFE)": pictures["pc + MALA (2 steps, snr 0.5)"],
              "smc + MALA (1,200 NFE)": pictures["smc + MALA (2 steps, snr 0.5)"]}
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4), sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, panels.items()):
        x = x.double()
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.35)
        ax.set_title(f"{title}\nx < 0: {float((x[:, 0] < 0).double().mean()):.0%}", fontsize=10)
        ax.set_xlim(-3.2, 3.8)
        ax.set_ylim(-2.2, 2.8)
    fig.tight_layout()
    path = Path(__file__).resolve().parents[1] / "docs" / "energy" / "smc-product.png"
    fig.savefig(path, dpi=110)
    print(f"-> {path}")


def write_smc(result: dict) -> None:
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, torch {torch.__version__}"}
    SMC_RESULTS.with_suffix(".json").write_text(json.dumps({"meta": meta, **result}, indent=1))
    lines = ["# A product whose modes separate: annealed MCMC against the SMC sampler", "",
             f"`python benchmarks/energy.py --smc` ({meta['date']}, {meta['machine']}). The product of a 3- and a "
             f"2-component mixture; its mode at x < 0 holds {result['narrow_weight']:.1%} of the mass (exact "
             f"samples), log Z = {result['log_z']:.3f}. 2,000 samples; mean of 3 seeds.", "",
             "| sampler | NFE | error / floor | weight at x < 0 | log Z error (3 seeds) |", "|---|---:|---:|---:|---|"]
    for label, by_budget in result["rows"].items():
        for r in by_budget.values():
            lo, hi = r["narrow_weight_range"]
            ev = "" if r["log_evidence_error"] is None else ", ".join(f"{e:+.3f}" for e in r["log_evidence_error"])
            acc = "" if r["acceptance"] is None else f" (acc {r['acceptance']:.0%})"
            lines.append(f"| {label}{acc} | {r['nfe']} | {r['over_floor']:.2f} ± {r['stderr_over_floor']:.2f} | "
                         f"{r['narrow_weight']:.3f} ({lo:.3f}-{hi:.3f}) | {ev} |")
    lines += ["", "![samples](../../docs/energy/smc-product.png)"]
    SMC_RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {SMC_RESULTS.with_suffix('.md')}")


def composition_picture(run: str, classes: tuple[int, int], num: int = 10, steps: int = 200) -> None:
    """Rows: class a, class b (conditional samples), their product by the reverse SDE alone, and with MALA."""
    from scorelab.models import Conditional
    from scorelab.imaging import save_grid

    model, spec, _ = sl.load_model(run)
    shape = (num,) + tuple(spec.data_shape)
    a, b = (Conditional(model, torch.full((num,), k)) for k in classes)
    both = compose.product(a, b)
    rows, notes = [], []
    for label, m, sampler, options in (
            (f"class {classes[0]}", a, "em", {}), (f"class {classes[1]}", b, "em", {}),
            ("product, reverse SDE alone", both, "em", {}),
            ("product, MALA corrector", both, "pc", {"corrector": "mala", "corrector_steps": 2, "target_snr": 0.16})):
        out = sl.samplers.sample(m, shape, sampler, steps, noise=torch.Generator().manual_seed(0), **options)
        rows.append(out.samples.clamp(-1, 1))
        notes.append(f"{label}: {out.nfe} NFE" + (f", acceptance {out.acceptance:.0%}" if out.acceptance else ""))
        print(notes[-1], flush=True)
    path = Path(__file__).resolve().parents[1] / "docs" / "energy" / "composition-digits.png"
    save_grid(torch.cat(rows), path, nrow=num, scale=6)
    print(f"-> {path}")


def main() -> None:
    import sys

    torch.set_num_threads(2)
    if "--smc" in sys.argv:
        write_smc(smc_comparison())
        return
    if "--run" in sys.argv:
        composition_picture(sys.argv[sys.argv.index("--run") + 1], (0, 6))
        return
    cost = training_cost()
    print(json.dumps(cost, indent=1))
    quality = composition_quality()
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, torch {torch.__version__}"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps({"meta": meta, "training": cost, "composition": quality},
                                                       indent=1))
    lines = ["# Energy parameterization", "", f"`python benchmarks/energy.py` ({meta['date']}, {meta['machine']}).", "",
             "Training step, digits U-Net, batch 128 (median of 5 rounds):", "",
             "| form | s/step | saved activations (MB) |", "|---|---:|---:|"]
    for name in ("score", "energy"):
        lines.append(f"| {name} | {cost[name]['seconds_per_step']:.3f} | {cost[name]['saved_activation_mb']:.1f} |")
    lines += ["", f"Energy over score: {cost['energy_over_score_time']:.2f}x the time, "
              f"{cost['energy_over_score_memory']:.2f}x the saved activations.", "",
              "Sampling the product of two exact mixtures: error over the noise floor (mean ± s.e. of 3 seeds):", "",
              "| sampler | ~400 NFE | ~800 NFE | ~1600 NFE |", "|---|---:|---:|---:|"]
    for label, by_budget in quality["rows"].items():
        lines.append(f"| {label} | " + " | ".join(
            "diverged (NaN)" if r.get("diverged") else
            f"{r['over_floor']:.2f} ± {r['stderr_over_floor']:.2f}" + (f" (acc {r['acceptance']:.0%})"
                                                                      if r["acceptance"] is not None else "")
            for r in by_budget.values()) + " |")
    lines += ["", "The correctors' step at time t is 2 alpha (snr s(t))^2 (the annealed rule); the large-step rows "
              "take it 4-6x larger: there ULA diverges, and MALA and HMC, rejecting most proposals, stay at the noise "
              "floor."]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {RESULTS.with_suffix('.md')}")


if __name__ == "__main__":
    main()
