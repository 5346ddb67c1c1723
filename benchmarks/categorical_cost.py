"""Peak memory and time of one training step of categorical diffusion on 28x28 images (MATH.md 10, 13).

Each configuration runs in its own process: the ``mnist28`` U-Net of ``scorelab train`` (one-hot input, K logits
a pixel), a batch of random categories, three steps of the loss's forward and backward pass. Reported: seconds a
step (median) and the peak resident memory the steps added over the process's level after building the model
and the batch (``ru_maxrss``), per example. The configurations: multinomial diffusion's bound (uniform and
absorbing kernels) and masked diffusion's, at 256 categories (8-bit images, the default for them) and at 17.

    python benchmarks/categorical_cost.py [--batch 8]

writes benchmarks/results/categorical_cost.{json,md}.
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
CONFIGS = [(kind, k) for k in (256, 17) for kind in ("multinomial-uniform", "multinomial-absorbing", "masked")]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(kind: str, categories: int, batch: int) -> dict:
    """One configuration, in this process."""
    import torch

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
        loss = loss_fn(model, x0, noise=torch.Generator().manual_seed(step)).mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
    return {"kind": kind, "categories": categories, "batch": batch, "seconds_per_step": statistics.median(seconds),
            "peak_added_mib_per_example": (_rss_mib() - base) / batch, "parameters": sum(p.numel() for p in
                                                                                        net.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.batch)))
        return
    rows = []
    for kind, k in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--one", kind, str(k)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=1))
    lines = ["# One training step of categorical diffusion on 28x28 images: time and peak memory", "",
             f"`python benchmarks/categorical_cost.py --batch {args.batch}`; the mnist28 U-Net, CPU, float64 "
             "intermediates of the bound as they are now; memory: peak resident memory the steps added, per example.",
             "", "| loss | categories | s / step | peak MiB / example |", "|---|---:|---:|---:|"]
    lines += [f"| {r['kind']} | {r['categories']} | {r['seconds_per_step']:.2f} | "
              f"{r['peak_added_mib_per_example']:.1f} |" for r in rows]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(OUT.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
