"""What ``scorelab evaluate`` leaves for a person: a Markdown report, metric-versus-NFE plots and grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util import atomic_write
from ..data import to_model_range
from ..imaging import make_grid, save_png
from ..training.plots import pyplot

__all__ = ["write_report", "plot_metrics_vs_nfe", "plot_grids", "METRIC_LABELS"]

#: The metrics plotted per feature space, and how they are labelled.
METRIC_LABELS = {"fid": "FID (lower is better)", "kid": "KID (lower is better)", "precision": "precision",
                 "recall": "recall", "confidence": "classifier confidence", "inception_score": "Inception Score"}


def _picture(images: np.ndarray, scale: int = 1) -> np.ndarray:
    return make_grid(to_model_range(torch.from_numpy(images)), scale=scale)


def plot_metrics_vs_nfe(rows: list[dict[str, Any]], spaces: list[str], path: str | Path) -> Path:
    """One panel per (feature space, metric): the metric against NFE, a line per sampler, the data floor dashed."""
    plt = pyplot()
    panels = [(s, m) for s in spaces for m in METRIC_LABELS if any(m in r.get(s, {}) for r in rows)]
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    samplers = [s for s in dict.fromkeys(r["sampler"] for r in rows) if s != "data"]
    floor = next((r for r in rows if r["sampler"] == "data"), None)
    ticks = sorted({r["nfe"] for r in rows if r["sampler"] != "data"})
    for ax, (space, metric) in zip(axes.flat, panels):
        values = []
        for k, sampler in enumerate(samplers):
            pts = sorted((r["nfe"], r[space][metric]) for r in rows if r["sampler"] == sampler)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{k}", label=sampler)
            values += [p[1] for p in pts]
        if floor is not None and metric in floor.get(space, {}):
            ax.axhline(floor[space][metric], color="0.4", ls="--", lw=1, label="real data")
            values.append(floor[space][metric])
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_title(f"{METRIC_LABELS[metric]} [{space}]", fontsize=9)
        if metric == "fid" and min(values) > 0:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grids(grids: dict[tuple[str, int], np.ndarray], real: np.ndarray, path: str | Path) -> Path:
    """Sample grids side by side: a row per sampler, a column per NFE budget, real images first."""
    plt = pyplot()
    samplers = list(dict.fromkeys(s for s, _ in grids))
    budgets = sorted({n for _, n in grids})
    fig, axes = plt.subplots(len(samplers), len(budgets) + 1, figsize=(2.2 * (len(budgets) + 1), 2.4 * len(samplers)),
                             squeeze=False)
    shown = {"cmap": "gray" if real.shape[1] == 1 else None, "vmin": 0, "vmax": 255, "interpolation": "nearest"}
    for i, sampler in enumerate(samplers):
        axes[i, 0].imshow(_picture(real).squeeze(), **shown)
        axes[i, 0].set_title("real (train)" if i == 0 else "", fontsize=9)
        axes[i, 0].set_ylabel(sampler, fontsize=10)
        for j, nfe in enumerate(budgets):
            ax = axes[i, j + 1]
            if (sampler, nfe) in grids:
                ax.imshow(_picture(grids[(sampler, nfe)]).squeeze(), **shown)
            ax.set_title(f"{nfe} NFE" if i == 0 else "", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(row: dict[str, Any], space: str, metric: str) -> str:
    v = row.get(space, {}).get(metric)
    if v is None:
        return "-"
    if metric == "kid":
        return f"{1e3 * v:.2f} +- {1e3 * row[space]['kid_std']:.2f}"
    if metric in ("precision", "recall", "confidence"):
        return f"{v:.3f}"
    return f"{v:.2f}"


def write_report(out: Path, metrics: dict[str, Any], grids: dict[tuple[str, int], np.ndarray],
                 real: np.ndarray) -> Path:
    """``report.md`` with the tables, ``metrics_vs_nfe.png``, ``grids.png`` and one PNG per cell in ``grids/``."""
    info, rows, bpd = metrics["info"], metrics["rows"], metrics["bits_per_dim"]
    spaces = [s for s in ("domain", "inception") if s in info]
    plot_metrics_vs_nfe(rows, spaces, out / "metrics_vs_nfe.png")
    plot_grids(grids, real, out / "grids.png")
    scale = max(1, 32 // real.shape[-1])
    for (sampler, nfe), images in grids.items():
        save_png(_picture(images, scale), out / "grids" / f"{sampler}-nfe{nfe:04d}.png")
    config, held_out = info["config"], info.get("reference", "test") == "test"
    lines = [f"# Evaluation of `{info['checkpoint']}` (step {info['step']})", "",
             f"Data: `{info['data']}`; reference: "
             + (f"its test split ({info['test_images']} images). " if held_out else
                f"its training images ({info['test_images']}; it holds one split, so the `data` row, drawn from "
                "the same images, scores better than held-out images would). ")
             + f"{config['num_samples']} samples per cell, sample k seeded by (seed {config['seed']}, k)"
             + (f", classifier-free guidance w = {config['guidance']}" if config.get("guidance") is not None
                else "") + ". The `data` row scores as many real *training* images: the best a model can "
             "score with this many samples.", ""]
    for space in spaces:
        extra = "confidence" if space == "domain" else "inception_score"
        if space == "domain":
            lines += ["## In-domain features", "",
                      f"A small CNN trained on the training split (`scorelab.evaluation.classifier`); its accuracy on "
                      f"the test split is **{100 * info['domain']['classifier_test_accuracy']:.1f}%**. FID and KID "
                      "on its 128 features are comparable only between runs on this data set.", ""]
        else:
            lines += ["## Inception-v3 features (pytorch-fid's network)", "",
                      f"Weights: `{info['inception']['weights']}`.", ""]
        lines += [f"| sampler | NFE | FID | KID x 1e3 | precision | recall | {METRIC_LABELS[extra]} |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            nfe = "-" if r["sampler"] == "data" else str(r["nfe"])
            lines.append(f"| {r['sampler']} | {nfe} | {_fmt(r, space, 'fid')} | {_fmt(r, space, 'kid')} | "
                         f"{_fmt(r, space, 'precision')} | {_fmt(r, space, 'recall')} | {_fmt(r, space, extra)} |")
        lines.append("")
    if bpd:
        lines += [f"## Bits/dim on the {'test split' if held_out else 'training images'}", "",
                  "| method | bits/dim | images | how |", "|---|---|---|---|"]
        for method, b in bpd.items():
            if "skipped" in b:
                lines.append(f"| {method} | - | - | {b['skipped']} |")
            else:
                lines.append(f"| {method} | {b['bits_per_dim']:.3f} +- {b['stderr']:.3f} | {b['images']} | "
                             f"{b['detail']} |")
        lines.append("")
    lines += ["## Plots", "", "![metrics against NFE](metrics_vs_nfe.png)", "", "![sample grids](grids.png)", "",
              f"Numbers: `metrics.json`; samples: `cells/*.npz` (uint8). Drawing the samples took "
              f"{sum(r.get('sample_seconds', 0) for r in rows):.0f} s in all; this run took {info['seconds']:.0f} s "
              "(finished cells are reused)."]
    return atomic_write(out / "report.md", "\n".join(lines) + "\n")
