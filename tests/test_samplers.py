"""Every sampler against the exact Gaussian-mixture ground truth (MATH.md 2-6), and against diffusers."""

import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab._util import as_time
from scorelab import samplers as S
from scorelab.evaluation import energy_distance
from conftest import mixture_16d_params, mixture_2d_params

N = 2000
# Energy distance between two exact 2000-point sets of these mixtures, over 20 seed pairs:
# mean 0.000, 95th percentile 0.0014, max 0.0058 (2-D) and 0.0022 (16-D). A sampler passes
# at the largest distance two exact sets showed.
ED_TOL = 0.006

VE = sl.VESDE(0.01, 50.0)
# NCSNv2's rule: sigma_max about the largest distance between data points (a deterministic ODE
# cannot undo a prior narrower than the noised data; with sigma_max = 5 the 16-D case fails).
LADDER = sl.NCSN(sigma_max=20.0, sigma_min=0.01, num_scales=25)


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def _configs():
    c = {
        "ancestral/beta/1000": (sl.DDPM(), lambda m, s: S.ddpm_ancestral(m, s, noise=gen())),
        "ancestral/beta_tilde/250": (sl.DDPM(), lambda m, s: S.ddpm_ancestral(m, s, 250, variance="beta_tilde", noise=gen())),
        "ddim/eta0/100": (sl.DDPM(), lambda m, s: S.ddim(m, s, 100, noise=gen())),
        "ddim/eta1/400": (sl.DDPM(), lambda m, s: S.ddim(m, s, 400, eta=1.0, noise=gen())),
        "annealed_langevin": (LADDER, lambda m, s: S.annealed_langevin(m, s, steps_per_level=60, noise=gen())),
        # a model of one framework driven by another's sampler (Score SDE, Table 1)
        "vp model/ancestral via DDPM": (sl.VPSDE(), lambda m, s: S.ddpm_ancestral(m, s, 250, process=sl.DDPM(), noise=gen())),
        "vp model/langevin via NCSN": (sl.VPSDE(), lambda m, s: S.annealed_langevin(m, s, process=LADDER, steps_per_level=60, noise=gen())),
        "ddpm model/PC via VP": (sl.DDPM(), lambda m, s: S.predictor_corrector(m, s, 500, process=sl.VPSDE(), corrector="annealed_langevin", noise=gen())),
        "ddpm model/rk45 via VP": (sl.DDPM(), lambda m, s: S.ode_rk45(m, s, process=sl.VPSDE(), noise=gen())),
        "ncsn model/PC via VE": (LADDER, lambda m, s: S.predictor_corrector(m, s, 500, process=LADDER.continuous(), corrector="annealed_langevin", noise=gen())),
        # 1000 steps, where diffusers' multistep schedulers return NaN (benchmarks/samplers.py)
        "ddpm model/unipc(3)/1000": (sl.DDPM(), lambda m, s: S.unipc(m, s, 1000, order=3, noise=gen())),
        "ncsn model/rk45 via VE": (LADDER, lambda m, s: S.ode_rk45(m, s, process=LADDER.continuous(), noise=gen())),
    }
    for p in (sl.VPSDE(), sl.SubVPSDE(), VE):
        name = type(p).__name__
        c.update({
            f"{name}/euler_maruyama/1000": (p, lambda m, s: S.euler_maruyama(m, s, 1000, noise=gen())),
            f"{name}/rk45": (p, lambda m, s: S.ode_rk45(m, s, noise=gen())),
            f"{name}/euler/200": (p, lambda m, s: S.ode_euler(m, s, 200, noise=gen())),
            f"{name}/heun/30": (p, lambda m, s: S.ode_heun(m, s, 30, noise=gen())),
            f"{name}/heun+churn/40": (p, lambda m, s: S.ode_heun(m, s, 40, churn=10, noise=gen())),
            f"{name}/dpm++2m/30": (p, lambda m, s: S.dpm_solver_pp_2m(m, s, 30, noise=gen())),
        })
        for predictor, corrector in PC_PAIRS[name]:
            # per-sample SNR norms are for high dimension; in 2-D use score_sde's batch norms
            c[f"{name}/pc/{predictor}+{corrector}/500"] = (p, lambda m, s, pr=predictor, co=corrector:
                                                           S.predictor_corrector(
                                                               m, s, 500, predictor=pr, corrector=co,
                                                               snr_norm="batch" if s[1] == 2 else "sample",
                                                               noise=gen()))
    return c


# Predictor-corrector: every predictor and every corrector on every process and mixture, and each of the six pairs
# on VP or sub-VP (the full 3 x 2 product on each process checked nothing more). The two are separate steps: with
# one of them perturbed (its score scaled by 1.2 or 1.5), a (process, mixture) passed or failed alike whatever its
# partner (a corrector's distance moved by at most 0.0008 with the predictor), apart from two VP 2-D predictor cases
# at the 0.006 edge (0.0058-0.0064), which fail on 16-D and sub-VP with either partner. MALA, HMC: test_energy.py.
PC_PAIRS = {
    "VPSDE": (("reverse_diffusion", "langevin"), ("euler_maruyama", "annealed_langevin"), ("ancestral", "langevin")),
    "SubVPSDE": (("reverse_diffusion", "annealed_langevin"), ("euler_maruyama", "langevin"),
                 ("ancestral", "annealed_langevin")),
    "VESDE": (("reverse_diffusion", "langevin"), ("euler_maruyama", "annealed_langevin"), ("ancestral", "langevin")),
}


CONFIGS = _configs()


@pytest.fixture(scope="module", params=[mixture_2d_params, mixture_16d_params], ids=["2d", "16d"])
def truth(request):
    gm = sl.GaussianMixture(*request.param())
    return gm, gm.sample(N, gen(99), dtype=torch.float64)


def assert_reproduces(gm, x, ref):
    """Energy distance within the exact-vs-exact floor; mean, covariance and component
    weights within tolerances set by the sample size."""
    x = x.double()
    assert torch.isfinite(x).all()
    ed = energy_distance(x, ref)
    assert ed < ED_TOL, f"energy distance {ed:.5f} >= {ED_TOL}"
    mean, cov = gm.mean(), gm.covariance()
    sd = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * sd / math.sqrt(N)).all(), (x.mean(0), mean)
    se_cov = torch.sqrt((torch.outer(sd**2, sd**2) + cov**2) / N)
    assert ((torch.cov(x.T) - cov).abs() < 8 * se_cov).all()
    # component weights: label every point by its most likely component, in both sets
    def labels(points):
        logp = gm.component_log_probs_at(points, torch.ones(len(points), dtype=torch.float64),
                                         torch.zeros(len(points), dtype=torch.float64))
        return torch.bincount(logp.argmax(1), minlength=gm.num_components).double() / len(points)
    p_x, p_ref = labels(x), labels(ref)
    assert ((p_x - p_ref).abs() < 4 * torch.sqrt(2 * p_ref * (1 - p_ref) / N) + 1e-9).all(), (p_x, p_ref)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampler_reproduces_the_mixture(truth, name):
    gm, ref = truth
    process, run = CONFIGS[name]
    result = run(gm.model(process), (N, gm.dim))
    assert result.samples.shape == (N, gm.dim) and result.nfe > 0
    assert_reproduces(gm, result.samples, ref)


def test_nfe_counts():
    gm = sl.GaussianMixture(*mixture_2d_params())
    m = gm.model(sl.DDPM())
    assert S.ddpm_ancestral(m, (4, 2), noise=gen()).nfe == 1000
    assert S.ddpm_ancestral(m, (4, 2), 50, noise=gen()).nfe == 50
    assert S.ddim(m, (4, 2), 20, noise=gen()).nfe == 20
    assert S.ode_heun(m, (4, 2), 18, noise=gen()).nfe == 35           # EDM: 18 steps, 35 NFE
    assert S.dpm_solver_pp_2m(m, (4, 2), 15, noise=gen()).nfe == 15
    assert S.predictor_corrector(m, (4, 2), 10, corrector_steps=2, noise=gen()).nfe == 31
    assert S.annealed_langevin(gm.model(sl.NCSN()), (4, 2), steps_per_level=3, noise=gen()).nfe == 31


def _endpoint_errors(solver, model, x_t, steps, reference):
    return [(solver(model, x_t.clone(), n).samples - reference).pow(2).mean().sqrt().item() for n in steps]


@pytest.mark.parametrize("process", [sl.VPSDE(), VE], ids=["vp", "ve"])
def test_deterministic_solvers_converge_at_their_order(mixture_16d, process):
    """Euler at order 1 and Heun at order 2, both against one 3000-step Heun solution from the same draws."""
    model = mixture_16d.model(process)
    x_t = process.prior_sample((64, 16), gen(3), dtype=torch.float64)
    reference = S.ode_heun(model, x_t.clone(), 3000).samples
    steps = [40, 80, 160, 320]
    slopes = {}
    for solver, order in ((S.ode_euler, 1), (S.ode_heun, 2)):
        errors = _endpoint_errors(solver, model, x_t, steps, reference)
        slopes[solver.__name__] = order, np.polyfit(np.log(steps), np.log(errors), 1)[0], errors
    assert all(-order - 0.35 < slope < -order + 0.35 for order, slope, _ in slopes.values()), slopes


def test_ddim_eta0_is_the_euler_step_of_the_probability_flow_ode(mixture_2d):
    for process in (sl.DDPM(), sl.VPSDE(), VE):
        model = mixture_2d.model(process)
        times = S.time_grid(process, 24, "log_sigma")
        x_t = process.prior_sample((50, 2), gen(4), dtype=torch.float64)
        a = S.ddim(model, x_t.clone(), times=times).samples
        b = S.ode_euler(model, x_t.clone(), times=times).samples
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_rk45_matches_the_converged_fixed_step_solution(mixture_16d):
    """Adaptive RK45 in t and Heun in sigma solve one ODE: their endpoints at t_min agree."""
    process = sl.VPSDE()
    model = mixture_16d.model(process)
    x_t = process.prior_sample((32, 16), gen(5), dtype=torch.float64)
    rk = S.ode_rk45(model, x_t.clone(), rtol=1e-7, atol=1e-7, denoise=False).samples
    # Heun through times 1 .. t_min, then its last (Euler) step to sigma = 0 is Tweedie's x0 at t_min
    times = S.time_grid(process, 2000, "log_sigma")
    heun = S.ode_heun(model, x_t.clone(), times=times).samples
    rk_denoised = model.predict(rk, torch.tensor(process.t_min, dtype=torch.float64)).x0
    torch.testing.assert_close(rk_denoised, heun, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("run", [
    lambda m, s, n: S.ddpm_ancestral(m, s, 100, noise=n),
    lambda m, s, n: S.ddim(m, s, 30, eta=0.5, noise=n),
    lambda m, s, n: S.predictor_corrector(m, s, 50, noise=n),
    lambda m, s, n: S.euler_maruyama(m, s, 50, noise=n),
    lambda m, s, n: S.ode_rk45(m, s, noise=n),
    lambda m, s, n: S.ode_heun(m, s, 10, churn=5, noise=n),
], ids=["ancestral", "ddim", "pc", "em", "rk45", "heun-churn"])
def test_per_sample_seeds_make_samples_independent_of_the_batch(mixture_16d, run):
    model = mixture_16d.model(sl.DDPM())
    big = run(model, (5, 16), S.PerSampleNoise([10, 11, 12, 13, 14])).samples
    small = run(model, (2, 16), S.PerSampleNoise([12, 14])).samples
    torch.testing.assert_close(small, big[[2, 4]], rtol=1e-6, atol=1e-6)


def test_impossible_combinations_name_the_ones_that_work(mixture_2d):
    model = mixture_2d.model(VE)
    with pytest.raises(ValueError, match="process=sl.DDPM()"):
        S.ddpm_ancestral(model, (4, 2))
    with pytest.raises(ValueError, match="process=sl.NCSN"):
        S.annealed_langevin(model, (4, 2))
    with pytest.raises(ValueError, match="learned_variance=True"):
        S.ddpm_ancestral(mixture_2d.model(sl.DDPM()), (4, 2), 10, variance="learned")
    with pytest.raises(ValueError, match="unknown predictor"):
        S.predictor_corrector(model, (4, 2), predictor="heun")
    with pytest.raises(ValueError, match="unknown time grid"):
        S.ode_euler(model, (4, 2), 10, grid="cosine")
    with pytest.raises(ValueError, match="eta must lie"):
        S.ddim(model, (4, 2), eta=2.0)
    with pytest.raises(ValueError, match="corrector_steps >= 1"):
        S.predictor_corrector(model, (4, 2), 10, predictor="none", corrector_steps=0)
    with pytest.raises(ValueError, match="positive noise level"):
        S.euler_maruyama(mixture_2d.model(sl.VPSDE()), (4, 2), 10, grid="log_sigma", t_min=0.0)
    with pytest.raises(ValueError, match="drop the final time"):        # unipc took log(0) there
        S.unipc(mixture_2d.model(sl.VPSDE()), (4, 2), times=[1.0, 0.5, 0.0])


def test_dopri5_shrinks_its_step_on_nan_and_names_nan_when_it_cannot():
    # a right-hand side that is NaN only off the solution's path: a smaller step recovers
    fun = lambda t, y, rows: torch.where(y.abs() > 5, torch.full_like(y, float("nan")), -5 * y)  # noqa: E731
    y1, nfe = S.dopri5(fun, torch.full((2, 1), 4.9, dtype=torch.float64), 0.0, 1.0, first_step=0.5,
                       rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y1, torch.full((2, 1), 4.9 * math.exp(-5), dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert nfe < 2000
    always_nan = lambda t, y, rows: torch.full_like(y, float("nan"))  # noqa: E731
    with pytest.raises(FloatingPointError, match="NaN"):
        S.dopri5(always_nan, torch.ones(2, 1, dtype=torch.float64), 0.0, 1.0)


def test_dopri5_matches_scipy_solve_ivp():
    """The torch RK45 against scipy's RK45 (a cross-check only) and against a closed form."""
    from scipy.integrate import solve_ivp
    from scipy.linalg import expm

    a = np.array([[-0.5, 2.0], [-2.0, -0.5]])
    y0 = np.array([[1.0, 0.0], [0.3, -0.7]])
    fun = lambda t, y, rows: y @ torch.tensor(a).T  # noqa: E731
    y1, nfe = S.dopri5(fun, torch.tensor(y0), 0.0, 3.0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(y1.numpy(), y0 @ expm(3.0 * a).T, rtol=1e-7, atol=1e-9)
    assert nfe > 6
    # the probability-flow ODE of the 2-D mixture, against scipy on one sample at a time
    gm = sl.GaussianMixture(*mixture_2d_params())
    process = sl.VPSDE()
    model = gm.model(process)
    x = process.prior_sample((3, 2), gen(11), dtype=torch.float64)
    ours, _ = S.solve_probability_flow(model, x, 1.0, 1e-3, rtol=1e-8, atol=1e-8)
    for k in range(3):
        def velocity(t, y):
            xt = torch.tensor(y)[None]
            return process.probability_flow_drift(xt, t, model.predict(xt, t).score)[0].numpy()
        ref = solve_ivp(velocity, (1.0, 1e-3), x[k].numpy(), method="RK45", rtol=1e-10, atol=1e-10).y[:, -1]
        np.testing.assert_allclose(ours[k].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_learned_variance_ancestral_interpolates_the_fixed_choices(mixture_2d):
    """frac = 1 is sigma_t^2 = beta_t and frac = 0 is beta_tilde_t (Nichol & Dhariwal, eq. 15)."""
    from torch import nn

    ddpm = sl.DDPM()
    exact = mixture_2d.model(ddpm)

    class Net(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, x, c):
            eps = exact.predict(x, (c.double() + 1) / ddpm.num_steps).eps
            return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)

    x_t = torch.randn(16, 2, generator=gen(12), dtype=torch.float64)
    for v, fixed in ((1.0, "beta"), (-1.0, "beta_tilde")):
        model = sl.Model(Net(v), ddpm, learned_variance=True)
        learned = S.ddpm_ancestral(model, x_t.clone(), 40, variance="learned", noise=gen(13)).samples
        ref = S.ddpm_ancestral(exact, x_t.clone(), 40, variance=fixed, noise=gen(13)).samples
        torch.testing.assert_close(learned, ref, rtol=1e-9, atol=1e-9)
        # A learned-variance model samples with its learned variance by default, through wrappers too
        # (as `scorelab sample` and `evaluate` call it).
        by_default = sl.samplers.sample(sl.models.ClipDenoised(model, -100, 100), x_t.clone(), "ancestral", 40,
                                        noise=gen(13)).samples
        torch.testing.assert_close(by_default, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler, process, steps, options", [
    ("ancestral", sl.DDPM(num_steps=50), 7, {}), ("ancestral", sl.VPSDE(), 5, {}), ("ddim", sl.VESDE(), 6, {}),
    ("pc", sl.DDPM(num_steps=50), 4, {}), ("pc", sl.NCSN(), 3, {"corrector_steps": 2}),
    ("pc", sl.VPSDE(), 4, {"predictor": "none", "corrector": "annealed_langevin"}),
    ("pc", sl.named_sde("tanh"), 4, {}), ("em", sl.VESDE(), 5, {}), ("em", sl.VPSDE(), 5, {"denoise": False}),
    ("em", sl.named_sde("double_well"), 5, {}), ("heun", sl.VPSDE(), 4, {}), ("dpm++2m", sl.SubVPSDE(), 6, {}), ("dpm++3m", sl.DDPM(), 7, {}), ("unipc", sl.VESDE(0.002, 80.0), 6, {"order": 3}),
    ("ipndm", sl.DDPM(), 5, {}), ("ipndm", sl.VPSDE(), 3, {"variable_step": True}),
    ("langevin", sl.VESDE(), 2, {}), ("langevin", sl.NCSN(num_scales=4), 3, {"final_denoise": False}),
    ("ld", sl.VPSDE(), 5, {}), ("ld", sl.named_sde("tanh"), 5, {}),
    ("smc", sl.VPSDE(), 3, {}), ("smc", sl.DDPM(), 3, {"corrector": "hmc", "corrector_steps": 2}),
    ("smc", sl.VESDE(), 2, {"corrector": "none"}),
    ("heun", sl.VPSDE(), 7, {"times": [1.0, 0.6, 0.3, 0.1]}), ("dpm++2m", sl.DDPM(), 9, {"times": [1.0, 0.5, 0.1]}),
], ids=lambda v: getattr(type(v), "__name__", str(v)))
def test_the_registry_declares_each_samplers_own_network_evaluations(mixture_2d, sampler, process, steps, options):
    """``REGISTRY[name].nfe`` (what evaluate's NFE budgets and the CLI read) equals the count the sampler
    itself reports, for every sampler, on affine and general processes and with options that change it."""
    class LogisticScore(sl.ModelBase):             # a general SDE's model: any score will do for counting
        def predict(self, x, t):
            return sl.Prediction(x, as_time(t, x), score=-torch.tanh(x / 2))

    exact = mixture_2d.energy_model if sampler == "smc" else mixture_2d.model        # the SMC sampler needs energies
    model = exact(process) if process.has_kind("affine") else LogisticScore()
    model.process = process
    result = S.sample(model, (3, 2), sampler, steps, noise=gen(0), **options)
    assert result.nfe == S.sampler_nfe(process, sampler, steps, **options)
    if "times" not in options:
        assert S.steps_for_nfe(process, sampler, result.nfe, **options) == steps
    else:                                                     # a given grid fixes the steps
        with pytest.raises(ValueError, match="fixes"):
            S.steps_for_nfe(process, sampler, result.nfe, **options)


def test_annealed_langevin_codes_step_rule_is_the_papers_with_twice_epsilon(mixture_2d):
    """ermongroup/ncsn's update x + alpha s + sqrt(2 alpha) z is Algorithm 1's x + alpha'/2 s + sqrt(alpha') z
    with alpha' = 2 alpha: the same draws give the same samples."""
    ladder = sl.NCSN(sigma_max=3.0, sigma_min=0.1, num_scales=4)
    model = mixture_2d.model(ladder)
    x_T = torch.randn(64, 2, generator=gen(3), dtype=torch.float64)
    code = S.annealed_langevin(model, x_T, epsilon=1e-3, steps_per_level=5, step_rule="code", noise=gen(4))
    paper = S.annealed_langevin(model, x_T, epsilon=2e-3, steps_per_level=5, noise=gen(4))
    torch.testing.assert_close(code.samples, paper.samples, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="step_rule"):
        S.annealed_langevin(model, x_T, step_rule="ncsnv2")


def test_dpm_solver_pp_3m_converges_at_third_order_and_2m_at_second(mixture_16d):
    """Halving the step on the exact 16-D mixture model divides DPM-Solver++(3M)'s error (against a 640-step
    solution) by about 8 and (2M)'s by about 4: measured 8.2 and 7.6 for 3M, 3.9 and 3.8 for 2M. With the
    official code's curvature coefficient (half of the quadratic interpolant's) 3M gave 5.2 and 4.8."""
    process = sl.VPSDE()
    model = mixture_16d.model(process)
    x_T = torch.randn(200, 16, generator=gen(0), dtype=torch.float64)
    reference = S.dpm_solver_pp_3m(model, x_T.clone(), 640, lower_order_final=False).samples
    for solver, low, high in ((S.dpm_solver_pp_3m, 6.5, 10.0), (S.dpm_solver_pp_2m, 3.3, 4.8)):
        errors = [float((solver(model, x_T.clone(), n, lower_order_final=False).samples - reference).abs().mean())
                  for n in (20, 40, 80)]
        ratios = [a / b for a, b in zip(errors, errors[1:])]
        assert all(low < r < high for r in ratios), (solver.__name__, ratios)


def test_unipc_corrector_raises_the_order_by_one_at_no_extra_cost(mixture_16d):
    """UniPC-p with its corrector converges at order p + 1 (Zhao et al. 2023, Theorem 3.3): per halving of
    h on the exact 16-D mixture, measured 3.9 (p = 1), 6.5-7.4 (p = 2), 12.6-13.9 (p = 3). Without the
    corrector, UniP-3's order conditions give DPM-Solver++(3M)'s full-curvature update: equal to 1e-14."""
    model = mixture_16d.model(sl.VPSDE())
    x_T = torch.randn(200, 16, generator=gen(0), dtype=torch.float64)
    reference = S.dpm_solver_pp_3m(model, x_T.clone(), 1280, lower_order_final=False).samples
    for order, low, high in ((1, 3.3, 4.8), (2, 5.5, 9.5), (3, 11.0, 20.0)):
        errors = [float((S.unipc(model, x_T.clone(), n, order=order, lower_order_final=False).samples
                         - reference).abs().mean()) for n in (40, 80, 160)]
        ratios = [a / b for a, b in zip(errors, errors[1:])]
        assert all(low < r < high for r in ratios), (order, ratios)
    no_corrector = S.unipc(model, x_T.clone(), 30, order=3, corrector=False, lower_order_final=False).samples
    torch.testing.assert_close(no_corrector, S.dpm_solver_pp_3m(model, x_T.clone(), 30, lower_order_final=False).samples,
                               rtol=0, atol=1e-12)
