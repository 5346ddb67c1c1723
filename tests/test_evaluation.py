"""The in-domain classifier on real data, NFE budgets, and ``scorelab evaluate`` end to end."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import scorelab.evaluation.inception as inception_module
import scorelab.evaluation.run as run_module
from scorelab.cli import main
from scorelab.data import load_digits, load_mnist
from scorelab.evaluation import fit_domain_classifier, steps_for_nfe
from scorelab.evaluation.classifier import STATED_ACCURACY
from scorelab.processes import DDPM, VESDE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_domain_classifier_reaches_its_stated_accuracy_on_digits_and_is_deterministic(tmp_path):
    train, test = load_digits("train"), load_digits("test")
    first = fit_domain_classifier(train, test, cache=tmp_path / "a", progress=False)
    assert first.accuracy >= STATED_ACCURACY["digits"]
    # A damaged cache entry is retrained, not trusted; and the same data, seed and recipe in another cache folder
    # give the same network, bit for bit: a copy of the entry, damaged, in folder b.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    weights = next((tmp_path / "b").rglob("model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])
    healed = fit_domain_classifier(train, test, cache=tmp_path / "b", progress=False)
    assert healed.accuracy == first.accuracy
    assert weights.stat().st_size == next((tmp_path / "a").rglob("model.safetensors")).stat().st_size  # rewritten
    for k, v in first.net.state_dict().items():
        assert torch.equal(v, healed.net.state_dict()[k]), k
    # A cache hit returns the stored network; its features have unit RMS on the training split.
    again = fit_domain_classifier(train, test, cache=tmp_path / "a", progress=False)
    feats, probs = again(train.images)
    np.testing.assert_allclose(np.sqrt(np.mean(feats ** 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)


@pytest.mark.skipif(not (DATA / "fashion-mnist").is_dir(), reason="needs ../shared/data/fashion-mnist")
def test_domain_classifier_reaches_its_stated_accuracy_on_fashion_mnist(tmp_path):
    root = DATA / "fashion-mnist"
    clf = fit_domain_classifier(load_mnist(root, "train"), load_mnist(root, "test"), cache=tmp_path, progress=False)
    assert clf.accuracy >= STATED_ACCURACY["fashion-mnist"], clf.accuracy


def test_nfe_budgets_follow_each_samplers_call_count():
    ddpm = DDPM(num_steps=1000)
    # One call per step: DDPM ancestral, DDIM, DPM-Solver++(2M).
    for name in ("ancestral", "ddim", "dpm++2m"):
        assert steps_for_nfe(ddpm, name, 20) == 20
    # EDM's Heun: 2 calls per step but the last (Karras et al.: 18 steps = 35 NFE).
    assert steps_for_nfe(VESDE(), "heun", 35) == 18
    assert steps_for_nfe(VESDE(), "heun", 36) == 18
    # Predictor-corrector: a corrector and a predictor call per step, and the final denoising call.
    assert steps_for_nfe(ddpm, "pc", 21) == 10
    with pytest.raises(ValueError, match="too few"):
        steps_for_nfe(ddpm, "heun", 0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    recipe = {"framework": "ddpm", "data": "digits", "steps": 300, "batch_size": 32, "lr": 2e-3, "warmup": 0,
              "network": "digits8", "process_options": {"num_steps": 100}, "sample_every": 1000,
              "num_preview": 4, "preview_steps": 2,                   # a small grid: no test looks at it
              "network_options": {"base_channels": 16, "norm_groups": 8, "num_res_blocks": 1,
                                  "attention_resolutions": []}}
    (root / "recipe.json").write_text(json.dumps(recipe))
    # The recipe gives 300 steps; the flag overrides it.
    assert main(["train", "--config", str(root / "recipe.json"), "--steps", "30", "--out", str(root / "run")]) == 0
    return root


def test_train_config_file_with_flag_overrides(tiny_run):
    saved = json.loads((tiny_run / "run" / "config.json").read_text())["train"]
    assert saved["steps"] == 30 and saved["batch_size"] == 32 and saved["network_options"]["base_channels"] == 16


class _FakeInception(torch.nn.Module):
    """Stands in for the 91 MB network: the same interface, features of the pixels."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        f = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)[:, :8].repeat(1, 2)[:, :8]
        return f, self.fc(f)


def test_evaluate_end_to_end_then_resumes(tiny_run, tmp_path, monkeypatch, shared_cache):
    monkeypatch.setenv("SCORELAB_CACHE", str(shared_cache))
    monkeypatch.setattr(inception_module, "load_inception", lambda weights, device="cpu": _FakeInception())
    out = tiny_run / "eval"
    args = ["evaluate", str(tiny_run / "run"), "--samplers", "ddim,heun", "--nfe", "3,6", "--num-samples", "60",
            "--bpd-images", "8", "--vlb-terms", "4", "--out", str(out), "--features", "domain,inception",
            "--inception-weights", "fake.pth"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {(r["sampler"], r["nfe"]): r for r in metrics["rows"]}
    assert set(rows) == {("data", 0), ("ddim", 3), ("ddim", 6), ("heun", 3), ("heun", 5)}
    # 30 training steps make poor samples; the real-data floor must score far better on every sampler.
    for key, r in rows.items():
        if key[0] != "data":
            assert r["domain"]["fid"] > 3 * rows[("data", 0)]["domain"]["fid"]
            assert r["domain"]["precision"] < rows[("data", 0)]["domain"]["precision"]
            assert 1.0 <= r["inception"]["inception_score"] <= 5.0
            assert abs(sum(r["domain"]["class_histogram"]) - 1) < 1e-9
    for method in ("vlb", "ode"):
        assert 0 < metrics["bits_per_dim"][method]["bits_per_dim"] < 20
    assert metrics["info"]["domain"]["classifier_test_accuracy"] >= 0.9
    report = (out / "report.md").read_text()
    assert "| heun | 5 |" in report and "Inception Score" in report and "bits/dim" in report
    for png in ("metrics_vs_nfe.png", "grids.png", "grids/ddim-nfe0006.png"):
        assert (out / png).stat().st_size > 1000
    with np.load(out / "cells" / "ddim-nfe0006.npz") as f:
        assert f["x"].shape == (60, 1, 8, 8) and f["x"].dtype == np.uint8

    # A rerun reuses every cell: no sampling, the same numbers.
    def refuse(*a, **k):
        raise AssertionError("a finished cell was sampled again")
    monkeypatch.setattr(run_module, "draw_samples", refuse)
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["rows"] == metrics["rows"]
    # More NFE budgets: only the new cells are drawn.
    monkeypatch.undo()
    monkeypatch.setenv("SCORELAB_CACHE", str(shared_cache))
    monkeypatch.setattr(inception_module, "load_inception", lambda weights, device="cpu": _FakeInception())
    drawn = []
    real_draw = run_module.draw_samples
    monkeypatch.setattr(run_module, "draw_samples", lambda m, s, sampler, steps, *a, **k:
                        drawn.append((sampler, steps)) or real_draw(m, s, sampler, steps, *a, **k))
    assert main(args[:3] + ["ddim", "--nfe", "3,6,8"] + args[6:]) == 0
    assert drawn == [("ddim", 8)]
    # Another configuration's run stopped between a cell's two files (its samples written, its .json not): the
    # pair disagrees, so the cell is drawn again instead of scored from the other run's samples.
    np.savez(out / "cells" / "ddim-nfe0006.npz", x=np.full((7, 1, 8, 8), 255, np.uint8), key=np.array("another"))
    drawn.clear()
    assert main(args) == 0
    assert drawn == [("ddim", 6)]


def test_data_with_one_split_is_scored_against_its_own_images(tmp_path):
    """``folder:`` and ``array:`` data hold one split: evaluate takes its images as the reference (the report says
    so), where a data set with a test split is scored against that."""
    images = load_digits("train").images[:40]
    np.savez(tmp_path / "a.npz", x=images)
    train, reference = run_module._splits(f"array:{tmp_path / 'a.npz'}")
    assert reference is train and np.array_equal(train.images, images)
    train, reference = run_module._splits("digits")
    assert len(reference) == 180 and len(train) == 1617

@pytest.mark.parametrize("extra, message", [
    (["--samplers", "ode"], "adaptive"),
    (["--features", "inception"], "--inception-weights"),
    (["--features", "fid"], "unknown feature space"),
    (["--nfe", "ten"], "comma-separated"),
    (["--data", "points:two_moons"], "not an image data set"),
])
def test_evaluate_refuses_bad_requests_in_one_line(tiny_run, tmp_path, capsys, extra, message):
    assert main(["evaluate", str(tiny_run / "run"), "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_evaluate_scores_the_weights_asked_for(tiny_run):
    """``--weights model`` scores the raw training weights, not the EMA (which differ after 30 steps)."""
    from scorelab.store import load_model

    run = tiny_run / "run"
    raw, _, _ = load_model(run, weights="model")
    ema, _, _ = load_model(run)
    for weights, expected in (("model", raw), ("ema", ema)):
        model = run_module._load_for_evaluation(run, run_module.EvalConfig(weights=weights), torch.device("cpu"))[0]
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected.parameters())), weights
    assert not all(torch.equal(a, b) for a, b in zip(raw.parameters(), ema.parameters()))
    with pytest.raises(ValueError, match="weights must be 'ema' or 'model'"):
        run_module.EvalConfig(weights="best")
    for nfe in ((2.7, 10), (True, 10)):                  # a list's items are checked too (not rounded, not taken as 1)
        with pytest.raises(ValueError, match="nfe must be a list of integers"):
            run_module.EvalConfig(nfe=nfe)
