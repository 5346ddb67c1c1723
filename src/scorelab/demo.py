"""``scorelab demo``: train a class-conditional diffusion model on the 8x8 digits and report, in a few CPU minutes.

What it writes to ``out/``:

* ``samples_dpm++2m.png``, ``samples_ancestral.png``, ``samples_pc.png``,
  ``samples_ode.png``: one network, four samplers (DPM-Solver++(2M), the demo's
  choice; DDPM ancestral on respaced steps; predictor-corrector on the VP SDE;
  the probability-flow ODE with RK45), one row per class, each sample asked for
  its row's digit; ``samples_unconditional.png`` without labels;
  ``samples_*.npz`` the same samples as uint8 arrays with their labels (the
  demo's own sampler: three draws of 500);
* ``forward_noising.png``: real held-out digits at t = 0 ... 1 (MATH.md 2);
* ``loss.png`` and the run folder ``run/`` (checkpoint, loss.csv, sample grids);
* ``report.md`` and ``numbers.json``: fidelity and diversity against the
  held-out digits (precision and recall in pixels and in an in-domain
  classifier's features, a classifier two-sample test) for 500 samples of the
  demo's sampler (the mean of three draws) and 100 of each other, each beside
  the same scores of as many real training digits (the floor); bits/dim on
  the held-out digits (the VLB, MATH.md 2) and how recognisable the samples
  are to a classifier trained on real digits.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import DIGITS_LEVELS, load_digits, to_levels, to_model_range, to_uint8
from .evaluation import fit_domain_classifier, precision_recall, two_sample_classifier_accuracy
from .models import guided, unconditional
from .imaging import save_grid
from .likelihood import vlb_bits_per_dim_sampled
from .models import Model
from .samplers import PerSampleNoise, sample
from .training import TrainConfig, train

__all__ = ["run_demo", "demo_config", "DEMO_SAMPLERS", "DEMO_GUIDANCE", "MAIN", "GRID", "NUM_EVAL", "DemoReport",
           "demo_model", "real_floor", "mean_of_draws", "EVAL_DRAWS", "digits_recognisability", "fidelity_and_diversity"]

#: The demo's samplers: name -> (registry name, steps, options). The first is the one chosen by
#: measurement (fidelity and diversity against the held-out digits at once); the others tour the frameworks.
DEMO_SAMPLERS: dict[str, tuple[str, int | None, dict[str, Any]]] = {
    "dpm++2m": ("dpm++2m", 20, {}),
    "ancestral": ("ancestral", 100, {}),
    "pc": ("pc", 100, {"snr_norm": "batch"}),
    "ode": ("ode", None, {"rtol": 1e-3, "atol": 1e-3}),
}
#: The demo's own sampler (the first of :data:`DEMO_SAMPLERS`), the one measured on ``NUM_EVAL`` samples.
MAIN = next(iter(DEMO_SAMPLERS))
#: Samples in each sampler's grid (10 per class), and the main sampler's samples for the headline figures.
GRID, NUM_EVAL = 100, 500
#: Classifier-free guidance strength w of the demo's samples (Ho & Salimans 2022). 0 is plain conditional
#: sampling: guidance trades recall for precision, and at w = 0 the samples are as diverse as the data
#: (``benchmarks/results/demo_choice.md``). The network is trained with label dropout, so ``--guidance`` works.
DEMO_GUIDANCE = 0.0
#: Random draws of real training digits averaged for the floor (:func:`real_floor`).
FLOOR_DRAWS = 5
#: Draws of ``NUM_EVAL`` samples of the main sampler whose figures are averaged for the headline.
EVAL_DRAWS = 3
#: Middle VLB terms drawn per held-out image for the demo's bits/dim estimate.
VLB_TERMS = 100
#: Training steps of the demo (batch 128): tuned to finish in a few minutes on 2 CPU cores.
DEMO_STEPS = 1500
#: The demo's batch size.
DEMO_BATCH = 128


@dataclass
class DemoReport:
    path: Path
    seconds: float
    numbers: dict[str, Any]


def demo_config(out: str | Path, seed: int = 0, steps: int | None = None) -> TrainConfig:
    """A DDPM (Ho et al.'s process, L_simple) on digits, with a short schedule and a small U-Net: ``digits8``
    with 24 channels, one residual block per level and no attention (0.37M parameters, half the training time
    of the preset's 0.70M at the same fidelity and diversity: ``benchmarks/results/demo_choice.md``)."""
    return TrainConfig(framework="ddpm", data="digits", out=str(Path(out) / "run"), steps=steps or DEMO_STEPS,
                       batch_size=DEMO_BATCH, lr=2e-3, warmup=100, ema_decay=0.999, seed=seed, network="digits8",
                       network_options={"num_res_blocks": 1, "base_channels": 24, "attention_resolutions": []},
                       class_conditional=True, label_dropout=0.1, log_every=10,
                       sample_every=max(1, (steps or DEMO_STEPS) // 4), checkpoint_every=steps or DEMO_STEPS,
                       num_preview=100, preview_steps=25)


def demo_model(model: Model, labels: torch.Tensor | None, num: int, guidance: float = DEMO_GUIDANCE):
    """The demo's sampling model for ``num`` samples: guided toward ``labels``, or with no label (None)."""
    return unconditional(model, num) if labels is None else guided(model, labels, guidance)


def draw(model: Model, sampler: str, num: int, seed: int, labels: torch.Tensor | None,
         guidance: float = DEMO_GUIDANCE):
    """``num`` demo samples from the named demo sampler, sample k seeded by ``(seed, k)``."""
    name, steps, options = DEMO_SAMPLERS[sampler]
    device = next(model.parameters()).device
    noise = PerSampleNoise.for_rows(seed, range(num), device)
    return sample(demo_model(model, labels, num, guidance), (num, 1, 8, 8), name, steps, noise=noise, **options)


def digits_recognisability(samples: torch.Tensor, classifier, labels: torch.Tensor | None = None,
                           threshold: float = 0.9) -> dict[str, Any]:
    """How a classifier of real digits sees samples: share confident (>= threshold), classes seen."""
    x = to_uint8(samples).cpu().numpy().reshape(len(samples), -1) / 255.0
    p = classifier.predict_proba(x)
    confident = p.max(1) >= threshold
    out = {"confident": float(confident.mean()),
           "classes_seen": int(len(np.unique(p.argmax(1)[confident])))}
    if labels is not None:
        out["confident_and_as_asked"] = float((confident & (p.argmax(1) == labels.cpu().numpy())).mean())
    return out


def fidelity_and_diversity(samples: torch.Tensor, real: np.ndarray, features, seed: int = 0) -> dict[str, float]:
    """Samples against real images (uint8 ``(N, 1, 8, 8)``): improved precision and recall (k = 3) in pixel
    space and in the in-domain classifier's features, and the classifier two-sample test's accuracy on
    pixels. Samples are first written as the digits are stored, 17 grey levels (:func:`to_levels`)."""
    fake = to_levels(samples.cpu(), DIGITS_LEVELS)
    fake_pixels = fake.reshape(len(fake), -1).double() / 255
    real_pixels = torch.from_numpy(real).reshape(len(real), -1).double() / 255
    precision_px, recall_px = precision_recall(real_pixels, fake_pixels)
    precision_f, recall_f = precision_recall(features(torch.from_numpy(real))[0], features(fake)[0])
    return {"precision_pixels": precision_px, "recall_pixels": recall_px, "precision_features": precision_f,
            "recall_features": recall_f,
            "two_sample_accuracy": two_sample_classifier_accuracy(real_pixels, fake_pixels, seed=seed)}


def mean_of_draws(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Figures of several draws: their mean, the number of draws and each figure's range."""
    return {**{key: float(np.mean([r[key] for r in rows])) for key in rows[0]}, "draws": len(rows),
            "range": {key: [min(r[key] for r in rows), max(r[key] for r in rows)] for key in rows[0]}}


def real_floor(real_train: np.ndarray, real_test: np.ndarray, features, n: int, seed: int = 0,
               draws: int = FLOOR_DRAWS) -> dict[str, Any]:
    """The floor for ``n`` samples: ``n`` random real training digits scored as samples are, the mean of
    ``draws`` draws (against 180 held-out digits one draw's recall moves by about 0.05 from draw to draw)."""
    rng = np.random.default_rng(seed)
    return mean_of_draws([fidelity_and_diversity(to_model_range(torch.from_numpy(
        real_train[rng.permutation(len(real_train))[:n]])), real_test, features, seed) for _ in range(draws)])


def _fit_digits_classifier(seed: int):
    from sklearn.neural_network import MLPClassifier

    train_set = load_digits("train")
    x = train_set.images.reshape(len(train_set), -1) / 255.0
    return MLPClassifier((256,), max_iter=2000, random_state=seed).fit(x, train_set.labels)


def run_demo(out: str | Path = "demo", *, seed: int = 0, steps: int | None = None, progress: bool = True,
             num_eval: int = NUM_EVAL) -> DemoReport:
    """Train, sample with four samplers, measure, and write ``out/report.md``."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    config = demo_config(out, seed, steps)
    shutil.rmtree(config.out, ignore_errors=True)          # a rerun replaces the demo's previous run
    result = train(config, progress=progress)
    model = result.model
    timings["train"] = result.seconds

    t = time.perf_counter()
    classifier = _fit_digits_classifier(seed)
    test, train_set = load_digits("test"), load_digits("train")
    numbers: dict[str, Any] = {"train_steps": result.step, "seed": seed, "guidance_w": DEMO_GUIDANCE}
    real = to_model_range(torch.from_numpy(test.images))
    numbers["real_test_digits"] = digits_recognisability(real, classifier, torch.from_numpy(test.labels))
    features = fit_domain_classifier(train_set, test, seed=seed, progress=False)
    numbers["domain_classifier_accuracy"] = features.accuracy
    for n in (num_eval, GRID):
        numbers[f"real_training_digits_{n}"] = real_floor(train_set.images, test.images, features, n, seed)
    timings["judges"] = time.perf_counter() - t

    for name in DEMO_SAMPLERS:
        t = time.perf_counter()
        # The main sampler: EVAL_DRAWS draws of num_eval (seeds seed, seed + 1, ...); the others: one grid.
        num, draws = (num_eval, EVAL_DRAWS) if name == MAIN else (GRID, 1)
        labels = (torch.arange(num) // 10) % 10             # the first 100: one row per class
        results = [draw(model, name, num, seed + k, labels) for k in range(draws)]
        samples = torch.cat([res.samples for res in results])
        save_grid(samples[:GRID].clamp(-1, 1), out / f"samples_{name}.png", nrow=10)
        np.savez(out / f"samples_{name}.npz", x=to_uint8(samples).cpu().numpy(), y=labels.repeat(draws).numpy(),
                 draw=np.repeat(np.arange(draws), num))
        row = {"nfe": results[0].nfe, "samples": len(samples),
               **digits_recognisability(samples, classifier, labels.repeat(draws))}
        row.update(fidelity_and_diversity(samples[:GRID], test.images, features, seed))
        if name == MAIN:
            row[f"at_{num_eval}"] = mean_of_draws([fidelity_and_diversity(res.samples, test.images, features, seed)
                                                   for res in results])
        numbers[f"samples_{name}"] = row
        timings[f"sample_{name}"] = time.perf_counter() - t
    t = time.perf_counter()
    res = draw(model, MAIN, GRID, seed + EVAL_DRAWS, None)
    save_grid(res.samples.clamp(-1, 1), out / "samples_unconditional.png", nrow=10)
    numbers["unconditional_100"] = digits_recognisability(res.samples, classifier)
    timings["sample_unconditional"] = time.perf_counter() - t

    # Forward noising of real digits: x_t = a(t) x0 + s(t) eps at 11 times (MATH.md 2).
    g = torch.Generator().manual_seed(seed)
    x0 = real[:8]
    times = torch.linspace(0, 1, 11, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g)
    strip = torch.stack([model.process.perturb(x0, float(tt), noise=eps)[0] if tt > 0 else x0 for tt in times], 1)
    save_grid(strip.reshape(-1, 1, 8, 8).clamp(-1, 1), out / "forward_noising.png", nrow=len(times))

    t = time.perf_counter()
    per_image, per_image_se = vlb_bits_per_dim_sampled(unconditional(model, len(real)),   # p(x): the null class
                                                       torch.from_numpy(test.images), VLB_TERMS,
                                                       generator=torch.Generator().manual_seed(seed))
    bpd = float(per_image.mean())
    bpd_se = float(per_image.std() / len(per_image) ** 0.5)   # the spread over images includes the drawn steps
    timings["bits_per_dim"] = time.perf_counter() - t
    numbers["test_bits_per_dim_vlb"] = {"value": bpd, "stderr": bpd_se, "images": len(real), "terms_sampled": VLB_TERMS}
    numbers["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    seconds = time.perf_counter() - t0
    numbers["seconds"]["total"] = round(seconds, 1)
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1))
    report = _write_report(out, result.out, numbers, num_eval)
    return DemoReport(report, seconds, numbers)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _span(floor: dict[str, Any], key: str) -> str:
    low, high = floor["range"][key]
    return f"{low:.3f} to {high:.3f}"


def _fd(row: dict[str, Any]) -> str:
    """A row's precision/recall (pixels, features) and two-sample accuracy as table cells."""
    return (f"{row['precision_pixels']:.3f} / {row['recall_pixels']:.3f} | {row['precision_features']:.3f} / "
            f"{row['recall_features']:.3f} | {row['two_sample_accuracy']:.3f}")


def _intro(n: dict[str, Any]) -> str:
    return f"""# scorelab demo: a diffusion model on the 8x8 digits

A class-conditional DDPM (Ho et al. 2020: T = 1000 linear betas, eps target, L_simple; label dropout 0.1)
with a small U-Net, trained for {n['train_steps']} steps of batch {DEMO_BATCH} on 1,617 digits in
{n['seconds']['train']:.0f} s; the whole demo took {n['seconds']['total']:.0f} s. One network, four samplers;
each grid has one row per class (0 at the top), each sample asked for its row's digit (classifier-free
guidance w = {n['guidance_w']:g}: {'plain conditional sampling' if n['guidance_w'] == 0 else 'guided'}). The first, {MAIN}, is the demo's choice.

"""


def _fidelity_section(n: dict[str, Any], num_eval: int) -> str:
    main, floor = n[f"samples_{MAIN}"], n[f"real_training_digits_{num_eval}"]
    at = main[f"at_{num_eval}"]
    return f"""## Fidelity and diversity: {num_eval} samples against the 180 held-out digits

{num_eval} {MAIN} samples, 50 per class, written as the digits are stored (17 grey levels), against the
held-out digits: improved precision and recall (Kynkaanniemi et al. 2019, k = 3) in pixel space and in the
features of an in-domain classifier (test accuracy {_pct(n['domain_classifier_accuracy'])}), and the
classifier two-sample test, the 5-fold cross-validated balanced accuracy of gradient-boosted trees telling
samples from held-out digits (0.5: they cannot). Each figure is the mean of {at['draws']} draws of {num_eval}
(recall ranges {_span(at, 'recall_pixels')} in pixels, {_span(at, 'recall_features')} in features). The floor
is {num_eval} real training digits scored the same way, the mean of {floor['draws']} random draws (recall
{_span(floor, 'recall_pixels')} in pixels, {_span(floor, 'recall_features')} in features).

| samples | precision / recall (pixels) | precision / recall (features) | two-sample test accuracy |
|---|---|---|---|
| {MAIN}, {main['nfe']} network calls | {_fd(at)} |
| real training digits (the floor) | {_fd(floor)} |

Of all {main['samples']}, {_pct(main['confident_and_as_asked'])} are recognised as asked: a classifier trained on
real digits (scikit-learn MLP) gives the requested class with probability >= 0.9. On real held-out digits it
scores {_pct(n['real_test_digits']['confident_and_as_asked'])}.

"""


def _samplers_section(n: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {name} | {DEMO_SAMPLERS[name][1] or 'adaptive'} | {n[f'samples_{name}']['nfe']} | "
        f"{_pct(n[f'samples_{name}']['confident_and_as_asked'])} | ![{name}](samples_{name}.png) |"
        for name in DEMO_SAMPLERS)
    fd_rows = "\n".join(f"| {name} | {_fd(n[f'samples_{name}'])} |" for name in DEMO_SAMPLERS)
    un, floor = n["unconditional_100"], n[f"real_training_digits_{GRID}"]
    return f"""## Four samplers, one network

| sampler | steps | network calls | recognised as asked | samples |
|---|---|---|---|---|
{rows}

Each grid's {GRID} samples scored as above (the floor: {GRID} real training digits, the mean of
{floor['draws']} draws):

| samples | precision / recall (pixels) | precision / recall (features) | two-sample test accuracy |
|---|---|---|---|
{fd_rows}
| real training digits | {_fd(floor)} |

{GRID} unconditional samples (no label, {MAIN}): {_pct(un['confident'])} recognised with confidence >= 0.9,
{un['classes_seen']} of 10 classes seen. ![unconditional](samples_unconditional.png)

"""


def _closing_sections(n: dict[str, Any], rel: Path) -> str:
    return f"""## Held-out likelihood

The variational bound on the 180 held-out digits: **{n['test_bits_per_dim_vlb']['value']:.3f} bits/dim**
(+- {n['test_bits_per_dim_vlb']['stderr']:.3f}; the 999 middle terms estimated from
{n['test_bits_per_dim_vlb']['terms_sampled']} random steps per image). The digits have only 17 grey levels,
spread over 256, so this is far below the 8 bits/dim of uniform noise.

## Forward process

Real digits noised to x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps at t = 0, 0.1, ..., 1:

![forward noising](forward_noising.png)

## Training

![loss](loss.png)

Run folder: `{rel}` (checkpoint, `loss.csv`, `config.json`, sample grids during training in `samples/`).
Sample more with `scorelab sample {rel} --sampler {DEMO_SAMPLERS[MAIN][0]} --steps {DEMO_SAMPLERS[MAIN][1]} --label 3`
(add `--guidance 1` for more typical, less varied digits).
"""


def _write_report(out: Path, run: Path, n: dict[str, Any], num_eval: int) -> Path:
    """``out/report.md`` from the demo's numbers, beside a copy of the run's loss curve."""
    rel = run.relative_to(out) if run.is_relative_to(out) else run
    text = _intro(n) + _fidelity_section(n, num_eval) + _samplers_section(n) + _closing_sections(n, rel)
    path = out / "report.md"
    path.write_text(text)
    shutil.copy(run / "loss.png", out / "loss.png")
    return path
