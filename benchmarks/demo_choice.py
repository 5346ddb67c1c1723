"""How the digits demo's recipe, guidance strength and sampler were chosen (benchmarks/results/demo_choice.md).

Trains a demo candidate (the demo's config with fields overridden), then scores samples from it
against the 180 held-out digits exactly as ``scorelab demo`` does (``demo.fidelity_and_diversity``:
precision/recall in pixels and in-domain features, the classifier two-sample test), for several
samplers and guidance strengths; 180 samples asked for the held-out labels, seed 0.

    python benchmarks/demo_choice.py --run runs/demo-1500 --train '{"steps": 1500}'
    python benchmarks/demo_choice.py --run runs/demo-vmin --train '{"steps": 1500, "target": "v", "loss": "min-snr"}'
    python benchmarks/demo_choice.py --run runs/demo-1500 --samplers dpm++2m,unipc --guidance 0,0.3,0.6,1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import scorelab as sl
from scorelab.data import load_digits
from scorelab.demo import demo_config, fidelity_and_diversity
from scorelab.evaluation import fit_domain_classifier
from scorelab.models import guided
from scorelab.samplers import PerSampleNoise, sample, sampler_nfe
from scorelab.training import train

STEPS = {"ancestral": 100, "dpm++2m": 20, "unipc": 20, "heun": 10, "em": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the candidate's run folder")
    parser.add_argument("--train", default=None, help="train it first: demo config fields to override, as JSON")
    parser.add_argument("--samplers", default="dpm++2m,unipc,heun")
    parser.add_argument("--guidance", default="0,0.3,0.6,1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.train is not None:
        config = dataclasses.replace(demo_config(args.run), out=args.run, **json.loads(args.train))
        result = train(config, progress=True)
        print(f"trained {result.step} steps in {result.seconds:.0f} s")
    train_set, test = load_digits("train"), load_digits("test")
    features = fit_domain_classifier(train_set, test, seed=0, progress=False)
    model, _, _ = sl.load_model(args.run)
    labels = torch.from_numpy(test.labels).long()
    print("| sampler | steps | w | P pix | R pix | P feat | R feat | C2ST |\n|---|---|---|---|---|---|---|---|")
    for name in args.samplers.split(","):
        for w in (float(v) for v in args.guidance.split(",")):
            t0 = time.perf_counter()
            noise = PerSampleNoise.for_rows(0, range(len(labels)), "cpu")
            res = sample(guided(model, labels, w), (len(labels), 1, 8, 8), name, STEPS.get(name), noise=noise)
            r = fidelity_and_diversity(res.samples, test.images, features)
            steps = STEPS.get(name)
            nfe = sampler_nfe(model.process, name, steps)
            print(f"| {name} | {steps} ({nfe} NFE) | {w:g} | {r['precision_pixels']:.3f} | {r['recall_pixels']:.3f} | "
                  f"{r['precision_features']:.3f} | {r['recall_features']:.3f} | {r['two_sample_accuracy']:.3f} |"
                  f" <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
