"""``scorelab`` end to end on a tiny configuration, and its one-line errors."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scorelab.cli import main
from scorelab.store import load_checkpoint

TINY = ["--network-option", "base_channels=16", "--network-option", "norm_groups=8",
        "--network-option", "num_res_blocks=1", "--network-option", "attention_resolutions=[]"]
#: Small sample grids for runs whose grids no test looks at (the default draws 64 images with 50 DDIM steps).
PREVIEW = ["--num-preview", "4", "--preview-steps", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--data", "digits", "--out", str(out), "--steps", "4", "--batch-size", "16",
                 "--warmup", "0", "--lr", "1e-3", "--lr-decay", "cosine", "--class-conditional", "--process-option",
                 "num_steps=50",
                 "--sample-every", "2", "--checkpoint-every", "2", "--log-every", "1", "--num-preview", "10",
                 "--preview-steps", "2", *TINY])
    assert code == 0
    return out


def test_train_writes_a_complete_run(run):
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert (run / "samples" / "step-00000004.png").is_file() and (run / "loss.png").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["process"] == {"name": "ddpm", "num_steps": 50, "schedule": "linear",
                                          "beta_start": 1e-4, "beta_end": 0.02}
    rows = [row.split(",") for row in (run / "loss.csv").read_text().splitlines()]
    assert len(rows) == 5 and rows[0][2] == "lr" and config["train"]["lr_decay"] == "cosine"
    # Cosine decay over the 4 steps with no warm-up, from 1e-3 at step 1 to 0 at step 4: 1e-3, 7.5e-4, 2.5e-4, 0.
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], [1e-3 * (1 + math.cos(math.pi * (s - 1) / 3)) / 2
                                                                 for s in range(1, 5)], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "pc", "ode", "heun", "dpm++2m", "langevin", "em"])
def test_sample_writes_grid_and_arrays(run, tmp_path, sampler):
    out = tmp_path / f"{sampler}.png"
    args = ["sample", str(run), "--sampler", sampler, "--num", "6", "--out", str(out), "--guidance", "1.5"]
    if sampler not in ("ode",):
        args += ["--steps", "3"]
    if sampler == "ode":
        args += ["--option", "rtol=0.01", "--option", "atol=0.01"]
    assert main(args) == 0
    arrays = np.load(tmp_path / f"{sampler}.npz")
    assert arrays["x"].shape == (6, 1, 8, 8) and arrays["x"].dtype == np.uint8
    assert arrays["y"].tolist() == [0, 1, 2, 3, 4, 5]
    assert Image.open(out).size[0] > 8


def test_same_seed_same_samples_at_any_batch_size(run, tmp_path):
    for name, bs in (("a", "6"), ("b", "4")):
        assert main(["sample", str(run), "--steps", "3", "--num", "6", "--batch-size", bs, "--seed", "7",
                     "--out", str(tmp_path / f"{name}.png")]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["x"], np.load(tmp_path / "b.npz")["x"])


def test_nll_interpolate_info(run, tmp_path, capsys):
    assert main(["nll", str(run), "--num", "4", "--method", "vlb"]) == 0
    bpd = float(capsys.readouterr().out.split("test images of digits (256 levels):")[1].split()[0])
    assert 0 < bpd < 20
    assert main(["interpolate", str(run), "--pair", "0", "5", "--frames", "4", "--steps", "3",
                 "--out", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size[0] > Image.open(tmp_path / "i.png").size[1] * 5
    assert main(["info", str(run)]) == 0
    info = capsys.readouterr().out
    assert "step        4" in info and "classes" in info


@pytest.mark.parametrize("args, message", [
    (["sample", "/no/such/run"], "does not exist"),
    (["train", "--framework", "ddpm", "--data", "mnist:/no/such/folder", "--steps", "1"], "no such folder"),
    (["train", "--data", "points:spiral", "--steps", "1"], "unknown toy set"),
    (["train", "--network-option", "nonsense", "--steps", "1"], "KEY=VALUE"),
])
def test_errors_are_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory):
    """An unconditional DDPM run on an array file of digits (data with one split)."""
    from scorelab.data import load_digits

    root = tmp_path_factory.mktemp("array")
    np.save(root / "digits.npy", load_digits("train").images[:64])
    run = root / "run"
    assert main(["train", "--data", f"array:{root / 'digits.npy'}", "--out", str(run), "--steps", "2",
                 "--batch-size", "16", "--process-option", "num_steps=20", "--sample-every", "100", *PREVIEW,
                 *TINY]) == 0
    return run


def test_guidance_needs_a_class_conditional_model(unconditional_run, tmp_path, capsys):
    assert main(["sample", str(unconditional_run), "--guidance", "2", "--num", "2", "--steps", "2",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "class-conditional" in capsys.readouterr().err


def test_sampler_options_are_checked(run, tmp_path, capsys):
    assert main(["sample", str(run), "--option", "eta=0.5", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "takes no option ['eta']" in err and "clip_x0" in err and "\n" not in err
    assert main(["sample", str(run), "--sampler", "ddim", "--option", "eta=0.5", "--steps", "2", "--num", "2",
                 "--out", str(tmp_path / "y.png")]) == 0


def test_a_typed_flag_wins_over_the_recipe_even_at_its_default_value(tmp_path):
    """``--config FILE --batch-size 128 --no-flip``: the typed values win although 128 and "no flip" are the
    flags' defaults; fields typed nowhere come from the file, then from TrainConfig, and the run's config.json
    writes every default out (the framework's lr, every option of the process)."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"framework": "sde", "data": "points:two_moons", "batch_size": 64, "steps": 2,
                                  "flip": True, "sample_every": 100, "process_options": {"drift": "tanh"},
                                  "num_preview": 4, "preview_steps": 2}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--batch-size", "128", "--no-flip",
                 "--process-option", "beta_max=30", "--out", str(out)]) == 0
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["batch_size"], train["flip"], train["steps"], train["lr"]) == (128, False, 2, 1e-3)
    assert train["process"] == "general"
    assert train["process_options"] == {"drift": "tanh", "beta_min": 0.1, "beta_max": 30, "t_min": 1e-3}


def test_sample_uses_the_frameworks_own_sampler_by_default(tmp_path, capsys):
    """An EDM model samples with EDM's Heun sampler unless told otherwise (Karras et al. 2022): 2 steps - 1 NFE."""
    out = tmp_path / "edm"
    assert main(["train", "--framework", "edm", "--data", "points:two_moons", "--steps", "2", "--batch-size", "16",
                 "--sample-every", "100", *PREVIEW, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--steps", "5", "--num-samples", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert "(heun, 9 network evaluations each" in capsys.readouterr().out


@pytest.mark.parametrize("method, extra", [("replace", ["--steps", "3", "--sampler", "ddim"]),
                                           ("repaint", ["--steps", "4", "--option", "jump_length=2",
                                                        "--option", "resample=2"]),
                                           ("dps", ["--steps", "3", "--option", "scale=0.5"]),
                                           ("smc", ["--steps", "3", "--particles", "2", "--proposal", "kalman"])])
def test_inpaint_writes_original_masked_and_filled_rows(run, tmp_path, method, extra, capsys):
    out = tmp_path / f"{method}.png"
    assert main(["inpaint", str(run), "--images", "0", "5", "--num-samples", "3", "--mask", "left",
                 "--method", method, "--out", str(out), *extra]) == 0
    arrays = np.load(tmp_path / f"{method}.npz")
    filled, original, known = arrays["x"], arrays["original"], arrays["mask"]
    assert filled.shape == (6, 1, 8, 8) and known.shape == (1, 8, 8) and known[0, :, :4].sum() == 0
    if method != "dps":                           # replacement keeps the known pixels exactly
        assert np.array_equal(filled[:, known], np.repeat(original, 3, axis=0)[:, known])
    assert Image.open(out).size == (5 * 33 + 1, 2 * 33 + 1)       # original, masked, 3 fillings; 2 rows
    assert f"{method}, mask left" in capsys.readouterr().out
    assert ("log_evidence" in arrays) == (method == "smc")          # SMC's log p(known pixels), one per filling
    if method == "smc":
        assert arrays["log_evidence"].shape == (6,) and np.isfinite(arrays["log_evidence"]).all()


@pytest.mark.parametrize("command", [["inpaint", "--method", "repaint", "--steps", "3"],
                                     ["edit", "--sampler", "pc", "--steps", "2", "--t0", "0.5"]])
def test_an_images_results_do_not_depend_on_the_other_images_or_the_batch_size(run, tmp_path, command):
    """Result j of image i is drawn from its own seed (--seed, i, j): with other images beside it, in other
    batches, it comes out the same."""
    name, *flags = command
    assert main([name, str(run), *flags, "--images", "3", "--num-samples", "2", "--batch-size", "1",
                 "--out", str(tmp_path / "alone.png")]) == 0
    assert main([name, str(run), *flags, "--images", "0", "3", "7", "--num-samples", "2", "--batch-size", "4",
                 "--out", str(tmp_path / "together.png")]) == 0
    alone, together = np.load(tmp_path / "alone.npz")["x"], np.load(tmp_path / "together.npz")["x"]
    assert together.shape == (6, 1, 8, 8) and np.array_equal(alone, together[2:4])
    assert not np.array_equal(alone[0], alone[1])                  # its two results have seeds of their own


def test_inpaint_takes_one_mask_per_image_from_a_npy_file(run, tmp_path, capsys):
    """--mask FILE.npy with a stack (N, H, W): image i is filled in under its own mask, whatever the other images
    and the batch size (per-example masks; each result keeps its own known pixels)."""
    masks = np.ones((3, 8, 8), np.uint8)
    masks[0, :, :4], masks[1, :4], masks[2, 2:6, 2:6] = 0, 0, 0
    np.save(tmp_path / "masks.npy", masks)
    for flags, name in ((["--images", "0", "4", "6", "--batch-size", "5"], "all"),
                        (["--images", "0", "4", "6", "--batch-size", "1"], "one")):
        assert main(["inpaint", str(run), *flags, "--num-samples", "2", "--mask", str(tmp_path / "masks.npy"),
                     "--method", "smc", "--steps", "3", "--particles", "2", "--out", str(tmp_path / f"{name}.png")]) == 0
    together, apart = np.load(tmp_path / "all.npz"), np.load(tmp_path / "one.npz")
    assert np.array_equal(together["x"], apart["x"]) and together["mask"].shape == (3, 1, 8, 8)
    np.testing.assert_allclose(together["log_evidence"], apart["log_evidence"], rtol=1e-6)   # float sums by batch
    known = np.repeat(masks.astype(bool), 2, axis=0)[:, None]
    assert np.array_equal(together["x"][known], np.repeat(together["original"], 2, axis=0)[known])
    np.save(tmp_path / "two.npy", masks[:2])
    assert main(["inpaint", str(run), "--images", "0", "4", "6", "--mask", str(tmp_path / "two.npy"),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "holds 2 masks but 3 images are inpainted" in capsys.readouterr().err
    assert main(["inpaint", str(run), "--images", "0", "--particles", "4", "--out", str(tmp_path / "x.png")]) == 2
    assert "--particles is for --method smc, not repaint" in capsys.readouterr().err


def test_inpainting_defaults_fit_a_ddpm_with_fewer_steps(run, tmp_path, capsys):
    """RePaint's 250 levels and DPS's 1000 steps are the papers'; a DDPM of 50 steps takes all 50 (RePaint's
    walk: 50 levels and 9 resamplings of 10 levels at 4 jump points, 410 network calls)."""
    for method, nfe in (("repaint", 410), ("dps", 50)):
        assert main(["inpaint", str(run), "--method", method, "--images", "0", "--num-samples", "1",
                     "--out", str(tmp_path / f"{method}.png")]) == 0
        assert f"{nfe} network evaluations each" in capsys.readouterr().out
    assert main(["inpaint", str(run), "--method", "dps", "--steps", "60", "--images", "0", "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "--steps" in capsys.readouterr().err


def test_edit_and_classifier_guidance_end_to_end(run, tmp_path, capsys):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.tile(np.array([0, 255], np.uint8).repeat(16), (32, 1))).save(mask)   # right half known
    assert main(["inpaint", str(run), "--images", "1", "--num", "2", "--mask", str(mask), "--steps", "3",
                 "--method", "replace", "--out", str(tmp_path / "m.png")]) == 0
    assert np.load(tmp_path / "m.npz")["mask"][0].sum(0).tolist() == [0] * 4 + [8] * 4
    sketch = tmp_path / "sketch.png"
    Image.fromarray(np.eye(20, dtype=np.uint8) * 255).save(sketch)
    assert main(["edit", str(run), "--input", str(sketch), "--num", "2", "--t0", "0.3", "--steps", "3",
                 "--out", str(tmp_path / "e.png")]) == 0
    assert np.load(tmp_path / "e.npz")["x"].shape == (2, 1, 8, 8)
    assert main(["train-classifier", str(run), "--steps", "3", "--batch-size", "8", "--out",
                 str(tmp_path / "clf")]) == 0
    assert "test accuracy t=0.0" in capsys.readouterr().out
    assert main(["sample", str(run), "--classifier", str(tmp_path / "clf"), "--classifier-scale", "2",
                 "--label", "3", "--steps", "3", "--num", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert np.load(tmp_path / "g.npz")["y"].tolist() == [3, 3, 3, 3]
    assert main(["sample", str(run), "--classifier", str(tmp_path / "clf"), "--guidance", "1",
                 "--out", str(tmp_path / "h.png")]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_a_run_trains_again_from_its_config_json_bit_for_bit(tmp_path):
    """config.json holds every option the run used, the framework's defaults written in (no None for lr, EMA,
    loss or target), and ``train --config RUN/config.json`` trains the same weights again."""
    first = tmp_path / "first"
    assert main(["train", "--framework", "vp", "--steps", "3", "--batch-size", "16", "--sample-every", "100", *PREVIEW,
                 "--network-option", "base_channels=16", "--network-option", "num_res_blocks=1",
                 "--network-option", "norm_groups=8", "--loss-option", "gamma=3", "--loss", "min-snr",
                 "--out", str(first)]) == 0
    saved = json.loads((first / "config.json").read_text())
    train = saved["train"]
    assert None not in (train["lr"], train["ema_decay"], train["loss"], train["target"], train["warmup"])
    assert (train["lr"], train["ema_decay"], train["target"], train["network"]) == (2e-4, 0.9999, "eps", "digits8")
    assert train["loss_options"] == {"gamma": 3.0} and train["process"] == "vp"
    assert train["process_options"] == {"beta_min": 0.1, "beta_max": 20.0}
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.json"), "--out", str(again)]) == 0
    a, b = load_checkpoint(first), load_checkpoint(again)
    assert a.step == b.step == 3 and a.model.keys() == b.model.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]) and torch.equal(a.ema[key], b.ema[key]), key
    resaved = json.loads((again / "config.json").read_text())
    assert {**resaved["train"], "out": None} == {**train, "out": None} and resaved["model"] == saved["model"]


def test_an_energy_image_model_takes_metropolis_correctors_with_the_default_flags(tmp_path, capsys):
    """An energy model of images, class-conditional, under every command that samples, with the default
    --clip-denoised: the clipping wrapper keeps the energy, and each command reports the acceptance rate (the SMC
    sampler's moves are MALA by default)."""
    run = tmp_path / "energy"
    assert main(["train", "--framework", "vp", "--parameterization", "energy", "--class-conditional", "--steps", "3",
                 "--batch-size", "16", "--sample-every", "100", *PREVIEW, "--network-option", "base_channels=16",
                 "--network-option", "num_res_blocks=1", "--network-option", "norm_groups=8",
                 "--network-option", "attention_resolutions=[]", "--out", str(run)]) == 0
    mala = ["--option", "corrector=mala", "--out"]
    for command in (["sample", str(run), "--sampler", "pc", "--steps", "2", "--num-samples", "4", *mala],
                    ["sample", str(run), "--sampler", "pc", "--steps", "2", "--num-samples", "4", "--label", "3",
                     "--guidance", "1", *mala],
                    ["inpaint", str(run), "--method", "replace", "--sampler", "pc", "--steps", "2", "--images", "0",
                     "--num-samples", "2", *mala],
                    ["edit", str(run), "--sampler", "pc", "--steps", "2", "--images", "0", "--num-samples", "2",
                     *mala],
                    ["sample", str(run), "--sampler", "smc", "--steps", "2", "--num-samples", "4", "--label", "3",
                     "--out"]):
        capsys.readouterr()
        assert main(command + [str(tmp_path / f"{command[0]}.png")]) == 0, capsys.readouterr().err
        assert "of Metropolis proposals accepted" in capsys.readouterr().out, command


def test_an_energy_model_trains_and_samples_with_a_metropolis_corrector(tmp_path, capsys):
    out = tmp_path / "energy"
    assert main(["train", "--framework", "vp", "--data", "points:two_moons", "--parameterization", "energy",
                 "--steps", "4", "--batch-size", "32", "--out", str(out), "--sample-every", "100", *PREVIEW]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["parameterization"] == "energy"
    assert main(["sample", str(out), "--sampler", "pc", "--steps", "3", "--num", "8", "--option", "corrector=mala",
                 "--option", "target_snr=0.3", "--out", str(tmp_path / "e.png")]) == 0
    assert np.load(tmp_path / "e.npz")["x"].shape == (8, 2)
    assert "pc, 10 network evaluations" in capsys.readouterr().out        # 3 x (predictor + 2 for MALA) + 1


def test_a_run_on_an_array_file_takes_every_image_command_with_its_defaults(unconditional_run, tmp_path):
    """An array file has one split: nll, interpolate and inpaint read it (the run's data) without --split."""
    run = unconditional_run
    assert main(["nll", str(run), "--num", "2"]) == 0
    assert main(["interpolate", str(run), "--frames", "3", "--steps", "2", "--out", str(tmp_path / "i.png")]) == 0
    assert main(["inpaint", str(run), "--images", "0", "--num-samples", "1", "--steps", "3",
                 "--out", str(tmp_path / "p.png")]) == 0


def test_searched_times_are_saved_beside_the_run_and_reused(run, tmp_path, capsys):
    """``scorelab search-times`` writes RUN/times/SAMPLER-N.json; ``sample --times searched`` reads it back (no
    new search) and draws exactly what ``--times FILE`` draws."""
    assert main(["search-times", str(run), "--steps", "4", "--teacher-steps", "12", "--batch", "8"]) == 0
    saved = json.loads((run / "times" / "ipndm-4.json").read_text())
    assert len(saved["times"]) == 4 and saved["times"][0] == 1.0 and saved["extra"]["checkpoint_step"] == 4
    assert saved["sampler"] == "ipndm" and len(saved["candidates"]) == 6
    common = ["--sampler", "ipndm", "--steps", "4", "--num", "3"]
    assert main(["sample", str(run), *common, "--times", "searched", "--out", str(tmp_path / "a.png")]) == 0
    assert "read the ipndm grid of 4 times" in capsys.readouterr().out
    file = str(run / "times" / "ipndm-4.json")
    assert main(["sample", str(run), *common, "--times", file, "--out", str(tmp_path / "b.png")]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["x"], np.load(tmp_path / "b.npz")["x"])
    assert main(["sample", str(run), "--sampler", "pc", "--times", file, "--out", str(tmp_path / "c.png")]) == 2
    assert "walks no evaluation grid" in capsys.readouterr().err


def test_the_shipped_recipes_load_and_the_fashion_mnist_one_is_the_recorded_run():
    """Every ``configs/*.json`` is a valid recipe; ``configs/fashion-mnist.json`` gives the model and options of the
    run recorded in ``docs/fashion-mnist/run-config.json`` (all but the data's path and the total steps: that run
    was configured for 3,000 and evaluated at its step-2,000 checkpoint, with no schedule depending on the total).
    Options the record predates are compared where it has them."""
    from pathlib import Path

    from scorelab.cli import _read_config
    from scorelab.data import ImageSet
    from scorelab.training import TrainConfig, make_model_spec

    root = Path(__file__).resolve().parent.parent
    recipes = {p.name: TrainConfig.from_dict(_read_config(str(p))) for p in sorted((root / "configs").glob("*.json"))}
    assert recipes and all(c.data.startswith("fashion-mnist:") for c in recipes.values())
    recorded = json.loads((root / "docs" / "fashion-mnist" / "run-config.json").read_text())
    config = recipes["fashion-mnist.json"]
    images = ImageSet(np.zeros((2, 1, 28, 28), np.uint8), np.zeros(2, np.int64))
    spec = make_model_spec(config, images).to_dict()
    model = recorded["model"]
    assert {k: spec[k] for k in model if k != "network"} == {k: v for k, v in model.items() if k != "network"}
    assert {k: spec["network"][k] for k in model["network"]} == model["network"]
    mine = config.resolve((1, 28, 28)).to_dict()
    differ = {k for k, v in recorded["train"].items() if v not in (None, {}) and mine[k] != v}
    assert differ == {"data", "steps"}, {k: (recorded["train"][k], mine[k]) for k in differ}
