"""Pictures a person would rather look at than read: the loss curve and point-cloud samples."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["plot_loss_curve", "plot_points"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(csv_path: str | Path, png_path: str | Path, *, title: str = "") -> Path | None:
    """Plot ``loss.csv`` (log scale, with a moving average) to ``png_path``; None (nothing drawn) while the log has
    fewer than two rows: one point is no curve."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        return None
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss (per log interval)")
    k = max(1, len(loss) // 20)
    if k > 1:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.6, label=f"moving average ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if loss.min() > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def plot_points(samples: np.ndarray, png_path: str | Path, *, reference: np.ndarray | None = None,
                title: str = "") -> Path:
    """Scatter 2-D samples (and reference data in grey) to ``png_path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.7", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path
