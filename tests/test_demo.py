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
    for name in DEMO_SAMPLERS:                         # ancestral, predictor-corrector, probability-flow ODE
        share, classes, n = recognised(judge, tmp_path / f"samples_{name}.npz")
        assert n == 100 and share >= 0.9 and classes == set(range(10)), (name, share)
    numbers = json.loads((tmp_path / "numbers.json").read_text())
    assert 0 < numbers["test_bits_per_dim_vlb"]["value"] < 8         # better than uniform 8-bit noise
    text = report.path.read_text()
    for picture in ["samples_ancestral.png", "samples_pc.png", "samples_ode.png", "forward_noising.png", "loss.png"]:
        assert picture in text and (tmp_path / picture).is_file()
