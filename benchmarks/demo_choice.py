"""How the digits demo's recipe, guidance strength and sampler were chosen (benchmarks/results/demo_choice.md).

Trains a demo candidate (the demo's config with fields overridden), then scores it exactly as ``scorelab demo``
scores its own sampler: ``--draws`` draws of ``--num`` samples (seeds 0, 1, ...; sample k asks for digit
(k // 10) % 10) against the 180 held-out digits (``demo.fidelity_and_diversity``: precision/recall in pixels and
in-domain features, the classifier two-sample test), the mean and each figure's range, for several samplers
and guidance strengths. The first row is the floor, ``--num`` random real training digits scored the same way
(``demo.real_floor``, the mean of five draws).

    python benchmarks/demo_choice.py --run runs/demo-1500 --train '{"steps": 1500}'
    python benchmarks/demo_choice.py --run runs/demo-1000 --train '{"steps": 1000, "ema_decay": 0.998}'
    python benchmarks/demo_choice.py --run runs/demo-1500 --samplers dpm++2m,heun --guidance 0.15,0.3,0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import scorelab as sl
from scorelab.data import load_digits
from scorelab.demo import demo_config, fidelity_and_diversity, mean_of_draws, real_floor
from scorelab.evaluation import fit_domain_classifier
from scorelab.models import guided
from scorelab.samplers import PerSampleNoise, sample, sampler_nfe
from scorelab.training import train

STEPS = {"ancestral": 100, "dpm++2m": 20, "unipc": 20, "heun": 10, "em": 100}


def row(name: str, r: dict) -> str:
    def cell(key: str) -> str:
        low, high = r["range"][key]
        return f"{r[key]:.3f} ({low:.2f}-{high:.2f})"
    return (f"| {name} | {cell('precision_pixels')} | {cell('recall_pixels')} | {cell('precision_features')} | "
            f"{cell('recall_features')} | {r['two_sample_accuracy']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the candidate's run folder")
    parser.add_argument("--train", default=None, help="train it first: demo config fields to override, as JSON")
    parser.add_argument("--samplers", default="dpm++2m")
    parser.add_argument("--guidance", default="0,0.1,0.3")
    parser.add_argument("--num", type=int, default=500, help="samples per draw (default 500)")
    parser.add_argument("--draws", type=int, default=3, help="draws per cell (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.train is not None:
        config = dataclasses.replace(demo_config(args.run), out=args.run, **json.loads(args.train))
        result = train(config, progress=True)
        print(f"trained {result.step} steps in {result.seconds:.0f} s")
    train_set, test = load_digits("train"), load_digits("test")
    features = fit_domain_classifier(train_set, test, seed=0, progress=False)
    model, _, _ = sl.load_model(args.run)
    labels = (torch.arange(args.num) // 10) % 10
    print("| samples | P pix | R pix | P feat | R feat | C2ST |\n|---|---|---|---|---|---|")
    print(row(f"{args.num} real training digits (the floor)",
              real_floor(train_set.images, test.images, features, args.num)))
    for name in args.samplers.split(","):
        for w in (float(v) for v in args.guidance.split(",")):
            t0 = time.perf_counter()
            draws = [sample(guided(model, labels, w), (args.num, 1, 8, 8), name, STEPS.get(name),
                            noise=PerSampleNoise.for_rows(seed, range(args.num), "cpu")).samples
                     for seed in range(args.draws)]       # as demo.draw does for the demo's samplers
            nfe = sampler_nfe(model.process, name, STEPS.get(name))
            print(row(f"{name}, {STEPS.get(name)} steps ({nfe} NFE), w = {w:g}",
                      mean_of_draws([fidelity_and_diversity(x, test.images, features) for x in draws]))
                  + f" <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
