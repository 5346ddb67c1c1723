"""Noise processes against closed forms, Bayes' rule and the SDEs' moment ODEs (MATH.md 1-4)."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.stats import norm

import scorelab as sl

ALL = [sl.DDPM(), sl.DDPM(schedule="cosine"), sl.NCSN(), sl.VPSDE(), sl.SubVPSDE(), sl.VESDE()]


def ho_betas(n=1000, start=1e-4, end=0.02):
    """Ho et al.'s linear schedule, computed here without the library."""
    return np.linspace(start, end, n)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_composed_kernels_equal_closed_form_marginal(schedule):
    """Composing N(sqrt(alpha_t) x, beta_t) t times gives N(sqrt(abar_t) x0, 1 - abar_t) exactly."""
    ddpm = sl.DDPM(num_steps=1000, schedule=schedule)
    x0 = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros(())
    for step in range(1, 1001):
        # Gaussian composition: x_t ~ N(c mean, c^2 var + beta) with c the kernel's slope.
        c = ddpm.forward_kernel(torch.ones(1, 1, dtype=torch.float64), step)[0].item()
        mean, beta = ddpm.forward_kernel(mean, step)
        var = c**2 * var + beta
        if step in (1, 2, 10, 500, 999, 1000):
            m_closed, s_closed = ddpm.marginal(x0, ddpm.step_to_time(step))
            torch.testing.assert_close(mean, m_closed, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(var.sqrt().reshape(1), s_closed, rtol=1e-10, atol=1e-12)
    if schedule == "linear":  # and against Ho's schedule computed independently
        abar = np.cumprod(1 - ho_betas())
        np.testing.assert_allclose(ddpm.alpha_bars[1:].numpy(), abar, rtol=1e-12)


def test_ddpm_chain_draws_match_marginal_moments():
    """Running the Markov chain by sampling matches the closed-form marginal's moments."""
    ddpm = sl.DDPM(num_steps=1000)
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([0.8, -0.5], dtype=torch.float64).expand(n, 2)
    x = x0.clone()
    for step in range(1, 1001):
        mean, var = ddpm.forward_kernel(x, step)
        x = mean + var.sqrt().reshape(-1, 1) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if step in (20, 300, 1000):
            m, s = ddpm.marginal(x0[:1], ddpm.step_to_time(step))
            se_mean = s.item() / math.sqrt(n)
            assert (x.mean(0) - m[0]).abs().max() < 5 * se_mean
            se_var = s.item() ** 2 * math.sqrt(2 / n)
            assert (x.var(0) - s.item() ** 2).abs().max() < 5 * se_var


@pytest.mark.parametrize("step", [2, 3, 50, 999, 1000])
def test_ddpm_posterior_is_bayes_rule(step):
    """q(x_{t-1} | x_t, x0) from Bayes' rule on the two Gaussians, computed here independently."""
    betas = ho_betas()
    alphas = 1 - betas
    abar = np.concatenate([[1.0], np.cumprod(alphas)])
    b, a, ab_prev = betas[step - 1], alphas[step - 1], abar[step - 1]
    rng = np.random.default_rng(step)
    x0, xt = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    # prior x_{t-1} | x0 ~ N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood x_t | x_{t-1} ~ N(sqrt(a) x_{t-1}, b)
    precision = 1 / (1 - ab_prev) + a / b
    var = 1 / precision
    mean = var * (np.sqrt(ab_prev) * x0 / (1 - ab_prev) + np.sqrt(a) * xt / b)
    got_mean, got_var = sl.DDPM().posterior(torch.tensor(x0), torch.tensor(xt), step)
    np.testing.assert_allclose(got_mean.numpy(), mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_var.numpy(), var, rtol=1e-9)


def test_ddpm_reverse_mean_is_posterior_mean_at_predicted_x0():
    """MATH.md 2: mu_theta(x_t, eps) equals mu_tilde(x0_hat, x_t) with x0_hat from eps."""
    ddpm = sl.DDPM()
    g = torch.Generator().manual_seed(1)
    xt, eps = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    step = torch.tensor([2, 5, 100, 400, 900, 1000])
    ab = torch.tensor(np.concatenate([[1.0], np.cumprod(1 - ho_betas())]))[step][:, None]
    x0_hat = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
    torch.testing.assert_close(ddpm.reverse_mean(xt, eps, step), ddpm.posterior(x0_hat, xt, step)[0])


def _moment_ode_solution(process, t_eval, t0=0.0, max_step=np.inf):
    """Integrate m' = c m, V' = 2 c V + g^2 (the forward SDE's moment ODEs) from t0."""
    def rhs(t, y):
        c = process.drift_coef(torch.tensor(t)).item()
        g2 = process.diffusion(torch.tensor(t)).item() ** 2
        return [c * y[0], 2 * c * y[1] + g2]
    y0 = [process.signal_scale(torch.tensor(t0)).item(), process.noise_std(torch.tensor(t0)).item() ** 2]
    sol = solve_ivp(rhs, (t0, t_eval[-1]), y0, t_eval=t_eval, rtol=1e-11, atol=1e-13,
                    max_step=max_step)
    return sol.y[0], sol.y[1]


@pytest.mark.parametrize("process", [sl.VPSDE(), sl.SubVPSDE(), sl.VESDE(), sl.VPSDE(0.5, 5.0),
                                     sl.VESDE(0.1, 10.0), sl.NCSN(), sl.DDPM(num_steps=40)],
                         ids=repr)
def test_marginal_moments_solve_the_sde_moment_odes(process):
    """a(t) and s(t)^2 solve the forward SDE's mean and variance ODEs (MATH.md 4).

    VE's marginal keeps the convention Var(0) = sigma_min^2 (score_sde), so its
    ODE starts there. DDPM's piecewise-constant rate is integrated piece by piece.
    """
    t_eval = np.array([0.01, 0.1, 0.3, 0.5, 0.8, 1.0])
    max_step = 1 / (4 * process.num_steps) if isinstance(process, sl.DDPM) else np.inf
    m, v = _moment_ode_solution(process, t_eval, max_step=max_step)
    t = torch.tensor(t_eval)
    np.testing.assert_allclose(m, process.signal_scale(t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(v, process.noise_std(t).numpy() ** 2, rtol=1e-6, atol=1e-9)


def test_ddpm_converges_to_the_vp_sde():
    """DDPM with beta_i = beta(t)/N: its marginal at step i tends to the VP SDE's at t = i/N (MATH.md 4)."""
    vp = sl.VPSDE()
    errors = []
    for n in (100, 1000, 10000):
        ddpm = sl.DDPM(num_steps=n, beta_start=0.1 / n, beta_end=20.0 / n)
        assert ddpm.continuous() == sl.VPSDE(0.1, 20.0)
        steps = torch.arange(1, n + 1)
        t = ddpm.step_to_time(steps)
        err_a = (ddpm.alpha_bars[1:].sqrt() - vp.signal_scale(t)).abs().max().item()
        err_s = ((1 - ddpm.alpha_bars[1:]).sqrt() - vp.noise_std(t)).abs().max().item()
        errors.append(max(err_a, err_s))
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5  # first order in 1/N
    assert errors[2] < 1e-3


def test_ncsn_sigmas_are_the_ve_sde_at_mapped_levels():
    ncsn = sl.NCSN(sigma_max=1.0, sigma_min=0.01, num_scales=10)
    np.testing.assert_allclose(ncsn.sigmas.numpy(), np.geomspace(1.0, 0.01, 10), rtol=1e-12)
    ve = ncsn.continuous()
    levels = torch.arange(1, 11)
    torch.testing.assert_close(ve.noise_std(ncsn.level_to_time(levels)), ncsn.sigmas)
    assert torch.equal(ncsn.time_to_level(ncsn.level_to_time(levels)), levels)
    torch.testing.assert_close(ncsn.level_to_time(torch.tensor([1, 10])),
                               torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_ddpm_steps_and_times_round_trip():
    ddpm = sl.DDPM(num_steps=1000)
    steps = torch.arange(1, 1001)
    assert torch.equal(ddpm.time_to_step(ddpm.step_to_time(steps)), steps)
    # DDPM's own time axis is exact at every step.
    torch.testing.assert_close(ddpm.signal_scale(ddpm.step_to_time(steps)), ddpm.alpha_bars[1:].sqrt())
    # beta(t) at a step's own time is that step's rate -N log alpha_i, where i / N * N rounds above i too.
    for n, schedule in ((100, "linear"), (50, "cosine")):
        chain, steps = sl.DDPM(num_steps=n, schedule=schedule), torch.arange(1, n + 1)
        torch.testing.assert_close(chain.beta(chain.step_to_time(steps)), -n * chain.alphas[1:].log())


@pytest.mark.parametrize("process", ALL, ids=repr)
def test_time_of_sigma_inverts_sigma(process):
    t = torch.tensor([process.t_min + 1e-4, 0.05, 0.3, 0.77, 1.0], dtype=torch.float64)
    torch.testing.assert_close(process.time_of_sigma(process.sigma(t)), t, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(process.sigma(t), process.noise_std(t) / process.signal_scale(t))


@pytest.mark.parametrize("process", ALL, ids=repr)
def test_reverse_and_probability_flow_drifts(process):
    """f - g^2 score and f - g^2 score / 2 (MATH.md 4), for points and images alike."""
    g = torch.Generator().manual_seed(3)
    for shape in [(5, 3), (5, 2, 4, 4)]:
        x, score = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.rand(5, generator=g, dtype=torch.float64) * 0.9 + 0.05
        bshape = (5,) + (1,) * (len(shape) - 1)
        f = (process.drift_coef(t).reshape(bshape) * x.double()).float()
        g2 = (process.diffusion(t) ** 2).reshape(bshape).float()
        torch.testing.assert_close(process.drift(x, t), f)
        torch.testing.assert_close(process.reverse_drift(x, t, score), f - g2 * score)
        torch.testing.assert_close(process.probability_flow_drift(x, t, score), f - g2 * score / 2)


def test_vp_coefficients_match_closed_forms():
    vp, sub = sl.VPSDE(0.1, 20.0), sl.SubVPSDE(0.1, 20.0)
    t = np.array([0.0, 0.2, 0.6, 1.0])
    B = 0.1 * t + 0.5 * (20 - 0.1) * t**2
    tt = torch.tensor(t)
    np.testing.assert_allclose(vp.signal_scale(tt), np.exp(-B / 2), rtol=1e-12)
    np.testing.assert_allclose(vp.noise_std(tt), np.sqrt(1 - np.exp(-B)), rtol=1e-12)
    np.testing.assert_allclose(sub.noise_std(tt), 1 - np.exp(-B), rtol=1e-12)
    np.testing.assert_allclose(vp.drift_coef(tt), -(0.1 + t * 19.9) / 2, rtol=1e-12)
    np.testing.assert_allclose(sub.diffusion(tt), np.sqrt((0.1 + t * 19.9) * (1 - np.exp(-2 * B))), rtol=1e-12)
    ve = sl.VESDE(0.01, 50.0)
    np.testing.assert_allclose(ve.noise_std(tt), 0.01 * (5000.0 ** t), rtol=1e-12)


@pytest.mark.parametrize("process", ALL, ids=repr)
def test_perturb_prior_and_prior_log_prob(process):
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.1, 0.4, 0.6, 1.0], dtype=torch.float64)
    xt, eps = process.perturb(x0, t, noise=noise)
    a, s = process.signal_scale(t).reshape(-1, 1, 1, 1), process.noise_std(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, a * x0 + s * noise)
    assert eps is noise
    torch.testing.assert_close(process.conditional_score(xt, x0, t), -noise / s)
    z = process.prior_sample((3, 5), g, dtype=torch.float64)
    expect = norm.logpdf(z.numpy(), scale=process.prior_std).sum(1)
    np.testing.assert_allclose(process.prior_log_prob(z).numpy(), expect, rtol=1e-12)


@pytest.mark.parametrize("process", ALL, ids=repr)
def test_train_times_and_config_round_trip(process):
    t = process.sample_train_times(5000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 1
    if isinstance(process, sl.DDPM):
        steps = t * process.num_steps
        assert torch.equal(steps, steps.round()) and steps.min() >= 1
    elif isinstance(process, sl.NCSN):
        assert set(process.time_to_level(t).tolist()) == set(range(1, 11))
    else:
        assert t.min() >= 1e-5
    assert sl.process_from_config(process.config()) == process


@pytest.mark.parametrize("make, words", [
    (lambda: sl.DDPM(num_steps=0), "num_steps"),
    (lambda: sl.DDPM(num_steps=-5), "num_steps"),
    (lambda: sl.DDPM(beta_start=0.0), "beta_start"),
    (lambda: sl.DDPM(beta_end=1.5), "beta_end"),
    (lambda: sl.DDPM(beta_start=0.1, beta_end=0.01), "must not exceed"),
    (lambda: sl.DDPM(schedule="quadratic"), "schedule"),
    (lambda: sl.NCSN(sigma_max=0.01, sigma_min=1.0), "sigma_min"),
    (lambda: sl.NCSN(num_scales=1), "num_scales"),
    (lambda: sl.NCSN(num_scales=0), "num_scales"),
    (lambda: sl.VESDE(sigma_min=1.0, sigma_max=1.0), "sigma_min"),
    (lambda: sl.VESDE(sigma_min=-1.0), "sigma_min"),
    (lambda: sl.VPSDE(beta_min=-0.1), "beta_min"),
    (lambda: sl.VPSDE(beta_min=30.0, beta_max=20.0), "beta_min"),
    (lambda: sl.DDPM(schedule="cosine").continuous(), "cosine"),
    (lambda: sl.DDPM().posterior(torch.zeros(2, 2), torch.zeros(2, 2), 0), "steps run from 1"),
    (lambda: sl.process_from_config({"name": "rectified-flow"}), "unknown process"),
    (lambda: sl.VPSDE().perturb(torch.zeros(3, 2), torch.zeros(4)), "batch has 3"),
    (lambda: sl.VPSDE().perturb(torch.zeros(3, 2), 0.5, noise=torch.zeros(3, 3)), "noise has shape"),
])
def test_bad_arguments_raise_clear_value_errors(make, words):
    with pytest.raises(ValueError, match=words):
        make()
