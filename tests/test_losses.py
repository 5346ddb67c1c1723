"""Losses against closed forms, scipy and the optimality of the exact model (MATH.md 2-4, 6)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import scorelab as sl
from conftest import random_spd
from scorelab.objectives import (discretized_gaussian_log_likelihood, dsm_loss, hybrid_loss, prior_kl,
                             simple_loss, vlb, vlb_term)


def ho_tables(n=1000):
    betas = np.linspace(1e-4, 0.02, n)
    alphas = 1 - betas
    abar = np.concatenate([[1.0], np.cumprod(alphas)])
    beta_tilde = np.concatenate([[0.0], (1 - abar[:-1]) / (1 - abar[1:]) * betas])
    return np.concatenate([[0.0], betas]), np.concatenate([[1.0], alphas]), abar, beta_tilde


@pytest.fixture(scope="module")
def unit_mixture():
    """A 2-D mixture well inside [-1, 1], for the image-scale (VLB) losses."""
    return sl.GaussianMixture([0.3, 0.7], [[-0.4, 0.2], [0.35, -0.1]],
                              [[[0.02, 0.005], [0.005, 0.01]], [[0.015, 0.0], [0.0, 0.03]]])


# ---------------------------------------------------------------------------------------
# The exact model minimises every loss
# ---------------------------------------------------------------------------------------
class Perturbed(sl.ModelBase):
    """The exact model with ``delta * d(x, t)`` added to its eps, ``d`` a fixed smooth field."""

    def __init__(self, model, delta, frac=None):
        self.model, self.process, self.delta, self.frac = model, model.process, delta, frac

    @property
    def learned_variance(self) -> bool:
        return self.frac is not None

    def predict(self, x, t):
        p = self.model.predict(x, t)
        tt = p.t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        d = torch.cos(1.3 * x + 2.0 * tt + 0.5) + 0.3
        frac = None if self.frac is None else torch.full_like(x, self.frac)
        return sl.Prediction(p.x, p.t, p.a, p.s, eps=p.eps + self.delta * d, variance_frac=frac)


def first_order_z(loss_fn, model, h=0.05):
    """(z-score of dL/d delta at 0, mean curvature) with common random numbers for delta in {-h, 0, h}."""
    losses = [loss_fn(Perturbed(model, delta)).double() for delta in (-h, 0.0, h)]
    slope = (losses[2] - losses[0]) / (2 * h)
    z = slope.mean() / (slope.std() / math.sqrt(len(slope)))
    curvature = ((losses[2] + losses[0] - 2 * losses[1]) / h**2).mean()
    return z.item(), curvature.item(), [l.mean().item() for l in losses]


def loss_cases(mixture):
    n = 20000

    def data(seed):
        return mixture.sample(n, torch.Generator().manual_seed(seed))

    def call(fn, **kw):
        return lambda model: fn(model, data(10), generator=torch.Generator().manual_seed(11), **kw)

    # g^2 / s^2 ~ 1/t under U[1e-5, 1] makes the g2-weighted loss's noise huge (why Song et al.
    # importance-sample it); optimality at every t of a fixed grid is the same claim, with power.
    grid = torch.linspace(0.01, 1.0, n, dtype=torch.float64)

    def kl_terms(model):  # L_{t-1} at uniformly drawn steps 2..T
        steps = torch.randint(2, 1001, (n,), generator=torch.Generator().manual_seed(12))
        return vlb_term(model, data(10), steps, variance="beta", generator=torch.Generator().manual_seed(11))

    def hybrid(model):
        model.frac = 0.3
        return hybrid_loss(model, data(10), generator=torch.Generator().manual_seed(11))

    return [
        ("L_simple/ddpm", sl.DDPM(), call(simple_loss)),
        ("L_vlb terms/ddpm", sl.DDPM(), kl_terms),
        ("L_hybrid/ddpm", sl.DDPM(), hybrid),
        ("dsm/ncsn", sl.NCSN(), call(dsm_loss)),
        ("dsm s2/vp", sl.VPSDE(), call(dsm_loss)),
        ("dsm s2/subvp", sl.SubVPSDE(), call(dsm_loss)),
        ("dsm s2/ve", sl.VESDE(0.01, 5.0), call(dsm_loss)),
        ("dsm g2/vp", sl.VPSDE(), call(dsm_loss, weighting="g2", t=grid)),
        ("dsm g2/ve", sl.VESDE(0.01, 5.0), call(dsm_loss, weighting="g2", t=grid)),
        ("dsm min-snr/ddpm", sl.DDPM(), call(dsm_loss, weighting="min-snr")),
        ("dsm edm/edm", sl.VESDE(0.002, 5.0), call(dsm_loss, weighting="preconditioned")),
    ]


@pytest.mark.parametrize("case", range(11))
def test_exact_model_minimises_each_loss(unit_mixture, case):
    """At the exact model, the expected loss is stationary (slope within its noise) and rises either way."""
    name, process, loss_fn = loss_cases(unit_mixture)[case]
    z, curvature, (l_minus, l_zero, l_plus) = first_order_z(loss_fn, unit_mixture.model(process))
    assert abs(z) < 4, (name, z)
    assert curvature > 0 and l_zero < l_minus and l_zero < l_plus, (name, l_minus, l_zero, l_plus)
    # control: a model off by 0.2 d(x, t) is detected, so the check has the power to fail
    z_wrong, _, _ = first_order_z(loss_fn, Perturbed(unit_mixture.model(process), 0.2))
    assert abs(z_wrong) > 10, (name, z_wrong)


# ---------------------------------------------------------------------------------------
# DSM: the irreducible loss of the exact score
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", [sl.VPSDE(), sl.SubVPSDE(), sl.VESDE(), sl.NCSN(), sl.DDPM()], ids=repr)
@pytest.mark.parametrize("weighting", ["s2", "g2", "min-snr"])
def test_dsm_of_exact_score_equals_its_irreducible_value(process, weighting):
    """For Gaussian data N(m, C): E || grad log p_t - grad log q(x_t | x0) ||^2 = D / s^2 - tr(Sigma_t^-1),
    Sigma_t = a^2 C + s^2 I (derived in the test from E[eps u^T] = s I with u = a (x0 - m) + s eps)."""
    rng = np.random.default_rng(3)
    d = 16
    cov = random_spd(rng, d, 0.05, 1.5)
    mean = rng.normal(size=d)
    gm = sl.GaussianMixture([1.0], mean[None], cov[None])
    model = gm.model(process)
    eig = np.linalg.eigvalsh(cov)
    n = 8000
    for t in (0.05, 0.3, 0.8):
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = process.signal_scale(tt).item(), process.noise_std(tt).item()
        lam = {"s2": s**2, "g2": process.diffusion(tt).item() ** 2,
               "min-snr": s**2 * min(1.0, 5.0 * (s / a) ** 2)}[weighting]
        irreducible = lam * (d / s**2 - np.sum(1 / (a**2 * eig + s**2)))
        x0 = gm.sample(n, torch.Generator().manual_seed(int(t * 100)), dtype=torch.float64)
        loss = dsm_loss(model, x0, t=t, weighting=weighting, generator=torch.Generator().manual_seed(1))
        se = loss.std().item() / math.sqrt(n)
        assert abs(loss.mean().item() - irreducible) < 4 * se, (t, loss.mean().item(), irreducible, se)


def test_simple_loss_is_eps_mse_and_dsm_is_its_score_form(unit_mixture):
    """L_simple = mean ||eps - eps_theta||^2 (Ho eq. 14); NCSN DSM = sigma^2 || s_theta + (x~ - x)/sigma^2 ||^2."""
    g = torch.Generator().manual_seed(4)
    x0 = unit_mixture.sample(64, g, dtype=torch.float64)
    noise = torch.randn(64, 2, generator=g, dtype=torch.float64)
    ddpm = sl.DDPM()
    model = Perturbed(unit_mixture.model(ddpm), 0.2)
    steps = torch.randint(1, 1001, (64,), generator=g)
    t = steps.double() / 1000
    abar = torch.tensor(ho_tables()[2])[steps][:, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    expect = ((noise - model.predict(xt, t).eps) ** 2).mean(1)
    torch.testing.assert_close(simple_loss(model, x0, t=t, noise=noise), expect)

    ncsn = sl.NCSN()
    model = Perturbed(unit_mixture.model(ncsn), 0.2)
    levels = torch.randint(1, 11, (64,), generator=g)
    sigma = torch.tensor(np.geomspace(1.0, 0.01, 10))[levels - 1][:, None]
    xt = x0 + sigma * noise
    t = ncsn.level_to_time(levels)
    score = model.predict(xt, t).score
    expect = (sigma**2 * (score + (xt - x0) / sigma**2) ** 2).sum(1)
    torch.testing.assert_close(dsm_loss(model, x0, t=t, noise=noise), expect)


# ---------------------------------------------------------------------------------------
# The variational bound
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_vlb_terms_are_closed_form_gaussian_kls(unit_mixture, variance):
    betas, alphas, abar, beta_tilde = ho_tables()
    model = Perturbed(unit_mixture.model(sl.DDPM()), 0.1)
    g = torch.Generator().manual_seed(5)
    x0 = unit_mixture.sample(32, g, dtype=torch.float64)
    noise = torch.randn(32, 2, generator=g, dtype=torch.float64)
    for step in (2, 3, 10, 500, 1000):
        xt = math.sqrt(abar[step]) * x0 + math.sqrt(1 - abar[step]) * noise
        eps = model.predict(xt, step / 1000).eps.numpy()
        xt_, x0_ = xt.numpy(), x0.numpy()
        # q: Bayes' rule on N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) and N(sqrt(alpha_t) x_{t-1}, beta_t)
        q_var = 1 / (1 / (1 - abar[step - 1]) + alphas[step] / betas[step])
        q_mean = q_var * (math.sqrt(abar[step - 1]) * x0_ / (1 - abar[step - 1]) + math.sqrt(alphas[step]) * xt_ / betas[step])
        p_mean = (xt_ - betas[step] / math.sqrt(1 - abar[step]) * eps) / math.sqrt(alphas[step])
        p_var = betas[step] if variance == "beta" else beta_tilde[step]
        kl = 0.5 * (np.log(p_var / q_var) + q_var / p_var + (q_mean - p_mean) ** 2 / p_var - 1).sum(1)
        got = vlb_term(model, x0, step, variance=variance, noise=noise)
        np.testing.assert_allclose(got.numpy(), kl, rtol=1e-7, atol=1e-10)


def test_vlb_decoder_and_prior_terms(unit_mixture):
    betas, alphas, abar, beta_tilde = ho_tables()
    model = Perturbed(unit_mixture.model(sl.DDPM()), 0.1)
    g = torch.Generator().manual_seed(6)
    k = torch.randint(0, 256, (16, 3), generator=g)
    k[0, 0], k[1, 1] = 0, 255  # both edge bins
    x0 = (2 * k.double() / 255 - 1)
    noise = torch.randn(16, 3, generator=g, dtype=torch.float64)
    model = Perturbed(sl.GaussianMixture([1.0], [[0.0, 0.1, -0.2]], [0.2]).model(sl.DDPM()), 0.1)
    x1 = math.sqrt(abar[1]) * x0 + math.sqrt(1 - abar[1]) * noise
    eps = model.predict(x1, 0.001).eps.numpy()
    mean = (x1.numpy() - betas[1] / math.sqrt(1 - abar[1]) * eps) / math.sqrt(alphas[1])
    sd = math.sqrt(beta_tilde[2])  # step 1 uses beta_tilde_2, as Ho et al.'s and improved-diffusion's code
    x = x0.numpy()
    hi = np.where(x > 0.999, np.inf, x + 1 / 255)
    lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
    expect = -np.log(norm.cdf(hi, mean, sd) - norm.cdf(lo, mean, sd)).sum(1)
    for variance in ("beta", "beta_tilde"):
        got = vlb_term(model, x0, 1, variance=variance, noise=noise)
        np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6)
    expect_prior = 0.5 * (abar[-1] * x**2 + (1 - abar[-1]) - 1 - np.log(1 - abar[-1])).sum(1)
    np.testing.assert_allclose(prior_kl(sl.DDPM(), x0).numpy(), expect_prior, rtol=1e-9, atol=1e-15)


def test_discretized_decoder_is_a_distribution_and_matches_scipy():
    levels = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    for mean, sd in [(0.0, 0.01), (0.9, 0.003), (-1.2, 0.05), (0.3, 1.0), (2.0, 0.001)]:
        logp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                   torch.full_like(levels, 2 * math.log(sd)))
        assert torch.isfinite(logp).all()
        torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-9, atol=1e-9)
        hi = np.where(levels > 0.999, np.inf, levels + 1 / 255)
        lo = np.where(levels < -0.999, -np.inf, levels - 1 / 255)
        # scipy's plain difference cancels in the upper tail: use survival functions there
        with np.errstate(divide="ignore"):  # far bins underflow to log(0); masked out below
            expect = np.where(lo > mean, np.log(norm.sf(lo, mean, sd) - norm.sf(hi, mean, sd)),
                              np.log(norm.cdf(hi, mean, sd) - norm.cdf(lo, mean, sd)))
        ok = np.isfinite(expect) & (expect > -30)  # where scipy's plain difference is still accurate
        np.testing.assert_allclose(logp.numpy()[ok], expect[ok], rtol=1e-6, atol=1e-9)
    # 30 sigma out, where plain differences are 0: compare with scipy's log survival functions
    logp = discretized_gaussian_log_likelihood(torch.tensor([0.5], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64),
                                               torch.tensor([2 * math.log(0.05)], dtype=torch.float64))
    la, lb = norm.logsf(0.5 - 1 / 255, -1.0, 0.05), norm.logsf(0.5 + 1 / 255, -1.0, 0.05)
    np.testing.assert_allclose(logp.item(), la + np.log1p(-np.exp(lb - la)), rtol=1e-9)


def test_learned_variance_interpolates_in_log_space():
    """Nichol & Dhariwal eq. 15; at step 1 between beta_1 and beta_tilde_2 (improved-diffusion's clip)."""
    betas, _, _, beta_tilde = ho_tables()
    ddpm = sl.DDPM()
    frac = torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64).expand(4, 3)
    steps = torch.tensor([1, 2, 100, 1000])
    got = ddpm.model_log_variance(steps, "learned", frac)
    s = steps.numpy()[:, None]
    low = np.log(beta_tilde[np.maximum(s, 2)] * (s > 1) + beta_tilde[2] * (s == 1))
    expect = frac.numpy() * np.log(betas[s]) + (1 - frac.numpy()) * low
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-12)
    fixed = ddpm.model_log_variance(torch.tensor([1, 5]), "beta")
    np.testing.assert_allclose(fixed.numpy(), np.log([beta_tilde[2], betas[5]]), rtol=1e-12)


def test_vlb_of_exact_model_bounds_the_data_entropy_and_is_close():
    """1-D Gaussian data on the 256 levels, the exact model, sigma_t^2 = beta_t (MATH.md 2).

    E[L_vlb] >= H(data) (the bound of a cross-entropy); its KL part equals the
    closed form for Gaussian data, where Var(x0 | x_t) = v s^2 / (a^2 v + s^2)
    is constant, so E[KL_t] = 1/2 (log(sigma^2/bt) + (bt + c_t^2 Var)/sigma^2 - 1)
    with c_t the x0 coefficient of the posterior mean."""
    m, sd = 0.1, 0.3
    c = np.arange(256) * 2 / 255 - 1
    lo = np.concatenate([[-np.inf], c[1:] - 1 / 255])
    hi = np.concatenate([c[:-1] + 1 / 255, [np.inf]])
    p = norm.cdf((hi - m) / sd) - norm.cdf((lo - m) / sd)
    entropy = -(p * np.log(p)).sum()
    reps = 8
    x0 = torch.tensor(c, dtype=torch.float64).repeat(reps)[:, None]
    w = torch.tensor(p).repeat(reps) / reps
    model = sl.GaussianMixture([1.0], [[m]], [sd**2]).model(sl.DDPM())
    res = vlb(model, x0, variance="beta", generator=torch.Generator().manual_seed(0))
    total = (w * res.total).sum().item()
    assert entropy < total < entropy + 0.1, (entropy, total)
    assert res.bits_per_dim.shape == (x0.shape[0],)

    betas, alphas, abar, beta_tilde = ho_tables()
    t = np.arange(2, 1001)
    v = sd**2 + 1 / 255**2 / 3  # variance of the discretized data (bins add ~ width^2/12)
    post_var = v * (1 - abar[t]) / (abar[t] * v + 1 - abar[t])
    coef = np.sqrt(abar[t - 1]) * betas[t] / (1 - abar[t])
    kl = 0.5 * (np.log(betas[t] / beta_tilde[t]) + (beta_tilde[t] + coef**2 * post_var) / betas[t] - 1)
    kl_sum = (w * res.terms[:, 1:].sum(1)).sum().item()
    per_example = res.terms[:, 1:].sum(1)
    se = torch.sqrt((w * (per_example - kl_sum) ** 2).sum() / reps).item()
    assert abs(kl_sum - kl.sum()) < 4 * se + 2e-3, (kl_sum, kl.sum(), se)


@pytest.mark.parametrize("make, words", [
    (lambda m: vlb_term(m, torch.zeros(2, 2), 5), "variational bound .* needs DDPM's discrete chain"),
    (lambda m: dsm_loss(m, torch.zeros(2, 2), weighting="l2"), "unknown weighting"),
    (lambda m: dsm_loss(m, torch.zeros(2, 2), reduction="max"), "unknown reduction"),
    (lambda m: dsm_loss(m, torch.full((2, 2), float("nan"))), "NaN"),
    (lambda m: dsm_loss(m, torch.zeros(2)), r"expected a batch"),
])
def test_bad_loss_arguments_raise(unit_mixture, make, words):
    with pytest.raises(ValueError, match=words):
        make(unit_mixture.model(sl.VPSDE()))


def test_vlb_input_checks(unit_mixture):
    model = unit_mixture.model(sl.DDPM())
    with pytest.raises(ValueError, match="discrete data on the 256 levels"):
        vlb(model, torch.full((2, 2), 0.001))
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\]"):
        vlb_term(model, torch.full((2, 2), 3.0), 5)
    with pytest.raises(ValueError, match="learned_variance=True"):
        vlb_term(model, torch.zeros(2, 2), 5, variance="learned")
    with pytest.raises(ValueError, match="hybrid_loss trains a learned variance"):
        hybrid_loss(model, torch.zeros(2, 2))


def test_min_snr_weighting_is_hang_et_als_x0_loss(unit_mixture):
    """Min-SNR-gamma (Hang et al. 2023) is min(SNR, gamma) ||x0_theta - x0||^2 with SNR = a^2 / s^2; scorelab
    computes it in eps space. The two agree per example for a model that is not exact."""
    process = sl.DDPM()
    model = Perturbed(unit_mixture.model(process), 0.3)
    g = torch.Generator().manual_seed(5)
    x0 = unit_mixture.sample(64, g, dtype=torch.float64)
    t = process.sample_train_times(64, g)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    ours = dsm_loss(model, x0, weighting="min-snr", gamma=5.0, t=t, noise=noise)
    x_t, _ = process.perturb(x0, t, noise=noise)
    a, s = process.coefficients(t)
    snr = a**2 / s**2
    theirs = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) * \
        ((model.predict(x_t, t).x0 - x0) ** 2).sum(1)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_edm_preconditioning_loss_and_noise_levels_are_karras_et_als():
    """EDM (Karras et al. 2022, Table 1), computed here from the paper's formulas: D(x; sigma) = c_skip x +
    c_out F(c_in x; c_noise) for any network F (and in y = x / a for a process with a != 1), the loss
    lambda(sigma) ||D - x0||^2, and ln sigma ~ N(-1.2, 1.2^2) at training (the edm objective's times)."""
    from torch import nn

    from scorelab.objectives import lognormal_times

    edm = sl.VESDE(0.002, 80.0)

    class F(nn.Module):                                # any network: a fixed nonlinear map of (x, c)
        def forward(self, x, c):
            return torch.tanh(1.7 * x + 0.3 * c[:, None]) - 0.2

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 3, generator=g, dtype=torch.float64)
    sd = 0.5
    for process in (edm, sl.VPSDE()):
        model = sl.Model(F(), process, target="preconditioned", condition="log_sigma")
        t = lognormal_times(process, 256, g, None, p_mean=-1.2, p_std=1.2) if process is edm else \
            torch.rand(256, generator=g, dtype=torch.float64)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t, _ = process.perturb(x0, t, noise=noise)
        a, s = process.coefficients(t)
        sigma, y = (s / a)[:, None], x_t / a[:, None]
        c_in, c_skip = 1 / torch.sqrt(sigma**2 + sd**2), sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        d = c_skip * y + c_out * F()(c_in * y, torch.log(sigma[:, 0]))
        torch.testing.assert_close(model.predict(x_t, t).x0, d, rtol=1e-9, atol=1e-10)
        lam = (sigma[:, 0] ** 2 + sd**2) / (sigma[:, 0] * sd) ** 2
        torch.testing.assert_close(dsm_loss(model, x0, weighting="preconditioned", t=t, noise=noise),
                                   lam * ((d - x0) ** 2).sum(1), rtol=1e-9, atol=1e-10)
    log_sigma = torch.log(edm.sigma(lognormal_times(edm, 40000, torch.Generator().manual_seed(1), None, p_mean=-1.2,
                                                    p_std=1.2)))
    assert abs(float(log_sigma.mean()) + 1.2) < 4 * 1.2 / 200 and abs(float(log_sigma.std()) - 1.2) < 0.03
