"""SDEs with a non-affine drift (MATH.md 7), checked against an independent Fokker-Planck solution.

The named SDEs act on each coordinate alone, so for data whose coordinates are independent draws of a
1-D density ``p_0`` every marginal ``p_t`` is the product of the 1-D solution of
``dp/dt = -d/dx (f p) + g^2/2 d^2p/dx^2`` (tests/fokker_planck.py: finite volumes, TR-BDF2, checked
there against closed forms). Its density, cdf and score are the reference here.
"""

import functools
import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab._util import as_time
from fokker_planck import solve_fokker_planck

# p_0 of each coordinate: 0.3 N(-1.5, 0.3^2) + 0.7 N(1, 0.2^2)
WEIGHTS, MEANS, STDS = (0.3, 0.7), (-1.5, 1.0), (0.3, 0.2)
TIMES = tuple(np.round(np.linspace(0, 1, 201), 6))          # the reference's time grid


def p0(x: np.ndarray) -> np.ndarray:
    return sum(w * np.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
               for w, m, s in zip(WEIGHTS, MEANS, STDS))


def draw_p0(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = (torch.rand(shape, generator=g, dtype=torch.float64) > WEIGHTS[0]).long()
    return torch.tensor(MEANS, dtype=torch.float64)[k] + torch.tensor(STDS, dtype=torch.float64)[k] * \
        torch.randn(shape, generator=g, dtype=torch.float64)


# The drifts written out from their definitions (MATH.md 7), independent of scorelab's code.
def _beta(t, beta_max=40.0):
    return 0.1 + t * (beta_max - 0.1)


DRIFTS = {
    "tanh": lambda x, t: -0.5 * _beta(t) * np.tanh(x / 2),
    "double_well": lambda x, t: -0.5 * _beta(t) * (x - 1.5 * np.tanh(1.5 * x)),
    "vp": lambda x, t: -0.5 * _beta(t, 20.0) * x,
}
PROCESSES = {"tanh": lambda: sl.named_sde("tanh"), "double_well": lambda: sl.named_sde("double_well"),
             "vp": lambda: sl.VPSDE()}


@functools.lru_cache(maxsize=None)
def reference(name: str, cells: int = 2400, steps: int = 2000):
    g = lambda t: math.sqrt(_beta(t, 20.0 if name == "vp" else 40.0))
    return solve_fokker_planck(DRIFTS[name], g, p0, x_max=12.0, cells=cells, time_steps=steps, times=TIMES)


class ReferenceScore(sl.ModelBase):
    """The exact score of the product-form ``p_t`` from the Fokker-Planck reference, as a model: bilinear in
    ``(t, x)`` on the reference's grid, differentiable in ``x`` (the ODE likelihood's exact divergence)."""

    def __init__(self, process, name: str):
        sol = reference(name)
        self.process = process
        self.x = torch.as_tensor(sol.x)
        self.times = torch.as_tensor(sol.times)
        log_p = np.log(np.maximum(sol.density, 1e-300))
        self.table = torch.as_tensor(np.gradient(log_p, sol.dx, axis=1))

    def predict(self, x: torch.Tensor, t) -> sl.Prediction:
        t = as_time(t, x)
        u = ((t - self.times[0]) / (self.times[1] - self.times[0])).clamp(0, len(self.times) - 1 - 1e-9)
        i = u.floor().long()
        v = ((x.double() - self.x[0]) / (self.x[1] - self.x[0])).clamp(0, len(self.x) - 1 - 1e-9)
        j = v.floor().long()
        fu, fv = (u - i).reshape(-1, *([1] * (x.ndim - 1))), v - j
        i = i.reshape(-1, *([1] * (x.ndim - 1))).expand_as(j)
        row = lambda ii: self.table[ii, j] * (1 - fv) + self.table[ii, j + 1] * fv
        score = row(i) * (1 - fu) + row(i + 1) * fu
        return sl.Prediction(x, t, score=score.to(x.dtype))


def test_named_drifts_are_the_formulas_and_their_priors_are_the_stationary_densities():
    x = torch.linspace(-14, 14, 561, dtype=torch.float64)[:, None]
    t = torch.full((561,), 0.3, dtype=torch.float64)
    for name in ("tanh", "double_well"):
        sde = PROCESSES[name]()
        torch.testing.assert_close(sde.drift(x, t)[:, 0], torch.as_tensor(DRIFTS[name](x[:, 0].numpy(), 0.3)))
        # pi = exp(-u) / Z solves f p = g^2/2 p' when f = -(g^2/2) u'
        dens = torch.exp(sde.prior_log_prob(x))
        grad_log = torch.gradient(torch.log(dens), spacing=(x[:, 0],))[0]
        f_over_d = sde.drift(x, t)[:, 0] / (0.5 * sde.diffusion(t) ** 2)
        torch.testing.assert_close(grad_log[1:-1], f_over_d[1:-1], atol=2e-3, rtol=0)
        assert abs(float(dens.sum() * (x[1, 0] - x[0, 0])) - 1) < 2e-3          # normalised
        draws = sde.prior_sample((200000, 1), torch.Generator().manual_seed(0))[:, 0].double()
        cdf = torch.cumsum(dens, 0) * (x[1, 0] - x[0, 0])
        ecdf = torch.searchsorted(draws.sort().values, x[:, 0]).double() / len(draws)
        assert float((ecdf - cdf).abs().max()) < 0.01


def test_the_priors_are_reached_at_t_1():
    """From this p_0 each named SDE's p_1 is its prior within total variation 0.01 (the reference)."""
    for name in ("tanh", "double_well"):
        sol = reference(name)
        prior = torch.exp(PROCESSES[name]().prior_log_prob(torch.as_tensor(sol.x)[:, None])).numpy()
        assert 0.5 * np.abs(sol.density[-1] - prior).sum() * sol.dx < 0.01


@pytest.mark.parametrize("name", ["tanh", "double_well", "vp"])
def test_simulate_draws_the_fokker_planck_marginals(name):
    """Euler-Maruyama from 0 to each row's own t reproduces the reference cdf at three times in one call
    (Kolmogorov-Smirnov distance under 0.015, measured 0.004-0.007 at 400 steps; 0.0115 is the 99% bound for
    20000 draws; at 20 steps the scheme's O(1/steps) bias gives 0.032-0.039 at t = 1). The reference is
    converged: half the grid moves its cdf by < 1e-4."""
    sde = PROCESSES[name]()
    sol, coarse = reference(name), reference(name, 1200, 1000)
    n, times = 20000, (0.05, 0.3, 1.0)
    t = torch.tensor(times, dtype=torch.float64).repeat_interleave(n)
    x = sde.simulate(draw_p0((3 * n, 1), 1).float(), t, 400, torch.Generator().manual_seed(2))[:, 0].double()
    for k, tk in enumerate(times):
        i = TIMES.index(tk)
        xs = np.sort(x[k * n:(k + 1) * n].numpy())
        assert np.abs(sol.cdf(xs, i) - coarse.cdf(xs, i)).max() < 1e-4
        ks = max(np.abs(sol.cdf(xs, i) - np.arange(1, n + 1) / n).max(), np.abs(sol.cdf(xs, i) - np.arange(n) / n).max())
        assert ks < 0.015, (tk, ks)


def test_ode_likelihood_with_the_exact_score_is_the_reference_log_density():
    """log p_{t_min}(x) = log p_1(x_1) + int div along the probability-flow ODE of a non-affine SDE, with the
    reference's score and its exact divergence: equal to the reference's own log p_{t_min} within 0.01 nats
    (2-D product data), once the prior term uses the reference's p_1 (the SDE's prior is p_1 within TV 0.01)."""
    sde = sl.named_sde("double_well", t_min=0.005)
    model = ReferenceScore(sde, "double_well")
    sol = reference("double_well")
    x = draw_p0((6, 2), 3).float()
    result = sl.likelihood.ode_log_likelihood(model, x, divergence="exact", rtol=1e-6, atol=1e-6)
    i = TIMES.index(0.005)
    log_p = lambda z, k: sum(torch.as_tensor(sol.log_density(z[:, c].double().numpy(), k)) for c in range(2))
    got = result.log_prob - result.prior_log_prob + log_p(result.latent, len(TIMES) - 1)
    torch.testing.assert_close(got, log_p(x, i), atol=0.01, rtol=0)
    torch.testing.assert_close(result.log_prob, log_p(x, i), atol=0.1, rtol=0)      # with the prior itself


def test_samplers_with_the_exact_score_reproduce_p0_on_a_non_affine_sde():
    """Reverse SDE (Euler-Maruyama, predictor-corrector) and probability-flow ODE from the prior, with the
    reference's score: the cdf of all 8000 coordinates is p_{t_min}'s within a KS distance of 0.025 (measured
    0.007-0.015 over seeds; the 99% bound of 4000 independent samples is 0.026)."""
    sde = sl.named_sde("tanh")
    model = ReferenceScore(sde, "tanh")
    sol = reference("tanh")
    i = TIMES.index(0.005)
    for sampler, steps, options in (("em", 500, {}), ("pc", 250, {"snr_norm": "batch"}), ("ode", None, {})):
        x = sl.samplers.sample(model, (4000, 2), sampler, steps, noise=torch.Generator().manual_seed(4),
                               t_min=0.005, **options).samples
        xs = np.sort(x.double().numpy().reshape(-1))
        ks = np.abs(sol.cdf(xs, i) - (np.arange(len(xs)) + 0.5) / len(xs)).max()
        assert ks < 0.025, (sampler, ks)


def test_a_general_sde_refuses_what_needs_a_gaussian_kernel():
    sde = sl.named_sde("tanh")
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="use target='score'"):
        sl.Model(net, sde, target="eps")
    with pytest.raises(ValueError, match="does not fit GeneralSDE"):
        sl.Model(net, sde, target="score", condition="sigma")
    model = ReferenceScore(sde, "tanh")
    with pytest.raises(ValueError, match=r"use one of \['pc', 'em', 'ode', 'ld'\]"):
        sl.samplers.sample(model, (4, 2), "ddim", 5)
    with pytest.raises(ValueError, match="x0 prediction exists for affine processes"):
        model.predict(torch.zeros(3, 2), 0.5).x0
    with pytest.raises(ValueError, match="sliced_score_matching_loss"):
        sl.dsm_loss(sl.Model(net, sde, target="score"), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="DDPM's discrete chain or NCSN's noise ladder"):
        sl.Model(net, sl.VPSDE(), condition="index")


def test_a_general_sde_checks_its_functions():
    ok_prior = (lambda shape, generator=None: torch.randn(shape, generator=generator),
                lambda x: -0.5 * (x**2).sum(1))
    shape = sl.GeneralSDE(lambda x, t: x[:, :1], lambda t: torch.ones_like(t), *ok_prior)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        shape.simulate(torch.zeros(3, 2), 0.5, 2)
    nan = sl.GeneralSDE(lambda x, t: x / 0.0, lambda t: torch.ones_like(t), *ok_prior)
    with pytest.raises(ValueError, match="NaN or Inf"):
        nan.simulate(torch.zeros(3, 2), 0.5, 2)
    flat = sl.GeneralSDE(lambda x, t: -x, lambda t: torch.zeros_like(t), *ok_prior)
    with pytest.raises(ValueError, match="must be positive"):
        flat.simulate(torch.zeros(3, 2), 0.5, 2)
    with pytest.raises(ValueError, match="register_sde"):
        flat.config()                                          # an unnamed drift cannot go in a checkpoint
    with pytest.raises(ValueError, match="unknown SDE drift 'spiral'"):
        sl.process_from_config({"name": "general", "drift": "spiral"})
    sl.register_sde("test_ou", lambda rate: sl.GeneralSDE(lambda x, t: -rate * x, lambda t: torch.ones_like(t),
                                                           *ok_prior), {"rate": 1.0})
    try:
        sde = sl.named_sde("test_ou", rate=2.0)
        assert sl.process_from_config(sde.config()) == sde and sde.config()["rate"] == 2.0
    finally:
        sl.processes.NAMED_SDES.pop("test_ou")


def _ks_to_p0(x: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of every coordinate of ``x`` (flattened) to p_0's exact cdf."""
    from scipy.stats import norm

    xs = np.sort(x.double().numpy().reshape(-1))
    cdf = sum(w * norm.cdf(xs, m, s) for w, m, s in zip(WEIGHTS, MEANS, STDS))
    return float(np.abs(cdf - (np.arange(len(xs)) + 0.5) / len(xs)).max())


def test_sliced_score_matching_learns_a_non_affine_sde_end_to_end(tmp_path):
    """``--framework sde`` (SSM-VR on simulated x_t) on 2-D product data: the learned score is within a
    few percent of the Fokker-Planck reference (relative squared error at t = 0.05, 0.2, 0.5: measured
    0.031, 0.012, 0.0024), reverse-SDE and ODE samples match p_0 (KS to its cdf under 0.03, measured 0.023
    and 0.022; the 99% bound for the 4000 coordinates is 0.026), and the checkpoint rebuilds the named SDE."""
    from scorelab.training import TrainConfig, train

    data = draw_p0((20000, 2), 0).float().numpy()
    config = TrainConfig(framework="sde", process_options={"drift": "tanh"}, out=str(tmp_path), steps=1000,
                         batch_size=512, lr=2e-3, warmup=100, ema_decay=0.999, network="mlp",
                         network_options={"hidden": 128, "depth": 3}, sample_every=10**6, checkpoint_every=500,
                         num_preview=4, preview_steps=2)
    model = train(config, data=data, progress=False).model.eval()
    loaded, spec, _ = sl.load_model(tmp_path)
    assert loaded.process == sl.named_sde("tanh") and spec.target == "score" and spec.condition == "time"
    probe = draw_p0((8, 2), 7).float()
    with torch.no_grad():                                  # the checkpoint alone rebuilds the trained model
        torch.testing.assert_close(loaded.predict(probe, 0.3).score, model.predict(probe, 0.3).score)
    sol = reference("tanh")
    for t, bound in ((0.05, 0.08), (0.2, 0.03), (0.5, 0.01)):
        x_t = loaded.process.simulate(draw_p0((4000, 2), 10).float(), t, 400, torch.Generator().manual_seed(1))
        with torch.no_grad():
            score = loaded.predict(x_t, t).score.double().numpy()
        exact = np.stack([sol.score(x_t[:, k].double().numpy(), TIMES.index(t)) for k in range(2)], 1)
        assert ((score - exact) ** 2).sum() / (exact**2).sum() < bound, t
    for sampler, steps in (("em", 500), ("ode", None)):
        x = sl.samplers.sample(loaded, (2000, 2), sampler, steps, noise=torch.Generator().manual_seed(5)).samples
        assert _ks_to_p0(x) < 0.03, sampler
