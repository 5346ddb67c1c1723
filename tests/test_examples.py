"""The examples the docs point to run as they are: quickstart's figures agree with the exact oracle, and the two
scripts with options build their command lines (their full runs, seconds to minutes, are in the docs)."""

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_agrees_with_the_exact_oracle(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out

    def listed(label: str) -> list[float]:
        return [float(v) for v in re.search(rf"{label}\s*: \[(.*)\]", out).group(1).split(",")]

    ode, exact = listed("ODE log-likelihood"), listed("exact log-density")
    assert len(ode) == len(exact) == 5 and max(abs(a - b) for a, b in zip(ode, exact)) < 0.02, (ode, exact)
    distances = [float(v) for v in re.findall(r"energy distance to exact samples=(-?[\d.]+)", out)]
    # 2,000 samples each: the exact-vs-exact floor of tests/test_samplers.py (largest distance two exact sets showed)
    assert len(distances) == 3 and max(distances) < 0.006, distances
    assert float(re.search(r"round-trip error: ([\d.e-]+)", out).group(1)) < 1e-2


@pytest.mark.parametrize("script", ["langevin_vs_annealed.py", "nonaffine_sde.py"])
def test_the_longer_examples_build_their_command_lines(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out
