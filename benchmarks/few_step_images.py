"""Few-step sampling on trained image models: the default settings, the papers' settings and searched grids.

For each multistep solver (iPNDM, DPM-Solver++(2M), UniPC) and budget (5 and 10 network calls by default),
``--num-samples`` unconditional samples of a run's EMA model are scored by FID, precision and recall in the
in-domain classifier's features against the test split (what ``scorelab evaluate`` reports), with

* ``default``: ``sample(model, shape, solver, steps)``, the step-count rules of ``scorelab.samplers.rules``;
* ``paper``: the solver's settings from 20 steps on at this budget (its paper grid to the process's t_min:
  EDM's rho = 7 for iPNDM, uniform in log sigma for the others, with their final-step rules);
* ``searched``: the run's searched grid for this solver (``search_times(..., sampler=solver)``, saved in
  ``RUN/times/``, the same file ``scorelab sample --times searched`` reads; ``--margin`` as the search's);
* ``log_sigma to E``: the grid uniform in log sigma stopping at sigma E (``t_min``: the process's), then the
  data prediction (``lower_order_final=True``), the paper's order.

Every cell uses the same seeds (sample k from ``(seed, k)``) and clips the denoised estimate, as ``evaluate``.

    python benchmarks/few_step_images.py --run demo/run --name digits
    python benchmarks/few_step_images.py --run runs/fashion-mnist --name fashion-mnist --num-samples 500 \\
        --search-batch 64

Writes benchmarks/results/few_step_images-NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


from scorelab.data import load_dataset
from scorelab.evaluation import EvalConfig, fid_from_features, fit_domain_classifier, precision_recall
from scorelab.evaluation.run import draw_samples
from scorelab.samplers.rules import rule_times, step_rule
from scorelab.samplers.search import MARGIN, run_folder, searched_for_run
from scorelab.store import load_model

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("default", "paper", "searched", "log_sigma to t_min", "log_sigma to 0.03", "log_sigma to 0.1")


def options_for(setting: str, solver: str, nfe: int, model, shape, run: Path, step: int, batch: int, seed: int,
                margin: float = MARGIN) -> dict:
    """The sampler options of one setting."""
    if setting == "default":
        return {}
    if setting.startswith("log_sigma"):
        end = setting.split()[-1]
        rule = replace(step_rule(solver, 20), grid="log_sigma", sigma_end=None if end == "t_min" else float(end),
                       lower_order_final=True)
        return {"times": rule_times(model.process, nfe, rule), "lower_order_final": True,
                **({"order": rule.order} if rule.order else {})}
    if setting == "paper":
        rule = step_rule(solver, 20)
        return {"times": rule_times(model.process, nfe, rule), "lower_order_final": rule.lower_order_final,
                **({"order": rule.order} if rule.order else {})}
    found, _ = searched_for_run(run, model, shape, nfe, solver, checkpoint_step=step, batch=batch, seed=seed,
                                margin=margin)
    return {"times": found.times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--solvers", default="ipndm,dpm++2m,dpm++3m,unipc")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--nfe", default="5,10")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--search-batch", type=int, default=256, help="teacher draws of each search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=MARGIN, help="how much nearer the teacher a searched grid must be")
    args = p.parse_args()
    model, spec, ckpt = load_model(args.run)
    model.eval()
    data_spec = ckpt.config["train"]["data"]
    train, test = load_dataset(data_spec, "train"), load_dataset(data_spec, "test")
    classifier = fit_domain_classifier(train, test, progress=False)
    test_features, _ = classifier(test.images)
    config = EvalConfig(num_samples=args.num_samples, seed=args.seed)
    run, shape = run_folder(ckpt.path), tuple(spec.data_shape)
    rows = []
    for solver in args.solvers.split(","):
        for nfe in (int(n) for n in args.nfe.split(",")):
            for setting in args.settings.split(","):
                start = time.perf_counter()
                options = options_for(setting, solver, nfe, model, shape, run, ckpt.step, args.search_batch,
                                      args.seed, args.margin)
                images, used = draw_samples(model, shape, solver, nfe, config, progress=False, **options)
                features, _ = classifier(images)
                m = min(len(features), len(test_features))
                precision, recall = precision_recall(test_features[:m], features[:m])
                rows.append({"solver": solver, "nfe": used, "setting": setting, "fid": fid_from_features(
                    test_features, features), "precision": precision, "recall": recall,
                    "seconds": time.perf_counter() - start})
                print(f"{solver:8s} {nfe:3d} NFE {setting:9s} FID {rows[-1]['fid']:.2f} "
                      f"P/R {precision:.3f}/{recall:.3f}", flush=True)
    real, _ = classifier(train.images[:args.num_samples])
    floor = fid_from_features(test_features, real)
    out = RESULTS / f"few_step_images-{args.name}"
    meta = {"run": args.run, "checkpoint_step": ckpt.step, "data": data_spec, "num_samples": args.num_samples,
            "classifier_accuracy": classifier.accuracy, "floor_fid": floor, "search_margin": args.margin,
            "date": time.strftime("%Y-%m-%d")}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    budgets = sorted({r["nfe"] for r in rows})
    lines = [f"# Few-step sampling on {args.name}: in-domain FID (precision / recall)", "",
             f"`python benchmarks/few_step_images.py {' '.join(sys.argv[1:])}` ({meta['date']}, step "
             f"{ckpt.step}); {args.num_samples} samples per cell against the test split; real training images "
             f"score FID {floor:.2f}; searched grids with margin {args.margin:g}.", "",
             "| solver | setting | " + " | ".join(f"{b} NFE" for b in budgets) + " |",
             "|---|---|" + "---:|" * len(budgets)]
    for solver in args.solvers.split(","):
        for setting in args.settings.split(","):
            cells = {r["nfe"]: r for r in rows if r["solver"] == solver and r["setting"] == setting}
            lines.append(f"| {solver} | {setting} | " + " | ".join(
                f"{cells[b]['fid']:.2f} ({cells[b]['precision']:.2f} / {cells[b]['recall']:.2f})" for b in budgets)
                + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
