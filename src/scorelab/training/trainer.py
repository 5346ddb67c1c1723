"""The training loop: AdamW with warm-up, clipping, EMA, bf16, accumulation, exact resume.

The math of one step is :func:`training_loss` (an objective of :mod:`scorelab.objectives`,
by name, on a batch); :func:`train` runs the loop around it and holds no table of losses. A run's folder holds

    config.json               the resolved TrainConfig (every default written in) and the model it trains
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
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .._util import BackgroundWriter, atomic_write, check_writable, progress_bar, require
from ..data import ImageSet, load_dataset, take
from ..distributed import Ranks, all_equal, all_gather_same, all_mean, barrier, rank_device, resolve_device
from ..distributed import current as current_ranks
from ..models import Conditional, DiffusionModel, drop_labels
from ..noise import BatchNoise, Randomness, normal
from ..objectives import Objective, ObjectiveState, objective
from ..processes import require_kind
from ..store import (CheckpointError, ModelSpec, checkpoint_step, config_differences, latest_checkpoint,
                     load_checkpoint, save_checkpoint)
from .config import TrainConfig, make_model_spec
from .ema import ema_decay_at, update_ema
from .schedule import learning_rate

__all__ = ["train", "training_loss", "TrainResult", "Spec", "resolve_device", "step_generator", "batch_indices"]


class Spec(Protocol):
    """What the trainer asks of a model description (:class:`~scorelab.store.ModelSpec`, a classifier's
    :class:`~scorelab.training.classifier.ClassifierSpec`): it builds the model (a ``net`` and its
    ``process``), wraps a (DDP) network, and is saved, as JSON, under its ``kind``."""

    kind: ClassVar[str]
    classes: list[str] | None
    data_shape: tuple[int, ...]

    def build(self) -> Any: ...

    def wrap(self, net: nn.Module, process: Any = None) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...


#: ``preview(model, spec, step, ranks)``: the samples of a step's grid, drawn on every rank and returned on rank 0
#: (None: no grid); the trainer hands them to rank 0's writer.
Preview = Callable[[Any, Spec, int, Ranks], Tensor | None]


def _cpu_copy(obj: Any) -> Any:
    """A copy of a (nested) state dict with every tensor copied to the CPU: what the writer saves while the
    optimizer moves on."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run leaves behind."""

    out: Path
    step: int
    checkpoint: Path
    model: Any              # the EMA weights, in eval mode
    spec: Spec
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


def training_loss(model: DiffusionModel, x0: Tensor, loss: str, randomness: Randomness = None,
                  labels: Tensor | None = None, *, t: Tensor | None = None, noise: Tensor | None = None,
                  state: ObjectiveState | None = None, loss_options: dict[str, Any] | None = None) -> Tensor:
    """The per-example loss of one batch (MATH.md 2-4, 7, 8, 10), averaged over dimensions: the objective
    ``loss`` of :data:`scorelab.objectives.OBJECTIVES` with ``loss_options`` over its defaults.

    ``t`` and ``noise`` (drawn from ``randomness`` when not given) are the times and ``eps`` of the batch; a
    general SDE has no eps and its objectives simulate ``x_t`` from ``randomness`` instead. ``labels``
    condition a class-conditional model (-1: no label), or are what the objective predicts (a classifier's).
    ``state`` is what the objective keeps over a run (multinomial diffusion's step history).
    """
    chosen = objective(loss)
    return _objective_loss(chosen, chosen.resolve(loss, loss_options or {}), model, x0, randomness, labels, t, noise,
                           state)


def _objective_loss(chosen: Objective, options: dict[str, Any], model: DiffusionModel, x0: Tensor,
                    randomness: Randomness, labels: Tensor | None, t: Tensor | None, noise: Tensor | None,
                    state: ObjectiveState | None) -> Tensor:
    if chosen.labels == "condition" and labels is not None:
        model, labels = Conditional(model, labels), None
    return chosen.loss(model, x0, t=t, noise=noise, randomness=randomness, labels=labels, state=state, **options)


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
    spec: Spec
    model: Any                                            # a model with its ``net`` and ``process``
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    preview: Preview
    objective: Objective
    options: dict[str, Any]                               # every option of the objective
    state: ObjectiveState | None = None                   # what the objective keeps over the run (checkpointed)
    train_model: Any = None                               # the model the loss sees (DDP-wrapped on ranks)
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
    writer: BackgroundWriter | None = None                         # rank 0's background file writes

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def rows(self) -> slice:
        return self.ranks.rows(self.config.batch_size)   # this rank's share of each global batch

    @property
    def net(self) -> nn.Module:
        return self.model.net


def _build(config: TrainConfig, data: ImageSet | np.ndarray | None, ranks: Ranks, preview: Preview,
           spec: Spec | None) -> _Run:
    """Data, model (seeded), EMA copy and optimizer; the run folder checked for room before any work."""
    device = rank_device(config.device, ranks)
    ranks.rows(config.batch_size)                         # refuses a batch that does not split over the ranks
    chosen, options = config.objective, config.loss_settings()
    if data is None:
        data = load_dataset(config.data, "train", image_size=config.image_size,
                            labels=config.class_conditional or chosen.labels == "target")
    require(len(data) >= config.batch_size, f"the dataset has {len(data)} examples, fewer than "
            f"batch_size={config.batch_size}; lower --batch-size")
    spec = make_model_spec(config, data) if spec is None else spec
    config = config.resolve(tuple(spec.data_shape))      # every default written in: config.json says it all
    torch.manual_seed(config.seed)                        # weights' initialisation and dropout
    model = spec.build().to(device)
    require_kind(model.process, chosen.kinds, f"the loss {config.resolved('loss')!r}")
    if ranks.distributed:                                 # each rank its own dropout masks
        _seed_rank(config.seed, ranks.rank)
    ema = copy.deepcopy(model.net).requires_grad_(False).eval()
    # foreach: one kernel per step for all tensors (torch picks it only on GPUs), the same arithmetic bit for bit
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=config.resolved("lr"), weight_decay=config.weight_decay,
                                  foreach=True)
    # A checkpoint holds weights, EMA and Adam's two moments; keep_last of them plus the one being written.
    param_bytes = sum(p.numel() * p.element_size() for p in model.net.parameters())
    if ranks.main:
        check_output_dir(Path(config.out), 4 * param_bytes * (config.keep_last + 1) + (1 << 20))
    barrier(ranks)
    state = chosen.state(model.process, **options) if chosen.state is not None else None
    if state is not None:
        state.deferred = True                             # applied once per step, from all ranks
    return _Run(config, ranks, device, data, spec, model, ema, optimizer, preview, chosen, options, state)


def data_position(n: int, config: TrainConfig, step: int) -> dict[str, int]:
    """Where the data stream stands after ``step`` optimizer steps: the order of epoch e is the permutation seeded
    by ``(seed, e)`` of the ``n`` examples (:func:`batch_indices`), and the next micro-batch is the ``batch``-th of
    that epoch. Saved in every checkpoint; a resumed run recomputes the same position from its step, and
    ``resume="auto"`` refuses data of another size (whose permutations differ)."""
    epoch, batch = divmod(step * config.grad_accum, n // config.batch_size)
    return {"examples": n, "seed": config.seed, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
            "epoch": epoch, "batch": batch}


def _check_same_run(run: _Run, ckpt: Any) -> None:
    """``resume="auto"``: the checkpoint must be this configuration's (bookkeeping and ``steps`` may change) and
    its data the same examples, or the resumed run would not continue the one that stopped."""
    from .config import RESUME_MAY_CHANGE

    may_change = RESUME_MAY_CHANGE - ({"steps"} if run.config.lr_decay != "none" else set())
    # A field the checkpoint lacks is newer than it: its default is what that run did (a new option defaults
    # to the behaviour from before it).
    saved = {**TrainConfig().to_dict(), **ckpt.config.get("train", {})}
    saved = json.loads(json.dumps({k: v for k, v in saved.items() if k not in may_change}))
    now = json.loads(json.dumps({k: v for k, v in run.config.to_dict().items() if k not in may_change}))
    # (as JSON, as the checkpoint has it: a tuple option is the list it was saved as)
    diffs = config_differences(saved, now)
    if diffs:
        raise CheckpointError(f"--resume auto: {ckpt.path} belongs to another configuration ({'; '.join(diffs[:3])}); "
                              f"train with the settings in {run.out / 'config.json'}, pass --resume to continue "
                              "with the new ones, or choose another --out")
    position = ckpt.extra.get("data")
    if position is not None and position["examples"] != len(run.data):
        raise CheckpointError(f"--resume auto: {ckpt.path} was trained on {position['examples']} examples but "
                              f"{run.config.data!r} has {len(run.data)} now, so the resumed batches would not be the "
                              "ones that run would see; restore its data, pass --resume to go on anyway, or choose "
                              "another --out")


def _clear_interrupted_writes(ckpt_dir: Path) -> None:
    """Rank 0 removes what killed writers left (``.tmp-*``, ``.old-*`` folders): never loaded, only taking room."""
    if ckpt_dir.is_dir():
        for stale in [*ckpt_dir.glob(".tmp-step-*"), *ckpt_dir.glob(".old-step-*")]:
            shutil.rmtree(stale, ignore_errors=True)


def _resume(run: _Run, resume: bool | str | Path, progress: bool) -> None:
    """Continue from the newest checkpoint (or the one named): weights, EMA, optimizer, every rank's RNG.
    ``"auto"`` is ``True`` that refuses another configuration's checkpoint."""
    ckpt_dir = run.out / "checkpoints"
    if run.ranks.main:
        _clear_interrupted_writes(ckpt_dir)
    newest = latest_checkpoint(ckpt_dir)
    if not resume:
        require(newest is None, f"{run.out} already holds a run (checkpoint {newest.name if newest else ''}); "
                "pass --resume to continue it, or choose another --out")
        return
    auto = resume == "auto"
    resume_from = newest if resume is True or auto else Path(resume)
    if resume_from is not None and (resume_from / "checkpoints").is_dir():     # a run folder
        resume_from = latest_checkpoint(resume_from / "checkpoints")
    if resume_from is None:
        if resume is True and progress:
            print(f"no checkpoint in {ckpt_dir} yet: starting from step 0")
        return
    ckpt = load_checkpoint(resume_from, map_location="cpu")
    if auto:
        _check_same_run(run, ckpt)
    saved = ckpt.config.get(run.spec.kind)
    diffs = config_differences(ModelSpec.from_dict(saved).to_dict() if run.spec.kind == "model" and saved else saved,
                               run.spec.to_dict())
    if diffs:
        raise CheckpointError(f"cannot resume from {ckpt.path}: it trains another model ({'; '.join(diffs[:5])}); "
                              f"resume with the settings in {run.out / 'config.json'}, or start anew in another --out")
    if newest is not None and checkpoint_step(newest) > ckpt.step:        # only a checkpoint named by its path
        raise ValueError(f"{ckpt_dir} holds checkpoints after step {ckpt.step} ({newest.name}): going on from "
                         f"{ckpt.path} would prune the steps it writes in favour of those; move them out of the "
                         "folder, or resume in another --out")
    run.net.load_state_dict(ckpt.model)
    run.ema.load_state_dict(ckpt.ema)
    run.optimizer.load_state_dict(ckpt.optimizer)
    _set_rng_state(ckpt.tensors, run.device, run.ranks, run.config.seed, ckpt.step)
    if run.state is not None:
        try:
            run.state.load_state_dict({k[len(_STATE):]: v for k, v in ckpt.tensors.items() if k.startswith(_STATE)})
        except RuntimeError:
            raise CheckpointError(f"{ckpt.path} holds no state of the loss {run.config.resolved('loss')!r} with "
                                  f"these options (it was trained with other --loss-option settings); resume with "
                                  f"the settings in {run.out / 'config.json'}") from None
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
    labels = None
    if run.objective.labels == "target":                  # what the model predicts (a classifier's classes)
        labels = y.to(device)
    elif run.spec.classes is not None:                    # conditioning, dropped for guidance
        labels = drop_labels(y.to(device), config.label_dropout, gen, share=(config.batch_size, rows))
    t = run.objective.draw_times(run.model.process, config.batch_size, gen, device, run.options)[rows]
    noise = normal((config.batch_size,) + tuple(x0.shape[1:]), gen, device=device, dtype=x0.dtype)[rows]
    if run.ranks.distributed:                             # let the rest of the global batch's noise go
        t, noise = t.clone(), noise.clone()
    with _autocast(device, config.precision):
        return _objective_loss(run.objective, run.options, run.train_model, x0, BatchNoise(gen, config.batch_size, rows),
                               labels, t, noise, run.state).mean()


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
            run.bar.set_postfix(loss=f"{np.mean(run.window):.4f}", img_s=f"{ips:.0f}", refresh=False)
        run.window, run.t_window = [], now
    if run.bar is not None:
        run.bar.update(1)


_STATE = "objective_state."


def _state_tensors(run: _Run) -> dict[str, Tensor]:
    """What the objective keeps over the run (multinomial diffusion's step history), saved beside the RNG
    states (rank 0's)."""
    if run.state is None:
        return {}
    return {_STATE + k: v for k, v in run.state.state_dict().items()}


def _checkpoint_and_preview(run: _Run, step: int) -> None:
    """Every ``checkpoint_every`` steps (and at the end) a checkpoint with every rank's RNG and the data position;
    every ``sample_every`` steps a preview grid, drawn by every rank without touching the training RNG. Rank 0
    copies the state and hands the files to its background writer."""
    config, ranks, device = run.config, run.ranks, run.device
    if step % config.checkpoint_every == 0 or step == config.steps:
        rng = _rng_state(device, ranks)                   # every rank's, gathered on rank 0
        if run.writer is not None:                        # rank 0
            run.writer.make_room()
            run.writer.submit(
                save_checkpoint, run.out / "checkpoints", step, model=_cpu_copy(run.net.state_dict()),
                ema=_cpu_copy(run.ema.state_dict()), optimizer=_cpu_copy(run.optimizer.state_dict()),
                tensors={**rng, **_cpu_copy(_state_tensors(run))},
                config={run.spec.kind: run.spec.to_dict(), "train": config.to_dict()},
                extra={"images_seen": step * config.batch_size * config.grad_accum, "skipped_batches": run.skipped,
                       "world_size": ranks.world_size, "data": data_position(len(run.data), config, step),
                       "seconds": run.seconds_before + time.perf_counter() - run.t_start},
                keep_last=config.keep_last, holds_state=True)
        run.last_ckpt = run.out / "checkpoints" / f"step-{step:08d}"
    if step % config.sample_every == 0 or step == config.steps:
        from .preview import save_preview

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x = run.preview(_eval_model(run.spec, run.ema, device), run.spec, step, ranks)  # leaves the RNG as it was
        run.net.train()
        if run.writer is not None and x is not None:      # rank 0
            run.writer.submit(save_preview, x, run.spec, step, run.out)


def _open_logs(run: _Run, progress: bool) -> None:
    """config.json, loss.csv (rows past the resumed step dropped) and the progress bar, on rank 0."""
    config = run.config
    if not run.ranks.main:
        return
    run.writer = BackgroundWriter()
    atomic_write(run.out / "config.json", json.dumps({"train": config.to_dict(), run.spec.kind: run.spec.to_dict(),
                                                      "paper": config.defaults.paper,
                                                      "world_size": run.ranks.world_size}, indent=1, sort_keys=True))
    run.log = _LossLog(run.out / "loss.csv", run.start)
    if progress:
        run.bar = progress_bar(total=config.steps, initial=run.start, unit="step", dynamic_ncols=True,
                       desc=f"train {config.framework}")


def train(config: TrainConfig, *, data: ImageSet | np.ndarray | None = None, resume: bool | str | Path = False,
          progress: bool = True, preview: Preview | None = None, ranks: Ranks | None = None,
          spec: Spec | None = None) -> TrainResult:
    """Train ``config`` (data from ``config.data`` unless ``data`` is given); returns the EMA model.

    The model is the one ``config`` describes (:func:`~scorelab.training.make_model_spec`) unless ``spec`` is
    given (a classifier's, for another run's process). The run's folder records ``config`` resolved
    (:meth:`TrainConfig.resolve`), so training it again from its ``config.json`` gives the same run.
    ``resume=True`` continues from the newest checkpoint in ``config.out`` (or
    starts afresh when there is none); a path resumes from that checkpoint.
    ``config.steps`` is the total number of optimizer steps, so resuming a
    finished run with more steps trains on. ``resume="auto"`` is ``True``
    that refuses a checkpoint of another configuration or data (what a restarted elastic job needs).
    ``preview(model, spec, step, ranks)`` draws the samples of the grids on every rank (default
    :func:`scorelab.training.preview.draw_preview`); rank 0 writes them.
    ``ranks``: this process's place in a distributed job (default: the existing process group, whoever made it,
    else one process); every rank calls ``train`` alike. Rank 0's files are written on a background thread, so
    no rank waits for its disk: ``train`` returns on rank 0 once they are written, on the others after the last
    collective (the ``checkpoint`` they return is the one rank 0 writes, perhaps still being written).
    """
    from .plots import plot_loss_curve
    from .preview import draw_preview

    if preview is None:
        def preview(m: Any, sp: Spec, k: int, r: Ranks) -> Tensor | None:
            return draw_preview(m, sp, num=config.num_preview, steps=config.preview_steps, seed=config.seed, ranks=r)
    ranks = current_ranks() if ranks is None else ranks
    progress = progress and ranks.main
    run = _build(config, data, ranks, preview, spec)
    config = run.config
    _resume(run, resume, progress)
    _distribute(run)
    _open_logs(run, progress)
    lr, warmup = config.resolved("lr"), config.resolved("warmup")
    run.t_start = run.t_window = time.perf_counter()
    run.net.train()
    step = run.start
    try:
        for step in range(run.start + 1, config.steps + 1):
            lr_now = learning_rate(step, lr, warmup, config.steps, config.lr_decay)
            for group in run.optimizer.param_groups:
                group["lr"] = lr_now
            total, loss, grad_norm = _gradients(run, step)
            if run.state is not None:                       # the whole global batch's terms, on every rank
                t, term = run.state.take_pending()
                run.state.update(all_gather_same(t, ranks), all_gather_same(term, ranks))
            _update(run, step, lr_now, total, loss, grad_norm)
            _log(run, step, lr_now, grad_norm)
            _checkpoint_and_preview(run, step)
        barrier(ranks)             # every collective done on every rank; rank 0's last files are written after it
    finally:
        if run.bar is not None:
            run.bar.close()
        if run.log is not None:
            run.log.close()
        if run.writer is not None:                               # rank 0's files written
            run.writer.close(raise_errors=sys.exc_info()[0] is None)  # (a write error never hides the first one)
    if ranks.main:
        plot_loss_curve(run.out / "loss.csv", run.out / "loss.png", title=f"{config.framework} on {config.data}")
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        final = _eval_model(run.spec, run.ema, run.device)
    return TrainResult(run.out, step if config.steps > run.start else run.start, Path(run.last_ckpt), final,
                       run.spec, run.losses, time.perf_counter() - run.t_start)


def _eval_model(spec: Spec, weights: nn.Module, device: torch.device) -> Any:
    """A fresh model around a copy of ``weights`` (the EMA network), in eval mode."""
    model = spec.build()
    model.net.load_state_dict(weights.state_dict())
    return model.to(device).eval()

