"""``scorelab``: the command line, a thin layer over the library.

    scorelab demo                          train on the 8x8 digits and write a report (minutes, on a CPU)
    scorelab train --framework ddpm --data digits --out runs/ddpm
    scorelab sample runs/ddpm --sampler pc --steps 500 --num-samples 64
    scorelab nll runs/ddpm --data digits --split test --method vlb
    scorelab interpolate runs/ddpm --data digits --pair 0 1
    scorelab inpaint runs/ddpm --mask center --method repaint --num-samples 4
    scorelab edit runs/ddpm --input sketch.png --t0 0.5
    scorelab train-classifier runs/ddpm && scorelab sample runs/ddpm --classifier runs/ddpm/classifier --label 3
    scorelab evaluate runs/ddpm --samplers ddim,dpm++2m --nfe 10,20,50 --num-samples 1000
    scorelab export runs/ddpm --out model.pt2
    scorelab info runs/ddpm
    torchrun --standalone --nproc-per-node 8 -m scorelab.cli train ...   (train, sample, evaluate: several processes)

Every command that draws random numbers takes ``--seed``; errors are one line that says what to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]


def check_writable(path: str, **kwargs: Any) -> Path:
    """:func:`scorelab._util.check_writable`, imported when a command runs (``--help`` stays light)."""
    from ._util import check_writable as check

    return check(path, **kwargs)


def _key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


#: Sampler and method options only the library can pass: Python functions and objects, and the randomness.
_LIBRARY_ONLY = {"callback": "a Python function", "project": "a Python function", "process": "a process object",
                 "data_range": "a check of the library's", "noise": "the randomness (set --seed)"}
#: What every command passes itself: its model, the inputs it read and their mask.
_SET_BY_COMMAND = ("model", "x", "known", "mask", "shape_or_x", "labels")


def _typed_options(args: argparse.Namespace, flags: Sequence[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` settings, refusing the ones that are flags of their own here and the ones only the
    library can pass."""
    options = _key_values(args.option, "--option")
    for name in options:
        if name in flags:
            raise ValueError(f"{name} is a flag of its own here: write --{name.replace('_', '-')} instead of "
                             f"--option {name}=...")
        if name in _SET_BY_COMMAND:
            raise ValueError(f"--option {name}: the command sets {name} itself from its run and flags")
        if name in _LIBRARY_ONLY:
            raise ValueError(f"--option {name}: the command line takes options a person can type, and {name} is "
                             f"{_LIBRARY_ONLY[name]} that only scorelab's functions take")
    return options


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields typed on the command line (flags left out are absent, not defaults)."""
    from dataclasses import fields

    from .training import TrainConfig

    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    for f in fields(TrainConfig):
        if "flag" in f.metadata and f.name in options:                  # repeatable KEY=VALUE flags
            options[f.name] = _key_values(options[f.name], f.metadata["flag"])
    return options


def _add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of ``config_class`` (a dataclass with ``help`` metadata): ``--batch-size`` for
    ``batch_size``; defaults are suppressed, so a flag is in the namespace only when typed."""
    import types
    import typing
    from dataclasses import MISSING, fields

    hints = typing.get_type_hints(config_class)
    for f in fields(config_class):
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=f.metadata.get("help", ""))
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kind = next(k for k in (typing.get_args(hint) if union else (hint,)) if k is not type(None))
        kind = typing.get_origin(kind) or kind                          # dict[str, Any] -> dict
        if kind is dict:
            kw.update(action="append", metavar="KEY=VALUE")
        elif kind is bool:
            kw.update(action=argparse.BooleanOptionalAction)
        else:
            choices = f.metadata.get("choices")
            kw.update(type=kind, choices=choices() if callable(choices) else choices)
            if default is not None:
                kw["help"] += f" (default: {default})"
        parser.add_argument(flag, **kw)


def _train(args: argparse.Namespace) -> None:
    from .distributed import session, under_torchrun
    from .training import TrainConfig, train

    given = _train_options(args)
    options = given
    if args.config:
        # The file gives the recipe; every flag typed on the command line wins.
        recipe = _read_config(args.config)
        options = {**recipe, **given}
        for key in ("network_options", "process_options", "loss_options"):  # KEY=VALUE flags add to the recipe's
            if key in given and isinstance(recipe.get(key), dict):
                options[key] = {**recipe[key], **given[key]}
    config = TrainConfig.from_dict(options)
    mode = args.resume or ("auto" if under_torchrun() else "no")
    with session(config.device, args.dist_timeout) as (ranks, _):
        result = train(config, resume={"latest": True, "no": False}.get(mode, mode), ranks=ranks)
    if ranks.main:
        print(f"trained {result.step} steps in {result.seconds:.0f} s"
              f"{f' on {ranks.world_size} processes' if ranks.distributed else ''}; checkpoint {result.checkpoint}; "
              f"loss log {result.out / 'loss.csv'}; sample grids in {result.out / 'samples'}")


def _read_config(path: str) -> dict[str, Any]:
    """A JSON training recipe: keys are TrainConfig's fields (``_comment`` keys are ignored), or a run's
    ``config.json`` (its ``train`` entry: the run's resolved options, which train it again)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist; pass a JSON file of training options") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON ({e}); fix it or pass the options as flags") from None
    if not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a JSON object of training options")
    if isinstance(d.get("train"), dict) and ("model" in d or "classifier" in d):     # a run's config.json
        d = d["train"]
    return {k: v for k, v in d.items() if not k.startswith("_")}


def _load(args: argparse.Namespace, device=None, *, any_process: bool = False):
    """The checkpoint's model; unless ``any_process``, one of continuous data (refusing categorical)."""
    from .distributed import resolve_device
    from .processes import require_kind
    from .store import load_model

    loaded = load_model(args.checkpoint, weights=args.weights, device=device or resolve_device(args.device))
    if not any_process:
        require_kind(loaded[0].process, ("sde",), f"scorelab {args.command} (Gaussian diffusion)",
                     "a categorical (multinomial or masked) diffusion model samples (scorelab sample) and gives its "
                     "bits/dim (scorelab nll)")
    return loaded


def _classifier_guided(model, spec, args: argparse.Namespace, num: int):
    """``--classifier``: the unconditional model steered by a noise-conditional classifier (MATH.md 8)."""
    import torch

    from .models import ClassifierGuidance
    from .training import load_classifier

    if args.guidance is not None:
        raise ValueError("--guidance (classifier-free) and --classifier (classifier guidance) exclude each other; pick one")
    device = next(model.parameters()).device
    classifier = load_classifier(args.classifier, device)
    if tuple(classifier.data_shape) != tuple(spec.data_shape):
        raise ValueError(f"the classifier was trained on images {tuple(classifier.data_shape)} but the model makes "
                         f"{tuple(spec.data_shape)}; train one for this model: scorelab train-classifier RUN")
    k = classifier.num_classes
    labels = (torch.tensor(args.label, device=device).repeat(num)[:num] if args.label is not None
              else torch.arange(num, device=device) % k)
    if bool(((labels < 0) | (labels >= k)).any()):
        raise ValueError(f"--label must lie in 0..{k - 1} for this classifier")
    return ClassifierGuidance(model, classifier, labels, args.classifier_scale), labels


def _guided(model, spec, labels_arg: list[int] | None, guidance: float | None, num: int):
    """The model to sample from: unconditional, one label per sample, or guided."""
    import torch

    from .models import guided

    if labels_arg is None and guidance is None:
        return model, None
    if not spec.classes:
        raise ValueError("--label/--guidance need a class-conditional model (train with --class-conditional)")
    device = next(model.parameters()).device
    labels = (torch.tensor(labels_arg, device=device).repeat(num)[:num] if labels_arg is not None
              else torch.arange(num, device=device) % len(spec.classes))
    return guided(model, labels, guidance or 0.0), labels


def _sample(args: argparse.Namespace) -> None:
    from .distributed import session

    if args.num < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    with session(args.device, args.dist_timeout) as (ranks, device):
        _sample_on(args, ranks, device)


def _sample_on(args: argparse.Namespace, ranks, device) -> None:
    """``scorelab sample`` on this rank: its chunks of samples; rank 0 gathers and writes them."""
    import numpy as np

    from .data import to_uint8
    from .imaging import save_grid
    from .models import ClipDenoised
    from .samplers import sample_many, sampler_entry
    from .training.plots import plot_points

    out = check_writable(args.out, what="sample file")         # before any work (every rank alike)
    model, spec, ckpt = _load(args, device, any_process=True)
    m, labels = (_classifier_guided(model, spec, args, args.num) if args.classifier is not None
                 else _guided(model, spec, args.label, args.guidance, args.num))
    if args.clip_denoised and len(spec.data_shape) == 3 and model.process.has_kind("affine"):   # (needs x0)
        m = ClipDenoised(m)
    options = _typed_options(args, ("steps", "sampler", "label", "guidance", "seed", "times"))
    if args.sampler is None:                                 # the framework's own: EDM's Heun, an SDE's EM, ...
        from .training import FRAMEWORKS

        framework = FRAMEWORKS.get(ckpt.config.get("train", {}).get("framework"))
        args.sampler = framework.sampler if framework is not None else "ancestral"
    entry = sampler_entry(args.sampler, model.process)
    entry.resolve(model.process, options, args.sampler)      # names it takes
    if args.times is not None:
        options["times"] = _times_for(args, entry, model, spec, ckpt)
        args.steps = None
    result = sample_many(m.select_rows, spec.data_shape, args.num, args.sampler, args.steps, seed=args.seed,
                         batch_size=args.batch_size, ranks=ranks, progress=True, **options)
    if result is None:                                       # not rank 0
        return
    x, nfe = result.samples, result.nfe
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    if len(spec.data_shape) == 1:
        np.savez(f"{stem}.npz", x=x.numpy(), **({} if labels is None else {"y": labels.cpu().numpy()}))
        plot_points(x.numpy(), f"{stem}.png", title=f"{args.sampler}, {ckpt.path.name}")
    else:
        np.savez(f"{stem}.npz", x=to_uint8(x).numpy(), **({} if labels is None else {"y": labels.cpu().numpy()}))
        nrow = int(labels.max()) + 1 if labels is not None and args.label is None else None
        save_grid(x.clamp(-1, 1), f"{stem}.png", nrow=nrow)
    print(f"{args.num} samples ({args.sampler}, {nfe} network evaluations each{_accepted(result.acceptance)}"
          f"{f', {ranks.world_size} processes' if ranks.distributed else ''}) -> {stem}.png, {stem}.npz")


def _times_for(args: argparse.Namespace, entry, model, spec, ckpt) -> list[float]:
    """``--times``: a JSON file of evaluation times, or ``searched``: the run's GITS grid of ``--steps`` times for
    this sampler (searched now and saved beside the run when it has none for this checkpoint)."""
    from .samplers.search import load_times, run_folder, searched_for_run

    if not entry.takes_times():
        raise ValueError(f"--times: the sampler {args.sampler!r} walks no evaluation grid; use one that does, e.g. "
                         "ipndm, dpm++2m, unipc, ddim")
    if args.times != "searched":
        times = load_times(args.times).times
        if args.steps is not None and args.steps != len(times):
            raise ValueError(f"--times {args.times} holds {len(times)} times, not --steps {args.steps}; "
                             "drop --steps (the file sets them)")
        return times
    if args.steps is None:
        raise ValueError("--times searched needs --steps (the number of evaluation times to search for)")
    found, new = searched_for_run(run_folder(ckpt.path), model, spec.data_shape, args.steps, args.sampler,
                                  checkpoint_step=ckpt.step, seed=args.seed)
    print(f"{'searched' if new else 'read'} the {args.sampler} grid of {args.steps} times: "
          + ", ".join(f"{t:.4f}" for t in found.times))
    return found.times


def _search_times(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .samplers.search import run_folder, save_times, search_times, times_path

    if args.steps < 1 or args.teacher_steps <= args.steps:
        raise ValueError(f"need 1 <= --steps < --teacher-steps, got {args.steps} and {args.teacher_steps}")
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    out = None if args.out is None else check_writable(args.out, what="times file")
    model, spec, ckpt = _load(args)
    found = search_times(model, args.steps, (args.batch, *spec.data_shape), sampler=args.sampler,
                         teacher_steps=args.teacher_steps, coeff=args.coeff, seed=args.seed, margin=args.margin)
    found = replace(found, extra={"checkpoint_step": ckpt.step, "seed": args.seed, "margin": args.margin})
    path = save_times(out or times_path(run_folder(ckpt.path), args.steps, args.sampler), found)
    print(f"{args.sampler} grid of {args.steps} times ({args.teacher_steps}-step iPNDM teacher on {args.batch} "
          f"draws; kept {found.chosen!r}; candidates' miss per draw / energy distance as a set: "
          + ", ".join(f"{k} {v:.4g} / {found.set_distances[k]:.3g}" for k, v in found.candidates.items()) + "): "
          + ", ".join(f"{t:.4f}" for t in found.times) + f" -> {path}\n"
          f"use it: scorelab sample {args.checkpoint} --sampler {args.sampler} --steps {args.steps} --times {path}")


def _accepted(rate: float | None) -> str:
    """The acceptance rate of a Metropolis-corrected sampler, as a command prints it."""
    return "" if rate is None else f", {rate:.1%} of Metropolis proposals accepted"


_SPLIT_HELP = "default: test, or train for folder: and array: data, which hold one split"


def _run_images(args: argparse.Namespace, ckpt, spec, command: str):
    """``--data`` (default: the data the run trained on, at its ``--image-size``) and ``--split`` as an image set
    of the model's shape, or the one-line error of data that is not."""
    from .data import ImageSet, has_test_split, load_dataset

    train = ckpt.config.get("train", {})
    args.data = args.data or train.get("data") or "digits"          # what the command reports it used
    args.split = args.split or ("test" if has_test_split(args.data) else "train")
    data = load_dataset(args.data, args.split, image_size=train.get("image_size"))
    if not isinstance(data, ImageSet):
        raise ValueError(f"{command} takes images; pick an image dataset with --data")
    if tuple(data.shape) != tuple(spec.data_shape):
        raise ValueError(f"the data's images are {data.shape} but the model takes {tuple(spec.data_shape)}")
    return data


def _nll(args: argparse.Namespace) -> None:
    import torch

    from .data import from_categories, to_categories, to_model_range, to_uint8
    from .discrete.likelihood import categorical_bits_per_dim as discrete_bits
    from .diffflow import trajectory_nll
    from .likelihood import dequantize, dequantized_bits_per_dim, ode_bits_per_dim
    from .processes import require_kind
    from .models import unconditional
    from .objectives import vlb
    from .objectives.vlb import ddpm_of

    if args.num < 1 or args.batch_size < 1:
        raise ValueError(f"--num and --batch-size must be positive integers, got {args.num} and {args.batch_size}")
    model, spec, ckpt = _load(args, any_process=True)
    if len(spec.data_shape) != 3:
        raise ValueError("bits/dim is defined for 8-bit images; use scorelab.likelihood.ode_log_likelihood for points")
    data = _run_images(args, ckpt, spec, "nll")
    images = torch.from_numpy(data.images[: args.num])
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(args.seed)
    values = []
    discrete = model.process.has_kind("categorical")
    levels = model.process.num_categories if discrete else args.levels
    if args.method is None:                            # the bound where there is a chain, else the exact ODE one
        args.method = "vlb" if discrete or model.process.has_kind("ddpm") else "ode"
    if discrete:
        if args.method != "vlb" or args.levels not in (256, levels):
            raise ValueError(f"a categorical model's bits/dim is its variational bound on its own {levels} "
                             "categories: use --method vlb and drop --levels")
    elif args.method == "vlb":
        ddpm_of(model)
    elif args.method == "trajectory":
        require_kind(model.process, ("learned",), "--method trajectory (DiffFlow's bound on its chain)",
                     "use --method ode, or vlb for a DDPM run")
    if not 2 <= levels <= 256 or (args.method in ("ode", "trajectory") and levels != 256):
        raise ValueError(f"--levels must lie in 2..256 (and stay 256 for --method ode or trajectory), got {levels}")
    for start in range(0, len(images), args.batch_size):
        x = to_model_range(images[start:start + args.batch_size]).to(device)
        if discrete:                                    # its bound on the categories (MATH.md 10)
            values.append(discrete_bits(model, to_categories(x, levels), gen).cpu())
            continue
        m = unconditional(model, len(x))
        if args.method == "vlb":                        # the data binned to `levels` grey levels (MATH.md 2)
            x = from_categories(to_categories(x, levels), levels)
            values.append(vlb(m, x, generator=gen, num_bins=levels).bits_per_dim.cpu())
        elif args.method == "trajectory":               # the chain's bound on the dequantized data (MATH.md 4, 11)
            x = dequantize(to_uint8(x), gen).to(x.dtype)
            nll = trajectory_nll(model, x, randomness=gen)
            values.append(dequantized_bits_per_dim(-nll, x[0].numel()).cpu())
        else:
            tolerance = dict(rtol=args.ode_rtol, atol=args.ode_rtol)
            values.append(ode_bits_per_dim(m, to_uint8(x), generator=gen, **tolerance)[0].cpu())
    bpd = torch.cat(values).double()
    if not bool(torch.isfinite(bpd).all()):
        raise FloatingPointError(f"bits/dim came out NaN or Inf for {int((~torch.isfinite(bpd)).sum())} of {len(bpd)} "
                                 "images: the model returns non-finite values; check the checkpoint (resume from an "
                                 "earlier one)")
    print(f"{args.method} bits/dim on {len(bpd)} {args.split} images of {args.data} ({levels} levels): "
          f"{bpd.mean():.4f} +- {bpd.std() / len(bpd) ** 0.5:.4f} (standard error)")


def _interpolate(args: argparse.Namespace) -> None:
    import torch

    from .data import to_model_range
    from .imaging import save_grid
    from .likelihood import decode, encode, slerp
    from .models import unconditional

    if args.frames < 2:
        raise ValueError(f"--frames must be at least 2 (the two images' ends), got {args.frames}")
    check_writable(args.out, what="interpolation strip")
    model, spec, ckpt = _load(args)
    data = _run_images(args, ckpt, spec, "interpolate")
    for i in args.pair:
        if not 0 <= i < len(data):
            raise ValueError(f"--pair index {i} is outside the dataset's 0..{len(data) - 1}")
    device = next(model.parameters()).device
    x = to_model_range(torch.from_numpy(data.images[list(args.pair)])).to(device)
    args.method = args.method or ("ddim" if model.process.has_kind("affine") else "ode")
    carry = dict(method=args.method, steps=args.steps, rtol=args.ode_rtol, atol=args.ode_rtol)
    z = encode(unconditional(model, 2), x, **carry)
    alphas = torch.linspace(0, 1, args.frames)
    zs = slerp(z[0:1], z[1:2], alphas).reshape((args.frames,) + tuple(x.shape[1:]))
    frames = decode(unconditional(model, args.frames), zs, **carry).clamp(-1, 1)
    path = save_grid(torch.cat([x[:1], frames.to(x.dtype), x[1:]]).cpu(), args.out, nrow=args.frames + 2)
    print(f"{args.frames} frames between images {args.pair[0]} and {args.pair[1]} ({args.method} latents) -> {path}")


def _images_of(args: argparse.Namespace, ckpt, spec, device):
    """The images a conditional command works on: ``--input`` files, else ``--images`` of ``--data``."""
    import numpy as np
    import torch

    from .data import load_image, to_model_range

    if len(spec.data_shape) != 3:
        raise ValueError(f"{args.command} works on image models; this one makes points of shape {tuple(spec.data_shape)}")
    if args.input:
        pictures = np.stack([load_image(p, spec.data_shape) for p in args.input])
    else:
        data = _run_images(args, ckpt, spec, args.command)
        for i in args.images:
            if not 0 <= i < len(data):
                raise ValueError(f"--images index {i} is outside the dataset's 0..{len(data) - 1}")
        pictures = data.images[list(args.images)]
    return to_model_range(torch.from_numpy(pictures)).to(device)


def _conditional_setup(args: argparse.Namespace):
    """Model (clipped to [-1, 1] as ``sample`` does), spec, images, options and output path for inpaint/edit."""
    from .models import ClipDenoised

    if args.num < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num}")
    out = check_writable(args.out, what="grid")
    model, spec, ckpt = _load(args)
    device = next(model.parameters()).device
    images = _images_of(args, ckpt, spec, device)
    m = ClipDenoised(model) if args.clip_denoised and model.process.has_kind("affine") else model
    options = _typed_options(args, ("steps", "sampler", "method", "t0", "mask", "seed", "batch_size"))
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    return m, spec, images, options, out


def _each(args: argparse.Namespace, images, run, desc: str):
    """``run(inputs, noise, rows)`` on ``--num-samples`` copies of each image, in chunks of ``--batch-size``; result j of
    the image at index i (of the data set, or of the ``--input`` files) is drawn from its own seed (``--seed``,
    i, j), so it depends neither on the other images nor on the batch size."""
    import numpy as np

    from .samplers import map_chunks

    ids = range(len(images)) if args.input else args.images
    seeds = [int(np.random.SeedSequence([args.seed, i, j]).generate_state(1)[0]) for i in ids for j in range(args.num)]
    batch = images.repeat_interleave(args.num, dim=0)
    return map_chunks(lambda rows, noise: run(batch[rows.start:rows.stop], noise, rows), seeds, batch_size=args.batch_size,
                      device=batch.device, progress=True, desc=desc)


def _inpaint(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from .conditional import inpaint, mask_from_spec
    from .data import to_uint8
    from .imaging import save_grid

    m, spec, images, options, out = _conditional_setup(args)
    known = mask_from_spec(args.mask, spec.data_shape, torch.Generator().manual_seed(args.seed)).to(images.device)
    k = args.num
    if args.sampler is not None:
        options["sampler"] = args.sampler
    for flag, value in (("particles", args.particles), ("proposal", args.proposal)):
        if value is not None:
            if args.method != "smc":
                raise ValueError(f"--{flag} is for --method smc, not {args.method}")
            options[flag] = value
    each = known.ndim == 4                                                 # a .npy stack: one mask per image
    if each and len(known) != len(images):
        raise ValueError(f"--mask {args.mask} holds {len(known)} masks but {len(images)} images are inpainted; "
                         "give one per image, in the order of --images/--input")
    rows_mask = known.repeat_interleave(k, dim=0) if each else known
    result = _each(args, images, lambda x, noise, rows: inpaint(
        m, x, rows_mask[rows.start:rows.stop] if each else known, method=args.method, steps=args.steps, noise=noise,
        **options), "inpaint")
    filled = result.samples.clamp(-1, 1).reshape(len(images), k, *images.shape[1:])
    shown = torch.where(known, images, torch.zeros_like(images))           # unknown pixels grey
    path = save_grid(_grid_rows([images, shown], filled.to(images)).cpu(), out, nrow=k + 2)
    evidence = {} if result.log_evidence is None else {"log_evidence": result.log_evidence.numpy()}
    np.savez(out.with_suffix(".npz"), x=to_uint8(filled.flatten(0, 1)).cpu().numpy(),
             mask=known.cpu().numpy(), original=to_uint8(images).cpu().numpy(), **evidence)
    said = "" if not evidence else f"; log p(known pixels) in the .npz, mean {float(result.log_evidence.mean()):.1f}"
    print(f"{len(images)} images x {k} inpaintings ({args.method}, mask {args.mask}, {result.nfe} network "
          f"evaluations each{_accepted(result.acceptance)}{said}) -> {path} (rows: original, masked, inpaintings), "
          f"{out.with_suffix('.npz')}")


def _edit(args: argparse.Namespace) -> None:
    import numpy as np

    from .conditional import sdedit
    from .data import to_uint8
    from .imaging import save_grid

    m, spec, images, options, out = _conditional_setup(args)
    k = args.num
    result = _each(args, images, lambda x, noise, rows: sdedit(
        m, x, args.t0, sampler=args.sampler, steps=args.steps, noise=noise, **options), "edit")
    edits = result.samples.clamp(-1, 1).reshape(len(images), k, *images.shape[1:]).to(images)
    path = save_grid(_grid_rows([images], edits).cpu(), out, nrow=k + 1)
    np.savez(out.with_suffix(".npz"), x=to_uint8(edits.flatten(0, 1)).cpu().numpy(),
             original=to_uint8(images).cpu().numpy())
    print(f"{len(images)} images x {k} SDEdit edits (t0 = {args.t0}, {args.sampler}, {result.nfe} network "
          f"evaluations each{_accepted(result.acceptance)}) -> {path} (rows: input, edits), {out.with_suffix('.npz')}")


def _grid_rows(first, rest):
    """The images of a grid row by row: row i is ``first[0][i], first[1][i], ...`` then ``rest[i, :]``."""
    import torch

    return torch.cat([f[:, None] for f in first] + [rest], 1).flatten(0, 1)


def _train_classifier(args: argparse.Namespace) -> None:
    from .distributed import resolve_device
    from .training.classifier import train_classifier

    if args.out is not None:
        check_writable(args.out, folder=True, what="classifier folder")
    result = train_classifier(args.checkpoint, data=args.data, steps=args.steps, batch_size=args.batch_size,
                              lr=args.lr, seed=args.seed, out=args.out, device=resolve_device(args.device),
                              resume=args.resume)
    acc = ", ".join(f"{k} {v:.1%}" for k, v in result.accuracy.items())
    print(f"trained a noise-conditional classifier in {result.seconds:.0f} s -> {result.path}; {result.split} accuracy "
          f"{acc}; sample with: scorelab sample {args.checkpoint} --classifier {result.path} --label 3")


def _export(args: argparse.Namespace) -> None:
    from .store import export_model

    out = check_writable(args.out, what="exported program")
    model, spec, ckpt = _load(args, any_process=True)
    path = export_model(model, spec, out)
    about = json.loads(path.with_suffix(".json").read_text())
    print(f"{ckpt.path} -> {path} (a torch.export program: ({', '.join(about['inputs'])}) -> {about['output']}; "
          f"torch.export.load('{path.name}').module() runs it), {path.with_suffix('.json')}")


def _info(args: argparse.Namespace) -> None:
    from .networks import count_parameters

    model, spec, ckpt = _load(args, any_process=True)
    train = ckpt.config.get("train", {})
    print(f"checkpoint  {ckpt.path}")
    print(f"step        {ckpt.step}  ({ckpt.extra.get('images_seen', '?')} images seen)")
    print(f"framework   {train.get('framework', '?')} on {train.get('data', '?')}")
    print(f"process     {spec.process}")
    print(f"network     {spec.network.get('kind')} with {count_parameters(model.net):,} parameters; "
          f"predicts {spec.target}, conditioned on {spec.condition or model.process.default_condition}")
    print(f"data shape  {tuple(spec.data_shape)}; classes: {spec.classes or 'none (unconditional)'}")
    print(f"weights     model{', EMA' if ckpt.ema is not None else ''}{', optimizer' if ckpt.optimizer else ''}")


def _download(args: argparse.Namespace) -> None:
    from .download import download_dataset, download_inception

    if args.dataset == "inception":
        path = download_inception(args.root, base_url=args.base_url)
        print(f"Inception-v3 FID weights are in {path}; use them with: scorelab evaluate RUN --features domain,"
              f"inception --inception-weights {path}")
        return
    folder = download_dataset(args.dataset, args.root, base_url=args.base_url)
    spec = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10"}[args.dataset]
    print(f"{args.dataset} is in {folder}; train on it with --data {spec}:{folder}")


def _csv(text: str, cast=str) -> tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise ValueError(f"expected a comma-separated list, got {text!r}") from None


def _evaluate(args: argparse.Namespace) -> None:
    from .distributed import session
    from .evaluation import EvalConfig, evaluate

    config = EvalConfig(samplers=_csv(args.samplers), nfe=_csv(args.nfe, int), num_samples=args.num_samples,
                        batch_size=args.batch_size, seed=args.seed, data=args.data, features=_csv(args.features),
                        inception_weights=args.inception_weights,
                        bpd=() if args.bpd == "none" else _csv(args.bpd), bpd_images=args.bpd_images,
                        vlb_terms=args.vlb_terms, ode_rtol=args.ode_rtol, guidance=args.guidance,
                        clip_denoised=args.clip_denoised, searched_times=args.searched_times, weights=args.weights)
    check_writable(args.out, folder=True, what="evaluation folder")
    with session(args.device, args.dist_timeout) as (ranks, device):
        result = evaluate(args.checkpoint, args.out, config, device=device, ranks=ranks)
    if result is not None:
        print(f"evaluated {len(result.metrics['rows']) - 1} cells -> {result.report}")


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows an option's default where it has one and its help does not say it (no "(default: None)",
    no "(default: )")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "") or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    check_writable(args.out, folder=True, what="demo folder")
    report = run_demo(args.out, seed=args.seed, steps=args.steps)
    print(f"demo finished in {report.seconds:.0f} s; open {report.path}")


# ---------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what was wrong, and where the help is."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _model_args(q: argparse.ArgumentParser, *, weights: bool = True, seed: bool = True) -> None:
    """The checkpoint and device, and ``--weights`` and ``--seed`` where the command uses them."""
    q.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a checkpoint folder")
    if weights:
        q.add_argument("--weights", choices=["ema", "model"], default="ema")
    else:
        q.set_defaults(weights="ema")                  # the command reads the checkpoint's EMA weights only
    q.add_argument("--device", default="auto")
    if seed:
        q.add_argument("--seed", type=int, default=0)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="train on the 8x8 digits (a few minutes on a CPU) and write a report")
    d.add_argument("--out", default="demo", help="folder for the report, pictures and checkpoint (default: demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's tuned number)")
    d.set_defaults(run=_demo)


def _add_train(sub) -> None:
    from .training import TrainConfig

    t = sub.add_parser("train", help="train a model; --framework picks its paper's defaults",
                       formatter_class=_DefaultsShown)
    _add_config_flags(t, TrainConfig)
    t.add_argument("--config", default=None, metavar="FILE.json",
                   help="a training recipe (TrainConfig's fields as JSON, e.g. configs/fashion-mnist.json); "
                   "flags given on the command line override it")
    t.add_argument("--resume", nargs="?", const="latest", default=None, choices=("latest", "auto", "no"),
                   help="continue from the newest checkpoint in --out: bare --resume (or latest) with whatever "
                   "options are given now; auto (the default under torchrun, so that a restarted elastic job goes "
                   "on) only from a checkpoint of this configuration and data, starting afresh when there is none; "
                   "no (the default otherwise) refuses a folder that holds a run")
    _add_dist_timeout(t)
    t.set_defaults(run=_train)


def _minutes(text: str) -> float:
    """``--dist-timeout``, checked by the library's own rule (:func:`scorelab.distributed.timeout`)."""
    from .distributed import timeout

    try:
        value = float(text)
        timeout(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of minutes (below a million)") from None
    return value


def _add_dist_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dist-timeout", type=_minutes, default=None, metavar="MINUTES",
                        help="under torchrun: how long a rank waits for the others at the rendezvous and at each "
                        "collective (default: $SCORELAB_DIST_TIMEOUT_MIN, else 60)")


def _add_sample(sub) -> None:
    from .samplers import SAMPLERS

    s = sub.add_parser("sample", help="draw samples: a grid PNG and an .npz",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="samplers:\n" + "\n".join(f"  {k:10s} {v}" for k, v in SAMPLERS.items()))
    _model_args(s)
    s.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                   help="default: the model's framework's (ancestral; heun for edm, em for sde)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's)")
    s.add_argument("--num-samples", "--num", dest="num", type=int, default=64,
                   help="number of samples (under torchrun write --num-samples: torchrun reads --num as its own)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--label", type=int, nargs="+", default=None, help="class label(s) to draw (cycled)")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance strength w (0: conditional; Ho & Salimans 2022)")
    s.add_argument("--classifier", default=None, metavar="DIR",
                   help="classifier guidance: a noise-conditional classifier (scorelab train-classifier RUN) "
                   "steering this unconditional model toward --label (Dhariwal & Nichol 2021)")
    s.add_argument("--classifier-scale", type=float, default=1.0,
                   help="classifier guidance scale (1: the classifier's own posterior; larger: sharper classes)")
    s.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="sampler option, e.g. corrector_steps=2, eta=0.5, rtol=1e-3 (repeatable)")
    s.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=True,
                   help="images: clip the denoised estimate to [-1, 1] at every step (Ho et al.'s code)")
    s.add_argument("--times", default=None, metavar="FILE.json|searched",
                   help="the evaluation grid: a JSON file of times (scorelab search-times), or 'searched': the run's "
                   "GITS grid of --steps times, searched now and saved in RUN/times/ when it has none")
    s.add_argument("--out", default="samples.png", help="grid PNG; the .npz goes beside it")
    _add_dist_timeout(s)
    s.set_defaults(run=_sample)


def _add_search_times(sub) -> None:
    from .samplers import REGISTRY, SAMPLERS
    from .samplers.search import MARGIN

    r = sub.add_parser("search-times", help="GITS: search the evaluation times that fit this model's trajectories "
                       "for a few-step sampler, and save them beside the run",
                       formatter_class=_DefaultsShown)
    _model_args(r)
    r.add_argument("--steps", type=int, required=True, help="evaluation times (network calls of a multistep sampler)")
    r.add_argument("--sampler", default="ipndm", choices=[n for n in SAMPLERS if REGISTRY[n].takes_times()],
                   help="the sampler that will walk the grid: each candidate grid is run with it and the nearest to "
                   "the teacher kept")
    r.add_argument("--teacher-steps", type=int, default=60, help="the iPNDM teacher's fine grid")
    r.add_argument("--batch", type=int, default=256, help="teacher trajectories")
    r.add_argument("--coeff", type=float, default=1.15, help="GITS's weight on later steps' costs")
    r.add_argument("--margin", type=float, default=MARGIN, help="how much nearer the teacher (by both measures) a "
                   "searched grid must be than the sampler's default grid to replace it")
    r.add_argument("--out", default=None, help="the JSON file (default: RUN/times/SAMPLER-STEPS.json)")
    r.set_defaults(run=_search_times)


def _add_nll(sub) -> None:
    from .data import DATASET_HELP

    n = sub.add_parser("nll", help="bits/dim on a data split, by DDPM's VLB or the probability-flow ODE")
    _model_args(n)
    n.add_argument("--data", default=None, help="images to score (default: the data the model trained on); "
                   + DATASET_HELP)
    n.add_argument("--split", choices=["train", "test"], default=None, help=_SPLIT_HELP)
    n.add_argument("--method", choices=["vlb", "ode", "trajectory"], default=None,
                   help="vlb: the variational bound (DDPM and multinomial runs, the default there); ode: the "
                   "probability-flow ODE's exact likelihood (the default for SDE runs); trajectory: DiffFlow's "
                   "bound on its backward chain's likelihood (MATH.md 11)")
    n.add_argument("--levels", type=int, default=256,
                   help="grey levels the data is counted on: DDPM's VLB decoder bins the data to this many levels "
                        "(17 for the digits as stored; default 256, 8-bit); a multinomial model uses its categories")
    n.add_argument("--num", type=int, default=256, help="number of images")
    n.add_argument("--ode-rtol", type=float, default=1e-5, help="RK45 rtol = atol of --method ode (Score SDE: 1e-5)")
    n.add_argument("--batch-size", type=int, default=128)
    n.set_defaults(run=_nll)


def _add_interpolate(sub) -> None:
    from .data import DATASET_HELP

    i = sub.add_parser("interpolate", help="encode two images, slerp the latents, decode: a strip PNG")
    _model_args(i)
    i.add_argument("--data", default=None, help="images to interpolate (default: the data the model trained on); "
                   + DATASET_HELP)
    i.add_argument("--split", choices=["train", "test"], default=None, help=_SPLIT_HELP)
    i.add_argument("--pair", type=int, nargs=2, default=[0, 1], metavar=("I", "J"), help="image indices")
    i.add_argument("--frames", type=int, default=8)
    i.add_argument("--method", choices=["ode", "ddim"], default=None,
                   help="latents by DDIM inversion (the default for affine processes) or the probability-flow ODE "
                   "(the default, and the only way, for a general SDE)")
    i.add_argument("--steps", type=int, default=100, help="DDIM inversion's steps each way (--method ddim)")
    i.add_argument("--ode-rtol", type=float, default=1e-5, help="RK45 rtol = atol of --method ode")
    i.add_argument("--out", default="interpolation.png")
    i.set_defaults(run=_interpolate)


def _add_download(sub) -> None:
    w = sub.add_parser("download", help="fetch MNIST, Fashion-MNIST or CIFAR-10 (checked against published MD5s)")
    w.add_argument("dataset", choices=["mnist", "fashion-mnist", "cifar10", "inception"],
                   help="a data set, or 'inception': pytorch-fid's Inception-v3 weights for FID")
    w.add_argument("--root", default="data", help="folder to write to")
    w.add_argument("--base-url", default=None, help="a mirror to fetch from instead of the default source")
    w.set_defaults(run=_download)


def _add_evaluate(sub) -> None:
    from .data import DATASET_HELP

    e = sub.add_parser("evaluate", help="FID, KID, precision/recall and bits/dim for each sampler and NFE budget",
                       formatter_class=_DefaultsShown)
    _model_args(e)
    e.add_argument("--data", default=None, help="reference data (default: the data set the model was trained on); "
                   + DATASET_HELP)
    e.add_argument("--samplers", default="", help="comma-separated sampler names (default: ddim,dpm++2m,ancestral, "
                   "or for a general SDE em,pc)")
    e.add_argument("--nfe", default="10,20,50,100", help="comma-separated budgets of network evaluations")
    e.add_argument("--num-samples", type=int, default=1000, help="samples per (sampler, NFE) cell")
    e.add_argument("--batch-size", type=int, default=250)
    e.add_argument("--features", default="domain",
                   help="feature spaces: domain (an in-domain classifier, offline) and/or inception")
    e.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pt_inception-2015-12-05-6726825d.pth (get it with: scorelab download inception)")
    e.add_argument("--bpd", default="vlb,ode", help="bits/dim methods on the test split: vlb, ode, or none")
    e.add_argument("--bpd-images", type=int, default=100, help="test images for bits/dim")
    e.add_argument("--vlb-terms", type=int, default=100, help="VLB middle terms sampled per image")
    e.add_argument("--ode-rtol", type=float, default=1e-5,
                   help="RK45 rtol = atol of the ODE likelihood (Score SDE: 1e-5; 1e-3 is too coarse for it)")
    e.add_argument("--guidance", type=float, default=None,
                   help="class-conditional models: guide sample k toward class k %% K with this w; "
                   "unset: unconditional samples")
    e.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the denoised estimate to [-1, 1] at every step (Ho et al.'s code, diffusers' default)")
    e.add_argument("--searched-times", action="store_true",
                   help="also each grid sampler on the run's GITS grid for each budget (SAMPLER+gits rows; searched "
                   "and saved in RUN/times/ when missing)")
    e.add_argument("--out", default="evaluation", help="folder for report.md, metrics.json, plots and samples")
    _add_dist_timeout(e)
    e.set_defaults(run=_evaluate)


def _conditional_args(q: argparse.ArgumentParser) -> None:
    from .data import DATASET_HELP

    _model_args(q)
    q.add_argument("--data", default=None, help="images to work on (default: the data the model trained on); "
                   + DATASET_HELP)
    q.add_argument("--split", choices=["train", "test"], default=None, help=_SPLIT_HELP)
    q.add_argument("--images", type=int, nargs="+", default=list(range(8)), metavar="I",
                   help="indices of the images to work on (default: the first 8)")
    q.add_argument("--input", nargs="+", default=None, metavar="FILE",
                   help="image files to work on instead (resized to the model's size)")
    q.add_argument("--num-samples", "--num", dest="num", type=int, default=4, help="results per image")
    q.add_argument("--batch-size", type=int, default=256,
                   help="inputs drawn at once (each from its own seed: the results do not depend on it)")
    q.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method or sampler option, e.g. jump_length=5, resample=3, scale=0.5 (repeatable)")
    q.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the denoised estimate to [-1, 1] at every step")


def _add_inpaint(sub) -> None:
    from .conditional import MASKS, METHODS

    from .conditional import PROPOSALS

    i = sub.add_parser("inpaint", help="fill in masked pixels with an unconditional model: replace, RePaint, DPS "
                       "or particles (SMC)")
    _conditional_args(i)
    i.add_argument("--mask", default="center", help=f"one of {', '.join(MASKS)}, a PNG (white = known), or a .npy "
                   "of 0/1 masks: one (H, W), or one per image (N, H, W)")
    i.add_argument("--method", choices=list(METHODS), default="repaint",
                   help="replace (Song et al. 2021), repaint (Lugmayr et al. 2022), dps (Chung et al. 2023) or smc "
                   "(particles: TDS, SMCDiff or MCGdiff, converging to the exact posterior)")
    i.add_argument("--particles", type=int, default=None, help="smc: particles per result (default 16)")
    i.add_argument("--proposal", choices=list(PROPOSALS), default=None,
                   help="smc: twisted (TDS, default), replace (SMCDiff) or kalman (MCGdiff)")
    i.add_argument("--sampler", default=None, help="replace: the sampler to impute in (default: ancestral)")
    i.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the method's; repaint 250 levels, dps 1000, smc 100)")
    i.add_argument("--out", default="inpaint.png", help="grid PNG; the .npz goes beside it")
    i.set_defaults(run=_inpaint)


def _add_edit(sub) -> None:
    e = sub.add_parser("edit", help="SDEdit: noise images part way and denoise them back (Meng et al. 2022)")
    _conditional_args(e)
    e.add_argument("--t0", type=float, default=0.5, help="how far to noise, in (0, 1]: small keeps detail")
    e.add_argument("--sampler", default="em", help="em or pc (reverse SDE), ancestral, or an ODE solver on a "
                   "grid: ddim, heun, dpm++2m, dpm++3m, unipc")
    e.add_argument("--steps", type=int, default=None, help="steps from t0 (default: the sampler's default times t0)")
    e.add_argument("--out", default="edit.png", help="grid PNG; the .npz goes beside it")
    e.set_defaults(run=_edit)


def _add_train_classifier(sub) -> None:
    from .data import DATASET_HELP

    c = sub.add_parser("train-classifier", help="train a noise-conditional classifier on a run's process, for "
                       "classifier guidance (sample --classifier)")
    _model_args(c, weights=False)
    c.add_argument("--data", default=None, help="labelled images (default: the data the model trained on); "
                   + DATASET_HELP)
    c.add_argument("--steps", type=int, default=2000)
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--lr", type=float, default=3e-4)
    c.add_argument("--out", default=None, help="the classifier's run folder (default: RUN/classifier)")
    c.add_argument("--resume", action="store_true", help="continue the classifier's run from its newest checkpoint")
    c.set_defaults(run=_train_classifier)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="the model as a torch.export program a serving stack runs without scorelab")
    _model_args(x, seed=False)
    x.add_argument("--out", default="model.pt2", help="the program (.pt2); what it computes goes beside it (.json)")
    x.set_defaults(run=_export)


def _add_info(sub) -> None:
    f = sub.add_parser("info", help="what a checkpoint holds")
    _model_args(f, weights=False, seed=False)
    f.set_defaults(run=_info)


#: Each command's parser, in the order ``scorelab --help`` lists them.
_COMMANDS = (_add_demo, _add_train, _add_sample, _add_search_times, _add_nll, _add_interpolate, _add_inpaint,
             _add_edit, _add_train_classifier, _add_download, _add_evaluate, _add_export, _add_info)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scorelab", description="Train, sample and evaluate diffusion models "
                                "(DDPM, NCSN, score SDEs). Start with: scorelab demo")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    return p


#: The commands that share their work over the processes of a ``torchrun`` job.
DISTRIBUTED_COMMANDS = ("train", "sample", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = _parser().parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    who = f"scorelab {args.command}" + (f" (rank {rank})" if world > 1 and rank > 0 else "")
    try:
        if world > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(f"{args.command} runs on one process; launch it without torchrun (torchrun serves "
                             f"{', '.join(DISTRIBUTED_COMMANDS)})")
        args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"{who}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{who}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
