"""Sample-quality metrics on feature vectors: FID, KID, precision/recall, Inception Score.

Every function takes features as ``(N, D)`` arrays or tensors (Inception pool
features, the in-domain classifier's, or raw pixels) and computes in float64:

* :func:`frechet_distance` (Heusel et al. 2017): between Gaussians fitted to the
  two sets, ``||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``. The trace of
  the matrix square root is taken as ``sum sqrt(eig(S_1^{1/2} S_2 S_1^{1/2}))``,
  a symmetric eigenproblem (no complex parts to discard, unlike ``sqrtm``).
* :func:`kernel_inception_distance` (Binkowski et al. 2018): the unbiased MMD^2
  with the cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over
  random subsets; zero in expectation when both sets come from one distribution.
* :func:`precision_recall` (Kynkaanniemi et al. 2019): each set's manifold is the
  union of balls around its points, radius = distance to the k-th nearest
  neighbour within the set; precision = share of generated points inside the
  real manifold, recall = share of real points inside the generated one.
* :func:`inception_score` (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))``
  over splits, from class probabilities.
* :func:`two_sample_classifier_accuracy` (the classifier two-sample test, Lopez-Paz
  & Oquab 2017): the cross-validated accuracy of a gradient-boosted classifier
  told to separate the two sets; 0.5 when it cannot, 1 when they never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._util import is_int, require

__all__ = ["FeatureStats", "feature_stats", "frechet_distance", "fid_from_features",
           "kernel_inception_distance", "precision_recall", "inception_score", "two_sample_classifier_accuracy"]

ArrayLike = Tensor | np.ndarray


def _features(x: ArrayLike, name: str = "features") -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu().double()
    require(x.ndim == 2, f"{name} must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    require(bool(torch.isfinite(x).all()), f"{name} hold NaN or Inf values; check the samples fed to the extractor")
    return x


def _pair(a: ArrayLike, b: ArrayLike, need: int = 2) -> tuple[Tensor, Tensor]:
    a, b = _features(a, "the first feature set"), _features(b, "the second feature set")
    require(a.shape[1] == b.shape[1], f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    require(len(a) >= need and len(b) >= need,
            f"each feature set needs at least {need} rows, got {len(a)} and {len(b)}")
    return a, b


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance (unbiased, N - 1) of a feature set: what FID compares."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def feature_stats(features: ArrayLike) -> FeatureStats:
    """The Gaussian fit ``(mu, Sigma)`` of ``features`` (N, D), N >= 2."""
    f = _features(features)
    require(len(f) >= 2, f"the statistics need at least 2 feature rows, got {len(f)}")
    mu = f.mean(0)
    centred = f - mu
    sigma = centred.T @ centred / (len(f) - 1)
    return FeatureStats(mu.numpy(), sigma.numpy(), len(f))


def _sqrt_psd(s: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    d = mu1.numel()
    require(mu2.numel() == d and s1.shape == (d, d) and s2.shape == (d, d),
            f"mean and covariance shapes do not agree: {d}, {mu2.numel()}, {tuple(s1.shape)}, {tuple(s2.shape)}")
    root1 = _sqrt_psd(s1)
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    value = float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross)
    return max(value, 0.0)


def fid_from_features(a: ArrayLike | FeatureStats, b: ArrayLike | FeatureStats) -> float:
    """Frechet distance of the Gaussian fits of two feature sets (or of precomputed :class:`FeatureStats`)."""
    sa = a if isinstance(a, FeatureStats) else feature_stats(a)
    sb = b if isinstance(b, FeatureStats) else feature_stats(b)
    require(len(sa.mu) == len(sb.mu), f"feature sets differ in dimension: {len(sa.mu)} vs {len(sb.mu)}")
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def _polynomial_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3 (the U-statistic: diagonal terms left out)."""
    d, m, n = x.shape[1], len(x), len(y)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * kxy.mean())


def kernel_inception_distance(a: ArrayLike, b: ArrayLike, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation (population, ``np.std`` as in Binkowski et al.'s code) over
    ``num_subsets`` random subsets of the unbiased MMD^2.

    Subsets hold ``min(subset_size, len(a), len(b))`` rows of each set, drawn
    without replacement with a generator seeded ``seed``.
    """
    a, b = _pair(a, b)
    require(num_subsets >= 1 and subset_size >= 2, "KID needs num_subsets >= 1 and subset_size >= 2")
    size = min(subset_size, len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    values = torch.stack([_polynomial_mmd2(a[torch.randperm(len(a), generator=g)[:size]],
                                           b[torch.randperm(len(b), generator=g)[:size]])
                          for _ in range(num_subsets)])
    return float(values.mean()), float(values.std(correction=0))


def _kth_neighbour_radii(x: Tensor, k: int, chunk: int) -> Tensor:
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)      # +1: the point itself is at distance 0
    return torch.cat(radii)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    inside = []
    for i in range(0, len(points), chunk):
        inside.append((torch.cdist(points[i:i + chunk], centres) <= radii).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN radii (their default k = 3)."""
    real, fake = _pair(real, fake, need=k + 1)
    require(is_int(k) and k >= 1, f"k must be a positive integer, got {k!r}")
    precision = _inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk).double().mean()
    recall = _inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


def inception_score(probs: ArrayLike, *, splits: int = 10) -> tuple[float, float]:
    """IS: mean and standard deviation (population, ``np.std`` as in Salimans et al.'s code) over ``splits``
    equal parts of ``exp E KL(p(y|x) || p(y))``."""
    p = _features(probs, "class probabilities")
    require(bool((p >= 0).all()) and bool(torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype), atol=1e-4)),
            "class probabilities must be non-negative rows that sum to 1 (pass softmax outputs, not logits)")
    require(1 <= splits <= len(p), f"splits must lie in 1..{len(p)}, got {splits}")
    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.clamp(min=1e-30).log() - marginal.clamp(min=1e-30).log())).sum(1).mean()
        scores.append(kl.exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(correction=0))


def two_sample_classifier_accuracy(a: ArrayLike, b: ArrayLike, *, folds: int = 5, seed: int = 0) -> float:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017): mean held-out accuracy over ``folds``
    stratified folds of scikit-learn's histogram gradient-boosted trees labelling rows of ``a`` 0 and
    rows of ``b`` 1, scored by balanced accuracy (the mean of the two classes' recalls), so 0.5 is the chance
    level at any set sizes."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    a, b = _pair(a, b, need=folds)
    x = torch.cat([a, b]).numpy()
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = HistGradientBoostingClassifier(random_state=seed)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=cv, scoring="balanced_accuracy").mean())
