"""Benchmarks run by hand; their summaries must survive an option that turns a part off."""

import importlib.util
from pathlib import Path

import pytest


def _load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_benchmark_summarizes_fp32_alone_when_bf16_is_off():
    """``--bf16-steps 0`` times no bf16 step: the summary has fp32 speeds and ratio, and no bf16 entry."""
    training = _load("training")
    times = {("scorelab", "fp32"): [2.0, 1.0, 3.0], ("diffusers", "fp32"): [4.0, 4.0, 4.0]}
    losses = {key: [0.5] * 3 for key in times}
    out = training.summarize(times, losses, batch=8)
    assert out["results"]["scorelab"]["fp32"]["images_per_s"] == 4.0              # 8 / median 2.0
    assert out["scorelab_over_diffusers_images_per_s"] == {"fp32": 2.0}
    assert "bf16" not in out["results"]["scorelab"] and "bf16_over_fp32_speedup" not in out["results"]["scorelab"]
    with pytest.raises(AssertionError, match="non-finite"):
        training.summarize(times, {**losses, ("scorelab", "fp32"): [float("nan")] * 3}, batch=8)
