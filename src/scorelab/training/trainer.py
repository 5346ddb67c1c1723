"""The training loop: AdamW with warm-up, clipping, EMA, bf16, accumulation, exact resume.

The math of one step is :func:`training_loss` (a loss of :mod:`scorelab.losses`
on a batch); :func:`train` runs the loop around it. A run's folder holds

    config.json               the TrainConfig and the model it trains
    checkpoints/step-*/       safetensors weights, EMA, optimizer, RNG state (atomic)
    loss.csv, loss.png        the loss log and its curve
    samples/step-*.png        sample grids from the EMA weights every ``sample_every`` steps

Distributed (``torchrun``, see :mod:`scorelab.distributed`): ``batch_size``
is the global batch; every rank draws the whole step's randomness from
``(seed, step)`` and trains on its rows under DistributedDataParallel, so W
ranks take the step one process takes, up to float summation order. Rank 0
alone logs, previews and writes checkpoints; each rank's RNG (dropout) is
seeded by ``(seed, rank)`` and saved in the checkpoint.

Reproducible and resumable bit for bit on the same machine: the data order
of epoch e is a permutation seeded by ``(seed, e)``, the noise of step k by
``(seed, k)``, and the global RNG (dropout) is saved in every checkpoint, so
stopping after N steps and resuming equals an uninterrupted run (weights,
EMA, per-step losses). ``loss.csv`` keeps the rows written before the stop;
when the stop is not at a multiple of ``log_every`` it has one extra row
there, and the next row averages only the steps after it.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._util import BatchNoise, Randomness, atomic_write, check_writable, randn, require
from ..checkpoints import CheckpointError, config_differences, latest_checkpoint, load_checkpoint, save_checkpoint
from ..data import ImageSet, load_dataset, take
from ..distributed import Ranks, all_equal, all_mean, barrier, rank_device, resolve_device
from ..distributed import current as current_ranks
from ..guidance import Conditional, drop_labels
from ..losses import dsm_loss, hybrid_loss, score_matching_loss, simple_loss, sliced_score_matching_loss
from ..models import Model
from ..modelspec import ModelSpec
from .config import TrainConfig, make_model_spec
from .ema import ema_decay_at, update_ema

__all__ = ["train", "training_loss", "TrainResult", "resolve_device", "step_generator", "batch_indices"]


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run leaves behind."""

    out: Path
    step: int
    checkpoint: Path
    model: Model            # the EMA weights, in eval mode
    spec: ModelSpec
    losses: list[float]     # the loss of every step this call ran
    seconds: float


def step_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The generator of micro-batch ``micro`` of step ``step``: a pure function of its arguments."""
    words = np.random.SeedSequence([seed, step, micro]).generate_state(2, np.uint32)
    return torch.Generator(device).manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)


def batch_indices(n: int, batch_size: int, seed: int, index: int) -> np.ndarray:
    """The ``index``-th batch of an endless, epoch-wise shuffled stream (epoch e: permutation of ``(seed, e)``)."""
    per_epoch = n // batch_size
    epoch, k = divmod(index, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * batch_size:(k + 1) * batch_size]


def _dsm(weighting: str, reduction: str = "mean"):
    return lambda m, x0, gen, t, noise: dsm_loss(m, x0, weighting=weighting, t=t, noise=noise, generator=gen,
                                                 reduction=reduction)


def _sliced(variance_reduced: bool):
    return lambda m, x0, gen, t, noise: sliced_score_matching_loss(
        m, x0, variance_reduced=variance_reduced, t=t, noise=noise, generator=gen, reduction="mean")


#: Each training loss by name: ``(model, x0, randomness, t, noise) -> per-example loss`` (MATH.md 2-4, 7).
LOSS_FUNCTIONS = {
    "simple": lambda m, x0, gen, t, noise: simple_loss(m, x0, t=t, noise=noise, generator=gen),
    "dsm": _dsm("s2"),
    "dsm-likelihood": _dsm("g2"),
    "hybrid": lambda m, x0, gen, t, noise: hybrid_loss(m, x0, t=t, noise=noise, generator=gen),
    "sm": lambda m, x0, gen, t, noise: score_matching_loss(m, x0, t=t, noise=noise, generator=gen,
                                                           reduction="mean"),
    "ssm": _sliced(False),
    "ssm-vr": _sliced(True),
}


def training_loss(model: Model, x0: Tensor, loss: str, generator: Randomness = None,
                  labels: Tensor | None = None, *, t: Tensor | None = None, noise: Tensor | None = None
                  ) -> Tensor:
    """The per-example loss of one batch (MATH.md 2-4, 7), averaged over dimensions.

    ``"simple"``: L_simple (Ho et al. eq. 14); ``"dsm"``: denoising score matching
    with lambda = s^2; ``"dsm-likelihood"``: with lambda = g^2; ``"hybrid"``:
    L_simple + 0.001 L_vlb (Nichol & Dhariwal); ``"sm"``, ``"ssm"``, ``"ssm-vr"``:
    exact and sliced score matching (one Rademacher projection) on ``x_t ~ p_t``,
    weighted by ``lambda(t)`` (s^2, or 1 - exp(-int g^2) on a general SDE). ``labels`` condition
    a class-conditional model (-1: no label). ``t`` and ``noise`` (drawn from
    ``generator`` when not given) are the times and ``eps`` of the batch; a general
    SDE has no eps and simulates ``x_t`` from ``generator`` instead.
    """
    require(loss in LOSS_FUNCTIONS, f"unknown loss {loss!r}; choose one of {sorted(LOSS_FUNCTIONS)}")
    m = model if labels is None else Conditional(model, labels)
    return LOSS_FUNCTIONS[loss](m, x0, generator, t, noise if model.process.affine else None)


def _autocast(device: torch.device, precision: str):
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _rng_key(kind: str, rank: int) -> str:
    """The checkpoint tensor of rank ``rank``'s RNG: ``rng_cpu`` for rank 0 (and one process), ``rng_cpu.r3``."""
    return f"rng_{kind}" if rank == 0 else f"rng_{kind}.r{rank}"


def _rng_state(device: torch.device, ranks: Ranks) -> dict[str, Tensor]:
    """Every rank's global RNG state (dropout), gathered on rank 0 (a collective: all ranks call it)."""
    from ..distributed import gather_same

    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    out = {}
    for kind, value in state.items():
        for rank, v in enumerate(gather_same(value, ranks) or []):
            out[_rng_key(kind, rank)] = v
    return out


def _set_rng_state(tensors: dict[str, Tensor], device: torch.device, ranks: Ranks, seed: int, step: int) -> None:
    """Restore this rank's RNG; a rank the checkpoint has no state for (more ranks now) is seeded afresh."""
    key = _rng_key("cpu", ranks.rank)
    if key not in tensors:
        if ranks.distributed:
            _seed_rank(seed, ranks.rank, step)
        return
    torch.set_rng_state(tensors[key].to(torch.uint8).cpu())
    if device.type == "cuda" and _rng_key("cuda", ranks.rank) in tensors:
        torch.cuda.set_rng_state(tensors[_rng_key("cuda", ranks.rank)].to(torch.uint8).cpu(), device)


def _seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Seed the global RNG (dropout) of rank ``rank`` of a multi-process run from ``(seed, rank, step)``."""
    words = np.random.SeedSequence([seed, rank, step, 0x5EED]).generate_state(2, np.uint32)
    torch.manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)


class _LossLog:
    """``loss.csv`` (and TensorBoard when installed); on resume, rows after the resumed step are dropped."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "seconds")

    def __init__(self, path: Path, start_step: int):
        self.path = path
        rows = []
        if start_step > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"), purge_step=start_step + 1)
        except ImportError:
            pass

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                                                      for k, v in row.items()})
        if self.tensorboard is not None:
            for key in ("loss", "lr", "grad_norm", "images_per_s"):
                self.tensorboard.add_scalar(f"train/{key}", row[key], int(row["step"]))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


#: Batches skipped in a row (``on_nan="skip"``) after which the run stops anyway.
MAX_SKIPS_IN_A_ROW = 20


def check_output_dir(out: Path, need_bytes: int) -> None:
    """Refuse, before any training, a run folder that cannot be written or lacks room for checkpoints."""
    check_writable(out, folder=True, what="run folder")
    free = shutil.disk_usage(out).free
    require(free >= need_bytes, f"{out} has {free / 2**20:.0f} MiB free but the checkpoints need about "
            f"{need_bytes / 2**20:.0f} MiB; free some space, lower --keep-last, or choose another --out")


def train(config: TrainConfig, *, data: ImageSet | np.ndarray | None = None, resume: bool | str | Path = False,
          progress: bool = True, preview: Callable[[Model, ModelSpec, int, Path], None] | None = None,
          ranks: Ranks | None = None) -> TrainResult:
    """Train ``config`` (data from ``config.data`` unless ``data`` is given); returns the EMA model.

    ``resume=True`` continues from the newest checkpoint in ``config.out`` (or
    starts afresh when there is none); a path resumes from that checkpoint.
    ``config.steps`` is the total number of optimizer steps, so resuming a
    finished run with more steps trains on. ``preview(model, spec, step, out)``
    draws the sample grids (default :func:`scorelab.training.preview.save_preview`).
    ``ranks``: this process's place in a torchrun job (default: the initialised
    process group, else one process); every rank calls ``train`` alike.
    """
    from .preview import save_preview

    if preview is None:
        def preview(m: Model, sp: ModelSpec, k: int, folder: Path) -> None:
            save_preview(m, sp, k, folder, num=config.num_preview, steps=config.preview_steps, seed=config.seed)
    ranks = current_ranks() if ranks is None else ranks
    device = rank_device(config.device, ranks)
    rows = ranks.rows(config.batch_size)                  # this rank's share of each global batch
    progress = progress and ranks.main
    if data is None:
        data = load_dataset(config.data, "train", image_size=config.image_size, labels=config.class_conditional)
    n = len(data)
    require(n >= config.batch_size, f"the dataset has {n} examples, fewer than batch_size={config.batch_size}; "
            "lower --batch-size")
    spec = make_model_spec(config, data)
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"

    torch.manual_seed(config.seed)                     # weights' initialisation and dropout
    model = spec.build().to(device)
    if ranks.distributed:                              # each rank its own dropout masks
        _seed_rank(config.seed, ranks.rank)
    net = model.net
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    fw = config.defaults
    lr, warmup = config.resolved("lr"), config.resolved("warmup")
    grad_clip, ema_decay = config.resolved("grad_clip"), config.resolved("ema_decay")
    loss_name = config.resolved("loss")
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=config.weight_decay)
    # A checkpoint holds weights, EMA and Adam's two moments; keep_last of them plus the one being written.
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    if ranks.main:
        check_output_dir(out, 4 * param_bytes * (config.keep_last + 1) + (1 << 20))
    barrier(ranks)

    start = 0
    seconds_before = 0.0                                # training time of the run before this call
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(ckpt_dir) if resume is True else Path(resume)
        if resume_from is not None and (resume_from / "checkpoints").is_dir():     # a run folder
            resume_from = latest_checkpoint(resume_from / "checkpoints")
        if resume is True and resume_from is None and progress:
            print(f"no checkpoint in {ckpt_dir} yet: starting from step 0")
    else:
        existing = latest_checkpoint(ckpt_dir)
        require(existing is None, f"{out} already holds a run (checkpoint {existing.name if existing else ''}); "
                "pass --resume to continue it, or choose another --out")
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, map_location="cpu")
        diffs = config_differences(ckpt.config.get("model"), spec.to_dict())
        if diffs:
            raise CheckpointError(f"cannot resume from {ckpt.path}: it trains another model ({'; '.join(diffs[:5])}); "
                                  f"resume with the settings in {out / 'config.json'}, or start anew in another --out")
        net.load_state_dict(ckpt.model)
        ema.load_state_dict(ckpt.ema)
        optimizer.load_state_dict(ckpt.optimizer)
        _set_rng_state(ckpt.tensors, device, ranks, config.seed, ckpt.step)
        start = ckpt.step
        seconds_before = float(ckpt.extra.get("seconds", 0.0))
        require(start <= config.steps, f"the checkpoint is at step {start}, past steps={config.steps}; "
                "raise --steps to train further")
    if ranks.distributed:
        require(all_equal(start, ranks), f"rank {ranks.rank} resumes at step {start} but not every rank does "
                f"(they see other checkpoints in {ckpt_dir}); put --out on a file system every node shares")
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # 1x1 convolutions' gradients carry arbitrary strides on size-1 dimensions, which DDP reports needlessly.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

        train_net: nn.Module = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                       else None, gradient_as_bucket_view=True)
        train_model = Model(train_net, model.process, model.target, model.condition, model.learned_variance)
    else:
        train_net, train_model = net, model
    if ranks.main:
        atomic_write(out / "config.json", json.dumps({"train": config.to_dict(), "model": spec.to_dict(),
                                                      "paper": fw.paper, "world_size": ranks.world_size},
                                                     indent=1, sort_keys=True))

    log = _LossLog(out / "loss.csv", start) if ranks.main else None
    labels_on = spec.classes is not None
    losses: list[float] = []
    window: list[float] = []
    t_start = time.perf_counter()
    t_window = t_start
    last_ckpt = resume_from
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, unit="step", dynamic_ncols=True,
                   desc=f"train {config.framework}")
    net.train()
    step = start
    skips_in_a_row = 0
    skipped = int(ckpt.extra.get("skipped_batches", 0)) if resume_from is not None else 0
    try:
        for step in range(start + 1, config.steps + 1):
            lr_now = lr * min(1.0, step / warmup) if warmup > 0 else lr
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(config.grad_accum):
                # The whole global batch's randomness, in a fixed order; this rank keeps its rows.
                gen = step_generator(config.seed, step, micro, device)
                idx = batch_indices(n, config.batch_size, config.seed, (step - 1) * config.grad_accum + micro)
                flip_gen = gen if device.type == "cpu" else step_generator(config.seed, step, micro, torch.device("cpu"))
                x0, y = take(data, idx, flip_gen, flip=config.flip, rows=rows)
                x0 = x0.to(device)
                if labels_on:
                    y = drop_labels(y.to(device), config.label_dropout, gen, share=(config.batch_size, rows))
                t = model.process.sample_train_times(config.batch_size, gen, device=device)[rows]
                noise = randn((config.batch_size,) + tuple(x0.shape[1:]), gen, device=device, dtype=x0.dtype)[rows]
                if ranks.distributed:                  # let the rest of the global batch's noise go
                    t, noise = t.clone(), noise.clone()
                last = micro == config.grad_accum - 1
                with nullcontext() if last or not ranks.distributed else train_net.no_sync():
                    with _autocast(device, config.precision):
                        local = training_loss(train_model, x0, loss_name, BatchNoise(gen, config.batch_size, rows),
                                              y if labels_on else None, t=t, noise=noise).mean()
                    loss = all_mean(local, ranks)          # the global batch's loss, the same on every rank
                    if not torch.isfinite(loss):
                        break
                    (local / config.grad_accum).backward()
                total += loss.item() / config.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip if grad_clip else math.inf)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                what = f"the loss became {loss.item()}" if not torch.isfinite(loss) else \
                    f"the gradient norm became {grad_norm.item()}"
                if config.on_nan == "stop" or skips_in_a_row + 1 >= MAX_SKIPS_IN_A_ROW:
                    raise FloatingPointError(
                        f"{what} at step {step}{f' after {skips_in_a_row} skipped batches' if skips_in_a_row else ''}"
                        f"; lower the learning rate (now {lr_now:g}) or clip gradients (--grad-clip); the last "
                        f"good checkpoint is {last_ckpt or 'none (resume starts afresh)'}")
                optimizer.zero_grad(set_to_none=True)     # skip this batch: no update, no EMA step
                skips_in_a_row += 1
                skipped += 1
                if ranks.main:
                    (bar.write if bar is not None else print)(f"step {step}: {what}; batch skipped (--on-nan skip)")
            else:
                skips_in_a_row = 0
                optimizer.step()
                update_ema(ema, net, ema_decay_at(ema_decay, step))
            if skips_in_a_row == 0:
                losses.append(total)
                window.append(total)

            if (step % config.log_every == 0 or step == config.steps) and window and log is not None:
                now = time.perf_counter()
                ips = len(window) * config.batch_size * config.grad_accum / max(now - t_window, 1e-9)
                log.write({"step": step, "loss": float(np.mean(window)), "lr": lr_now,
                           "grad_norm": float(grad_norm), "images_per_s": ips,
                           "seconds": seconds_before + now - t_start})
                if bar is not None:
                    bar.set_postfix(loss=f"{np.mean(window):.4f}", img_s=f"{ips:.0f}")
                window, t_window = [], now
            if bar is not None:
                bar.update(1)
            if step % config.checkpoint_every == 0 or step == config.steps:
                rng = _rng_state(device, ranks)                   # every rank's, gathered on rank 0
                if ranks.main:
                    last_ckpt = save_checkpoint(
                        ckpt_dir, step, model=net.state_dict(), ema=ema.state_dict(),
                        optimizer=optimizer.state_dict(), tensors=rng,
                        config={"model": spec.to_dict(), "train": config.to_dict()},
                        extra={"images_seen": step * config.batch_size * config.grad_accum,
                               "skipped_batches": skipped, "world_size": ranks.world_size,
                               "seconds": seconds_before + time.perf_counter() - t_start},
                        keep_last=config.keep_last)
                else:
                    last_ckpt = ckpt_dir / f"step-{step:08d}"       # the one rank 0 writes
            if ranks.main and (step % config.sample_every == 0 or step == config.steps):
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    preview(_eval_model(spec, ema, device), spec, step, out)   # leaves the RNG as it was
                net.train()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    if last_ckpt is None:                                        # resumed at the final step: nothing ran
        last_ckpt = resume_from
    from .plots import plot_loss_curve

    if ranks.main:
        plot_loss_curve(out / "loss.csv", out / "loss.png", title=f"{config.framework} on {config.data}")
    barrier(ranks)                                               # rank 0's checkpoint is on disk for all
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        final = _eval_model(spec, ema, device)
    return TrainResult(out, step if config.steps > start else start, Path(last_ckpt), final, spec, losses,
                       time.perf_counter() - t_start)


def _eval_model(spec: ModelSpec, weights: nn.Module, device: torch.device) -> Model:
    """A fresh Model around a copy of ``weights`` (the EMA network), in eval mode."""
    model = spec.build()
    model.net.load_state_dict(weights.state_dict())
    return model.to(device).eval()

