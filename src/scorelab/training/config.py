"""Training configuration: one dataclass, and each framework's paper defaults (MATH.md 2-4, 7, 10).

``TrainConfig(framework="ddpm")`` trains like Ho et al. 2020; ``"ncsn"`` like
Song & Ermon 2019; ``"vp" | "subvp" | "ve"`` like Song et al. 2021; ``"edm"`` like Karras et al. 2022;
``"sde"`` a named SDE with a non-affine drift (``process_options={"drift": "double_well"}``)
by sliced score matching on simulated paths (MATH.md 7); ``"multinomial"`` categorical pixels. Fields left
``None`` take the framework's default from :data:`FRAMEWORKS`; every one can be overridden, the process
(``process``, any registered one) and the loss's options (``loss_options``) too. The config is validated
once, on creation; :meth:`TrainConfig.resolve` fills in every default, and a run saves that resolved config,
so ``scorelab train --config RUN/config.json`` trains the same run again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from .._util import check_field_types, require
from ..data import DATASET_HELP, ImageSet
from ..models import NETWORK_TARGETS
from ..networks import PRESETS, ARTransformerConfig, MLPConfig, UNetConfig
from ..objectives import OBJECTIVES, objective
from ..processes import PROCESSES, Process, kind_error, process_from_config, require_kind
from ..store import ModelSpec
from .schedule import LR_DECAYS

__all__ = ["TrainConfig", "FRAMEWORKS", "Framework", "make_process", "make_model_spec", "num_categories",
           "RESUME_MAY_CHANGE"]


@dataclass(frozen=True)
class Framework:
    """A paper's defaults: process, target, loss, optimisation, and the sampler ``scorelab sample`` uses.
    ``process`` None: the run trains for another run's model and takes its process (classifier guidance)."""

    paper: str
    process: dict[str, Any] | None
    target: str | None
    loss: str
    lr: float
    warmup: int
    grad_clip: float | None
    ema_decay: float
    embedding: str
    embedding_scale: float | None
    sampler: str = "ancestral"


#: Defaults of each framework's paper (CIFAR-10 settings; see MATH.md 2-4).
FRAMEWORKS: dict[str, Framework] = {
    # Ho et al. 2020, Appendix B: T = 1000, linear betas 1e-4..0.02, L_simple, Adam 2e-4,
    # 5000 warm-up steps, gradient clipping at 1, EMA 0.9999; the network sees the step index.
    "ddpm": Framework("Ho et al. 2020", {"name": "ddpm", "num_steps": 1000, "schedule": "linear",
                                         "beta_start": 1e-4, "beta_end": 0.02},
                      "eps", "simple", 2e-4, 5000, 1.0, 0.9999, "sinusoidal", None),
    # Song & Ermon 2019: L = 10 geometric sigmas from 1 to 0.01 for data on [0, 1], so 2 to 0.02 for
    # scorelab's [-1, 1] (the same noise relative to the data; MATH.md 1), DSM with lambda = sigma^2,
    # the network predicts the score, Adam 1e-3; EMA 0.999 as NCSNv2 (Song & Ermon 2020).
    "ncsn": Framework("Song & Ermon 2019", {"name": "ncsn", "sigma_max": 2.0, "sigma_min": 0.02, "num_scales": 10},
                      "score", "dsm", 1e-3, 0, None, 0.999, "sinusoidal", None),
    # Song et al. 2021 (DDPM++ cont.): beta in [0.1, 20], t ~ U[1e-5, 1], Adam 2e-4, 5000 warm-up,
    # clipping at 1, EMA 0.9999; the time is embedded as 1000 t (their 999 t).
    "vp": Framework("Song et al. 2021", {"name": "vp", "beta_min": 0.1, "beta_max": 20.0},
                    "eps", "dsm", 2e-4, 5000, 1.0, 0.9999, "sinusoidal", 1000.0),
    "subvp": Framework("Song et al. 2021", {"name": "subvp", "beta_min": 0.1, "beta_max": 20.0},
                       "eps", "dsm", 2e-4, 5000, 1.0, 0.9999, "sinusoidal", 1000.0),
    # Song et al. 2021 (NCSN++ cont.): sigma in [0.01, 50] for CIFAR-10 on [0, 1], so [0.02, 100] on
    # [-1, 1] (twice the largest distance between CIFAR-10 test images, 100.8, is Song & Ermon 2020's
    # sigma_max rule at work), Fourier features of log sigma, output scaled by 1 / sigma (here: the eps
    # target), EMA 0.999.
    "ve": Framework("Song et al. 2021", {"name": "ve", "sigma_min": 0.02, "sigma_max": 100.0},
                    "eps", "dsm", 2e-4, 5000, 1.0, 0.999, "fourier", 16.0),
    # A Langevin SDE with a non-affine drift (MATH.md 7; the survey's SDE section): no Gaussian kernel,
    # so the score is learned by sliced score matching (SSM-VR, Song et al. 2019) on simulated x_t;
    # the time is embedded as 1000 t as for VP. Adam 1e-3 without warm-up, as NCSN.
    "sde": Framework("Song et al. 2021, Song et al. 2019", {"name": "general", "drift": "tanh"},
                     "score", "ssm-vr", 1e-3, 0, 1.0, 0.999, "sinusoidal", 1000.0, "em"),
    # Karras et al. 2022 (EDM, CIFAR-10): the VE SDE over sigma in [0.002, 80], the preconditioned denoiser
    # and its loss (log-normal training sigmas, P_mean -1.2, P_std 1.2, sigma_data = 0.5: the edm loss's
    # options); c_noise = ln(sigma) / 4 through Fourier features (here: log sigma at scale 16 / 4); Adam 1e-3,
    # no gradient clipping, EMA half-life 0.5 Mimg at batch 512 (decay 0.999). Sample with its Heun sampler.
    "edm": Framework("Karras et al. 2022", {"name": "ve", "sigma_min": 0.002, "sigma_max": 80.0},
                     "preconditioned", "edm", 1e-3, 0, None, 0.999, "fourier", 4.0, "heun"),
    # Hoogeboom et al. 2021 (multinomial diffusion, MATH.md 10): T = 1000, the cosine schedule, the uniform
    # kernel, the variational bound; the network sees the step as DDPM's does and predicts x_0's logits;
    # optimisation as DDPM's. --transitions autoregressive takes 4 steps (Esser et al. 2021 use few).
    "multinomial": Framework("Hoogeboom et al. 2021", {"name": "multinomial", "num_steps": 1000, "schedule": "cosine",
                                                       "kernel": "uniform"},
                             None, "vlb", 2e-4, 1000, 1.0, 0.9999, "sinusoidal", None, "multinomial"),
    # Shi et al. 2024 (MD4) and Sahoo et al. 2024 (MDLM), masked diffusion in continuous time (MATH.md 13): the linear
    # schedule alpha_t = 1 - t, the weighted cross-entropy on masked pixels with low-discrepancy times, SUBS, a
    # network that is not told t (MDLM); optimisation as multinomial diffusion's, for a like-for-like comparison.
    "masked": Framework("Shi et al. 2024, Sahoo et al. 2024", {"name": "masked", "schedule": "linear"},
                        None, "masked", 2e-4, 1000, 1.0, 0.9999, "sinusoidal", None, "masked"),
    # Zhang & Chen 2021 (DiffFlow, MATH.md 11): the drift and the score are both networks, trained together by the
    # path KL (eq. 16) on N = 30 steps of t_i = (i/N)^0.9 T, T = 0.05, g = 1 (their images' settings), each
    # example's grid jittered as their code does; Adam 2e-4 for both networks (their MNIST and CIFAR-10
    # settings; their 2-D toys take 1e-2). Sample with the backward chain the loss trains.
    "diffflow": Framework("Zhang & Chen 2021", {"name": "diffflow", "num_steps": 30, "beta": 0.9, "horizon": 0.05,
                                                "g": 1.0},
                          "score", "diffflow", 2e-4, 0, 1.0, 0.999, "sinusoidal", 1000.0, "diffflow"),
    # Dhariwal & Nichol 2021 (classifier guidance, MATH.md 8): a noise-conditional classifier trained by
    # cross-entropy on the diffusion model's own x_t (scorelab train-classifier RUN); Adam 3e-4, no EMA.
    "classifier": Framework("Dhariwal & Nichol 2021", None, None, "cross-entropy", 3e-4, 0, None, 0.0,
                            "sinusoidal", None, ""),
}
#: Steps of the autoregressive variant unless --process-option num_steps=... says otherwise.
AUTOREGRESSIVE_STEPS = 4


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A field with its command-line help (``scorelab train`` generates its flags from these)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def _losses() -> tuple[str, ...]:
    """The registered losses (read when the command line is built, after every package registered its own)."""
    return tuple(sorted(OBJECTIVES))


def _processes() -> tuple[str, ...]:
    """The registered processes (read when the command line is built)."""
    return tuple(sorted(PROCESSES))


#: The TrainConfig fields a run may change when it resumes with ``resume="auto"``: where and how long it
#: runs (how long only at a constant rate: ``lr_decay`` plans its curve over ``steps``), and its bookkeeping;
#: every other field is part of what the checkpoint trained.
RESUME_MAY_CHANGE = frozenset({"out", "steps", "device", "log_every", "sample_every", "checkpoint_every",
                               "keep_last", "on_nan", "num_preview", "preview_steps"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. ``None`` means "the framework's default".

    Each field is one ``scorelab train`` flag (``--batch-size`` for ``batch_size``; the
    dictionaries are the repeatable ``--network-option`` / ``--process-option`` / ``--loss-option KEY=VALUE``).
    """

    framework: str = _opt("ddpm", "ddpm: Ho et al. 2020; ncsn: Song & Ermon 2019; vp/subvp/ve: Song et al. "
                          "2021; edm: Karras et al. 2022; sde: a non-affine SDE by sliced score matching; multinomial: "
                          "categorical pixels (Hoogeboom et al. 2021); masked: masked diffusion in continuous time "
                          "(Shi et al. 2024, Sahoo et al. 2024); diffflow: a learned forward SDE (Zhang & Chen "
                          "2021); classifier: classifier guidance's classifier "
                          "(scorelab train-classifier)", choices=tuple(sorted(FRAMEWORKS)))
    data: str = _opt("digits", DATASET_HELP)
    out: str = _opt("runs/scorelab", "run folder (checkpoints, loss.csv, samples/)")
    steps: int = _opt(10000, "total optimizer steps")
    batch_size: int = _opt(128, "global batch size")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    lr: float | None = _opt(None, "peak learning rate (default: the framework's)")
    warmup: int | None = _opt(None, "linear warm-up steps (default: the framework's)")
    lr_decay: str = _opt("none", "after the warm-up: none (constant), or cosine or linear decay to 0 at --steps",
                         choices=LR_DECAYS)
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float | None = _opt(None, "clip the gradient norm (default: the framework's; 0: none)")
    ema_decay: float | None = _opt(None, "EMA decay (default: the framework's)")
    precision: str = _opt("fp32", "bf16 = autocast", choices=("fp32", "bf16"))
    device: str = _opt("auto", "auto, cpu, cuda, cuda:1, ...")
    seed: int = _opt(0, "seed of the weights, the batches and every draw")
    # model
    network: str = _opt("auto", "auto (by image size), mlp, or a U-Net preset: cifar10 (35.7M), cifar32-small, "
                        "mnist28, digits8")
    network_options: dict[str, Any] = _opt({}, "override a network field, e.g. base_channels=64 or dropout=0.1 "
                                           "(repeatable)", flag="--network-option")
    target: str | None = _opt(None, "what the network predicts (default: the framework's)", choices=NETWORK_TARGETS)
    loss: str | None = _opt(None, "the training loss (default: the framework's)", choices=_losses)
    loss_options: dict[str, Any] = _opt({}, "set an option of the loss, e.g. gamma=3 (min-snr), projections=4 "
                                        "(ssm), step_sampling=uniform (vlb) (repeatable)", flag="--loss-option")
    parameterization: str = _opt("score", "score: the network predicts --target; energy: it gives an energy "
                                 "E = |x - net(x, t)|^2 / 2 whose gradient is eps (Salimans & Ho 2021; Du et al. "
                                 "2023), for Metropolis-corrected sampling and composition", choices=("score", "energy"))
    categories: int | None = _opt(None, "multinomial, masked: categories per pixel, evenly spaced grey levels "
                                  "(default: the digits' 17, 32 evenly spaced levels for 8-bit images; 256 keeps "
                                  "every 8-bit level at several times the memory; 2 binarizes)")
    transitions: str = _opt("factorized", "multinomial: reverse transitions factorized over pixels (Hoogeboom et "
                            "al. 2021) or autoregressive over them (Esser et al. 2021)",
                            choices=("factorized", "autoregressive"))
    process: str | None = _opt(None, "the noise process, by its registered name (default: the framework's)",
                               choices=_processes)
    process_options: dict[str, Any] = _opt({}, "override a process field, e.g. num_steps=500, sigma_max=20, "
                                           "drift=double_well (repeatable)", flag="--process-option")
    class_conditional: bool = _opt(False, "condition on labels (for guidance)")
    label_dropout: float = _opt(0.1, "probability of dropping a label")
    flip: bool = _opt(False, "random horizontal flips (not for digits or text)")
    image_size: int | None = _opt(None, "resize folder images to this square size")
    # bookkeeping
    log_every: int = _opt(10, "steps between loss.csv rows")
    sample_every: int = _opt(1000, "steps between sample grids")
    checkpoint_every: int = _opt(1000, "steps between checkpoints")
    keep_last: int = _opt(3, "checkpoints to keep")
    on_nan: str = _opt("stop", "a NaN/Inf loss or gradient: stop (naming the step and the last good checkpoint) "
                       "or skip the batch (stops anyway after 20 in a row)", choices=("stop", "skip"))
    num_preview: int = _opt(64, "images in each sample grid")
    preview_steps: int = _opt(50, "DDIM steps for the sample grids")

    def __post_init__(self) -> None:
        check_field_types(self)                               # every field's type; the checks below, its value
        require(self.framework in FRAMEWORKS, f"unknown framework {self.framework!r}; choose one of {sorted(FRAMEWORKS)}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "sample_every", "checkpoint_every",
                     "keep_last", "num_preview", "preview_steps"):
            value = getattr(self, name)
            require(value > 0, f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{name} must be a non-negative number, got {value!r}")
        require(self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}")
        require(self.warmup is None or self.warmup >= 0,
                f"warmup must be a non-negative integer, got {self.warmup!r}")
        require(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0,
                f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        require(self.on_nan in ("stop", "skip"), f"on_nan must be 'stop' or 'skip', got {self.on_nan!r}")
        require(self.lr_decay in LR_DECAYS, f"lr_decay must be one of {list(LR_DECAYS)}, got {self.lr_decay!r}")
        require(self.lr_decay == "none" or self.steps > self.resolved("warmup"),
                f"--lr-decay {self.lr_decay} decays after the warm-up, but the {self.resolved('warmup')} warm-up "
                f"steps cover all {self.steps}; give more --steps or a shorter --warmup")
        require(self.precision in ("fp32", "bf16"), f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                f"device must be 'auto', 'cpu', 'cuda[:k]' or 'mps', got {self.device!r}")
        require(self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}")
        require(self.target is None or self.target in NETWORK_TARGETS,
                f"unknown target {self.target!r}; choose one of {NETWORK_TARGETS}")
        require(0.0 <= self.label_dropout < 1.0, f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        require(self.network == "auto" or self.network in PRESETS or self.network == "mlp",
                f"unknown network {self.network!r}; choose 'auto', 'mlp' or a U-Net preset: {sorted(PRESETS)}")
        for name in ("network_options", "process_options", "loss_options"):
            object.__setattr__(self, name, dict(getattr(self, name)))
        require(self.image_size is None or self.image_size > 0,
                f"image_size must be a positive integer, got {self.image_size!r}")
        require(self.image_size is None or self.data.partition(":")[0] == "folder", f"--image-size resizes "
                f"folder: images; {self.data!r} keeps its stored size: drop --image-size")
        require(self.categories is None or 2 <= self.categories <= 256,
                f"categories must be an integer in 2..256, got {self.categories!r}")
        self.loss_settings()                                  # the loss exists and its options fit it
        if self.defaults.process is not None:                 # a classifier takes another run's process
            self._check_against(make_process(self))

    def _check_against(self, process: Process) -> None:
        """What the process's kind asks of the loss, the target and the categorical options."""
        loss, chosen = self.resolved("loss"), self.objective
        if not process.has_kind(*chosen.kinds):
            fits = [name for name, o in sorted(OBJECTIVES.items())
                    if process.has_kind(*o.kinds) and (o.labels == "target") == (chosen.labels == "target")
                    and process.has_kind("learned") == ("learned" in o.kinds)]
            frameworks = [name for name, kinds in _framework_kinds().items() if set(kinds) & set(chosen.kinds)
                          and ("learned" in kinds) == ("learned" in chosen.kinds)]
            raise kind_error(process, chosen.kinds, f"the loss {loss!r}",
                             (f"use --framework {' or '.join(frameworks)}, or " if frameworks else "use ")
                             + f"a loss for this process: --loss {' or '.join(fits)}")
        require(process.has_kind("learned") == ("learned" in chosen.kinds), "a learned forward process (DiffFlow) "
                "is trained by its path loss, which trains its drift too: use --framework diffflow with --loss "
                "diffflow" if process.has_kind("learned") else f"the loss {loss!r} trains a learned forward process: "
                "use --framework diffflow")
        if process.has_kind("learned"):
            require(self.parameterization == "score" and self.resolved("target") == "score"
                    and not self.class_conditional, "DiffFlow's networks are an unconditional drift and score: "
                    "drop --parameterization, --target and --class-conditional")
        categorical = process.has_kind("categorical")
        if categorical:
            require(self.parameterization == "score" and self.target is None, "categorical diffusion's network "
                    "predicts x_0's categories: drop --parameterization and --target")
            require(self.transitions == "factorized" or process.has_kind("multinomial"), "autoregressive "
                    "transitions are multinomial diffusion's: drop --transitions, or use --framework multinomial")
            require(not self.class_conditional or self.transitions == "factorized", "class conditioning is built "
                    "for factorized transitions (their network reads labels); drop --class-conditional, or use "
                    "--transitions factorized")
            require(self.transitions == "factorized" or not self.loss_settings().get("ce_weight"), "the "
                    "cross-entropy term needs p(x_0 | x_t), which an autoregressive transition does not give: use "
                    "--loss vlb")
        else:
            require(self.categories is None and self.transitions == "factorized",
                    "--categories and --transitions are for --framework multinomial or masked (categorical data)")
            if self.resolved("target") != "score" and self.parameterization == "score":
                require_kind(process, ("affine",), f"the {self.resolved('target')} target (a(t), s(t))",
                             "use --target score")

    @property
    def defaults(self) -> Framework:
        return FRAMEWORKS[self.framework]

    @property
    def objective(self):
        """The loss's entry of :data:`scorelab.objectives.OBJECTIVES`."""
        return objective(self.resolved("loss"))

    def loss_settings(self) -> dict[str, Any]:
        """Every option of the loss: its defaults with ``loss_options`` applied."""
        return self.objective.resolve(self.resolved("loss"), self.loss_options)

    def resolved(self, name: str) -> Any:
        """The field's value, or the framework's default when it is None."""
        value = getattr(self, name)
        return getattr(FRAMEWORKS[self.framework], name) if value is None else value

    def resolve(self, data_shape: tuple[int, ...] | None = None) -> "TrainConfig":
        """This config with every default written in: the framework's optimisation, target and loss, every
        option of the loss and of the process, the categories and, for ``data_shape``, the network preset."""
        changes: dict[str, Any] = {name: self.resolved(name) for name in ("lr", "warmup", "grad_clip", "ema_decay",
                                                                          "loss")}
        changes["loss_options"] = self.loss_settings()
        if self.defaults.process is not None:
            process = make_process(self).config()
            changes["process"] = process.pop("name")
            changes["process_options"] = process
            changes["target"] = self.resolved("target")
            if process_is_categorical(self):
                changes["categories"] = num_categories(self)
        if self.network == "auto" and data_shape is not None and len(data_shape) == 3 \
                and self.transitions == "factorized":
            changes["network"] = _auto_preset(tuple(data_shape))
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(d) - known)
        require(not unknown, f"unknown training options {unknown}; the options are {sorted(known)}")
        return TrainConfig(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)


def _framework_kinds() -> dict[str, tuple[str, ...]]:
    """Each framework's process kinds (for the error that names the frameworks a loss fits)."""
    return {name: make_process(TrainConfig(framework=name)).kinds for name, fw in sorted(FRAMEWORKS.items())
            if fw.process is not None}


def process_is_categorical(config: TrainConfig) -> bool:
    return config.defaults.process is not None and make_process(config).has_kind("categorical")


def make_process(config: TrainConfig) -> Process:
    """The run's process: ``config.process`` (default: the framework's) with ``process_options`` applied over the
    framework's settings of that process."""
    framework = config.defaults.process
    require(framework is not None or config.process is not None, f"the {config.framework} framework trains for "
            "another run's model and takes its process: scorelab train-classifier RUN")
    name = config.process or framework["name"]
    options = {k: v for k, v in (framework or {}).items() if k != "name"} if framework and name == framework["name"] \
        else {}
    options.update(config.process_options)
    if name in ("multinomial", "masked"):           # categorical data's own settings (MATH.md 10, 13)
        options.setdefault("num_categories", num_categories(config))
        if name == "multinomial" and config.transitions == "autoregressive" \
                and "num_steps" not in config.process_options:
            options["num_steps"] = AUTOREGRESSIVE_STEPS
    return process_from_config({"name": name, **options})


#: Categorical diffusion's default levels for 8-bit images: 32 evenly spaced grey levels (5 bits; rounded from the
#: 8-bit values by :func:`scorelab.data.to_categories`, not Glow's floor(x / 8), so bits/dim differ from Glow's).
#: All 256 levels make the posterior work, K values a pixel, several times larger
#: (benchmarks/results/categorical_cost.md).
EIGHT_BIT_DEFAULT_CATEGORIES = 32


def num_categories(config: TrainConfig) -> int:
    """Categorical diffusion's K: ``--categories``, else the digits' 17 grey levels, or
    :data:`EIGHT_BIT_DEFAULT_CATEGORIES` for 8-bit images."""
    from ..data import DIGITS_LEVELS

    if config.categories is not None:
        return config.categories
    return DIGITS_LEVELS + 1 if config.data == "digits" else EIGHT_BIT_DEFAULT_CATEGORIES


def _classes(config: TrainConfig, data: ImageSet | np.ndarray) -> list[str] | None:
    """The class names a class-conditional run is conditioned on (None: unconditional)."""
    if not config.class_conditional:
        return None
    require(isinstance(data, ImageSet) and data.labels is not None,
            "class conditioning needs labels: this dataset has none (for a folder, put each class in "
            "its own sub-folder)")
    num_classes = len(data.classes) if data.classes else int(data.labels.max()) + 1
    require(int(data.labels.min()) >= 0 and int(data.labels.max()) < num_classes,
            f"labels must lie in 0..{num_classes - 1} for class conditioning, got "
            f"{int(data.labels.min())}..{int(data.labels.max())}")
    return data.classes or [str(k) for k in range(num_classes)]


def _discrete_spec(config: TrainConfig, data: ImageSet | np.ndarray, process: Any) -> ModelSpec:
    """A categorical model: a U-Net from one-hot x_t to x_0's logits (multinomial diffusion's, or masked
    diffusion's, not told t; MATH.md 10, 13), or the autoregressive Transformer over the flattened pixels."""
    require(isinstance(data, ImageSet), "categorical diffusion here trains on images (categories per pixel); "
            "for point data use scorelab.discrete directly")
    shape, states = data.shape, process.num_states
    classes = _classes(config, data)
    if config.transitions == "autoregressive":
        require(config.network == "auto", "the autoregressive transitions use their Transformer: drop --network")
        try:
            network = {"kind": "ar-transformer", **ARTransformerConfig(
                **{"num_tokens": int(np.prod(shape)), "num_states": states, "encoder": "unet", "encoder_layers": 0,
                   "image_shape": tuple(shape), **config.network_options}).to_dict()}
        except TypeError as e:
            raise ValueError(f"network options {config.network_options} do not fit ARTransformerConfig: {e}") from None
        kind = "autoregressive"
    else:
        preset = _auto_preset(shape) if config.network == "auto" else config.network
        require(preset != "mlp", "categorical diffusion's factorized model is a U-Net; choose a preset")
        options = {"embedding": "sinusoidal", "embedding_scale": None, "image_size": shape[1],
                   "in_channels": shape[0] * states, "out_channels": shape[0] * process.num_categories,
                   "num_classes": len(classes) if classes else 0, **config.network_options}
        network = _unet(preset, options, config.network_options)
        kind = "masked" if process.has_kind("masked") else "categorical"
    return ModelSpec(network=network, process=process.config(), target="x_prev" if kind == "autoregressive" else "x0",
                     condition="none" if kind == "masked" else "index", data_shape=tuple(shape), classes=classes,
                     parameterization=kind)


def _unet(preset: str, options: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The U-Net denoiser's network spec: the preset with ``options``; refused if its blocks cannot see t."""
    try:
        unet = UNetConfig.preset(preset, **options)
    except TypeError as e:
        raise ValueError(f"network options {given} do not fit UNetConfig: {e}") from None
    unet.require_conditioning()
    return {"kind": "unet", **unet.to_dict()}


def _auto_preset(shape: tuple[int, ...]) -> str:
    by_shape = {(1, 8, 8): "digits8", (1, 28, 28): "mnist28", (3, 32, 32): "cifar32-small"}
    require(shape in by_shape, f"no default network for images of shape {shape}; choose --network "
            f"from {sorted(PRESETS)} and set image_size/in_channels, or resize the data")
    return by_shape[shape]


def make_model_spec(config: TrainConfig, data: ImageSet | np.ndarray) -> ModelSpec:
    """The model a run trains: network (sized to the data), process, target and condition."""
    fw = config.defaults
    process = make_process(config)
    if process.has_kind("categorical"):
        return _discrete_spec(config, data, process)
    settings = config.loss_settings()
    learned_variance = config.objective.learned_variance
    if "max_dims" in settings:                          # exact score matching: one backward pass per dimension
        dims = int(np.prod(data.shape)) if isinstance(data, ImageSet) else int(np.asarray(data).shape[1])
        require(dims <= settings["max_dims"], f"exact score matching (--loss sm) takes one backward pass per "
                f"dimension and the data has {dims}; use --loss ssm-vr")
    classes = _classes(config, data)
    num_classes = len(classes) if classes else 0
    embedding = {"embedding": fw.embedding, "embedding_scale": fw.embedding_scale}
    if isinstance(data, ImageSet):
        require(config.network != "mlp", "the MLP is for point data; use a U-Net preset for images")
        shape = data.shape
        preset = _auto_preset(shape) if config.network == "auto" else config.network
        options = {**embedding, "learned_variance": learned_variance, "num_classes": num_classes,
                   "image_size": shape[1], "in_channels": shape[0], **config.network_options}
        require(shape[1] == shape[2], f"images must be square for the U-Net, got {shape[1]}x{shape[2]}; "
                "resize them (image_size)")
        network = _unet(preset, options, config.network_options)
    else:
        require(config.network in ("auto", "mlp"), "point data trains an MLP; use --network mlp (or auto)")
        require(not learned_variance, "the hybrid loss is for images; use 'simple' or 'dsm' on points")
        shape = (int(np.asarray(data).shape[1]),)
        try:
            network = {"kind": "mlp", **MLPConfig(**{"dim": shape[0], **embedding, "num_classes": num_classes,
                                                     **config.network_options}).to_dict()}
        except TypeError as e:
            raise ValueError(f"network options {config.network_options} do not fit MLPConfig: {e}") from None
    parameterization = config.parameterization
    if process.has_kind("learned"):                     # DiffFlow: a drift network beside the score's (MATH.md 11)
        network = {"kind": "diffflow", "drift": network, "score": network}
        parameterization = "diffflow"
    if config.parameterization == "energy":
        require_kind(process, ("affine",), "an energy model (s(t) scales its energy)", "use --parameterization score")
        require(config.target is None, "with --parameterization energy the network gives an energy (its gradient "
                "is eps); drop --target")
        require(config.resolved("target") != "preconditioned", "an energy model has no preconditioning (EDM's "
                "c_skip, c_out and c_in): train it with --framework ve or vp, or --framework edm with "
                "--parameterization score")
        require(not learned_variance, "an energy model has a fixed variance: drop --loss hybrid, or use "
                "--parameterization score")
    return ModelSpec(network=network, process=process.config(),
                     target="eps" if config.parameterization == "energy" else config.resolved("target"),
                     condition=process.default_condition, learned_variance=learned_variance,
                     data_shape=tuple(shape), classes=classes, parameterization=parameterization,
                     sigma_data=settings.get("sigma_data", 0.5))


