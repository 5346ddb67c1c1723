"""Quality per CPU-minute: training recipes on the same network, data and budget, scored by `scorelab evaluate`.

Every recipe trains the same U-Net on the same images with the same batch,
optimizer, warm-up, clipping and EMA for the same number of steps (the
network's cost dominates a step, so the wall times agree; each is measured
and reported). Only the process, the network's target and the loss weighting
change. Each trained model is then scored by ``scorelab evaluate`` (in-domain
FID, precision, recall) with the same samplers at 10, 20 and 50 NFE.

    python benchmarks/recipes.py                                   # Fashion-MNIST, 700 steps each
    python benchmarks/recipes.py --data digits --network digits8 --steps 600 --batch-size 128

Writes ``benchmarks/results/recipes.json`` and ``recipes.md`` (the README table),
and keeps the runs under ``--runs``. Each command runs on one thread
(``OMP_NUM_THREADS=1``), as the README's timings are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _here(path: Path) -> str:
    """``path`` as the commands (run from the repository root) are given it: relative to the root where it lies
    inside it, so the records they write name no machine's folders."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


#: name -> (what it is, `scorelab train` flags that define it)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "ddpm": ("DDPM: T = 1000 linear betas, eps target, L_simple (Ho et al. 2020)",
             ["--framework", "ddpm"]),
    "ddpm-v-minsnr": ("DDPM process, v target (Salimans & Ho 2022), Min-SNR-5 weighting (Hang et al. 2023)",
                      ["--framework", "ddpm", "--target", "v", "--loss", "min-snr"]),
    "vp-eps": ("VP SDE, continuous t ~ U[1e-5, 1], eps target, DSM (Song et al. 2021)",
               ["--framework", "vp"]),
    "edm": ("EDM: preconditioned denoiser, log-normal sigmas, lambda(sigma) (Karras et al. 2022)",
            ["--framework", "edm"]),
}


def run(cmd: list[str], log: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist:../shared/data/fashion-mnist")
    parser.add_argument("--network", default="mnist28")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--samplers", default="dpm++2m,heun,ancestral")
    parser.add_argument("--nfe", default="10,20,50")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        sys.exit(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--data", args.data, "--network", args.network, "--network-option", "num_res_blocks=1",
              "--network-option", "dropout=0.0", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--lr", "1e-3", "--warmup", "100", "--grad-clip", "1.0", "--ema-decay", "0.995",
              "--seed", str(args.seed), "--sample-every", str(args.steps), "--checkpoint-every", str(args.steps),
              "--keep-last", "1"]
    results = {}
    for name in names:
        about, flags = RECIPES[name]
        run_dir = args.runs / name
        if not (run_dir / "checkpoints" / f"step-{args.steps:08d}").exists():    # a rerun reuses trained models
            seconds = run(["scorelab", "train", *flags, *common, "--out", _here(run_dir)],
                          args.runs / f"{name}.train.log")
            (run_dir / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
        train_s = float((run_dir / "train_seconds.txt").read_text())
        eval_dir = run_dir / "eval"
        eval_s = run(["scorelab", "evaluate", _here(run_dir), "--samplers", args.samplers, "--nfe", args.nfe,
                      "--num-samples", str(args.num_samples), "--bpd", "none", "--seed", str(args.seed),
                      "--out", _here(eval_dir)], args.runs / f"{name}.eval.log")
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        results[name] = {"about": about, "flags": flags, "train_seconds": train_s, "eval_seconds": eval_s,
                         "metrics": metrics}
        print(f"{name}: trained in {train_s / 60:.1f} min", flush=True)
    meta = {"data": args.data, "network": args.network, "steps": args.steps, "batch_size": args.batch_size,
            "samplers": args.samplers, "nfe": args.nfe, "num_samples": args.num_samples, "common_flags": common,
            "python": platform.python_version(), "machine": platform.machine(), "threads": 1}
    stem = "recipes" if args.data.startswith("fashion") else f"recipes-{args.data.split(':')[0]}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "recipes": results}, indent=1))
    table = markdown(results, args.samplers.split(","), [int(b) for b in args.nfe.split(",")])
    (args.out / f"{stem}.md").write_text(table)
    print(table)


def _cell(metrics: dict, sampler: str, nfe: int) -> dict | None:
    for cell in metrics["rows"]:
        if cell["sampler"] == sampler and cell.get("nfe_budget") == nfe:
            return cell
    return None


def markdown(results: dict, samplers: list[str], budgets: list[int]) -> str:
    head = "| recipe | minutes | sampler | " + " | ".join(f"FID @ {b}" for b in budgets) + \
        " | precision / recall @ " + " / ".join(str(b) for b in budgets) + " |"
    lines = [head, "|" + "---|" * (4 + len(budgets))]
    for name, res in results.items():
        for sampler in samplers:
            cells = [_cell(res["metrics"], sampler, b) for b in budgets]
            fid = [f"{c['domain']['fid']:.2f}" if c else "-" for c in cells]
            pr = ", ".join(f"{c['domain']['precision']:.2f} / {c['domain']['recall']:.2f}" if c else "-"
                           for c in cells)
            lines.append(f"| {name} | {res['train_seconds'] / 60:.1f} | {sampler} | " + " | ".join(fid) + f" | {pr} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
