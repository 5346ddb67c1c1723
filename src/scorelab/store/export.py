"""A trained model as a ``torch.export`` program, for a serving stack that runs without scorelab.

``export_model(model, spec, "model.pt2")`` writes the program and, beside it, ``model.json`` that says what it
computes. The program takes a batch (any size) and the process's times ``t`` (float64, ``(N,)``, on scorelab's
axis ``t in [0, 1]``: DDPM's step ``i`` is ``i / T``), and class labels ``(N,)`` for a class-conditional model
(-1: no label), and gives, by the model's parameterization:

* a score model under an affine process: the denoiser ``D(x, t) = E[x0 | x_t]``, its preconditioning included
  (EDM's ``c_skip``, ``c_out``, ``c_in``); eps is ``(x - a(t) D) / s(t)`` with the process's ``a``, ``s``
  (MATH.md 1), written into the JSON as the process's config; a DDPM model that learned its variance gives
  ``(D, v)``, ``v`` in [0, 1] the interpolation ``log var = v log beta_t + (1 - v) log beta_tilde_t`` of
  Nichol & Dhariwal (MATH.md 2);
* a score model under a general SDE: the score;
* an energy model: the energy ``U(x, t)`` per example; the score is ``-grad_x U`` (autograd through the
  loaded program's module gives it);
* a factorized categorical model: the logits of ``p(x_0 | x_t)``, shape ``(*x_t.shape, K)``, for integer states
  ``x_t`` and integer steps ``t`` (MATH.md 10).

An autoregressive categorical model draws dimension by dimension and is not exported. Load it with
``torch.export.load("model.pt2").module()``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._util import atomic_write, require
from ..models import NetworkModel
from .spec import ModelSpec

__all__ = ["export_model", "EXPORTED"]

#: What the exported program of each parameterization gives.
EXPORTED = {"score": "x0 (affine process; with a learned variance x0 and v) or score (general SDE)",
            "energy": "energy", "categorical": "x0_logits", "masked": "x0_logits"}


class _Program(nn.Module):
    """What the program computes: the model's answer, without the checks of scorelab's API."""

    def __init__(self, model: NetworkModel, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if self.output == "energy":
            return self.model.energy(x, t, labels)
        if self.output == "x0_logits":
            return self.model.logits(x, t, labels)
        prediction = self.model.predict(x, t, labels)
        if self.output == "x0, variance_frac":
            return prediction.x0, prediction.variance_frac
        return prediction.x0 if self.output == "x0" else prediction.score


def _output(model: NetworkModel) -> str:
    kind = model.parameterization
    require(kind in EXPORTED, f"a {kind} model is not exported: the program is one network's answer to a sampler "
            "(an autoregressive model calls its network once a pixel, a DiffFlow model calls two, its drift and its "
            "score); export a score model, an energy model or a factorized categorical model, or load this one "
            "with sl.load_model(RUN)")
    if kind == "score":
        if not model.process.has_kind("affine"):
            return "score"
        return "x0, variance_frac" if model.learned_variance else "x0"
    return "energy" if kind == "energy" else "x0_logits"


def _example(model: NetworkModel, spec: ModelSpec, batch: int) -> tuple[Tensor, ...]:
    """Example inputs of ``batch`` rows on the model's device: their shapes and dtypes make the program's."""
    device = next(model.parameters()).device
    shape = (batch,) + tuple(spec.data_shape)
    if model.parameterization in ("categorical", "masked"):         # states; steps, or times for masked diffusion
        x = torch.zeros(shape, dtype=torch.long, device=device)
        t = torch.ones(batch, dtype=torch.long, device=device) if model.parameterization == "categorical" else \
            torch.full((batch,), 0.5, dtype=torch.float64, device=device)
    else:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        t = torch.full((batch,), 0.5, dtype=torch.float64, device=device)
    if model.num_classes:
        return x, t, torch.zeros(batch, dtype=torch.long, device=device)
    return x, t


def export_model(model: NetworkModel, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``model`` as a ``torch.export`` program at ``path`` (``.pt2``) and what it computes beside it
    (``.json``); see the module's docstring. Any batch size runs the program."""
    output = _output(model)
    training, grads = model.training, [p.requires_grad for p in model.parameters()]
    try:                                      # traced in eval mode without gradients; the model is given back as it was
        program = _Program(model.eval(), output).requires_grad_(False)
        example = _example(model, spec, 2)
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        names = ("x", "t", "labels")[: len(example)]
        exported = torch.export.export(program, example, dynamic_shapes={n: {0: batch} for n in names},
                                       strict=False)
    finally:
        model.train(training)
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    path = atomic_write(path, buffer.getvalue())
    about: dict[str, Any] = {
        "inputs": {"x": f"(N, {', '.join(map(str, spec.data_shape))}) "
                        + ("integer states" if output == "x0_logits" else "float32, on the data's scale [-1, 1]"),
                   "t": "(N,) " + ("integer steps 1..T" if spec.parameterization == "categorical" else
                                   "float64 times in [0, 1] of the process (DDPM's step i at i / T)")},
        "output": output, "process": spec.process, "data_shape": list(spec.data_shape),
        "parameterization": spec.parameterization, "classes": spec.classes,
    }
    if model.num_classes:
        about["inputs"]["labels"] = f"(N,) integers 0..{model.num_classes - 1}, or -1 for no label"
    atomic_write(path.with_suffix(".json"), json.dumps(about, indent=1))
    return path
