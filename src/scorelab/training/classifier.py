"""Noise-conditional classifiers for classifier guidance (Dhariwal & Nichol 2021; MATH.md 8).

A classifier ``p_phi(y | x_t, t)`` is trained by cross-entropy on data corrupted by the *model's own*
process, ``x_t = a(t) x0 + s(t) eps`` at the model's training times, and told the noise level the way
the model is (its ``condition``: DDPM's index, VP's ``t``, VE's ``log sigma``). Its gradient then
steers that model's samplers (:class:`scorelab.guidance.ClassifierGuidance`).

``train_classifier(RUN)`` reads the run's checkpoint for the process, condition, image shape and
training data, and writes ``RUN/classifier/step-*/`` (safetensors + JSON, atomically).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import TimeLike, as_time, expand_as, require
from ..checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from ..data import ImageSet, batches, load_dataset, take
from ..networks import EncoderClassifier, UNetConfig
from ..process_config import process_from_config
from ..processes import SDE

__all__ = ["ClassifierSpec", "NoiseClassifier", "train_classifier", "load_classifier", "ClassifierResult",
           "ACCURACY_TIMES"]

#: The times at which a trained classifier's test accuracy is reported.
ACCURACY_TIMES = (0.0, 0.25, 0.5, 0.75)


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything but the weights: network, process, noise condition, image shape and class names."""

    network: dict[str, Any]
    num_classes: int
    process: dict[str, Any]
    condition: str
    data_shape: tuple[int, ...]
    classes: list[str] | None = field(default=None)

    def build(self) -> "NoiseClassifier":
        net = EncoderClassifier(UNetConfig(**self.network), self.num_classes)
        return NoiseClassifier(net, process_from_config(self.process), self.condition, self.classes,
                               self.data_shape)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "data_shape": list(self.data_shape)}


class NoiseClassifier(nn.Module):
    """``classifier(x, t) -> (N, K)`` logits of ``p(y | x_t)`` under ``process``, told the noise level as
    ``condition``."""

    def __init__(self, net: EncoderClassifier, process: SDE, condition: str, classes: list[str] | None = None,
                 data_shape: tuple[int, ...] = ()):
        super().__init__()
        self.net, self.process, self.condition, self.classes = net, process, condition, classes
        self.num_classes, self.data_shape = net.num_classes, tuple(data_shape)

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        t = as_time(t, x)
        return self.net(x, self.process.noise_condition(self.condition, t).to(x.dtype))


@dataclass(frozen=True)
class ClassifierResult:
    path: Path
    accuracy: dict[str, float]          # test accuracy at each time of ACCURACY_TIMES (key: f"t={t}")
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
        a, s = process.coefficients(as_time(t, x0))
        eps = torch.randn(x0.shape, generator=generator).to(device)
        with torch.no_grad():
            logits = classifier(expand_as(a, x0) * x0 + expand_as(s, x0) * eps, as_time(t, x0))
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(idx)


def train_classifier(run: str | Path, *, data: str | None = None, steps: int = 2000, batch_size: int = 128,
                     lr: float = 3e-4, seed: int = 0, out: str | Path | None = None,
                     device: str | torch.device = "cpu", progress: bool = True) -> ClassifierResult:
    """Train a noise-conditional classifier on the process of the model saved in ``run`` (MATH.md 8).

    ``data``: a labelled image set (default: the one the run trained on). Writes ``out`` (default
    ``RUN/classifier``) and returns its path and the test accuracy at :data:`ACCURACY_TIMES`.
    """
    import time

    from tqdm.auto import tqdm

    from ..modelspec import load_model, require_gaussian

    require(isinstance(steps, int) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    require(isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be a positive integer, got {batch_size!r}")
    require(lr > 0 and math.isfinite(lr), f"lr must be a positive number, got {lr}")
    _, spec, ckpt = load_model(run, device="cpu")
    require_gaussian(spec, "scorelab train-classifier")
    data = data or ckpt.config.get("train", {}).get("data")
    require(data is not None, f"{run} does not say what data it trained on; pass data=")
    train_set, test_set = load_dataset(data, "train"), load_dataset(data, "test")
    require(isinstance(train_set, ImageSet) and train_set.labels is not None,
            f"a classifier needs labelled images, and {data} has none")
    require(tuple(train_set.shape) == tuple(spec.data_shape), f"the data's images are {train_set.shape} but the "
            f"model takes {tuple(spec.data_shape)}; train the classifier on the model's own data")
    num_classes = int(train_set.labels.max()) + 1
    cspec = ClassifierSpec(_network_config(spec.network).to_dict(), num_classes, spec.process,
                           spec.condition or process_from_config(spec.process).default_condition,
                           tuple(spec.data_shape), train_set.classes or spec.classes)
    torch.manual_seed(seed)
    device = torch.device(device)
    classifier = cspec.build().to(device)
    process = classifier.process
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    stream = batches(train_set, batch_size, gen, with_labels=True)
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), unit="step", dynamic_ncols=True, disable=not progress, desc="classifier")
    classifier.train()
    for step in bar:
        x0, y = next(stream)
        x0, y = x0.to(device), y.to(device)
        t = process.sample_train_times(len(x0), gen).to(device)
        a, s = process.coefficients(t)
        x_t = expand_as(a, x0) * x0 + expand_as(s, x0) * torch.randn(x0.shape, generator=gen).to(device)
        loss = F.cross_entropy(classifier(x_t, t), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the classifier's loss is {loss.item()} at step {step}; lower lr (now {lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    classifier.eval()
    eval_gen = torch.Generator().manual_seed(seed + 1)
    accuracy = {f"t={t}": _accuracy(classifier, test_set, t, eval_gen, device) for t in ACCURACY_TIMES}
    folder = Path(out) if out is not None else Path(ckpt.path).parent.parent / "classifier"
    path = save_checkpoint(folder, steps, model={k: v.detach().cpu() for k, v in classifier.net.state_dict().items()},
                           config={"classifier": cspec.to_dict(), "model_checkpoint": str(ckpt.path),
                                   "train": {"data": data, "steps": steps, "batch_size": batch_size, "lr": lr,
                                             "seed": seed}},
                           extra={"accuracy": accuracy}, keep_last=1)
    return ClassifierResult(path, accuracy, time.perf_counter() - start)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> NoiseClassifier:
    """The classifier saved at ``path`` (a ``train_classifier`` folder or one of its checkpoints), in eval mode."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if "classifier" not in ckpt.config:
        raise CheckpointError(f"{ckpt.path} holds no classifier; make one with: scorelab train-classifier RUN")
    d = dict(ckpt.config["classifier"])
    spec = ClassifierSpec(**{**d, "data_shape": tuple(d["data_shape"])})
    classifier = spec.build()
    try:
        classifier.net.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {ckpt.path} do not fit the classifier it describes: "
                              f"{str(e).splitlines()[0]}") from None
    return classifier.to(device).eval().requires_grad_(False)      # guidance differentiates in x only
