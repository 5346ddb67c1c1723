"""Inpainting with a trained unconditional model: does the filled-in image keep the original's class?

For the first ``--num`` test images of the run's data set and each mask, every method fills in the
hidden pixels, and the in-domain classifier (``scorelab.evaluation``'s, trained on the training split)
labels the result. Reported per method and mask: how often it gives the original's class, beside the
unmasked baseline (the classifier on the originals) and the masked one (on the masked images, hidden
pixels grey), the largest change to a known pixel, NFE and seconds. Writes a grid per mask (rows:
original, masked, then each method) for README.

    scorelab demo --out demo && python benchmarks/inpainting.py --run demo/run
    python benchmarks/inpainting.py --run runs/fashion-mnist --name fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from scorelab.conditional import inpaint, mask_from_spec
from scorelab.data import load_dataset, to_model_range, to_uint8
from scorelab.evaluation.classifier import fit_domain_classifier
from scorelab.imaging import save_grid
from scorelab.models import ClipDenoised
from scorelab.store import load_model

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "conditional"
#: label -> options (budgets a CPU can afford: RePaint with the paper's schedule shape at 50 levels; SMC with 4
#: particles on 50 levels, DPS's 200 NFE). A label that is not a method names it in "method".
METHODS = {
    "replace": {"steps": 100},
    "repaint": {"steps": 50, "jump_length": 5, "resample": 5},
    "dps": {"steps": 200, "scale": 1.0},
    "smc-replace": {"method": "smc", "proposal": "replace", "steps": 50, "particles": 4},
    "smc-kalman": {"method": "smc", "proposal": "kalman", "steps": 50, "particles": 4},
    "smc-twisted": {"method": "smc", "proposal": "twisted", "steps": 50, "particles": 4},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=None, help="default: the data the run trained on")
    p.add_argument("--name", default="digits")
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--masks", default="center,left,random:0.7")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    model, spec, ckpt = load_model(args.run)
    model = ClipDenoised(model)
    data_spec = args.data or ckpt.config["train"]["data"]
    train, test = load_dataset(data_spec, "train"), load_dataset(data_spec, "test")
    classifier = fit_domain_classifier(train, test, progress=False)
    images, labels = test.images[: args.num], test.labels[: args.num]
    x = to_model_range(torch.from_numpy(images))

    def agreement(batch: torch.Tensor) -> float:
        _, probs = classifier(to_uint8(batch))
        return float((probs.argmax(1) == labels).mean())

    results = {"meta": {"run": str(args.run), "checkpoint_step": ckpt.step, "data": data_spec, "num": len(x),
                        "classifier_accuracy": classifier.accuracy, "methods": {m: METHODS[m] for m in
                                                                                args.methods.split(",")},
                        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, torch {torch.__version__}"},
               "unmasked": agreement(x), "masks": {}}
    print(f"unmasked: classifier gives the label to {results['unmasked']:.1%}", flush=True)
    out = RESULTS / f"inpainting-{args.name}"
    earlier = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else None
    if earlier and {k: earlier["meta"].get(k) for k in ("run", "checkpoint_step", "data", "num", "methods")} == {
            k: results["meta"][k] for k in ("run", "checkpoint_step", "data", "num", "methods")}:
        results["masks"] = dict(earlier["masks"])           # the same run and methods: other masks' rows are kept
    for mask_name in args.masks.split(","):
        known = mask_from_spec(mask_name, spec.data_shape, torch.Generator().manual_seed(args.seed))
        masked = torch.where(known, x, torch.zeros_like(x))
        row = {"masked": agreement(masked), "known_fraction": float(known.float().mean()), "methods": {}}
        shown = [x[:8], masked[:8]]
        for method in args.methods.split(","):
            start = time.perf_counter()
            parts, nfe = [], 0
            for b in range(0, len(x), args.batch_size):
                options = dict(METHODS[method])
                done = inpaint(model, x[b:b + args.batch_size], known, method=options.pop("method", method),
                               noise=torch.Generator().manual_seed(args.seed + b), **options)
                parts.append(done.samples.clamp(-1, 1).float())
                nfe = done.nfe
            filled = torch.cat(parts)
            seconds = time.perf_counter() - start
            row["methods"][method] = {"agreement": agreement(filled), "nfe": nfe, "seconds": seconds,
                                      "known_max_change": float((filled - x)[:, known].abs().max())}
            shown.append(filled[:8])
            print(f"{mask_name:12s} {method:8s} agreement {row['methods'][method]['agreement']:.1%} "
                  f"(masked {row['masked']:.1%}) NFE {nfe} {seconds:.0f} s", flush=True)
        results["masks"][mask_name] = row
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        tag = mask_name.replace(":", "")
        save_grid(torch.stack(shown, 1).flatten(0, 1), DOCS / f"inpainting-{args.name}-{tag}.png",
                  nrow=len(shown), scale=max(2, 64 // int(x.shape[-1])))
    lines = [f"# Inpainting {args.name}: the in-domain classifier's label for the filled-in image", "",
             f"`python benchmarks/inpainting.py --run {args.run} --name {args.name}` ({results['meta']['date']}); "
             f"{len(x)} test images; in-domain classifier test accuracy {classifier.accuracy:.1%}; "
             f"unmasked {results['unmasked']:.1%}.", "",
             "| mask (known fraction) | masked | " + " | ".join(f"{m} (NFE)" for m in args.methods.split(",")) + " |",
             "|---|---:|" + "---:|" * len(args.methods.split(","))]
    for mask_name, row in results["masks"].items():
        cells = [f"{r['agreement']:.1%} ({r['nfe']})" for r in row["methods"].values()]
        lines.append(f"| {mask_name} ({row['known_fraction']:.0%}) | {row['masked']:.1%} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
