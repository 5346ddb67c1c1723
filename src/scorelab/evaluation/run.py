"""``scorelab evaluate``: every sampler at every NFE budget, scored against the test split.

For each (sampler, NFE) cell the runner draws ``num_samples`` samples once
(sample k seeded by ``(seed, k)``, so cells are reproducible and independent of
the batch size; the denoised estimate clipped to [-1, 1] at every step unless
``clip_denoised=False``, :class:`scorelab.models.ClipDenoised`), stores them
as uint8 and scores them on every feature space:

* ``domain``: the in-domain classifier (:mod:`.classifier`): FID, KID,
  precision/recall, the classifier's mean confidence and the class histogram;
* ``inception``: the FID Inception-v3 (:mod:`.inception`, weights file given by
  the user): FID, KID, precision/recall and the Inception Score.

A ``data`` row scores as many real training images the same way, the floor
that finite samples allow. Bits/dim on the test split come from DDPM's VLB and
the probability-flow ODE. Every cell is written atomically to ``cells/`` with a
key of the checkpoint and settings, so a rerun reuses what is done.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .._util import BackgroundWriter, atomic_write, check_field_types, progress_bar, require
from ..data import ImageSet, has_test_split, load_dataset, to_uint8
from ..models import ClipDenoised, DiffusionModel, guided, unconditional
from ..objectives.vlb import NO_VLB
from ..processes import Process, kind_error, require_kind
from ..distributed import Ranks, barrier, broadcast_flag, chunk_ranges, gather_chunks
from ..samplers import SAMPLERS, sample_many
from ..samplers.registry import REGISTRY, samplers_for, steps_for_nfe
from ..samplers.search import run_folder, searched_for_run
from .classifier import fit_domain_classifier
from .metrics import FeatureStats, feature_stats, fid_from_features, inception_score, kernel_inception_distance, \
    precision_recall

__all__ = ["EvalConfig", "EvalResult", "evaluate", "steps_for_nfe", "default_samplers", "EVAL_SAMPLERS", "FEATURES",
           "BPD_METHODS"]

FEATURES = ("domain", "inception")
BPD_METHODS = ("vlb", "ode")


#: The samplers ``evaluate`` compares by default, in order of preference (fixed NFE budgets each).
EVAL_SAMPLERS = ("ddim", "dpm++2m", "ancestral", "em", "pc")


def default_samplers(process: Process) -> tuple[str, ...]:
    """The first three of :data:`EVAL_SAMPLERS` that run on ``process`` (a general SDE: Euler-Maruyama and
    predictor-corrector)."""
    fits = samplers_for(process)
    return tuple(s for s in EVAL_SAMPLERS if s in fits)[:3]


@dataclass(frozen=True)
class EvalConfig:
    """What ``scorelab evaluate`` measures. ``data=None``: the data set the checkpoint was trained on."""

    #: Empty: the first three of :data:`EVAL_SAMPLERS` that the model's process takes.
    samplers: tuple[str, ...] = ()
    nfe: tuple[int, ...] = (10, 20, 50, 100)
    num_samples: int = 1000
    batch_size: int = 250
    seed: int = 0
    data: str | None = None
    features: tuple[str, ...] = ("domain",)
    inception_weights: str | None = None
    bpd: tuple[str, ...] = ("vlb", "ode")
    bpd_images: int = 100
    vlb_terms: int = 100
    ode_rtol: float = 1e-5
    guidance: float | None = None
    clip_denoised: bool = True
    #: Also each grid sampler on the run's GITS grid for each budget (a ``SAMPLER+gits`` row; searched and saved in
    #: ``RUN/times/`` when the run has none for this checkpoint).
    searched_times: bool = False
    #: The checkpoint's weights to score: ``"ema"`` (the default) or ``"model"`` (the raw training weights).
    weights: str = "ema"
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    grid_size: int = 64

    def __post_init__(self) -> None:
        check_field_types(self)
        object.__setattr__(self, "samplers", tuple(self.samplers))
        object.__setattr__(self, "nfe", tuple(self.nfe))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "bpd", tuple(self.bpd))
        unknown = [s for s in self.samplers if s not in SAMPLERS]
        require(not unknown, f"unknown sampler(s) {unknown}; choose from {list(SAMPLERS)}")
        require("ode" not in self.samplers, "'ode' is adaptive (its NFE follows rtol, not a budget); evaluate "
                "fixed budgets with heun, dpm++2m or ddim, and the ODE's likelihood with --bpd ode")
        require(len(self.nfe) > 0, "give at least one NFE budget")
        require(all(n >= 1 for n in self.nfe), f"NFE budgets must be positive integers, got {list(self.nfe)}")
        require(self.num_samples >= max(2, self.pr_k + 1),
                f"num_samples must be at least {max(2, self.pr_k + 1)}, got {self.num_samples}")
        require(self.batch_size >= 1, f"batch_size must be a positive integer, got {self.batch_size}")
        require(self.weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {self.weights!r}")
        bad = [f for f in self.features if f not in FEATURES]
        require(not bad and self.features, f"unknown feature space(s) {bad}; choose from {list(FEATURES)}")
        bad = [b for b in self.bpd if b not in BPD_METHODS]
        require(not bad, f"unknown bits/dim method(s) {bad}; choose from {list(BPD_METHODS)} (or none)")
        require(self.bpd_images >= 2, f"bpd_images must be at least 2, got {self.bpd_images}")
        require(self.vlb_terms >= 2, f"vlb_terms must be at least 2, got {self.vlb_terms}")
        require("inception" not in self.features or self.inception_weights,
                "the inception features need the weights file: pass --inception-weights PATH (get it with "
                "`scorelab download inception`), or use --features domain")

    def sampling_key(self) -> dict[str, Any]:
        """The settings a cell's samples depend on (besides the checkpoint, sampler and NFE)."""
        return {"num_samples": self.num_samples, "seed": self.seed, "guidance": self.guidance,
                "clip_denoised": self.clip_denoised}


@dataclass
class EvalResult:
    out: Path
    report: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# NFE budgets
# ---------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------
# Feature spaces
# ---------------------------------------------------------------------------------------
Extractor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Space:
    name: str
    extract: Extractor
    test_features: np.ndarray        # the whole test split: FID's statistics and KID's reference
    reference: FeatureStats


def _inception_extractor(weights: str, device: torch.device) -> Extractor:
    from .inception import inception_features, load_inception

    net = load_inception(weights, device=device)

    def extract(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, p = inception_features(net, torch.from_numpy(images).float() / 255.0)
        return f.numpy(), p.numpy()
    return extract


def _score(space: _Space, images: np.ndarray, config: EvalConfig) -> dict[str, Any]:
    """Every metric of one sample set in one feature space."""
    feats, probs = space.extract(images)
    out: dict[str, Any] = {"fid": fid_from_features(space.reference, feats)}
    out["kid"], out["kid_std"] = kernel_inception_distance(space.test_features, feats, num_subsets=config.kid_subsets,
                                                           subset_size=config.kid_subset_size, seed=config.seed)
    # Precision/recall compare sets of equal size (Kynkaanniemi et al.): the first m test images.
    m = min(len(feats), len(space.test_features))
    out["precision"], out["recall"] = precision_recall(space.test_features[:m], feats[:m], k=config.pr_k)
    if space.name == "domain":
        out["confidence"] = float(probs.max(1).mean())
        out["class_histogram"] = (np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)).tolist()
    else:
        out["inception_score"], out["inception_score_std"] = inception_score(probs, splits=min(10, len(probs)))
    return out


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------
def _sampling_model(model: DiffusionModel, rows: torch.Tensor, num_classes: int, guidance: float | None):
    """Unconditional samples (a class-conditional network with no label), or guided toward labels k % K."""
    if not num_classes:
        return model
    if guidance is None:
        return unconditional(model, len(rows))
    return guided(model, (rows % num_classes).to(next(model.parameters()).device), guidance)


def draw_samples(model: DiffusionModel, shape: tuple[int, ...], sampler: str, steps: int, config: EvalConfig,
                 progress: bool = True, ranks: Ranks = Ranks(), **options: Any) -> tuple[np.ndarray | None, int]:
    """``config.num_samples`` samples as uint8 (on rank 0; None on the others), sample k seeded by
    ``(seed, k)`` (:func:`scorelab.samplers.sample_many`)."""
    def model_for_rows(rows: torch.Tensor):
        m = _sampling_model(model, rows, model.num_classes, config.guidance)
        return ClipDenoised(m) if config.clip_denoised else m

    result = sample_many(model_for_rows, shape, config.num_samples, sampler, steps, seed=config.seed,
                         batch_size=config.batch_size, ranks=ranks, progress=progress,
                         desc=f"{sampler} ({steps} steps)", transform=lambda x: to_uint8(x.clamp(-1, 1)),
                         **options)
    return (None, 0) if result is None else (result.samples.numpy(), result.nfe)


# ---------------------------------------------------------------------------------------
# Cells on disk
# ---------------------------------------------------------------------------------------
def _key(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_cell(path: Path, key: str) -> dict[str, Any] | None:
    try:
        cell = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return cell if cell.get("key") == key else None


def _read_samples(path: Path, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Samples of an earlier run with the same key, or None (absent, damaged or made otherwise). The key is
    checked in both files: a run stopped between writing them leaves a pair that disagrees."""
    meta = _read_cell(path.with_suffix(".json"), key)
    if meta is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return (f["x"], meta) if str(f["key"]) == key else None
    except (OSError, ValueError, KeyError):
        return None


def _write_samples(path: Path, x: np.ndarray, meta: dict[str, Any]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, x=x, key=np.array(meta["key"]))
    atomic_write(path, buf.getvalue())
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------------------
# Bits/dim
# ---------------------------------------------------------------------------------------
def _bits_per_dim(model: DiffusionModel, method: str, images: np.ndarray, config: EvalConfig,
                  ranks: Ranks = Ranks()) -> dict[str, Any] | None:
    """Per-image bits/dim in chunks of ``batch_size`` (chunk j seeded ``seed + j``, drawn by rank j mod W);
    the summary on rank 0, None on the others."""
    from ..likelihood import ode_bits_per_dim, vlb_bits_per_dim_sampled

    t0 = time.perf_counter()
    device = next(model.parameters()).device
    values = []
    for chunk in chunk_ranges(len(images), config.batch_size, ranks):
        x = torch.from_numpy(images[chunk.start:chunk.stop])
        m = unconditional(model, len(x)) if model.num_classes else model
        g = torch.Generator().manual_seed(config.seed + chunk.start // config.batch_size)
        if method == "vlb":
            per_image, _ = vlb_bits_per_dim_sampled(m, x, config.vlb_terms, generator=g)
        else:
            per_image, _ = ode_bits_per_dim(m, x.to(device), generator=g, rtol=config.ode_rtol, atol=config.ode_rtol)
        values.append(per_image.double().cpu())
    local = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    per_image = gather_chunks(local, len(images), config.batch_size, ranks)
    if per_image is None:
        return None
    detail = (f"{config.vlb_terms} of the T - 1 middle terms sampled per image" if method == "vlb" else
              f"RK45, rtol = atol = {config.ode_rtol}, one dequantization and one Rademacher probe per image")
    return {"bits_per_dim": float(per_image.mean()), "stderr": float(per_image.std() / math.sqrt(len(per_image))),
            "images": len(images), "detail": detail, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def _splits(spec: str) -> tuple[ImageSet, ImageSet]:
    """The training images and the reference samples are scored against: the test split, or, for data that hold
    one split (``folder:``, ``array:``), the training images themselves (as FID is often taken on CIFAR-10)."""
    train = load_dataset(spec, "train")
    test = load_dataset(spec, "test") if has_test_split(spec) else train
    require(isinstance(train, ImageSet) and isinstance(test, ImageSet),
            f"evaluate scores image models; {spec!r} is not an image data set")
    return train, test


def _load_for_evaluation(checkpoint: str | Path, config: EvalConfig, device: torch.device):
    """The model and its data's two splits, checked against each other."""
    from ..store import load_model

    model, spec, ckpt = load_model(checkpoint, weights=config.weights, device=device)
    require_kind(model.process, ("sde",), "scorelab evaluate (Gaussian diffusion)",
                 "a categorical (multinomial or masked) diffusion model samples (scorelab sample) and gives its "
                 "bits/dim (scorelab nll)")
    require(len(spec.data_shape) == 3, "evaluate scores image models; this checkpoint models points")
    data_spec = config.data or ckpt.config.get("train", {}).get("data")
    require(bool(data_spec), "the checkpoint does not name its data set; pass --data")
    train_set, test_set = _splits(data_spec)
    require(tuple(test_set.shape) == tuple(spec.data_shape),
            f"the data's images are {test_set.shape} but the model makes {tuple(spec.data_shape)}; pass the "
            "data set the model was trained on (--data)")
    require(config.guidance is None or model.num_classes > 0,
            "--guidance needs a class-conditional model (train with --class-conditional)")
    return model, spec, ckpt, data_spec, train_set, test_set


def _feature_spaces(config: EvalConfig, train_set: ImageSet, test_set: ImageSet, test_images: np.ndarray,
                    device: torch.device, progress: bool, inception: Extractor | None
                    ) -> tuple[list[_Space], dict[str, Any]]:
    """Each feature space (the in-domain classifier's, Inception's: ``inception``, loaded before sampling so that a
    bad weights file stops the run at once) with the test split's statistics."""
    spaces: list[_Space] = []
    info: dict[str, Any] = {}
    for name in config.features:
        if name == "domain":
            clf = fit_domain_classifier(train_set, test_set, seed=config.seed, progress=progress)
            clf.net.to(device)
            extract: Extractor = clf
            info[name] = {"classifier_test_accuracy": clf.accuracy, "classifier_key": clf.key,
                          "classes": clf.classes}
        else:
            assert inception is not None
            extract = inception
            info[name] = {"weights": str(config.inception_weights)}
        feats, _ = extract(test_images)
        spaces.append(_Space(name, extract, feats, feature_stats(feats)))
    return spaces, info


@dataclass
class _Scorer:
    """Rank 0's scoring of sample sets in every feature space, cached per cell (``cells/*.scores.json``)."""

    out: Path
    spaces: list[_Space]
    config: EvalConfig
    score_key: dict[str, Any]

    def __call__(self, cell_id: str, images: np.ndarray, base: dict[str, Any]) -> dict[str, Any]:
        path = self.out / "cells" / f"{cell_id}.scores.json"
        key = _key({**base.get("sample_key", {}), **self.score_key})
        done = _read_cell(path, key)
        if done is not None:
            return done
        row = {**{k: v for k, v in base.items() if k != "sample_key"}, "key": key,
               **{s.name: _score(s, images, self.config) for s in self.spaces}}
        atomic_write(path, json.dumps(row, indent=1))
        return row


def _cell_samples(model: DiffusionModel, shape: tuple[int, ...], cell: tuple[str, int, str], config: EvalConfig,
                  out: Path, model_id: dict[str, Any], progress: bool, ranks: Ranks, run: Path,
                  writer: BackgroundWriter | None):
    """A cell's samples, on every rank alike: rank 0 finds them cached or all ranks draw their shares, and rank 0
    hands the new ones to its background ``writer`` (``out/cells/*.npz``).
    ``cell``: (sampler, NFE, its row's label); a ``+gits`` label walks the run's searched grid.
    Returns (images, meta, steps) on rank 0, None on the others."""
    sampler, nfe, label = cell
    steps = steps_for_nfe(model.process, sampler, nfe)
    options: dict[str, Any] = {}
    if label.endswith("+gits"):
        options["times"] = searched_for_run(run, model, shape, steps, sampler, checkpoint_step=model_id["step"],
                                            seed=config.seed)[0].times
    path = out / "cells" / f"{label}-nfe{nfe:04d}.npz"
    sample_key = _key({**model_id, **config.sampling_key(), "sampler": sampler, "steps": steps, **options})
    found = _read_samples(path, sample_key) if ranks.main else None
    if not broadcast_flag(found is None, ranks):            # rank 0 decides; all ranks draw or none
        return (*found, steps) if ranks.main else None
    t0 = time.perf_counter()
    images, used = draw_samples(model, shape, sampler, steps, config, progress, ranks, **options)
    if not ranks.main:
        return None
    meta = {"key": sample_key, "nfe": used, "steps": steps, "seconds": time.perf_counter() - t0,
            "processes": ranks.world_size}
    if writer is not None:
        writer.submit(_write_samples, path, images, meta)
    return images, meta, steps


def _all_bits_per_dim(model: DiffusionModel, images: np.ndarray, config: EvalConfig, out: Path, model_id: dict[str, Any],
                      data_spec: str, progress: bool, ranks: Ranks) -> dict[str, Any]:
    """Bits/dim by each method on the test images, cached (rank 0 decides what is done; all ranks compute)."""
    bpd: dict[str, Any] = {}
    for method in progress_bar(config.bpd, desc="bits/dim (VLB, ODE)", disable=not progress):
        if method == "vlb" and not model.process.has_kind("ddpm"):
            bpd[method] = {"skipped": str(kind_error(model.process, ("ddpm",), "the variational bound", NO_VLB))}
            continue
        key = _key({**model_id, "method": method, "images": len(images), "seed": config.seed,
                    "terms": config.vlb_terms, "rtol": config.ode_rtol, "data": data_spec,
                    **({"chunk": config.batch_size} if len(images) > config.batch_size else {})})
        path = out / "cells" / f"bpd-{method}.json"
        done = _read_cell(path, key) if ranks.main else None
        if broadcast_flag(done is None, ranks):
            value = _bits_per_dim(model, method, images, config, ranks)
            if value is None:                                # another rank's share is done
                continue
            done = {"key": key, **value}
            atomic_write(path, json.dumps(done, indent=1))
        bpd[method] = done
    return bpd


def evaluate(checkpoint: str | Path, out: str | Path, config: EvalConfig = EvalConfig(), *,
             device: str | torch.device = "cpu", progress: bool = True, ranks: Ranks = Ranks()
             ) -> EvalResult | None:
    """Sample every (sampler, NFE) cell, score it, and write ``out/metrics.json``, ``report.md`` and plots.

    In a torchrun job every rank calls this: the samples and bits/dim are
    shared out over the ranks and gathered; rank 0 alone scores, writes and
    returns the result (the others return None). Rank 0 scores after the last
    collective (and writes sample files on a background thread), so no rank
    waits for its scoring or its disk.
    """
    from .report import write_report

    t_start = time.perf_counter()
    device = torch.device(device)
    model, spec, ckpt, data_spec, train_set, test_set = _load_for_evaluation(checkpoint, config, device)
    if not config.samplers:
        config = replace(config, samplers=default_samplers(model.process))
    out = Path(out)
    progress = progress and ranks.main
    if ranks.main:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    files = json.loads((ckpt.path / "meta.json").read_text()).get("files", {})
    chosen = files.get("ema.safetensors") if config.weights == "ema" else None
    model_id = {"weights_sha256": chosen or files.get("model.safetensors"), "step": ckpt.step}
    test_images = test_set.images[np.random.default_rng(config.seed).permutation(len(test_set))]
    info: dict[str, Any] = {"data": data_spec, "test_images": len(test_set), "checkpoint": str(ckpt.path),
                            "reference": "train" if test_set is train_set else "test",
                            "step": ckpt.step, "config": asdict(config)}
    grids: dict[tuple[str, int], np.ndarray] = {}
    cells = [(s, n, s) for s in config.samplers for n in config.nfe]
    if config.searched_times:
        cells += [(s, n, f"{s}+gits") for s in config.samplers if REGISTRY[s].takes_times()
                  for n in config.nfe]
    run = run_folder(ckpt.path)
    inception = _inception_extractor(config.inception_weights, device) \
        if ranks.main and "inception" in config.features else None      # type: ignore[arg-type]
    writer = BackgroundWriter() if ranks.main else None
    drawn: list[tuple[str, int, dict[str, Any], int]] = []        # rank 0's cells, scored after the collectives
    try:
        bar = progress_bar(cells, desc="evaluate", disable=not progress)
        for sampler, nfe, label in bar:
            bar.set_postfix_str(f"{label} @ {nfe} NFE", refresh=False)
            cell = _cell_samples(model, tuple(spec.data_shape), (sampler, nfe, label), config, out, model_id,
                                 progress, ranks, run, writer)
            if cell is not None:                                  # rank 0
                images, meta, steps = cell
                grids[(label, nfe)] = images[:config.grid_size]
                drawn.append((label, nfe, meta, steps))
        bpd = _all_bits_per_dim(model, test_images[:config.bpd_images], config, out, model_id, data_spec,
                                progress, ranks)
        barrier(ranks)             # every collective done on every rank; rank 0 scores and writes after it
    finally:
        if writer is not None:
            writer.close()
    if not ranks.main:
        return None
    rows = _score_cells(out, config, info, drawn, (train_set, test_set, test_images), data_spec, device, progress,
                        inception)
    info["seconds"] = time.perf_counter() - t_start
    metrics = {"info": info, "rows": rows, "bits_per_dim": bpd}
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=1))
    report = write_report(out, metrics, grids, _real_images(train_set, config)[:config.grid_size])
    return EvalResult(out, report, metrics)


def _real_images(train_set: ImageSet, config: EvalConfig) -> np.ndarray:
    """The floor's images: as many real training images as samples, drawn by the seed."""
    rng = np.random.default_rng(config.seed + 1)
    return train_set.images[rng.choice(len(train_set), min(config.num_samples, len(train_set)), replace=False)]


def _score_cells(out: Path, config: EvalConfig, info: dict[str, Any], drawn: list[tuple[str, int, dict[str, Any], int]],
                 sets: tuple[ImageSet, ImageSet, np.ndarray], data_spec: str, device: torch.device,
                 progress: bool, inception: Extractor | None) -> list[dict[str, Any]]:
    """Rank 0, after every collective: the feature spaces, the real images' row (the floor), then each cell's
    row from its samples file."""
    train_set, test_set, test_images = sets
    spaces, space_info = _feature_spaces(config, train_set, test_set, test_images, device, progress, inception)
    info.update(space_info)
    score = _Scorer(out, spaces, config, {
        "features": list(config.features), "kid": [config.kid_subsets, config.kid_subset_size],
        "pr_k": config.pr_k, "data": data_spec, "inception": config.inception_weights,
        "classifier": info.get("domain", {}).get("classifier_key")})
    real = _real_images(train_set, config)
    rows = [score("data", real, {"sampler": "data", "nfe": 0, "steps": 0,
                                 "sample_key": {"real": len(real), "seed": config.seed}})]
    for label, nfe, meta, steps in drawn:
        path = out / "cells" / f"{label}-nfe{nfe:04d}.npz"
        with np.load(path, allow_pickle=False) as f:
            images = f["x"]
        rows.append(score(f"{label}-nfe{nfe:04d}", images, {
            "sampler": label, "nfe_budget": nfe, "nfe": meta["nfe"], "steps": steps,
            "sample_seconds": meta["seconds"], "sample_key": {"samples": meta["key"]}}))
    return rows
