"""Score matching objectives compared: DSM, sliced SM (plain and variance-reduced) and exact SM.

Trains the same score network from the same initial weights, on the same data
stream, with each of four losses of ``scorelab.objectives`` (all with
``reduction="mean"``, lambda = s(t)^2, one Rademacher projection for the sliced ones):

* ``dsm``    ``dsm_loss(weighting="s2")``: regression on the Gaussian kernel;
* ``ssm``    ``sliced_score_matching_loss(variance_reduced=False)``;
* ``ssm-vr`` ``sliced_score_matching_loss(variance_reduced=True)`` (Song et al. 2019, eq. 8);
* ``sm``     ``score_matching_loss``: Hyvarinen's trace, one backward pass per dimension;

on three problems: the 2-D and the 16-D Gaussian mixtures of ``tests/conftest.py``
under ``VPSDE()`` with an MLP (eps target, the vp framework's time embedding 1000 t;
Adam 2e-3, batch 256, fresh mixture draws every step), and the 8x8 digits
(64-D, scaled to [-1, 1]) under ``NCSN()`` with a tiny "digits8" U-Net
(score target; Adam 1e-3, NCSN's rate; batch 64).

Measured per (problem, method):

* score error: on the mixtures, the s^2-weighted Fisher divergence against the
  exact oracle, ``E_t E_{x_t ~ p_t} s(t)^2 ||s_theta - grad log p_t||^2 / D``
  (= ``||eps_theta - eps*||^2 / D``), on a fixed held-out set of (x0, t, eps),
  t ~ U[1e-3, 1]. The digits have no oracle: there it is the held-out DSM loss
  (per dimension) on fixed (test image, level, eps) triples, every level for every
  test image; it equals the Fisher divergence plus a model-independent constant;
* the error at checkpoints, against training step and training seconds;
* seconds per training step: median over every step (evaluation excluded);
* "memory": bytes of the tensors saved for backward during one training step,
  counted with ``torch.autograd.graph.saved_tensors_hooks`` (every packed tensor,
  including those of the double-backward graph that SM and SSM build; and, as
  ``saved_unique``, distinct tensors only). Not the process's peak memory.

    python benchmarks/score_matching.py                  # ~5 min; writes benchmarks/results/score_matching.{json,md,png}
    python benchmarks/score_matching.py --quick          # smoke run, < 30 s: do not quote
    python benchmarks/score_matching.py --problems 2d 16d --steps 0.5

Single-threaded (``torch.set_num_threads(1)``); every run is seeded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import scorelab as sl
from scorelab.data import load_digits, to_model_range
from scorelab.objectives import dsm_loss, score_matching_loss, sliced_score_matching_loss
from scorelab.networks import MLP, UNet, MLPConfig, UNetConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import mixture_16d_params, mixture_2d_params  # noqa: E402

METHODS: dict[str, Callable] = {
    "dsm": lambda m, x, g: dsm_loss(m, x, weighting="s2", generator=g, reduction="mean"),
    "ssm": lambda m, x, g: sliced_score_matching_loss(m, x, variance_reduced=False, generator=g, reduction="mean"),
    "ssm-vr": lambda m, x, g: sliced_score_matching_loss(m, x, variance_reduced=True, generator=g, reduction="mean"),
    "sm": lambda m, x, g: score_matching_loss(m, x, generator=g, reduction="mean"),
}
TINY_UNET = {"base_channels": 16, "norm_groups": 8, "num_res_blocks": 1, "attention_resolutions": ()}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class Problem:
    name: str
    dim: int
    metric: str
    lr: float
    batch: int
    make_model: Callable[[], sl.Model]
    draw: Callable[[torch.Generator], torch.Tensor]    # a training batch x0
    error: Callable[[sl.Model], float]                 # on the fixed held-out set
    checkpoints: dict[str, list[int]]                  # method -> steps at which the error is measured


def mixture_problem(name: str, params, schedule: list[int], n_eval: int, seed: int) -> Problem:
    gm, process = sl.GaussianMixture(*params), sl.VPSDE()
    d = gm.dim
    g = gen(seed + 1)
    x0 = gm.sample(n_eval, g, dtype=torch.float64)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n_eval, generator=g, dtype=torch.float64)
    a, s = process.coefficients(t)
    x_t = a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_star = -s[:, None] * gm.marginal_score(x_t, t, process)   # s^2 ||s_theta - s*||^2 = ||eps_theta - eps*||^2
    x_t, t32 = x_t.float(), t.float()

    @torch.no_grad()
    def error(model: sl.Model) -> float:
        return float(((model.predict(x_t, t32).eps.double() - eps_star) ** 2).sum(1).mean() / d)

    def make_model() -> sl.Model:
        torch.manual_seed(seed)
        net = MLP(MLPConfig(dim=d, hidden=128, depth=3, embedding_scale=1000.0))
        return sl.Model(net, process, target="eps")

    return Problem(name, d, "s^2-weighted Fisher divergence / D vs the exact score", 2e-3, 256, make_model,
                   lambda g: gm.sample(256, g), error, {m: schedule for m in METHODS})


def digits_problem(schedule: list[int], sm_schedule: list[int], levels: int, seed: int) -> Problem:
    process = sl.NCSN()
    train = to_model_range(load_digits("train").images)
    test = to_model_range(load_digits("test").images)
    lv = torch.linspace(1, process.num_scales, levels).round()        # every level (or a spread of them)
    x0 = test.repeat(levels, 1, 1, 1)
    t = process.level_to_time(lv.repeat_interleave(len(test))).float()
    noise = torch.randn(x0.shape, generator=gen(seed + 1))

    @torch.no_grad()
    def error(model: sl.Model) -> float:
        return float(dsm_loss(model, x0, t=t, noise=noise, reduction="mean").mean())

    def make_model() -> sl.Model:
        torch.manual_seed(seed)
        return sl.Model(UNet(UNetConfig.preset("digits8", **TINY_UNET)), process, target="score")

    return Problem("digits", 64, "held-out DSM loss / D (Fisher divergence + a constant)", 1e-3, 64, make_model,
                   lambda g: train[torch.randint(len(train), (64,), generator=g)], error,
                   {m: (sm_schedule if m == "sm" else schedule) for m in METHODS})


def saved_bytes(step: Callable[[], None]) -> tuple[int, int]:
    """Bytes of every tensor packed for backward during ``step()``, and of the distinct ones."""
    total, seen = [0], {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        nbytes = x.numel() * x.element_size()
        total[0] += nbytes
        seen[(x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)] = nbytes
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        step()
    return total[0], sum(seen.values())


def train(problem: Problem, method: str, seed: int) -> dict:
    model, loss_fn = problem.make_model(), METHODS[method]
    opt = torch.optim.Adam(model.parameters(), lr=problem.lr)
    probe_g, probe_x = gen(seed + 2), problem.draw(gen(seed + 3))      # one step's memory, off the training stream
    saved, unique = saved_bytes(lambda: loss_fn(model, probe_x, probe_g).mean().backward())
    opt.zero_grad(set_to_none=True)
    data_g, loss_g = gen(seed + 4), gen(seed + 5)                      # the same stream for every method
    checkpoints = problem.checkpoints[method]
    times, losses, curve, step = [], [], [], 0
    while True:
        if step in checkpoints:
            curve.append({"step": step, "train_seconds": sum(times), "error": problem.error(model)})
            print(f"  [{problem.name}] {method:6s} step {step:5d}  {sum(times):7.2f} s  error {curve[-1]['error']:.5f}",
                  flush=True)
        if step == checkpoints[-1]:
            break
        x0 = problem.draw(data_g)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, x0, loss_g).mean()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        step += 1
    return {"seconds_per_step": statistics.median(times) if times else None, "steps": step,
            "saved_bytes": saved, "saved_unique_bytes": unique, "curve": curve,
            "train_loss_last_10": losses[-10:], "finite": all(map(math.isfinite, losses))}


def table(name: str, res: dict) -> list[str]:
    dsm = res["methods"]["dsm"]
    dsm_err = {c["step"]: c["error"] for c in dsm["curve"]}
    lines = [f"### {name} (D = {res['dim']}): {res['metric']}", "",
             "| method | steps | s/step | x DSM | saved MB/step | x DSM | final error | x DSM (same step) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in res["methods"].items():
        last = r["curve"][-1]
        ref = dsm_err.get(last["step"])
        ratio = f"{last['error'] / ref:.2f}" if ref else "n/a"
        lines.append(f"| {m} | {r['steps']} | {r['seconds_per_step']:.4f} | "
                     f"{r['seconds_per_step'] / dsm['seconds_per_step']:.2f} | {r['saved_bytes'] / 2**20:.2f} | "
                     f"{r['saved_bytes'] / dsm['saved_bytes']:.2f} | {last['error']:.4g} | {ratio} |")
    return lines + [""]


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        for m, r in res["methods"].items():
            pts = [(max(c["train_seconds"], 1e-2), c["error"]) for c in r["curve"]]
            ax.plot(*zip(*pts), marker="o", ms=3, label=m)
        ax.set(xscale="log", yscale="log", xlabel="training seconds (1 thread)", ylabel="error", title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny step counts: a smoke run, not a measurement")
    parser.add_argument("--steps", type=float, default=1.0, help="multiply every step count by this")
    parser.add_argument("--problems", nargs="+", default=["2d", "16d", "digits"], choices=["2d", "16d", "digits"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    def sched(steps: list[int]) -> list[int]:
        return sorted({0, *(max(1, round(s * args.steps)) for s in steps if s)})

    q = args.quick
    mix = sched([5, 20] if q else [30, 100, 300, 1000, 3000])
    n_eval = 1000 if q else 4000
    makers = {"2d": lambda: mixture_problem("2d", mixture_2d_params(), mix, n_eval, args.seed),
              "16d": lambda: mixture_problem("16d", mixture_16d_params(), mix, n_eval, args.seed),
              "digits": lambda: digits_problem(sched([2, 5] if q else [10, 30, 100, 300, 600]),
                                               sched([2] if q else [10, 30]), 2 if q else 10, args.seed)}
    t_start = time.perf_counter()
    results = {}
    for name in args.problems:
        problem = makers[name]()
        print(f"{name}: D = {problem.dim}, {problem.metric}", flush=True)
        results[name] = {"dim": problem.dim, "metric": problem.metric, "lr": problem.lr, "batch": problem.batch,
                         "parameters": sum(p.numel() for p in problem.make_model().parameters()),
                         "methods": {m: train(problem, m, args.seed) for m in METHODS}}
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "quick": q,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - t_start, "seed": args.seed,
            "steps_scale": args.steps}
    settings = {
        "losses": "reduction='mean', weighting s2 (lambda = s(t)^2); sliced: 1 Rademacher projection",
        "mixtures": "VPSDE(), MLP(dim=D, hidden=128, depth=3, embedding_scale=1000), target eps, Adam 2e-3, "
                    f"batch 256 of fresh mixture draws; error on {n_eval} held-out (x0, t ~ U[1e-3, 1], eps)",
        "digits": f"NCSN() (sigmas 1..0.01, 10 levels), UNet digits8 with {TINY_UNET}, target score, Adam 1e-3, "
                  "batch 64 from load_digits('train'); error = DSM loss on load_digits('test') x every level",
        "seconds_per_step": "median over all training steps (zero_grad, loss, backward, Adam step); no evaluation",
        "memory": "saved_bytes = sum of numel * element_size of every tensor packed by saved_tensors_hooks during "
                  "one step's loss and backward (incl. the double-backward graph of SM/SSM); saved_unique_bytes "
                  "counts each distinct tensor once. Not peak process memory.",
        "init": "every method starts from the same weights and sees the same data batches"}
    (args.out / "score_matching.json").write_text(
        json.dumps({"meta": meta, "settings": settings, "results": results}, indent=1))
    md = ["## Score matching objectives (benchmarks/score_matching.py)", "",
          f"torch {torch.__version__}, {meta['threads']} thread, {meta['date']}"
          + (" (QUICK: smoke run, do not quote)" if q else "") + ". "
          "s/step: median training step. saved MB: tensors saved for backward in one step "
          "(saved_tensors_hooks, incl. the double-backward graph), not peak memory. "
          "x DSM: ratio to DSM (error: at the same step).", ""]
    for name, res in results.items():
        md += table(name, res)
    (args.out / "score_matching.md").write_text("\n".join(md))
    plot(results, args.out / "score_matching.png")
    print("\n" + "\n".join(md))
    print(f"wrote {args.out}/score_matching.{{json,md,png}} in {meta['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
