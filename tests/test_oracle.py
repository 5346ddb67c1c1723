"""The Gaussian-mixture oracle against scipy, autograd, Monte Carlo and quadrature (MATH.md 6)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import scorelab as sl
from conftest import mixture_16d_params, mixture_2d_params

PROCESSES = [sl.DDPM(), sl.NCSN(), sl.VPSDE(), sl.SubVPSDE(), sl.VESDE()]
TIMES = [0.002, 0.05, 0.3, 0.7, 1.0]


def coefs(process, t):
    t = torch.tensor(t, dtype=torch.float64)
    return process.signal_scale(t).item(), process.noise_std(t).item()


def scipy_mixture_logpdf(x, weights, means, covs):
    comps = [np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in zip(weights, means, covs)]
    return np.logaddexp.reduce(np.stack(comps), axis=0)


@pytest.mark.parametrize("params", [mixture_2d_params, mixture_16d_params], ids=["2d", "16d"])
def test_log_prob_matches_scipy(params):
    weights, means, covs = params()
    gm = sl.GaussianMixture(weights, means, covs)
    x = np.random.default_rng(0).normal(size=(50, means.shape[1]))
    np.testing.assert_allclose(gm.log_prob(torch.tensor(x)).numpy(),
                               scipy_mixture_logpdf(x, weights, means, covs), rtol=1e-10)


def test_diagonal_and_isotropic_forms_match_full():
    w, m = [0.25, 0.75], np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]])
    diag = np.array([[0.5, 0.2, 1.0], [0.3, 0.3, 0.3]])
    x = torch.tensor(np.random.default_rng(1).normal(size=(20, 3)))
    full = sl.GaussianMixture(w, m, np.stack([np.diag(d) for d in diag]))
    cheap = sl.GaussianMixture(w, m, diag)
    torch.testing.assert_close(cheap.log_prob(x), full.log_prob(x))
    torch.testing.assert_close(cheap.marginal_score(x, 0.4, sl.VPSDE()), full.marginal_score(x, 0.4, sl.VPSDE()))
    torch.testing.assert_close(cheap.denoise(x, 0.4, sl.VESDE()), full.denoise(x, 0.4, sl.VESDE()))
    iso = sl.GaussianMixture(w, m, [0.4, 0.3])
    x_np = x.numpy()
    expect = np.logaddexp(np.log(0.25) + multivariate_normal(m[0], 0.4 * np.eye(3)).logpdf(x_np),
                          np.log(0.75) + multivariate_normal(m[1], 0.3 * np.eye(3)).logpdf(x_np))
    np.testing.assert_allclose(iso.log_prob(x).numpy(), expect, rtol=1e-10)


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
@pytest.mark.parametrize("params", [mixture_2d_params, mixture_16d_params], ids=["2d", "16d"])
def test_marginal_log_prob_is_the_noised_mixture_and_score_is_its_gradient(process, params):
    weights, means, covs = params()
    gm = sl.GaussianMixture(weights, means, covs)
    d = means.shape[1]
    rng = np.random.default_rng(2)
    for t in TIMES:
        a, s = coefs(process, t)
        x = torch.tensor(a * means[rng.integers(0, len(weights), 8)] + rng.normal(size=(8, d)) * (0.5 + s),
                         requires_grad=True)
        logp = gm.marginal_log_prob(x, t, process)
        expect = scipy_mixture_logpdf(x.detach().numpy(), weights, a * means,
                                      a**2 * covs + s**2 * np.eye(d))
        np.testing.assert_allclose(logp.detach().numpy(), expect, rtol=1e-9)
        (grad,) = torch.autograd.grad(logp.sum(), x)
        torch.testing.assert_close(gm.marginal_score(x.detach(), t, process), grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("process", [sl.VPSDE(), sl.VESDE(), sl.DDPM()], ids=repr)
def test_denoiser_matches_monte_carlo_posterior_mean(mixture_2d, process):
    """E[x0 | x_t] by self-normalised importance sampling over prior draws of x0."""
    g = torch.Generator().manual_seed(5)
    x0 = mixture_2d.sample(400_000, g, dtype=torch.float64)
    for t in (0.2, 0.5):
        a, s = coefs(process, t)
        xt = a * mixture_2d.sample(4, g, dtype=torch.float64) + s * torch.randn(4, 2, generator=g, dtype=torch.float64)
        for x in xt:
            logw = -((x - a * x0) ** 2).sum(1) / (2 * s**2)
            w = torch.softmax(logw, 0)
            est = (w[:, None] * x0).sum(0)
            ess = 1 / (w**2).sum()
            post_sd = torch.sqrt((w[:, None] * (x0 - est) ** 2).sum(0))
            exact = mixture_2d.denoise(x[None], t, process)[0]
            assert ess > 1000
            assert ((est - exact).abs() < 5 * post_sd / ess.sqrt() + 1e-12).all(), (t, est, exact)


@pytest.mark.parametrize("process", [sl.VPSDE(), sl.SubVPSDE(), sl.NCSN()], ids=repr)
def test_marginal_density_matches_sampling_then_noising(mixture_2d, process):
    """Box probabilities of (x0 ~ mixture, then noised) against quadrature of exp(marginal_log_prob)."""
    g = torch.Generator().manual_seed(6)
    n = 200_000
    for t in (0.1, 0.5):
        x0 = mixture_2d.sample(n, g, dtype=torch.float64)
        xt, _ = process.perturb(x0, t, generator=g)
        grid = torch.linspace(-4, 4, 801, dtype=torch.float64)
        gx, gy = torch.meshgrid(grid, grid, indexing="ij")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
        dens = mixture_2d.marginal_log_prob(pts, t, process).exp().reshape(801, 801)
        h = (grid[1] - grid[0]).item()
        for lo_x, hi_x, lo_y, hi_y in [(-2, 0, 0, 2), (0, 2, 0, 2), (0, 2, -2, 0), (-1, 1, -1, 1)]:
            inside = ((grid >= lo_x) & (grid <= hi_x))[:, None] & ((grid >= lo_y) & (grid <= hi_y))[None]
            # trapezoid rule on the box
            wx = torch.where((grid == lo_x) | (grid == hi_x), 0.5, 1.0)
            wy = torch.where((grid == lo_y) | (grid == hi_y), 0.5, 1.0)
            mass = (dens * inside * wx[:, None] * wy[None]).sum().item() * h * h
            frac = ((xt[:, 0] >= lo_x) & (xt[:, 0] <= hi_x) & (xt[:, 1] >= lo_y) & (xt[:, 1] <= hi_y)).double().mean().item()
            se = math.sqrt(mass * (1 - mass) / n)
            assert abs(frac - mass) < 5 * se, (t, (lo_x, hi_x, lo_y, hi_y), frac, mass)


@pytest.mark.parametrize("params", [mixture_2d_params, mixture_16d_params], ids=["2d", "16d"])
def test_samples_have_the_mixture_moments(params):
    weights, means, covs = params()
    gm = sl.GaussianMixture(weights, means, covs)
    x, labels = gm.sample(100_000, torch.Generator().manual_seed(7), dtype=torch.float64, return_labels=True)
    n = x.shape[0]
    freq = torch.bincount(labels, minlength=len(weights)).double() / n
    assert (np.abs(freq.numpy() - weights) < 5 * np.sqrt(weights * (1 - weights) / n)).all()
    mean = weights @ means
    cov = sum(w * (c + np.outer(m - mean, m - mean)) for w, m, c in zip(weights, means, covs))
    np.testing.assert_allclose(gm.mean().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(gm.covariance().numpy(), cov, rtol=1e-10, atol=1e-12)
    sd = np.sqrt(np.diag(cov))
    assert (np.abs(x.mean(0).numpy() - mean) < 5 * sd / np.sqrt(n)).all()
    # each covariance entry: SE of a sample covariance <= sqrt((s_ii s_jj + s_ij^2)/n) for Gaussians; mixtures
    # are heavier-tailed, so allow a factor 8.
    se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / n)
    assert (np.abs(np.cov(x.numpy().T) - cov) < 8 * se).all()


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_exact_model_predicts_through_the_common_interface(mixture_16d, process):
    """eps = -s score, and Tweedie's x0 from eps equals the explicit posterior mean, for images too."""
    model = mixture_16d.model(process)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.9, 1.0], dtype=torch.float64)
    pred = model.predict(x, t)
    assert pred.eps.shape == x.shape
    torch.testing.assert_close(pred.score, mixture_16d.marginal_score(x, t, process))
    torch.testing.assert_close(pred.x0, mixture_16d.denoise(x, t, process), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(model.log_prob(x, t), mixture_16d.marginal_log_prob(x.reshape(6, 16), t, process))


@pytest.mark.parametrize("args, words", [
    (([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0]), "sum to 1"),
    (([1.5, -0.5], [[0.0], [1.0]], [1.0, 1.0]), "non-negative"),
    (([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0]), "positive definite"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]), "symmetric"),
    (([0.5, 0.5], [[0.0, 0.0, 0.0]], [1.0, 1.0]), "means must have shape"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0, 1.0]]), "covariances must have shape"),
])
def test_bad_mixtures_raise_clear_value_errors(args, words):
    with pytest.raises(ValueError, match=words):
        sl.GaussianMixture(*args)


def test_wrong_dimension_raises(mixture_2d):
    with pytest.raises(ValueError, match="3 dimensions but the mixture has 2"):
        mixture_2d.log_prob(torch.zeros(4, 3))
