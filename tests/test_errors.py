"""Bad input gets one line that says what is wrong and what to do (exit code 2): the table in docs/errors.md.

Each case is a command line run against a scratch folder holding a tiny trained run and broken files. The
test checks the exit code, that stderr is one line holding the expected words, and that docs/errors.md lists
that exact line. ``python tests/test_errors.py`` prints the table anew (paths shown as ``<dir>``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

from conftest import run_cli
from scorelab.store import load_checkpoint, save_checkpoint

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
TINY = ["--network-option", "base_channels=16", "--network-option", "norm_groups=8",
        "--network-option", "num_res_blocks=1", "--network-option", "attention_resolutions=[]"]
FAST = ["--steps", "2", "--batch-size", "16", "--sample-every", "100", "--process-option", "num_steps=50",
        "--num-preview", "4", "--preview-steps", "2", *TINY]

# (what is wrong, command line with {d} for the scratch folder, words the error must hold)
CASES: list[tuple[str, str, str]] = [
    ("unknown command", "fly", "invalid choice: 'fly'"),
    ("unknown framework", "train --framework ddim --out {d}/x", "invalid choice: 'ddim'"),
    ("data folder that does not exist", "train --data folder:{d}/nowhere --out {d}/x", "no such folder"),
    ("data folder with no images", "train --data folder:{d}/empty --out {d}/x", "holds no images"),
    ("data folder whose images are all corrupt", "train --data folder:{d}/corrupt --out {d}/x",
     "could be read"),
    ("MNIST folder without the idx files", "train --data mnist:{d}/empty --out {d}/x", "idx"),
    ("array file that is not an array file", "train --data array:{d}/notes.npz --out {d}/x", "array"),
    ("images stored as floats", "train --data array:{d}/float.npy --out {d}/x", "uint8"),
    ("unknown data set form", "train --data imagenet --out {d}/x", "unknown dataset"),
    ("a resize asked of data that is not a folder", "train --data digits --image-size 16 --out {d}/x",
     "drop --image-size"),
    ("zero training steps", "train --steps 0 --out {d}/x", "steps must be a positive integer"),
    ("batch larger than the data set", "train --batch-size 4096 --out {d}/x", "fewer than batch_size"),
    ("negative learning rate", "train --lr -1 --out {d}/x", "lr must be"),
    ("EMA decay outside [0, 1)", "train --ema-decay 1.5 --out {d}/x", "ema_decay must lie in [0, 1)"),
    ("a learning-rate decay that the warm-up leaves no room for", "train --steps 1500 --lr-decay cosine --out {d}/x",
     "give more --steps or a shorter --warmup"),
    ("network option without '='", "train --network-option base_channels --out {d}/x", "KEY=VALUE"),
    ("network width the group norm cannot divide", "train --network-option base_channels=20 --out {d}/x",
     "divisible by norm_groups"),
    ("a network whose blocks cannot see the noise level",
     "train --network-option channel_mults=[1,1] --network-option norm_groups=32 --out {d}/x",
     "removes the noise and label embedding"),
    ("unknown network option", "train --network-option depth=3 --out {d}/x", "do not fit UNetConfig"),
    ("a yes/no where a network size goes", "train --network-option num_res_blocks=true --out {d}/x",
     "num_res_blocks must be a positive integer, got True"),
    ("process option that breaks the process", "train --framework ve --process-option sigma_min=150 --out {d}/x",
     "sigma_min"),
    ("config file that does not exist", "train --config {d}/none.json --out {d}/x", "does not exist"),
    ("config file that is not JSON", "train --config {d}/broken.json --out {d}/x", "not valid JSON"),
    ("config file with an unknown field", "train --config {d}/unknown.json --out {d}/x", "unknown training options"),
    ("config file with a quoted yes/no", "train --config {d}/quoted.json --out {d}/x",
     "flip must be true or false, got 'false'"),
    ("class conditioning on point data", "train --data points:two_moons --class-conditional --out {d}/x",
     "needs labels"),
    ("a device that is not there", "train --device cuda --out {d}/x", "no CUDA GPU"),
    ("a device name torch does not know", "train --device tpu --out {d}/x", "device must be"),
    ("a fresh run into a folder that holds one", "train --out {d}/run " + " ".join(FAST), "--resume"),
    ("resuming with another model", "train --out {d}/run --resume --steps 4 --batch-size 16 "
     "--process-option num_steps=100 " + " ".join(TINY), "trains another model"),
    ("resuming automatically (torchrun's default) with another configuration",
     "train --out {d}/run --resume auto --lr 1e-3 " + " ".join(FAST), "belongs to another configuration"),
    ("a process-group timeout that is not positive", "train --dist-timeout 0 --out {d}/x",
     "not a positive number of minutes"),
    ("a run folder that cannot be written", "train --out {d}/a-file/run", "cannot write to the run folder"),
    ("a denoising loss on an SDE whose drift is not affine", "train --framework sde --loss dsm --out {d}/x",
     "--loss sm or ssm or ssm-vr"),
    ("an eps target on an SDE whose drift is not affine", "train --framework sde --target eps --out {d}/x",
     "use --target score"),
    ("an SDE drift that is not registered", "train --framework sde --process-option drift=spiral --out {d}/x",
     "unknown SDE drift 'spiral'"),
    ("exact score matching on too many dimensions", "train --data array:{d}/big-points.npy --loss sm --framework vp "
     "--out {d}/x", "--loss ssm-vr"),
    ("a checkpoint that does not exist", "sample {d}/nowhere", "no checkpoint"),
    ("a sample file under a file", "sample {d}/run --out {d}/a-file/x.png", "cannot write to the sample file"),
    ("a sample file that is a folder", "sample {d}/run --out {d}/empty", "Is a directory"),
    ("an interpolation strip under a file", "interpolate {d}/run --out {d}/a-file/x.png",
     "cannot write to the interpolation strip"),
    ("an evaluation folder under a file", "evaluate {d}/run --out {d}/a-file/e", "cannot write to the evaluation folder"),
    ("a demo folder under a file", "demo --out {d}/a-file/demo", "cannot write to the demo folder"),
    ("a truncated weights file", "sample {d}/truncated", "checksum"),
    ("a word where a sampler's number goes", "sample {d}/run --sampler ddim --steps 2 --option eta=abc",
     "takes a number for eta"),
    ("a word where a number goes that has no default", "sample {d}/run --sampler pc --steps 2 --option target_snr=x",
     "takes a number for target_snr"),
    ("an interpolation of fewer than 2 frames", "interpolate {d}/run --frames 0", "--frames must be at least 2"),
    ("bits/dim of no images", "nll {d}/run --num 0", "must be positive integers"),
    ("an edited checkpoint description", "sample {d}/edited", "checksum"),
    ("zero samples", "sample {d}/run --num-samples 0", "--num-samples must be at least 1"),
    ("an option the sampler does not take", "sample {d}/run --sampler ddim --option snr=0.1", "takes no option"),
    ("a sampling option that is the command's own", "sample {d}/run --option batch_size=4 --out {d}/s.png",
     "takes no option"),
    ("an option the command sets itself", "inpaint {d}/run --images 0 --option known=1 --out {d}/p.png",
     "sets known itself"),
    ("a sampler that needs a(t), s(t) on a non-affine SDE", "sample {d}/sde --sampler heun", "use one of"),
    ("a label asked of an unconditional model", "sample {d}/run --label 3", "class-conditional model"),
    ("bits/dim on data of another shape", "nll {d}/run --data array:{d}/big.npy --split train",
     "but the model takes"),
    ("an adaptive sampler given an NFE budget", "evaluate {d}/run --samplers ode --out {d}/e", "adaptive"),
    ("Inception features without the weights", "evaluate {d}/run --features inception --out {d}/e",
     "--inception-weights"),
    ("an Inception weights file that is not there",
     "evaluate {d}/run --features inception --inception-weights {d}/w.pth --out {d}/e --nfe 2 --num-samples 8",
     "scorelab download inception"),
    ("NFE budgets that are not numbers", "evaluate {d}/run --nfe ten --out {d}/e", "comma-separated"),
    ("an inpainting mask that hides nothing", "inpaint {d}/run --mask {d}/white.png --out {d}/i.png",
     "nothing to fill in"),
    ("an inpainting mask that is not a mask", "inpaint {d}/run --mask middle --out {d}/i.png", "unknown mask"),
    ("an inpainting mask file that is not an image", "inpaint {d}/run --mask {d}/corrupt/a.png --out {d}/i.png",
     "cannot read image"),
    ("RePaint given an option it does not take", "inpaint {d}/run --method repaint --option jumps=3 --out {d}/i.png",
     "takes no option ['jumps']"),
    ("replacement in an adaptive sampler", "inpaint {d}/run --method replace --sampler ode --out {d}/i.png",
     "adapts its own steps"),
    ("SMC inpainting with no particles", "inpaint {d}/run --method smc --particles 0 --out {d}/i.png",
     "particles must be a positive integer"),
    ("a particle count for a method without particles", "inpaint {d}/run --particles 4 --out {d}/i.png",
     "--particles is for --method smc"),
    ("a mask file with another number of masks than images",
     "inpaint {d}/run --mask {d}/two-masks.npy --images 0 1 2 --out {d}/i.png", "holds 2 masks but 3 images"),
    ("a mask file that is not an array", "inpaint {d}/run --mask {d}/bad.npy --out {d}/i.png", "is not a mask array"),
    ("an SDEdit start time outside (0, 1]", "edit {d}/run --t0 1.5 --out {d}/e.png", "t0 must lie in (0, 1]"),
    ("an SDEdit input that is not an image", "edit {d}/run --input {d}/notes.npz --out {d}/e.png",
     "cannot read image"),
    ("classifier guidance from a folder that holds no classifier", "sample {d}/run --classifier {d}/run/checkpoints",
     "holds no classifier"),
    ("a classifier trained on another process", "sample {d}/run --classifier {d}/clf100", "own process"),
    ("a classifier run where a diffusion run goes", "info {d}/clf100", "not a diffusion model"),
    ("a classifier for a model of unlabelled points", "train-classifier {d}/sde", "needs labelled images"),
    ("a Metropolis corrector on a model without an energy", "sample {d}/run --sampler pc --steps 2 --option "
     "corrector=mala --out {d}/s.png", "has no energy"),
    ("an energy model on an SDE whose drift is not affine", "train --framework sde --parameterization energy "
     "--out {d}/x", "--parameterization score"),
    ("an energy model under EDM's preconditioning", "train --framework edm --parameterization energy --out {d}/x",
     "no preconditioning"),
    ("multinomial diffusion's loss on a Gaussian process", "train --loss vlb --out {d}/x", "--framework multinomial"),
    ("a Gaussian loss on multinomial diffusion", "train --framework multinomial --loss dsm --out {d}/x",
     "--loss vlb or vlb-ce"),
    ("score matching on multinomial diffusion (the frameworks named all take it)",
     "train --framework multinomial --loss ssm --out {d}/x", "use --framework ddpm or edm or ncsn or sde or subvp or"),
    ("fewer than 2 categories", "train --framework multinomial --categories 1 --out {d}/x", "2..256"),
    ("a masking schedule that is not decreasing from 1 to 0", "train --framework masked --process-option "
     "schedule=table --process-option alphas=[1,0.4,0.6,0] --out {d}/x", "decrease from alpha_0 = 1"),
    ("multinomial diffusion's loss on masked diffusion", "train --framework masked --loss vlb --out {d}/x",
     "--loss masked"),
    ("a Gaussian-only command on a multinomial model", "interpolate {d}/multinomial --out {d}/i.png",
     "is a categorical process"),
    ("a Gaussian sampler on a multinomial model", "sample {d}/multinomial --sampler ddim --out {d}/s.png",
     "use one of ['multinomial']"),
    ("bits/dim of a model whose weights are NaN", "nll {d}/run-nan --num 4 --levels 17", "NaN or Inf"),
    ("a multinomial model whose weights are NaN", "sample {d}/multinomial-nan --steps 2 --num-samples 2 --out "
     "{d}/s.png", "NaN or Inf logits"),
    ("DiffFlow with no steps", "train --framework diffflow --process-option num_steps=0 --out {d}/x",
     "integer >= 1"),
    ("DiffFlow's grid exponent not positive", "train --framework diffflow --process-option beta=0 --out {d}/x",
     "beta must be a positive number"),
    ("DiffFlow's horizon T out of range", "train --framework diffflow --process-option horizon=2 --out {d}/x",
     "must lie in (0, 1]"),
    ("a fixed process's loss on DiffFlow", "train --framework diffflow --loss ssm-vr --out {d}/x", "--loss diffflow"),
    ("DiffFlow's loss on a fixed process", "train --framework vp --loss diffflow --out {d}/x", "--framework diffflow"),
    ("a fixed process's sampler on a DiffFlow model", "sample {d}/diffflow --sampler ddim --out {d}/s.png",
     "'diffflow'"),
    ("a DiffFlow model where a fixed process is needed", "train-classifier {d}/diffflow --out {d}/c",
     "DiffFlow's is learned"),
    ("a sampler option only the library can pass", "sample {d}/run --steps 2 --option callback=print --out {d}/s.png",
     "the command line takes options"),
]


def _setup(d: Path) -> None:
    for name in ("empty", "corrupt"):
        (d / name).mkdir(parents=True, exist_ok=True)
    (d / "corrupt" / "a.png").write_bytes(b"not a png")
    (d / "notes.npz").write_text("hello")
    np.save(d / "float.npy", np.random.default_rng(0).random((4, 1, 8, 8)))
    np.save(d / "big.npy", np.random.default_rng(0).integers(0, 256, (4, 1, 16, 16), dtype=np.uint8))
    (d / "broken.json").write_text("{steps: 3")
    (d / "unknown.json").write_text(json.dumps({"steps": 3, "depth": 4}))
    (d / "quoted.json").write_text(json.dumps({"steps": 3, "flip": "false"}))
    (d / "a-file").write_text("x")
    np.save(d / "big-points.npy", np.random.default_rng(0).normal(size=(256, 200)).astype(np.float32))
    assert _run(f"train --out {d}/run " + " ".join(FAST), d)[0] == 0
    assert _run(f"train --framework sde --data points:two_moons --out {d}/sde --steps 2 --batch-size 16 "
                "--sample-every 100 --num-preview 4 --preview-steps 2", d)[0] == 0
    assert _run(f"train --framework multinomial --out {d}/multinomial " + " ".join(FAST), d)[0] == 0
    assert _run(f"train --framework diffflow --data points:two_moons --out {d}/diffflow --steps 2 --batch-size 16 "
                "--sample-every 100 --process-option num_steps=3 --num-preview 4 --preview-steps 2", d)[0] == 0
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(d / "white.png")
    two = np.ones((2, 8, 8), np.uint8)
    two[:, :, :4] = 0
    np.save(d / "two-masks.npy", two)
    (d / "bad.npy").write_bytes(b"not an array")
    assert _run(f"train --out {d}/run100 " + " ".join(FAST) + " --process-option num_steps=100", d)[0] == 0
    assert _run(f"train-classifier {d}/run100 --steps 1 --batch-size 8 --out {d}/clf100", d)[0] == 0
    ckpt = next((d / "run" / "checkpoints").iterdir())
    for name in ("truncated", "edited"):
        shutil.copytree(ckpt, d / name)
    weights = d / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    meta = json.loads((d / "edited" / "meta.json").read_text())
    meta["files"]["model.safetensors"] = "0" * 64
    (d / "edited" / "meta.json").write_text(json.dumps(meta))
    for run in ("run", "multinomial"):                          # a diverged run: every weight NaN
        good = load_checkpoint(d / run)
        nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in good.model.items()}
        save_checkpoint(d / f"{run}-nan" / "checkpoints", good.step, model=nan, ema=nan, config=good.config)


def _cell(text: str) -> str:
    """``text`` as a Markdown table cell in a code span."""
    return "`` " + text.replace("|", "\\|") + " ``"


def _run(line: str, d: Path) -> tuple[int, str]:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    code, message = run_cli(line.format(d=d, shared=shared).split())
    return code, message.replace(str(d), "<dir>").replace(str(shared), "<shared>")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    d = tmp_path_factory.mktemp("errors")
    _setup(d)
    return d


def test_at_least_25_bad_inputs_are_listed():
    assert len(CASES) >= 25


@pytest.mark.parametrize("what, line, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(scratch, what, line, words):
    code, message = _run(line, scratch)
    assert code == 2, (what, code, message)
    assert message.count("\n") == 0 and message.startswith("scorelab"), message
    assert words in message, message
    assert _cell(message) in DOC.read_text(), f"docs/errors.md does not list: {message}"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _setup(Path(tmp))
        print("| what is wrong | command | error |\n|---|---|---|")
        for what, line, _ in CASES:
            code, message = _run(line, Path(tmp))
            command = _cell("scorelab " + line.format(d="<dir>", shared="<shared>"))
            print(f"| {what} | {command} | {_cell(message)} |", file=sys.stdout)
