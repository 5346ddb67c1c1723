"""Categorical diffusion on the digits against the Gaussian DDPM, on the same 17 grey levels (MATH.md 2, 10, 13).

For each model: held-out bits/dim (the whole variational bound, every one of the T terms, on the 180
test digits counted on 17 levels; masked diffusion's continuous-time bound from 128 stratified times per
digit; the DDPM's discretized-Gaussian decoder bins to 17 levels, and to 256 for the 8-bit figure), and 180
unconditional samples scored as the demo scores its own (precision and recall in pixels and in an in-domain
classifier's features, the classifier two-sample test, the share a classifier of real digits recognises),
with the network calls and seconds per sample, and the run's training seconds. With both ``--absorbing`` and
``--masked``, the variance of their bound estimators at equal cost (one network call per digit: D3PM's term at
a uniform step, masked diffusion's weighted cross-entropy at a uniform time), per digit and for the mean of a
batch of 128 (masked: MD4's low-discrepancy times).

    python benchmarks/multinomial.py --factorized runs/multinomial --autoregressive runs/multinomial-ar \\
        --ddpm runs/demo/run --uniform runs/multinomial-uniform --absorbing runs/multinomial-absorbing \\
        --masked runs/masked

Any subset of the runs may be given: their rows replace the same rows of benchmarks/results/multinomial.json,
the others are kept (each row records its run, steps and date); writes benchmarks/results/multinomial.{json,md}
and the sample grids in docs/multinomial/.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
from scorelab.data import DIGITS_LEVELS, from_categories, load_digits, to_categories, to_model_range
from scorelab.demo import _fit_digits_classifier, digits_recognisability, fidelity_and_diversity
from scorelab.discrete import masked_loss, multinomial_loss
from scorelab.discrete.likelihood import categorical_bits_per_dim as discrete_bits
from scorelab.evaluation import fit_domain_classifier
from scorelab.models import unconditional
from scorelab.imaging import save_grid
from scorelab.objectives import vlb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "multinomial"
PICTURES = ROOT / "docs" / "multinomial"
LEVELS = DIGITS_LEVELS + 1


def held_out_bits(model, x: torch.Tensor, levels: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of the whole bound over the test digits, in bits/dim on ``levels`` levels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.process.has_kind("categorical"):
            bpd = discrete_bits(model, to_categories(x, model.process.num_categories), gen)
        else:
            x = from_categories(to_categories(x, levels), levels)
            bpd = vlb(unconditional(model, len(x)), x, generator=gen, num_bins=levels).bits_per_dim
    return float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd)))


def measure(name: str, model, sampler: str, steps: int | None, real: torch.Tensor, test_images: np.ndarray,
            judge, features, seed: int) -> dict:
    row: dict = {"sampler": sampler, "steps": steps}
    t0 = time.perf_counter()
    m = model if model.process.has_kind("categorical") else unconditional(model, len(real))
    res = sl.samplers.sample(m, (len(real),) + tuple(real.shape[1:]), sampler, steps,
                             noise=torch.Generator().manual_seed(seed))
    row["seconds_per_sample"] = (time.perf_counter() - t0) / len(real)
    row["nfe"] = res.nfe
    row.update(fidelity_and_diversity(res.samples, test_images, features, seed))
    row.update(digits_recognisability(res.samples, judge))
    save_grid(res.samples[:100].clamp(-1, 1), PICTURES / f"samples_{name}.png", nrow=10)
    return row


def training_seconds(run: str) -> float | None:
    """Seconds the run trained, from the last row of its loss.csv."""
    path = Path(run) / "loss.csv"
    if not path.exists():
        return None
    last = path.read_text().strip().splitlines()[-1].split(",")
    return float(last[-1])


DRAWS = {"ddpm": {"ddpm_ancestral": ("ancestral", None), "ddpm_dpm++2m": ("dpm++2m", 20)},
         "absorbing": {"absorbing": ("multinomial", None)},
         "masked": {"masked": ("masked", 256), "masked_1000": ("masked", 1000)},
         "autoregressive": {"autoregressive": ("multinomial", None)},
         "factorized_uniform_t": {}}


@torch.no_grad()
def estimator_variance(absorbing, masked, x: torch.Tensor, seed: int, repeats: int = 40) -> dict:
    """Variance of each bound estimator (nats per digit) at one network call per digit: per digit (the mean over
    the digits of the variance over ``repeats`` draws) and of the mean of a batch of 128 (over ``repeats`` x the
    batches)."""
    out = {}
    for name, model in (("d3pm_absorbing", absorbing), ("masked", masked)):
        cats = to_categories(x, model.process.num_categories)
        draws, batch_means = [], []
        for r in range(repeats):
            gen = torch.Generator().manual_seed(seed + r)
            if name == "masked":
                terms = masked_loss(model, cats, noise=gen, time_sampling="uniform", reduction="sum",
                                    posterior_dtype="float64")
                batches = [masked_loss(model, cats[i:i + 128], noise=gen, reduction="sum",
                                       posterior_dtype="float64").double().mean()
                           for i in range(0, len(cats) - 127, 128)]
            else:
                terms = multinomial_loss(model, cats, noise=gen, reduction="sum", posterior_dtype="float64")
                batches = [terms[i:i + 128].double().mean() for i in range(0, len(cats) - 127, 128)]
            draws.append(terms.double())
            batch_means += batches
        draws = torch.stack(draws)
        out[name] = {"mean": float(draws.mean()), "per_digit_variance": float(draws.var(0).mean()),
                     "batch_mean_variance": float(torch.stack(batch_means).var())}
    out["ratio_per_digit"] = out["masked"]["per_digit_variance"] / out["d3pm_absorbing"]["per_digit_variance"]
    out["ratio_batch"] = out["masked"]["batch_mean_variance"] / out["d3pm_absorbing"]["batch_mean_variance"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factorized", help="a --framework multinomial run")
    parser.add_argument("--autoregressive", help="a --transitions autoregressive run")
    parser.add_argument("--ddpm", help="a DDPM run on the digits (the demo's)")
    parser.add_argument("--uniform", help="a multinomial run trained with --loss-option step_sampling=uniform")
    parser.add_argument("--absorbing", help="a factorized run with --process-option kernel=absorbing")
    parser.add_argument("--masked", help="a --framework masked run")
    parser.add_argument("--subsequence", type=int, default=100, help="steps of the factorized model's short chain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    PICTURES.mkdir(parents=True, exist_ok=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    test, train_set = load_digits("test"), load_digits("train")
    real = to_model_range(torch.from_numpy(test.images))
    judge = _fit_digits_classifier(args.seed)
    features = fit_domain_classifier(train_set, test, seed=args.seed, progress=False)
    pick = np.random.default_rng(args.seed).choice(len(train_set), len(test), replace=False)
    floor = fidelity_and_diversity(to_model_range(torch.from_numpy(train_set.images[pick])), test.images, features,
                                   args.seed)
    given = {"factorized": args.factorized, "autoregressive": args.autoregressive, "ddpm": args.ddpm,
             "absorbing": args.absorbing, "masked": args.masked, "factorized_uniform_t": args.uniform}
    old = json.loads(RESULTS.with_suffix(".json").read_text()) if RESULTS.with_suffix(".json").exists() else {}
    rows: dict[str, dict] = dict(old.get("rows", {}))
    draws = dict(DRAWS, factorized={"factorized": ("multinomial", None),
                                    f"factorized_{args.subsequence}": ("multinomial", args.subsequence)})
    loaded = {}
    for name, path in given.items():
        if path is None:
            continue
        model, spec, ckpt = sl.load_model(path)
        loaded[name] = model
        info = {"run": path, "train_steps": ckpt.step, "process": spec.process, "network": spec.network.get("kind"),
                "parameters": sum(p.numel() for p in model.net.parameters()), "train_seconds": training_seconds(path),
                "measured": time.strftime("%Y-%m-%d")}
        t0 = time.perf_counter()
        info["bits_per_dim_17"] = held_out_bits(model, real, LEVELS, args.seed)
        if name == "ddpm":
            info["bits_per_dim_256"] = held_out_bits(model, real, 256, args.seed)
        info["bits_seconds"] = time.perf_counter() - t0
        print(name, info, flush=True)
        if not draws[name]:
            rows[name] = info
        for key, (sampler, steps) in draws[name].items():
            rows[key] = {**info, **measure(key, model, sampler, steps, real, test.images, judge, features, args.seed)}
            print(key, rows[key], flush=True)
    variance = old.get("variance")
    if "absorbing" in loaded and "masked" in loaded:
        train_x = to_model_range(torch.from_numpy(train_set.images[:1024]))
        variance = estimator_variance(loaded["absorbing"], loaded["masked"], train_x, args.seed)
        print("variance", variance, flush=True)
    env = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}
    RESULTS.with_suffix(".json").write_text(json.dumps({"floor": floor, "rows": rows, "variance": variance,
                                                        "env": env}, indent=1))
    RESULTS.with_suffix(".md").write_text(render(rows, floor, env, variance))
    print(RESULTS.with_suffix(".md").read_text())


def render(rows: dict, floor: dict, env: dict, variance: dict | None = None) -> str:
    lines = ["# Categorical diffusion against the Gaussian DDPM on the digits (17 grey levels)", "",
             "Held-out bits/dim: the whole variational bound on the 180 test digits, counted on the digits' 17 "
             "levels (uniform pixels: log2(17) = 4.09). Samples: 180 unconditional draws against the test digits "
             "(precision/recall k = 3, two-sample accuracy: 0.5 is indistinguishable); recognised: share a "
             "classifier of real digits labels with confidence >= 0.9.", "",
             "Train: the run's steps and seconds; measured: the date of the row.", "",
             "| model | train steps (s) | sampler (steps) | NFE | bits/dim, 17 levels | precision px / feat | "
             "recall px / feat | two-sample acc. | recognised | s / sample | measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        mean, se = r["bits_per_dim_17"]
        trained = f"{r['train_steps']} ({r['train_seconds']:.0f})" if r.get("train_seconds") else f"{r['train_steps']}"
        if "nfe" not in r:
            lines.append(f"| {key} | {trained} | - | - | {mean:.3f} +- {se:.3f} | | | | | | {r.get('measured', '')} |")
            continue
        lines.append(f"| {key} | {trained} | {r['sampler']} ({r['steps'] or 'all'}) | {r['nfe']} | "
                     f"{mean:.3f} +- {se:.3f} | {r['precision_pixels']:.2f} / {r['precision_features']:.2f} | "
                     f"{r['recall_pixels']:.2f} / {r['recall_features']:.2f} | {r['two_sample_accuracy']:.2f} | "
                     f"{r['confident']:.0%} | {r['seconds_per_sample']:.3f} | {r.get('measured', '')} |")
    lines.append(f"| real training digits (floor) | | | | | {floor['precision_pixels']:.2f} / "
                 f"{floor['precision_features']:.2f} | {floor['recall_pixels']:.2f} / {floor['recall_features']:.2f} | "
                 f"{floor['two_sample_accuracy']:.2f} | | | |")
    if variance:
        d3pm, masked = variance["d3pm_absorbing"], variance["masked"]
        lines += ["", "Bound estimators at one network call per digit (1,024 training digits, 40 draws; nats per "
                  "digit): "
                  f"D3PM absorbing mean {d3pm['mean']:.1f}, variance {d3pm['per_digit_variance']:.1f} per digit and "
                  f"{d3pm['batch_mean_variance']:.3f} for a batch mean of 128; masked mean {masked['mean']:.1f}, "
                  f"variance {masked['per_digit_variance']:.1f} and {masked['batch_mean_variance']:.3f} "
                  f"(ratios masked / D3PM {variance['ratio_per_digit']:.2f} and {variance['ratio_batch']:.2f})."]
    ddpm = next((r for r in rows.values() if "bits_per_dim_256" in r), None)
    if ddpm is not None:
        lines += ["", f"The DDPM's bound on 256 levels (8-bit, as the demo reports it): "
                      f"{ddpm['bits_per_dim_256'][0]:.3f} +- {ddpm['bits_per_dim_256'][1]:.3f} bits/dim."]
    lines += ["", f"Machine: {env}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
