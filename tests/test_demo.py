"""``scorelab demo``: the digits it draws are recognisable to a classifier trained here on real digits."""

import json

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from scorelab.data import load_digits
from scorelab.demo import DEMO_SAMPLERS, run_demo


@pytest.fixture(scope="module")
def judge():
    """A classifier of real digits (another architecture and seed than the demo's own)."""
    train = load_digits("train")
    clf = MLPClassifier((128, 64), max_iter=3000, random_state=1)
    clf.fit(train.images.reshape(len(train), -1) / 255.0, train.labels)
    test = load_digits("test")
    p = clf.predict_proba(test.images.reshape(len(test), -1) / 255.0)
    # The judge itself must pass the bar on real held-out digits, or it cannot judge samples.
    assert ((p.max(1) >= 0.9) & (p.argmax(1) == test.labels)).mean() >= 0.9
    return clf


def recognised(clf, path):
    arrays = np.load(path)
    p = clf.predict_proba(arrays["x"].reshape(len(arrays["x"]), -1) / 255.0)
    confident = p.max(1) >= 0.9
    return (confident & (p.argmax(1) == arrays["y"])).mean(), set(p.argmax(1)[confident].tolist()), len(arrays["x"])


def test_demo_draws_recognisable_digits(tmp_path, judge):
    # The demo as shipped, with 200 rather than 500 guided samples in the tally (45 s less of the suite).
    report = run_demo(tmp_path, seed=0, progress=False, num_eval=200)
    share, classes, n = recognised(judge, tmp_path / "samples_ancestral_200.npz")
    assert n == 200 and share >= 0.9 and classes == set(range(10)), share
    for name in DEMO_SAMPLERS:                         # dpm++2m, ancestral, predictor-corrector, probability-flow ODE
        share, classes, n = recognised(judge, tmp_path / f"samples_{name}.npz")
        assert n == 100 and share >= 0.9 and classes == set(range(10)), (name, share)
    numbers = json.loads((tmp_path / "numbers.json").read_text())
    assert 0 < numbers["test_bits_per_dim_vlb"]["value"] < 8         # better than uniform 8-bit noise
    # Fidelity and diversity at once against the held-out digits (issue 14 asks 0.85 and 0.80; the shipped demo
    # measures its figures in README, these bounds leave 0.05 for another machine's arithmetic). The floor
    # row, real training digits, must itself score near 0.9 and near chance, or the metrics are broken.
    floor = numbers["real_training_digits"]
    assert min(floor[k] for k in ("precision_pixels", "recall_pixels", "precision_features", "recall_features")) > 0.83
    assert floor["two_sample_accuracy"] < 0.6
    chosen = numbers[f"samples_{next(iter(DEMO_SAMPLERS))}"]
    for key in ("precision_pixels", "recall_pixels", "precision_features", "recall_features"):
        assert chosen[key] >= 0.80, (key, chosen[key])
    assert chosen["two_sample_accuracy"] <= 0.80, chosen
    text = report.path.read_text()
    for picture in [*(f"samples_{name}.png" for name in DEMO_SAMPLERS), "forward_noising.png", "loss.png"]:
        assert picture in text and (tmp_path / picture).is_file()
