"""Every command on every kind of run: it works, or it refuses in one line that says why and what to use.

Each framework trains a tiny run for two steps on the digits (a one-level U-Net: no command depends on the
network's depth; test_export.py exports the two-level one, test_cli.py runs the commands on it); then every
command runs on it with small budgets (the ODE likelihood at rtol = atol = 1: the same solver, fewer steps). A
cell passes when the command exits 0, or, where a refusal is listed in ``REFUSED``, exits 2 with one
``scorelab ...`` line on stderr that names what to use instead. Any other outcome fails it, and a traceback
(an exception the command line did not turn into its one line) fails the test outright.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import run_cli

TINY = ("--network-option base_channels=16 --network-option norm_groups=8 --network-option num_res_blocks=1 "
        "--network-option attention_resolutions=[] --network-option channel_mults=[1] --steps 2 --batch-size 16 "
        "--sample-every 100 --num-preview 4 --preview-steps 2")

#: name: train flags (after ``train --out RUN``)
RUNS = {
    "ddpm": "--framework ddpm --process-option num_steps=20",
    "ddpm-labels": "--framework ddpm --process-option num_steps=20 --class-conditional",
    "ncsn": "--framework ncsn --process-option num_scales=10",
    "vp": "--framework vp",
    "subvp": "--framework subvp",
    "ve": "--framework ve",
    "edm": "--framework edm",
    "sde": "--framework sde",
    "energy": "--framework vp --parameterization energy",
    "multinomial": "--framework multinomial --process-option num_steps=20",
    "multinomial-labels": "--framework multinomial --process-option num_steps=20 --class-conditional",
    "masked-labels": "--framework masked --class-conditional",
    "diffflow": "--framework diffflow --process-option num_steps=4",
}

#: name: command line, ``{run}`` the run folder and ``{d}`` a scratch folder
COMMANDS = {
    "sample": "sample {run} --steps 3 --num-samples 4 --out {d}/s.png",
    "sample-guided": "sample {run} --steps 3 --num-samples 4 --label 3 --guidance 1 --out {d}/g.png",
    "interpolate": "interpolate {run} --frames 3 --steps 2 --ode-rtol 1 --out {d}/i.png",
    "nll": "nll {run} --num 2 --ode-rtol 1",
    "nll-trajectory": "nll {run} --num 4 --method trajectory",
    "evaluate": "evaluate {run} --nfe 2 --num-samples 8 --bpd-images 2 --vlb-terms 2 --ode-rtol 1 --out {d}/e",
    "inpaint": "inpaint {run} --images 0 1 --num-samples 1 --steps 3 --out {d}/p.png",
    "edit": "edit {run} --images 0 --num-samples 1 --t0 0.3 --steps 2 --out {d}/e.png",
    "train-classifier": "train-classifier {run} --steps 1 --batch-size 8 --out {d}/clf",
    "export": "export {run} --out {d}/m.pt2",
}

_UNCONDITIONAL = [name for name in RUNS if not name.endswith("-labels")]
_CATEGORICAL = ("multinomial", "multinomial-labels", "masked-labels")
#: (run, command) cells that refuse, and words their one line holds
REFUSED: dict[tuple[str, str], str] = {
    **{(name, "sample-guided"): "train with --class-conditional" for name in _UNCONDITIONAL},
    ("sde", "inpaint"): "use scorelab edit",
    **{(name, cmd): "diffusion model samples (scorelab sample)" for name in _CATEGORICAL
       for cmd in ("interpolate", "evaluate", "inpaint", "edit")},
    **{(name, "train-classifier"): "train the model itself with --class-conditional" for name in _CATEGORICAL},
    **{(name, "nll-trajectory"): "--method vlb" if name in _CATEGORICAL else "use --method ode"
       for name in RUNS if name != "diffflow"},
    ("diffflow", "inpaint"): "use scorelab edit",
    ("diffflow", "train-classifier"): "DiffFlow's is learned",
    ("diffflow", "export"): "a DiffFlow model calls two",
}


def _run(line: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    code, message = run_cli(line.split())
    return code, message, time.perf_counter() - t0


def outcomes(name: str, d: Path) -> dict[str, tuple[int, str, float]]:
    """Train run ``name`` in ``d`` and run every command on it."""
    run = d / "run"
    code, message, _ = _run(f"train --out {run} {RUNS[name]} {TINY}")
    assert code == 0, message
    return {cmd: _run(line.format(run=run, d=d)) for cmd, line in COMMANDS.items()}


@pytest.mark.parametrize("name", list(RUNS))
def test_every_command_works_or_refuses_in_one_line(name, tmp_path, monkeypatch, shared_cache):
    monkeypatch.setenv("SCORELAB_CACHE", str(shared_cache))
    wrong = []
    for cmd, (code, message, _) in outcomes(name, tmp_path).items():
        words = REFUSED.get((name, cmd))
        ok = code == 0 if words is None else (code == 2 and message.count("\n") == 0 and words in message)
        if not ok:
            wrong.append(f"{cmd}: exit {code}, {message!r}")
    assert not wrong, wrong


if __name__ == "__main__":                 # python tests/test_commands.py [RUN ...]: the table, with seconds
    import sys
    import tempfile
    for name in sys.argv[1:] or RUNS:
        with tempfile.TemporaryDirectory() as d:
            for cmd, (code, message, seconds) in outcomes(name, Path(d)).items():
                print(f"{name:20s} {cmd:18s} {code} {seconds:5.1f}s {message}", flush=True)
