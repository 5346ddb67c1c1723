"""Multinomial diffusion on the digits against the Gaussian DDPM, on the same 17 grey levels (MATH.md 2, 10).

For each model: held-out bits/dim (the whole variational bound, every one of the T terms, on the 180
test digits counted on 17 levels; the DDPM's discretized-Gaussian decoder bins to 17 levels, and to 256 for
the 8-bit figure), and 180 unconditional samples scored as the demo scores its own (precision and recall
in pixels and in an in-domain classifier's features, the classifier two-sample test, the share a
classifier of real digits recognises), with the network calls and seconds per sample.

    python benchmarks/multinomial.py --factorized runs/multinomial --autoregressive runs/multinomial-ar \\
        --ddpm runs/demo/run [--uniform runs/multinomial-uniform] [--absorbing runs/multinomial-absorbing]

writes benchmarks/results/multinomial.{json,md} and the sample grids in docs/multinomial/.
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
from scorelab.discrete import bits_per_dim as discrete_bits
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factorized", required=True, help="a --framework multinomial run")
    parser.add_argument("--autoregressive", required=True, help="a --transitions autoregressive run")
    parser.add_argument("--ddpm", required=True, help="a DDPM run on the digits (the demo's)")
    parser.add_argument("--uniform", help="optional: a multinomial run trained with --step-sampling uniform")
    parser.add_argument("--absorbing", help="optional: a factorized run with --process-option kernel=absorbing")
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
    models = {"factorized": args.factorized, "autoregressive": args.autoregressive, "ddpm": args.ddpm}
    if args.absorbing:
        models["absorbing"] = args.absorbing
    if args.uniform:
        models["factorized_uniform_t"] = args.uniform
    rows: dict[str, dict] = {}
    for name, path in models.items():
        model, spec, ckpt = sl.load_model(path)
        info = {"run": path, "train_steps": ckpt.step, "process": spec.process, "network": spec.network.get("kind"),
                "parameters": sum(p.numel() for p in model.net.parameters())}
        t0 = time.perf_counter()
        info["bits_per_dim_17"] = held_out_bits(model, real, LEVELS, args.seed)
        if name == "ddpm":
            info["bits_per_dim_256"] = held_out_bits(model, real, 256, args.seed)
        info["bits_seconds"] = time.perf_counter() - t0
        print(name, info, flush=True)
        if name == "factorized_uniform_t":
            rows[name] = info
            continue
        if name == "ddpm":
            draws = {"ddpm_ancestral": ("ancestral", None), "ddpm_dpm++2m": ("dpm++2m", 20)}
        elif name == "absorbing":
            draws = {"absorbing": ("multinomial", None)}
        elif name == "factorized":
            draws = {"factorized": ("multinomial", None),
                     f"factorized_{args.subsequence}": ("multinomial", args.subsequence)}
        else:
            draws = {"autoregressive": ("multinomial", None)}
        for key, (sampler, steps) in draws.items():
            rows[key] = {**info, **measure(key, model, sampler, steps, real, test.images, judge, features, args.seed)}
            print(key, rows[key], flush=True)
    env = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}
    RESULTS.with_suffix(".json").write_text(json.dumps({"floor": floor, "rows": rows, "env": env}, indent=1))
    RESULTS.with_suffix(".md").write_text(render(rows, floor, env))
    print(RESULTS.with_suffix(".md").read_text())


def render(rows: dict, floor: dict, env: dict) -> str:
    lines = ["# Multinomial diffusion against the Gaussian DDPM on the digits (17 grey levels)", "",
             "Held-out bits/dim: the whole variational bound on the 180 test digits, counted on the digits' 17 "
             "levels (uniform pixels: log2(17) = 4.09). Samples: 180 unconditional draws against the test digits "
             "(precision/recall k = 3, two-sample accuracy: 0.5 is indistinguishable); recognised: share a "
             "classifier of real digits labels with confidence >= 0.9.", "",
             "| model | sampler (steps) | NFE | bits/dim, 17 levels | precision px / feat | recall px / feat | "
             "two-sample acc. | recognised | s / sample |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        mean, se = r["bits_per_dim_17"]
        if "nfe" not in r:
            lines.append(f"| {key} | - | - | {mean:.3f} +- {se:.3f} | | | | | |")
            continue
        lines.append(f"| {key} | {r['sampler']} ({r['steps'] or 'all'}) | {r['nfe']} | {mean:.3f} +- {se:.3f} | "
                     f"{r['precision_pixels']:.2f} / {r['precision_features']:.2f} | "
                     f"{r['recall_pixels']:.2f} / {r['recall_features']:.2f} | {r['two_sample_accuracy']:.2f} | "
                     f"{r['confident']:.0%} | {r['seconds_per_sample']:.3f} |")
    lines.append(f"| real training digits (floor) | | | | {floor['precision_pixels']:.2f} / "
                 f"{floor['precision_features']:.2f} | {floor['recall_pixels']:.2f} / {floor['recall_features']:.2f} | "
                 f"{floor['two_sample_accuracy']:.2f} | | |")
    ddpm = next((r for r in rows.values() if "bits_per_dim_256" in r), None)
    if ddpm is not None:
        lines += ["", f"The DDPM's bound on 256 levels (8-bit, as the demo reports it): "
                      f"{ddpm['bits_per_dim_256'][0]:.3f} +- {ddpm['bits_per_dim_256'][1]:.3f} bits/dim."]
    lines += ["", f"Machine: {env}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
