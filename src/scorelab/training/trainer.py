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
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._util import BatchNoise, Randomness, atomic_write, check_writable, randn, require
from ..checkpoints import CheckpointError, config_differences, latest_checkpoint, load_checkpoint, save_checkpoint
from ..data import ImageSet, load_dataset, take, to_categories
from ..discrete.losses import StepImportance, multinomial_loss
from ..distributed import Ranks, all_equal, all_gather_same, all_mean, barrier, rank_device, resolve_device
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


def _multinomial(ce_weight: float):
    """Multinomial diffusion's bound on the batch's grey levels as categories (MATH.md 10), D3PM's lambda = 0.001;
    with ``importance`` (a :class:`StepImportance`) its steps are importance-sampled instead of the given ``t``."""
    return lambda m, x0, gen, t, noise, importance=None: multinomial_loss(
        m, to_categories(x0, m.process.num_categories), t=None if importance is not None else t, noise=gen,
        ce_weight=ce_weight, importance=importance)


#: Each training loss by name: ``(model, x0, randomness, t, noise) -> per-example loss`` (MATH.md 2-4, 7).
LOSS_FUNCTIONS = {
    "simple": lambda m, x0, gen, t, noise: simple_loss(m, x0, t=t, noise=noise, generator=gen),
    "dsm": _dsm("s2"),
    "dsm-likelihood": _dsm("g2"),
    "min-snr": _dsm("min-snr"),
    "edm": _dsm("edm"),
    "hybrid": lambda m, x0, gen, t, noise: hybrid_loss(m, x0, t=t, noise=noise, generator=gen),
    "sm": lambda m, x0, gen, t, noise: score_matching_loss(m, x0, t=t, noise=noise, generator=gen,
                                                           reduction="mean"),
    "ssm": _sliced(False),
    "ssm-vr": _sliced(True),
    "vlb": _multinomial(0.0),
    "vlb-ce": _multinomial(0.001),
}


def training_loss(model: Model, x0: Tensor, loss: str, generator: Randomness = None,
                  labels: Tensor | None = None, *, t: Tensor | None = None, noise: Tensor | None = None,
                  importance: StepImportance | None = None) -> Tensor:
    """The per-example loss of one batch (MATH.md 2-4, 7), averaged over dimensions.

    ``"simple"``: L_simple (Ho et al. eq. 14); ``"dsm"``: denoising score matching
    with lambda = s^2; ``"dsm-likelihood"``: with lambda = g^2; ``"min-snr"``: Min-SNR-5; ``"hybrid"``:
    L_simple + 0.001 L_vlb (Nichol & Dhariwal); ``"sm"``, ``"ssm"``, ``"ssm-vr"``:
    exact and sliced score matching (one Rademacher projection) on ``x_t ~ p_t``,
    weighted by ``lambda(t)`` (s^2, or 1 - exp(-int g^2) on a general SDE). ``labels`` condition
    a class-conditional model (-1: no label). ``t`` and ``noise`` (drawn from
    ``generator`` when not given) are the times and ``eps`` of the batch; a general
    SDE has no eps and simulates ``x_t`` from ``generator`` instead. ``"vlb"``, ``"vlb-ce"``: multinomial
    diffusion's bound (MATH.md 10), its steps drawn by ``importance`` when given (which learns from the batch).
    """
    require(loss in LOSS_FUNCTIONS, f"unknown loss {loss!r}; choose one of {sorted(LOSS_FUNCTIONS)}")
    m = model if labels is None else Conditional(model, labels)
    extra = {} if importance is None else {"importance": importance}
    return LOSS_FUNCTIONS[loss](m, x0, generator, t, noise if model.process.affine else None, **extra)


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


@dataclass
class _Run:
    """A training run's state: what :func:`train`'s named steps share (EDM's loop, written as functions)."""

    config: TrainConfig
    ranks: Ranks
    device: torch.device
    data: ImageSet | np.ndarray
    spec: ModelSpec
    model: Model
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    preview: Callable[[Model, ModelSpec, int, Path], None]
    importance: StepImportance | None = None              # multinomial diffusion's step history (checkpointed)
    train_model: Model | None = None                      # the model the loss sees (DDP-wrapped on ranks)
    start: int = 0                                        # the step this call resumes from
    seconds_before: float = 0.0                           # training time of the run before this call
    resume_from: Path | None = None
    last_ckpt: Path | None = None
    skipped: int = 0                                      # batches skipped over the whole run
    skips_in_a_row: int = 0
    losses: list[float] = field(default_factory=list)     # the loss of every step this call ran
    window: list[float] = field(default_factory=list)     # losses since the last loss.csv row
    t_start: float = field(default_factory=time.perf_counter)
    t_window: float = 0.0
    log: _LossLog | None = None
    bar: Any = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def rows(self) -> slice:
        return self.ranks.rows(self.config.batch_size)   # this rank's share of each global batch

    @property
    def net(self) -> nn.Module:
        return self.model.net


def _build(config: TrainConfig, data: ImageSet | np.ndarray | None, ranks: Ranks, preview) -> _Run:
    """Data, model (seeded), EMA copy and optimizer; the run folder checked for room before any work."""
    device = rank_device(config.device, ranks)
    ranks.rows(config.batch_size)                         # refuses a batch that does not split over the ranks
    if data is None:
        data = load_dataset(config.data, "train", image_size=config.image_size, labels=config.class_conditional)
    require(len(data) >= config.batch_size, f"the dataset has {len(data)} examples, fewer than "
            f"batch_size={config.batch_size}; lower --batch-size")
    spec = make_model_spec(config, data)
    torch.manual_seed(config.seed)                        # weights' initialisation and dropout
    model = spec.build().to(device)
    if ranks.distributed:                                 # each rank its own dropout masks
        _seed_rank(config.seed, ranks.rank)
    ema = copy.deepcopy(model.net).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=config.resolved("lr"), weight_decay=config.weight_decay)
    # A checkpoint holds weights, EMA and Adam's two moments; keep_last of them plus the one being written.
    param_bytes = sum(p.numel() * p.element_size() for p in model.net.parameters())
    if ranks.main:
        check_output_dir(Path(config.out), 4 * param_bytes * (config.keep_last + 1) + (1 << 20))
    barrier(ranks)
    importance = None
    if getattr(model.process, "discrete", False) and config.step_sampling == "importance":
        importance = StepImportance(model.process.num_steps)          # on the CPU, updated deterministically
        importance.deferred = True                                    # applied once per step, from all ranks
    return _Run(config, ranks, device, data, spec, model, ema, optimizer, preview, importance)


def _resume(run: _Run, resume: bool | str | Path, progress: bool) -> None:
    """Continue from the newest checkpoint (or the one named): weights, EMA, optimizer, every rank's RNG."""
    ckpt_dir = run.out / "checkpoints"
    if not resume:
        existing = latest_checkpoint(ckpt_dir)
        require(existing is None, f"{run.out} already holds a run (checkpoint {existing.name if existing else ''}); "
                "pass --resume to continue it, or choose another --out")
        return
    resume_from = latest_checkpoint(ckpt_dir) if resume is True else Path(resume)
    if resume_from is not None and (resume_from / "checkpoints").is_dir():     # a run folder
        resume_from = latest_checkpoint(resume_from / "checkpoints")
    if resume_from is None:
        if resume is True and progress:
            print(f"no checkpoint in {ckpt_dir} yet: starting from step 0")
        return
    ckpt = load_checkpoint(resume_from, map_location="cpu")
    diffs = config_differences(ckpt.config.get("model"), run.spec.to_dict())
    if diffs:
        raise CheckpointError(f"cannot resume from {ckpt.path}: it trains another model ({'; '.join(diffs[:5])}); "
                              f"resume with the settings in {run.out / 'config.json'}, or start anew in another --out")
    run.net.load_state_dict(ckpt.model)
    run.ema.load_state_dict(ckpt.ema)
    run.optimizer.load_state_dict(ckpt.optimizer)
    _set_rng_state(ckpt.tensors, run.device, run.ranks, run.config.seed, ckpt.step)
    if run.importance is not None:
        run.importance.load_state_dict({k[len(_IMPORTANCE):]: v for k, v in ckpt.tensors.items()
                                        if k.startswith(_IMPORTANCE)})
    run.start, run.resume_from, run.last_ckpt = ckpt.step, resume_from, resume_from
    run.seconds_before = float(ckpt.extra.get("seconds", 0.0))
    run.skipped = int(ckpt.extra.get("skipped_batches", 0))
    require(run.start <= run.config.steps, f"the checkpoint is at step {run.start}, past "
            f"steps={run.config.steps}; raise --steps to train further")


def _distribute(run: _Run) -> None:
    """On several ranks: agree on the resumed step and wrap the network in DistributedDataParallel."""
    run.train_model = run.model
    if not run.ranks.distributed:
        return
    require(all_equal(run.start, run.ranks), f"rank {run.ranks.rank} resumes at step {run.start} but not every "
            f"rank does (they see other checkpoints in {run.out / 'checkpoints'}); put --out on a file system "
            "every node shares")
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # 1x1 convolutions' gradients carry arbitrary strides on size-1 dimensions, which DDP reports needlessly.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device, m = run.device, run.model
    ddp = DistributedDataParallel(m.net, device_ids=[device.index] if device.type == "cuda" else None,
                                  gradient_as_bucket_view=True)
    run.train_model = run.spec.wrap(ddp, m.process)


def _micro_batch_loss(run: _Run, step: int, micro: int) -> Tensor:
    """This rank's mean loss on its rows of micro-batch ``micro`` of ``step``: the whole global batch's
    randomness is drawn in a fixed order from ``(seed, step, micro)`` and this rank keeps its rows."""
    config, device, rows = run.config, run.device, run.rows
    gen = step_generator(config.seed, step, micro, device)
    idx = batch_indices(len(run.data), config.batch_size, config.seed, (step - 1) * config.grad_accum + micro)
    flip_gen = gen if device.type == "cpu" else step_generator(config.seed, step, micro, torch.device("cpu"))
    x0, y = take(run.data, idx, flip_gen, flip=config.flip, rows=rows)
    x0 = x0.to(device)
    labels_on = run.spec.classes is not None
    if labels_on:
        y = drop_labels(y.to(device), config.label_dropout, gen, share=(config.batch_size, rows))
    t = run.model.process.sample_train_times(config.batch_size, gen, device=device)[rows]
    noise = randn((config.batch_size,) + tuple(x0.shape[1:]), gen, device=device, dtype=x0.dtype)[rows]
    if run.ranks.distributed:                             # let the rest of the global batch's noise go
        t, noise = t.clone(), noise.clone()
    with _autocast(device, config.precision):
        return training_loss(run.train_model, x0, config.resolved("loss"), BatchNoise(gen, config.batch_size, rows),
                             y if labels_on else None, t=t, noise=noise, importance=run.importance).mean()


def _gradients(run: _Run, step: int) -> tuple[float, Tensor, Tensor]:
    """Accumulate the step's gradients over its micro-batches; returns (mean loss, last loss, gradient norm).
    The loss is all-reduced, so every rank sees the same non-finite value and takes the same branch."""
    config, ranks = run.config, run.ranks
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(config.grad_accum):
        last = micro == config.grad_accum - 1
        with nullcontext() if last or not ranks.distributed else run.train_model.net.no_sync():
            local = _micro_batch_loss(run, step, micro)
            loss = all_mean(local, ranks)                 # the global batch's loss, the same on every rank
            if not torch.isfinite(loss):
                break
            (local / config.grad_accum).backward()
        total += loss.item() / config.grad_accum
    grad_clip = config.resolved("grad_clip")
    grad_norm = torch.nn.utils.clip_grad_norm_(run.net.parameters(), grad_clip if grad_clip else math.inf)
    return total, loss, grad_norm


def _update(run: _Run, step: int, lr: float, total: float, loss: Tensor, grad_norm: Tensor) -> None:
    """An optimizer and EMA step, or with a non-finite loss or gradient: stop, or skip the batch (--on-nan)."""
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
        run.skips_in_a_row = 0
        run.optimizer.step()
        update_ema(run.ema, run.net, ema_decay_at(run.config.resolved("ema_decay"), step))
        run.losses.append(total)
        run.window.append(total)
        return
    what = f"the loss became {loss.item()}" if not torch.isfinite(loss) else \
        f"the gradient norm became {grad_norm.item()}"
    if run.config.on_nan == "stop" or run.skips_in_a_row + 1 >= MAX_SKIPS_IN_A_ROW:
        skips = f" after {run.skips_in_a_row} skipped batches" if run.skips_in_a_row else ""
        raise FloatingPointError(f"{what} at step {step}{skips}; lower the learning rate (now {lr:g}) or clip "
                                 f"gradients (--grad-clip); the last good checkpoint is "
                                 f"{run.last_ckpt or 'none (resume starts afresh)'}")
    run.optimizer.zero_grad(set_to_none=True)             # skip this batch: no update, no EMA step
    run.skips_in_a_row += 1
    run.skipped += 1
    if run.ranks.main:
        (run.bar.write if run.bar is not None else print)(f"step {step}: {what}; batch skipped (--on-nan skip)")


def _log(run: _Run, step: int, lr: float, grad_norm: Tensor) -> None:
    """A loss.csv row (mean loss since the last, images/s) every ``log_every`` steps and at the end."""
    config = run.config
    if (step % config.log_every == 0 or step == config.steps) and run.window and run.log is not None:
        now = time.perf_counter()
        ips = len(run.window) * config.batch_size * config.grad_accum / max(now - run.t_window, 1e-9)
        run.log.write({"step": step, "loss": float(np.mean(run.window)), "lr": lr, "grad_norm": float(grad_norm),
                       "images_per_s": ips, "seconds": run.seconds_before + now - run.t_start})
        if run.bar is not None:
            run.bar.set_postfix(loss=f"{np.mean(run.window):.4f}", img_s=f"{ips:.0f}")
        run.window, run.t_window = [], now
    if run.bar is not None:
        run.bar.update(1)


_IMPORTANCE = "step_importance."


def _importance_tensors(run: _Run) -> dict[str, Tensor]:
    """Multinomial diffusion's step history, saved beside the RNG states (rank 0's)."""
    if run.importance is None:
        return {}
    return {_IMPORTANCE + k: v for k, v in run.importance.state_dict().items()}


def _checkpoint_and_preview(run: _Run, step: int) -> None:
    """Every ``checkpoint_every`` steps (and at the end) a checkpoint with every rank's RNG, written by rank 0;
    every ``sample_every`` steps a preview grid, drawn without touching the training RNG."""
    config, ranks, device = run.config, run.ranks, run.device
    if step % config.checkpoint_every == 0 or step == config.steps:
        rng = _rng_state(device, ranks)                   # every rank's, gathered on rank 0
        if ranks.main:
            run.last_ckpt = save_checkpoint(
                run.out / "checkpoints", step, model=run.net.state_dict(), ema=run.ema.state_dict(),
                optimizer=run.optimizer.state_dict(), tensors={**rng, **_importance_tensors(run)},
                config={"model": run.spec.to_dict(), "train": config.to_dict()},
                extra={"images_seen": step * config.batch_size * config.grad_accum, "skipped_batches": run.skipped,
                       "world_size": ranks.world_size, "seconds": run.seconds_before + time.perf_counter() - run.t_start},
                keep_last=config.keep_last)
        else:
            run.last_ckpt = run.out / "checkpoints" / f"step-{step:08d}"     # the one rank 0 writes
    if ranks.main and (step % config.sample_every == 0 or step == config.steps):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            run.preview(_eval_model(run.spec, run.ema, device), run.spec, step, run.out)  # leaves the RNG as it was
        run.net.train()


def _open_logs(run: _Run, progress: bool) -> None:
    """config.json, loss.csv (rows past the resumed step dropped) and the progress bar, on rank 0."""
    config = run.config
    if not run.ranks.main:
        return
    atomic_write(run.out / "config.json", json.dumps({"train": config.to_dict(), "model": run.spec.to_dict(),
                                                      "paper": config.defaults.paper,
                                                      "world_size": run.ranks.world_size}, indent=1, sort_keys=True))
    run.log = _LossLog(run.out / "loss.csv", run.start)
    if progress:
        from tqdm.auto import tqdm

        run.bar = tqdm(total=config.steps, initial=run.start, unit="step", dynamic_ncols=True,
                       desc=f"train {config.framework}")


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
    from .plots import plot_loss_curve
    from .preview import save_preview

    if preview is None:
        def preview(m: Model, sp: ModelSpec, k: int, folder: Path) -> None:
            save_preview(m, sp, k, folder, num=config.num_preview, steps=config.preview_steps, seed=config.seed)
    ranks = current_ranks() if ranks is None else ranks
    progress = progress and ranks.main
    run = _build(config, data, ranks, preview)
    _resume(run, resume, progress)
    _distribute(run)
    _open_logs(run, progress)
    lr, warmup = config.resolved("lr"), config.resolved("warmup")
    run.t_start = run.t_window = time.perf_counter()
    run.net.train()
    step = run.start
    try:
        for step in range(run.start + 1, config.steps + 1):
            lr_now = lr * min(1.0, step / warmup) if warmup > 0 else lr
            for group in run.optimizer.param_groups:
                group["lr"] = lr_now
            total, loss, grad_norm = _gradients(run, step)
            if run.importance is not None:                  # the whole global batch's terms, on every rank
                t, term = run.importance.take_pending()
                run.importance.update(all_gather_same(t, ranks), all_gather_same(term, ranks))
            _update(run, step, lr_now, total, loss, grad_norm)
            _log(run, step, lr_now, grad_norm)
            _checkpoint_and_preview(run, step)
    finally:
        if run.bar is not None:
            run.bar.close()
        if run.log is not None:
            run.log.close()
    if ranks.main:
        plot_loss_curve(run.out / "loss.csv", run.out / "loss.png", title=f"{config.framework} on {config.data}")
    barrier(ranks)                                               # rank 0's checkpoint is on disk for all
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        final = _eval_model(run.spec, run.ema, run.device)
    return TrainResult(run.out, step if config.steps > run.start else run.start, Path(run.last_ckpt), final,
                       run.spec, run.losses, time.perf_counter() - run.t_start)


def _eval_model(spec: ModelSpec, weights: nn.Module, device: torch.device) -> Model:
    """A fresh Model around a copy of ``weights`` (the EMA network), in eval mode."""
    model = spec.build()
    model.net.load_state_dict(weights.state_dict())
    return model.to(device).eval()

