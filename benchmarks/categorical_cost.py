"""Peak memory and time of categorical diffusion on 28x28 images: a training step, and an autoregressive transition
(MATH.md 10, 13).

Each configuration runs in its own process. Training: the ``mnist28`` U-Net of ``scorelab train`` (one-hot input,
K logits a pixel), a batch of random categories, three steps of the loss's forward and backward pass; reported:
seconds a step (median) and the peak resident memory the steps added over the process's level after building
the model and the batch (``ru_maxrss``), per example. The configurations: multinomial diffusion's bound (uniform
and absorbing kernels) and masked diffusion's, at 256 categories (8-bit images), 32 (the default for them) and
17, with the posterior work in float64 and in float32 (the loss option ``posterior_dtype``, float32 by default).
Sampling: one reverse transition of the autoregressive model ``scorelab train --transitions autoregressive``
builds for 28x28 binary images (784 draws in raster order), with keys and values cached and with the decoder
re-run on the whole sequence for each pixel (the cache is off for a network in training mode).

    python benchmarks/categorical_cost.py [--batch 8]

writes benchmarks/results/categorical_cost.{json,md} (the rows measured before float32, under ``baseline``, kept).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "categorical_cost"
#: Images in the autoregressive transition (re-running the decoder costs minutes each).
AR_BATCH = 2
CONFIGS = [(kind, k, precision) for k in (256, 32, 17)
           for kind in ("multinomial-uniform", "multinomial-absorbing", "masked")
           for precision in ("float64", "float32")] + [("ar-sample", 2, cache) for cache in ("cached", "re-run")]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(kind: str, categories: int, option: str, batch: int) -> dict:
    """One configuration, in this process."""
    import torch

    if kind == "ar-sample":
        return ar_transition(option, AR_BATCH)

    from scorelab.discrete import CategoricalModel, MaskedDiffusion, MaskedModel, MultinomialDiffusion, masked_loss, \
        multinomial_loss
    from scorelab.networks import UNet, UNetConfig

    torch.manual_seed(0)
    if kind == "masked":
        process = MaskedDiffusion(categories)
    else:
        process = MultinomialDiffusion(categories, 1000, "linear" if kind.endswith("absorbing") else "cosine",
                                       kind.split("-")[1])
    config = UNetConfig.preset("mnist28", in_channels=process.num_states, out_channels=categories)
    net = UNet(config)
    model = MaskedModel(net, process) if kind == "masked" else CategoricalModel(net, process)
    x0 = torch.randint(0, categories, (batch, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    loss_fn = masked_loss if kind == "masked" else multinomial_loss
    base = _rss_mib()
    seconds = []
    for step in range(3):
        t0 = time.perf_counter()
        loss = loss_fn(model, x0, noise=torch.Generator().manual_seed(step), posterior_dtype=option).mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
    return {"kind": kind, "categories": categories, "precision": option, "batch": batch,
            "seconds_per_step": statistics.median(seconds),
            "peak_added_mib_per_example": (_rss_mib() - base) / batch, "parameters": sum(p.numel() for p in
                                                                                        net.parameters())}


def ar_transition(option: str, batch: int) -> dict:
    """One reverse transition of the autoregressive model on 28x28 binary images, cached or re-run."""
    import torch

    import numpy as np

    from scorelab.data import ImageSet
    from scorelab.training import TrainConfig, make_model_spec

    torch.manual_seed(0)
    config = TrainConfig(framework="multinomial", transitions="autoregressive", categories=2)
    model = make_model_spec(config, ImageSet(np.zeros((1, 1, 28, 28), np.uint8))).build()
    model.net.train(option == "re-run")                 # dropout 0: the same function, only the path differs
    x_t = torch.randint(0, 2, (batch, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    base = _rss_mib()
    t0 = time.perf_counter()
    model.sample_reverse(x_t, 2, generator=torch.Generator().manual_seed(2))
    return {"kind": "ar-sample", "categories": 2, "precision": option, "batch": batch,
            "seconds_per_step": time.perf_counter() - t0, "peak_added_mib_per_example": (_rss_mib() - base) / batch,
            "parameters": sum(p.numel() for p in model.net.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--categories", type=int, nargs="+", help="measure these only (the other rows are kept)")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "K", "OPTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2], args.batch)))
        return
    rows = []
    for kind, k, option in CONFIGS:
        if args.categories and k not in args.categories:
            continue
        out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--one", kind, str(k), option],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(OUT.with_suffix(".json").read_text()) if OUT.with_suffix(".json").exists() else {}
    baseline = old.get("baseline", old.get("rows") if "baseline" not in old else None)
    if args.categories:                  # the rows not measured now, as they were, in CONFIGS's order
        fresh = {(r["kind"], r["categories"], r["precision"]): r for r in old.get("rows", []) + rows}
        rows = [fresh[c] for c in CONFIGS if c in fresh]
    OUT.with_suffix(".json").write_text(json.dumps({"rows": rows, "baseline": baseline}, indent=1))
    OUT.with_suffix(".md").write_text(render(rows, baseline, args.batch))
    print(OUT.with_suffix(".md").read_text())


def render(rows: list[dict], baseline: list[dict] | None, batch: int) -> str:
    before = {(r["kind"], r["categories"]): r for r in baseline or []}
    lines = ["# Categorical diffusion on 28x28 images: time and peak memory", "",
             f"`python benchmarks/categorical_cost.py --batch {batch}`; CPU. Training: the mnist28 U-Net, one step "
             "of the loss's forward and backward pass; memory: the peak resident memory the steps added, per "
             "example. Before: the same step measured before the marginal draw and the float32 option existed "
             "(float64 work and an (N, D, S) table for each draw of x_t). Seconds are wall-clock on a shared "
             "2-core machine and move with its load; memory is the comparison to read.", "",
             "| loss | categories | posterior work | s / step | peak MiB / example | before: s / step, MiB |",
             "|---|---:|---|---:|---:|---|"]
    for r in rows:
        if r["kind"] == "ar-sample":
            continue
        b = before.get((r["kind"], r["categories"])) if r["precision"] == "float64" else None
        old = f"{b['seconds_per_step']:.2f}, {b['peak_added_mib_per_example']:.1f}" if b else ""
        lines.append(f"| {r['kind']} | {r['categories']} | {r['precision']} | {r['seconds_per_step']:.2f} | "
                     f"{r['peak_added_mib_per_example']:.1f} | {old} |")
    ar = {r["precision"]: r for r in rows if r["kind"] == "ar-sample"}
    if ar:
        lines += ["", f"One reverse transition of the autoregressive model (the default Transformer of "
                  f"`--transitions autoregressive`, {ar['cached']['parameters']:,} parameters) on {AR_BATCH} binary "
                  f"28x28 images, 784 draws: {ar['cached']['seconds_per_step']:.1f} s with keys and values cached, "
                  f"{ar['re-run']['seconds_per_step']:.1f} s re-running the decoder for each pixel "
                  f"({ar['re-run']['seconds_per_step'] / ar['cached']['seconds_per_step']:.1f}x)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
