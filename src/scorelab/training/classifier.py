"""Noise-conditional classifiers for classifier guidance (Dhariwal & Nichol 2021; MATH.md 8).

A classifier ``p_phi(y | x_t, t)`` is trained by cross-entropy on data corrupted by the *model's own*
process, ``x_t = a(t) x0 + s(t) eps`` at the model's training times, and told the noise level the way
the model is (its ``condition``: DDPM's index, VP's ``t``, VE's ``log sigma``). Its gradient then
steers that model's samplers (:class:`scorelab.models.ClassifierGuidance`).

``train_classifier(RUN)`` reads the run's checkpoint for the process, condition, image shape and training
data, and trains the classifier with the same trainer as every model (the ``classifier`` framework and the
``cross-entropy`` objective): ``RUN/classifier/`` is a run folder of its own, with its resolved
``config.json``, checkpoints (resumable), ``loss.csv`` and ``accuracy.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._util import TimeLike, as_time, atomic_write, require
from ..data import ImageSet, has_test_split, load_dataset, take
from ..networks import EncoderClassifier, UNetConfig
from ..objectives import OBJECTIVES
from ..processes import Process, process_from_config, require_kind
from ..store import CheckpointError, load_checkpoint, load_model

__all__ = ["ClassifierSpec", "NoiseClassifier", "train_classifier", "load_classifier", "ClassifierResult",
           "ACCURACY_TIMES"]

#: The times at which a trained classifier's test accuracy is reported.
ACCURACY_TIMES = (0.0, 0.25, 0.5, 0.75)


class NoiseClassifier(nn.Module):
    """``classifier(x, t) -> (N, K)`` logits of ``p(y | x_t)`` under ``process``, told the noise level as
    ``condition`` (the :class:`~scorelab.models.Classifier` protocol)."""

    def __init__(self, net: nn.Module, process: Process, condition: str, classes: list[str] | None = None,
                 data_shape: tuple[int, ...] = (), num_classes: int | None = None):
        super().__init__()
        self.net, self.process, self.condition, self.classes = net, process, condition, classes
        self.num_classes = num_classes if num_classes is not None else net.num_classes
        self.data_shape = tuple(data_shape)

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        t = as_time(t, x)
        return self.net(x, self.process.noise_condition(self.condition, t).to(x.dtype))


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything but the weights: network, process, noise condition, image shape and class names."""

    network: dict[str, Any]
    num_classes: int
    process: dict[str, Any]
    condition: str
    data_shape: tuple[int, ...]
    classes: list[str] | None = field(default=None)
    #: The key it is saved under in a checkpoint's config.
    kind: ClassVar[str] = "classifier"

    def build(self) -> NoiseClassifier:
        return self.wrap(EncoderClassifier(UNetConfig(**self.network), self.num_classes))

    def wrap(self, net: nn.Module, process: Process | None = None) -> NoiseClassifier:
        """The classifier around ``net`` (a built network, or DDP around one)."""
        process = process_from_config(self.process) if process is None else process
        return NoiseClassifier(net, process, self.condition, self.classes, self.data_shape, self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "data_shape": list(self.data_shape)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ClassifierSpec":
        try:
            return ClassifierSpec(**{**d, "data_shape": tuple(d["data_shape"])})
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"the checkpoint's classifier description is not one this scorelab reads: {e}") \
                from None


@dataclass(frozen=True)
class ClassifierResult:
    path: Path                          # the classifier's run folder
    accuracy: dict[str, float]          # accuracy at each time of ACCURACY_TIMES (key: f"t={t}")
    split: str                          # the images it was measured on: "test", or "train" for data without one
    seconds: float


def _network_config(model_network: dict[str, Any]) -> UNetConfig:
    """The classifier's trunk: the model's U-Net down path, unconditional, without dropout."""
    require(model_network.get("kind") == "unet", "classifier guidance is for image models (a U-Net); "
            "for points use an exact or hand-made classifier(x, t) with scorelab.ClassifierGuidance")
    cfg = {k: v for k, v in model_network.items() if k != "kind"}
    return replace(UNetConfig(**cfg), num_classes=0, learned_variance=False, dropout=0.0)


def _accuracy(classifier: NoiseClassifier, data: ImageSet, t: float, generator: torch.Generator,
              device: torch.device, num: int = 1000, batch_size: int = 250) -> float:
    """Test accuracy on ``num`` images corrupted to time ``t`` (``t = 0``: the least noise trained on)."""
    process = classifier.process
    t = max(t, process.train_t_min)
    idx = torch.arange(min(num, len(data))).numpy()
    correct = 0
    for start in range(0, len(idx), batch_size):
        x0, y = take(data, idx[start:start + batch_size])
        x0, y = x0.to(device), y.to(device)
        with torch.no_grad():
            x_t = process.sample_marginal(x0, as_time(t, x0), generator)          # closed form, or simulated
            logits = classifier(x_t, as_time(t, x0))
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(idx)


def train_classifier(run: str | Path, *, data: str | None = None, steps: int = 2000, batch_size: int = 128,
                     lr: float = 3e-4, seed: int = 0, out: str | Path | None = None,
                     device: str | torch.device = "cpu", progress: bool = True,
                     resume: bool = False) -> ClassifierResult:
    """Train a noise-conditional classifier on the process of the model saved in ``run`` (MATH.md 8).

    ``data``: a labelled image set (default: the one the run trained on). Writes the run folder ``out``
    (default ``RUN/classifier``; ``resume`` continues it) and returns it with the accuracy at
    :data:`ACCURACY_TIMES` (also in its ``accuracy.json``), on the test split, or on the training images for data
    that has none (a folder, an array file).
    """
    import time

    from .config import TrainConfig
    from .trainer import train

    start = time.perf_counter()
    _, spec, ckpt = load_model(run, device="cpu")
    process = process_from_config(spec.process)
    require_kind(process, OBJECTIVES["cross-entropy"].kinds, "classifier guidance (a classifier of noisy x_t)",
                 "train the model itself with --class-conditional and sample with --label and --guidance "
                 "(classifier-free guidance)")
    require(not process.has_kind("learned"), "classifier guidance trains a classifier on the x_t of a fixed forward "
            "process, and DiffFlow's is learned (its x_t follow its drift network); guide a model of an affine "
            "process (--framework ddpm, vp, ...) instead")
    base = ckpt.config.get("train", {})
    data = data or base.get("data")
    require(data is not None, f"{run} does not say what data it trained on; pass data=")
    image_size = base.get("image_size") if data.partition(":")[0] == "folder" else None   # only folders resize
    train_set = load_dataset(data, "train", image_size=image_size, labels=True)
    split = "test" if has_test_split(data) else "train"
    test_set = load_dataset(data, "test", image_size=image_size, labels=True) if split == "test" else train_set
    require(isinstance(train_set, ImageSet) and train_set.labels is not None,
            f"a classifier needs labelled images, and {data} has none")
    require(tuple(train_set.shape) == tuple(spec.data_shape), f"the data's images are {train_set.shape} but the "
            f"model takes {tuple(spec.data_shape)}; train the classifier on the model's own data")
    num_classes = int(train_set.labels.max()) + 1
    cspec = ClassifierSpec(_network_config(spec.network).to_dict(), num_classes, spec.process,
                           spec.condition or process.default_condition, tuple(spec.data_shape),
                           train_set.classes or spec.classes or [str(k) for k in range(num_classes)])
    folder = Path(out) if out is not None else Path(ckpt.path).parent.parent / "classifier"
    config = TrainConfig(framework="classifier", data=data, out=str(folder), steps=steps, batch_size=batch_size,
                         lr=lr, seed=seed, device=str(device), image_size=image_size, label_dropout=0.0,
                         log_every=min(50, steps), sample_every=steps, checkpoint_every=steps, keep_last=1)
    result = train(config, data=train_set, resume=resume, progress=progress, preview=lambda *args: None,
                   spec=cspec)
    classifier: NoiseClassifier = result.model
    eval_gen = torch.Generator().manual_seed(seed + 1)
    device = torch.device(device)
    accuracy = {f"t={t}": _accuracy(classifier, test_set, t, eval_gen, device) for t in ACCURACY_TIMES}
    atomic_write(folder / "accuracy.json", json.dumps({"model_checkpoint": str(ckpt.path), "split": split,
                                                       "accuracy": accuracy}, indent=1))
    return ClassifierResult(folder, accuracy, split, time.perf_counter() - start)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> NoiseClassifier:
    """The classifier saved at ``path`` (its run folder or one of its checkpoints), in eval mode, its EMA
    weights."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if "classifier" not in ckpt.config:
        raise CheckpointError(f"{ckpt.path} holds no classifier; make one with: scorelab train-classifier RUN")
    classifier = ClassifierSpec.from_dict(ckpt.config["classifier"]).build()
    try:
        classifier.net.load_state_dict(ckpt.ema if ckpt.ema is not None else ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {ckpt.path} do not fit the classifier it describes: "
                              f"{str(e).splitlines()[0]}") from None
    return classifier.to(device).eval().requires_grad_(False)      # guidance differentiates in x only
