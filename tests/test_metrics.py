"""FID, KID, precision/recall and IS against closed forms, an independent sqrtm computation and
point sets with known answers."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from scorelab.evaluation import (feature_stats, fid_from_features, frechet_distance, inception_score,
                                 kernel_inception_distance, precision_recall, two_sample_classifier_accuracy)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_for_commuting_gaussians():
    # Diagonal covariances: W2^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_as_pytorch_fid_computes_it():
    rng = np.random.default_rng(1)
    for d in (3, 20, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real          # pytorch-fid's formula
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_from_features_uses_the_unbiased_covariance():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((500, 8)), rng.standard_normal((300, 8)) * 1.5 + 0.3
    st = feature_stats(x)
    np.testing.assert_allclose(st.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.sigma, np.cov(x, rowvar=False), rtol=1e-10)
    covmean = scipy.linalg.sqrtm(np.cov(x, rowvar=False) @ np.cov(y, rowvar=False)).real
    expected = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(np.cov(x, rowvar=False))
                + np.trace(np.cov(y, rowvar=False)) - 2 * np.trace(covmean))
    assert fid_from_features(x, y) == pytest.approx(expected, rel=1e-8)
    assert fid_from_features(st, feature_stats(y)) == pytest.approx(expected, rel=1e-8)


def test_kid_is_unbiased_against_the_closed_form_mmd():
    # D = 1: k(x, y) = (xy + 1)^3 = x^3 y^3 + 3 x^2 y^2 + 3 x y + 1, so with N(0, 1) against N(m, 1)
    # (E x = m, E x^2 = m^2 + 1, E x^3 = m^3 + 3m) the population MMD^2 is a polynomial in m.
    m = 0.5
    e1, e2, e3 = m, m * m + 1, m ** 3 + 3 * m
    kxx, kyy, kxy = 3 + 1, e3 ** 2 + 3 * e2 ** 2 + 3 * e1 ** 2 + 1, 3 * e2 + 1
    exact = kxx + kyy - 2 * kxy
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 1, generator=g, dtype=torch.float64) + m
    mean, std = kernel_inception_distance(x, y, num_subsets=400, subset_size=200, seed=0)
    stderr = std / 400 ** 0.5
    assert abs(mean - exact) < 4 * stderr, (mean, exact, stderr)
    # One distribution against itself: zero in expectation, where the V-statistic would be ~ 2 E k(x,x) / n > 0.
    z = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    mean0, std0 = kernel_inception_distance(x, z, num_subsets=400, subset_size=200, seed=1)
    assert abs(mean0) < 4 * std0 / 400 ** 0.5
    biased_floor = 2 * float(((x[:200] ** 2 + 1) ** 3).mean()) / 200
    assert abs(mean0) < biased_floor / 5


def test_precision_recall_on_point_sets_with_known_answers():
    # Real: the integers 0..99 on a line. With k = 3 an interior point's ball has radius 2, an end point's 3,
    # so the real manifold is [-3, 102]. Fake: 0.5, ..., 49.5 (inside) and 200..249 (far away).
    real = np.arange(100, dtype=float)[:, None]
    fake = np.concatenate([np.arange(50) + 0.5, np.arange(200, 250)]).astype(float)[:, None]
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == pytest.approx(0.5)
    # The fake manifold near the data: 0.5 and 49.5 have radius 3, the rest 2: it covers [-2.5, 52.5],
    # i.e. the reals 0..52.
    assert recall == pytest.approx(0.53)
    assert precision_recall(real, real, k=3) == (1.0, 1.0)


def test_two_sample_classifier_reaches_the_bayes_accuracy_and_chance():
    """Two unit Gaussians whose means are delta apart can be told apart at best with accuracy
    Phi(delta / 2) (0.841 for delta = 2); from one distribution, at chance (0.5)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1000, 2))
    shifted = rng.standard_normal((1000, 2)) + np.array([2.0, 0.0])
    bayes = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert bayes - 0.06 < two_sample_classifier_accuracy(a, shifted) < bayes + 0.02      # measured 0.81-0.82
    assert abs(two_sample_classifier_accuracy(a, rng.standard_normal((1000, 2))) - 0.5) < 0.05


def test_inception_score_known_values():
    one_hot = np.eye(10)[np.arange(1000) % 10]
    assert inception_score(one_hot, splits=1)[0] == pytest.approx(10.0)
    same = np.tile(np.full(10, 0.1), (1000, 1))
    assert inception_score(same, splits=1)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.full((10, 4), 2.0))


def test_metrics_refuse_bad_features():
    with pytest.raises(ValueError, match="differ in dimension"):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((5, 3), np.nan), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="2-D"):
        precision_recall(np.zeros(5), np.zeros(5))
