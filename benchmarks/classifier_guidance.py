"""Classifier guidance on a trained unconditional model: how often does a sample show the class it was steered to?

Samples ``--num`` images (labels cycling over the classes) with the model's own sampler at each guidance
scale, steered by the noise-conditional classifier of ``scorelab train-classifier``, and asks the
in-domain classifier (trained on the data set itself, independent of the guiding one) for their class.
Scale 0 is unguided sampling, where the agreement is the share of samples that happen to show the label.
Writes a grid per scale (one column per class) and a table.

    scorelab train-classifier demo/run --steps 1000
    python benchmarks/classifier_guidance.py --run demo/run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scorelab.data import load_dataset, to_uint8
from scorelab.evaluation.classifier import fit_domain_classifier
from scorelab.models import ClassifierGuidance
from scorelab.imaging import save_grid
from scorelab.models import ClipDenoised
from scorelab.store import load_model
from scorelab.samplers import sample
from scorelab.training import load_classifier

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "conditional"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--classifier", default=None, help="default: RUN/classifier")
    p.add_argument("--name", default="digits")
    p.add_argument("--scales", default="0,1,3,10")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    model, spec, ckpt = load_model(args.run)
    classifier = load_classifier(args.classifier or Path(args.run) / "classifier")
    data = ckpt.config["train"]["data"]
    judge = fit_domain_classifier(load_dataset(data, "train"), load_dataset(data, "test"), progress=False)
    k = classifier.num_classes
    labels = torch.arange(args.num) % k
    rows = {}
    for scale in [float(s) for s in args.scales.split(",")]:
        start = time.perf_counter()
        guided = ClipDenoised(ClassifierGuidance(model, classifier, labels, scale))
        out = sample(guided, (args.num,) + tuple(spec.data_shape), args.sampler, args.steps,
                     noise=torch.Generator().manual_seed(args.seed))
        _, probs = judge(to_uint8(out.samples.clamp(-1, 1)))
        agreement = float((torch.from_numpy(probs).argmax(1) == labels).double().mean())
        rows[scale] = {"agreement": agreement, "nfe": out.nfe, "seconds": time.perf_counter() - start}
        print(f"scale {scale:5.1f}: the in-domain classifier gives the asked class to {agreement:.1%}", flush=True)
        save_grid(out.samples[: 4 * k].clamp(-1, 1), DOCS / f"classifier-guidance-{args.name}-{scale:g}.png", nrow=k,
                  scale=max(2, 64 // int(out.samples.shape[-1])))
    folder = Path(args.classifier or Path(args.run) / "classifier")
    guide_accuracy = json.loads((folder / "accuracy.json").read_text())["accuracy"]
    result = {"run": args.run, "guide_accuracy": guide_accuracy, "sampler": args.sampler, "steps": args.steps, "num": args.num,
              "judge_accuracy": judge.accuracy, "date": time.strftime("%Y-%m-%d"), "scales": rows}
    out_path = RESULTS / f"classifier-guidance-{args.name}"
    out_path.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Classifier guidance, {args.name}", "",
             f"`python benchmarks/classifier_guidance.py --run {args.run} --name {args.name}` ({result['date']}); "
             f"{args.num} samples per scale, {args.sampler} {args.steps} steps; judged by the in-domain classifier "
             f"(test accuracy {judge.accuracy:.1%}). The guiding classifier's test accuracy by noise level: "
             + ", ".join(f"{t} {a:.0%}" for t, a in guide_accuracy.items()) + ".", "", "| scale | asked class shown | NFE |", "|---:|---:|---:|"]
    lines += [f"| {s:g} | {r['agreement']:.1%} | {r['nfe']} |" for s, r in rows.items()]
    out_path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {out_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
