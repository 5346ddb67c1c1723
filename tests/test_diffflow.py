"""DiffFlow (MATH.md 11; Zhang & Chen 2021), checked against what it did not compute itself:

* the path loss with VP's fixed drift and the exact score of Gaussian data equals the KL between two Gaussian
  path measures built here in closed form (plus the data's entropy), and the exact score minimizes it, for a
  Gaussian mixture too;
* Gaussian data with an affine drift and a linear score: training reaches the closed-form optimum;
* ``g -> 0`` (the paper's Theorem 1): the loss is the negative log-likelihood of the flow the forward
  Euler steps make, whose log-determinant is known;
* a trained model's probability-flow NLL on a Gaussian mixture is never below the exact entropy.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import scorelab as sl
from scorelab.diffflow import DiffFlow, DiffFlowModel, DiffFlowNet, path_loss

BETA_MIN, BETA_MAX = 0.1, 20.0


# ---- the closed form: Gaussian path measures ------------------------------------------------------------
def _vp(t):
    """VP's beta(t), a(t) and s(t)^2, written out (MATH.md 4)."""
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    a = np.exp(-0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN)
    return beta, a, 1 - a**2


def _exact_score(mean, cov, t, scale=1.0):
    """``s(x) = P x + q`` of Gaussian data under VP at time t (times ``scale``)."""
    _, a, s2 = _vp(t)
    prec = np.linalg.inv(a**2 * cov + s2 * np.eye(len(mean)))
    return -scale * prec, scale * prec @ (a * mean)


def _chain(start_cov, start_mean, maps, offsets, noise_covs):
    """The joint Gaussian of ``x_0 ~ N(start)``, ``x_{k+1} = M_k x_k + o_k + N(0, Q_k)``: (mean, covariance)."""
    d = len(start_mean)
    n = len(maps)
    mean = [start_mean]
    # covariance blocks C[j][k] = Cov(x_j, x_k)
    cov = [[None] * (n + 1) for _ in range(n + 1)]
    cov[0][0] = start_cov
    for k in range(n):
        mean.append(maps[k] @ mean[k] + offsets[k])
        for j in range(k + 1):
            cov[j][k + 1] = cov[j][k] @ maps[k].T
            cov[k + 1][j] = cov[j][k + 1].T
        cov[k + 1][k + 1] = maps[k] @ cov[k][k] @ maps[k].T + noise_covs[k]
    big = np.block([[cov[j][k] for k in range(n + 1)] for j in range(n + 1)])
    return np.concatenate(mean), big, d


def _gaussian_kl(m1, c1, m2, c2):
    inv2 = np.linalg.inv(c2)
    diff = m2 - m1
    return 0.5 * (np.trace(inv2 @ c1) + diff @ inv2 @ diff - len(m1)
                  + np.linalg.slogdet(c2)[1] - np.linalg.slogdet(c1)[1])


def closed_form_loss(mean, cov, times, score_scale=1.0):
    """``E[log p_F(x_1:N | x_0) - log p_B(x_0:N)] = KL(p_F || p_B) + H(p_0)`` for VP's Euler-Maruyama chains,
    Gaussian data and the exact (or scaled) linear score (MATH.md 11)."""
    d, eye = len(mean), np.eye(len(mean))
    n = len(times) - 1
    fwd_maps, fwd_noise, bwd_maps, bwd_offsets, bwd_noise = [], [], [], [], []
    for i in range(n):
        dt = times[i + 1] - times[i]
        beta_i, beta_next = _vp(times[i])[0], _vp(times[i + 1])[0]
        fwd_maps.append(eye * (1 - 0.5 * beta_i * dt))
        fwd_noise.append(eye * beta_i * dt)
        p, q = _exact_score(mean, cov, times[i + 1], score_scale)
        # x_i = x_{i+1} - [f - g^2 s](x_{i+1}) dt + g sqrt(dt) z, f = -beta x / 2, g^2 = beta
        bwd_maps.append(eye * (1 + 0.5 * beta_next * dt) + beta_next * dt * p)
        bwd_offsets.append(beta_next * dt * q)
        bwd_noise.append(eye * beta_next * dt)
    mf, cf, _ = _chain(cov, mean, fwd_maps, [np.zeros(d)] * n, fwd_noise)
    # the backward chain from x_N ~ N(0, I), listed x_N, ..., x_0: reorder to x_0, ..., x_N
    mb, cb, _ = _chain(eye, np.zeros(d), bwd_maps[::-1], bwd_offsets[::-1], bwd_noise[::-1])
    order = np.concatenate([np.arange(k * d, (k + 1) * d) for k in range(n, -1, -1)])
    mb, cb = mb[order], cb[np.ix_(order, order)]
    entropy = 0.5 * np.linalg.slogdet(2 * math.pi * math.e * cov)[1]
    return _gaussian_kl(mf, cf, mb, cb) + entropy


class Scaled(sl.ModelWrapper):
    """A model's score times ``scale`` plus ``shift`` (a wrong score, to see the loss rise)."""

    def __init__(self, model, scale=1.0, shift=0.0):
        super().__init__(model)
        self.scale, self.shift = scale, shift

    def predict(self, x, t, labels=None):
        p = self.model.predict(x, t)
        return sl.Prediction(x, p.t, score=self.scale * p.score + self.shift)


MEAN, COV = np.array([0.8, -0.4]), np.array([[0.30, 0.12], [0.12, 0.20]])


def test_path_loss_equals_the_closed_form_path_kl_and_the_exact_score_minimizes_it():
    times = np.linspace(0.0, 1.0, 41) ** 1.5                   # any grid: a power one, finer near the data
    oracle = sl.GaussianMixture([1.0], [MEAN], [COV])
    model = oracle.model(sl.VPSDE())
    x0 = oracle.sample(40000, torch.Generator().manual_seed(0))
    losses = {}
    for scale in (0.8, 1.0, 1.25):
        value = path_loss(Scaled(model, scale), x0, torch.as_tensor(times), torch.Generator().manual_seed(1))
        losses[scale] = (float(value.mean()), float(value.std()) / math.sqrt(len(value)))
    exact = {scale: closed_form_loss(MEAN, COV, times, scale) for scale in losses}
    for scale, (mc, stderr) in losses.items():
        assert abs(mc - exact[scale]) < 4 * stderr + 1e-3, (scale, mc, exact[scale], stderr)
    assert exact[1.0] < min(exact[0.8], exact[1.25]) - 0.05
    assert losses[1.0][0] < min(losses[0.8][0], losses[1.25][0])


def test_the_exact_score_of_a_gaussian_mixture_minimizes_the_path_loss():
    oracle = sl.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [0.05, 0.1])
    model = oracle.model(sl.VPSDE())
    x0 = oracle.sample(4000, torch.Generator().manual_seed(2))
    times = torch.linspace(0, 1, 51, dtype=torch.float64) ** 1.5

    def loss(m):                                                # common random numbers: the same paths
        return path_loss(m, x0, times, torch.Generator().manual_seed(3))

    exact = loss(model)
    for wrong in (Scaled(model, 0.9), Scaled(model, 1.1), Scaled(model, 1.0, 0.3)):
        diff = loss(wrong) - exact
        assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(len(diff)), float(diff.mean())


# ---- Gaussian data, an affine drift and a linear score: the closed-form optimum -------------------------
class AffineDrift(nn.Module):
    """``f(x, t) = a x + b``, the same at every time."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.a * x + self.b


class GridLinearScore(nn.Module):
    """``s(x, t_k) = c_k x + d_k`` on the N + 1 points of a uniform grid (the times the unjittered loss asks)."""

    def __init__(self, num_steps):
        super().__init__()
        self.num_steps = num_steps
        self.c, self.d = nn.Parameter(torch.zeros(num_steps + 1)), nn.Parameter(torch.zeros(num_steps + 1))

    def forward(self, x, t):
        k = torch.round(t * self.num_steps).long()
        return self.c[k][:, None] * x + self.d[k][:, None]


def _continuous_optimum(m0, v0):
    """The drift ``a x + b`` on ``t in [0, 1]`` (g = 1) whose forward marginal at t = 1 is N(0, 1) for data
    N(m0, v0): ``v0 e^{2a} + (e^{2a} - 1) / (2a) = 1``, ``m0 e^a + b (e^a - 1) / a = 0`` (in continuous time, with
    the exact score the path KL is KL(p_1 || N(0, 1)), zero only there)."""
    from scipy.optimize import brentq

    a = brentq(lambda a: v0 * math.exp(2 * a) + math.expm1(2 * a) / (2 * a) - 1, -5.0, -1e-9)
    return a, -m0 * math.exp(a) * a / math.expm1(a)


def _discrete_optimum(m0, v0, steps):
    """The optimum of the N-step chains. For a given drift the forward path is Gaussian, and the best backward
    kernel of fixed variance ``dt`` at each step is the least-squares regression of ``x_i`` on ``x_{i+1}``
    (its residual variance ``R_i = Var x_i - Cov(x_i, x_{i+1})^2 / Var x_{i+1}``), which the linear score can
    represent; what is left to minimize over ``(a, b)`` is ``E[x_N^2] / 2 + sum_i R_i / (2 dt)``."""
    from scipy.optimize import minimize

    def objective(params):
        a, b = params
        m, v, total, dt = m0, v0, 0.0, 1.0 / steps
        for _ in range(steps):
            v_next, cov = (1 + a * dt) ** 2 * v + dt, (1 + a * dt) * v
            total += (v - cov**2 / v_next) / (2 * dt)
            m, v = m + (a * m + b) * dt, v_next
        return total + 0.5 * (m**2 + v)

    return minimize(objective, [-0.2, -1.0], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-14}).x


def test_training_an_affine_drift_and_linear_score_reaches_the_closed_form_optimum():
    m0, v0, steps = 1.5, 0.25, 10
    a, b = _discrete_optimum(m0, v0, steps)
    assert np.allclose(_discrete_optimum(m0, v0, 2000), _continuous_optimum(m0, v0), atol=2e-3)  # the N -> oo limit
    process = DiffFlow(num_steps=steps, beta=1.0, horizon=1.0, g=1.0)
    model = DiffFlowModel(DiffFlowNet(drift=AffineDrift(), score=GridLinearScore(steps)), process)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    trail = []
    for k in range(600):
        for group in optimizer.param_groups:
            group["lr"] = 0.05 if k < 400 else 0.01
        x0 = m0 + math.sqrt(v0) * torch.randn(1024, 1, generator=gen)
        loss = sl.diffflow.diffflow_loss(model, x0, randomness=gen, jitter=False, recompute=False).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if k >= 500:                                            # Polyak's average of the last steps
            trail.append([float(model.net.drift.a.detach()), float(model.net.drift.b.detach())])
    trained = np.mean(trail, axis=0)
    assert np.allclose(trained, [a, b], atol=0.015), (trained, (a, b), _continuous_optimum(m0, v0))


# ---- g -> 0: a normalizing flow's likelihood (the paper's Theorem 1) ------------------------------------
class LinearDrift(nn.Module):
    def __init__(self, matrix):
        super().__init__()
        self.register_buffer("matrix", torch.as_tensor(matrix, dtype=torch.float64))

    def forward(self, x, t):
        return x @ self.matrix.T


class ZeroScore(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def test_as_g_vanishes_the_loss_is_the_negative_log_likelihood_of_the_flow():
    """With ``g -> 0`` (and ``dt^{3/2} / g -> 0``) the forward chain is the invertible map
    ``Phi = prod_i (I + A dt_i)`` and the loss tends to ``-log N(Phi x0; 0, I) - log |det Phi|``."""
    matrix = np.array([[-0.8, 0.6], [-0.3, 0.4]])
    steps = 1000
    process = DiffFlow(num_steps=steps, beta=1.0, horizon=1.0, g=0.01)
    model = DiffFlowModel(DiffFlowNet(drift=LinearDrift(matrix), score=ZeroScore()), process)
    x0 = 0.5 + 0.7 * torch.randn(400, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = path_loss(model, x0, process.grid(), torch.Generator().manual_seed(1))
    flow, log_det = np.eye(2), 0.0
    for dt in np.diff(np.linspace(0, 1, steps + 1)):
        step = np.eye(2) + matrix * dt
        flow, log_det = step @ flow, log_det + np.linalg.slogdet(step)[1]
    z = x0.numpy() @ flow.T
    nll = 0.5 * (z**2).sum(1) + math.log(2 * math.pi) - log_det
    assert abs(float(loss.mean()) - nll.mean()) < 5e-3, (float(loss.mean()), nll.mean())
    assert np.abs(loss.numpy() - nll).max() < 0.3                 # each path: its noise, about 0.06
    # with more noise the chain is no flow: the same drift's loss moves away from the flow's likelihood
    noisy = DiffFlowModel(DiffFlowNet(drift=LinearDrift(matrix), score=ZeroScore()),
                          DiffFlow(num_steps=steps, beta=1.0, horizon=1.0, g=1.0))
    assert abs(float(path_loss(noisy, x0, process.grid(), torch.Generator().manual_seed(1)).mean()) - nll.mean()) > 0.1


# ---- a trained model: its likelihoods, samples and checkpoint --------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, mixture_2d):
    """DiffFlow with the paper's settings (N = 10, T = 0.05, g = 1, jittered grids) on a 2-D mixture."""
    from scorelab.training import TrainConfig, train

    data = mixture_2d.sample(20000, generator=torch.Generator().manual_seed(0)).float().numpy()
    config = TrainConfig(framework="diffflow", out=str(tmp_path_factory.mktemp("diffflow")), steps=400,
                         batch_size=256, lr=3e-3, ema_decay=0.99, network="mlp",
                         network_options={"hidden": 64, "depth": 3}, process_options={"num_steps": 10},
                         loss_options={"recompute": False}, sample_every=10**6, checkpoint_every=10**6,
                         num_preview=4, preview_steps=2)
    return train(config, data=data, progress=False)


def test_a_trained_model_likelihoods_are_never_below_the_entropy(trained, mixture_2d):
    """Cross-entropy is at least the entropy: the probability-flow NLL of held-out points (exact divergence) and
    the trajectory bound, each against the mixture's exact log-density at the same points. Measured gaps: ODE
    0.040 nats, trajectory bound 0.14."""
    x = mixture_2d.sample(500, generator=torch.Generator().manual_seed(1))
    entropy = -mixture_2d.log_prob(x).double()
    model = trained.model
    ode = -sl.likelihood.ode_log_likelihood(model, x.float(), divergence="exact").log_prob.double()
    bound = sl.diffflow.trajectory_nll(model, x.float(), draws=4, randomness=torch.Generator().manual_seed(2))
    for nll, gap in ((ode, 0.1), (bound, 0.25)):
        diff = nll - entropy
        stderr = float(diff.std()) / math.sqrt(len(diff))
        assert -3 * stderr < float(diff.mean()) < gap, (float(diff.mean()), stderr)


@pytest.mark.parametrize("sampler", ["diffflow", "ode", "em"])
def test_a_trained_model_samples_the_mixture(trained, mixture_2d, sampler):
    """The energy distance of 2000 samples to 2000 mixture draws: the noise floor (two mixture draws) is within
    +-0.001, samples of this model measure 0.003 (backward chain, ODE) to 0.004 (em), its prior 0.18."""
    from scorelab.evaluation.distances import energy_distance

    x = sl.samplers.sample(trained.model, (2000, 2), sampler, 100 if sampler == "em" else None,
                           noise=torch.Generator().manual_seed(3)).samples
    reference = mixture_2d.sample(2000, generator=torch.Generator().manual_seed(4)).float()
    assert energy_distance(x, reference) < 0.008


def test_the_checkpoint_rebuilds_both_networks(trained):
    model, spec, _ = sl.load_model(trained.out)
    assert spec.parameterization == "diffflow" and isinstance(model.process, DiffFlow)
    x, t = torch.randn(8, 2, generator=torch.Generator().manual_seed(5)), torch.full((8,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(model.predict(x, t).score, trained.model.predict(x, t).score)
    torch.testing.assert_close(model.process.drift(x, t), trained.model.process.drift(x, t))
    assert model.process.drift_net is model.net.drift


def test_stopping_and_resuming_is_exact_with_progressive_steps(tmp_path):
    """The progressive schedule's stage is part of the checkpoint: 3 + 3 steps equal 6, weights and EMA alike."""
    from safetensors.torch import load_file
    from scorelab.training import TrainConfig, train

    data = np.random.default_rng(0).normal(size=(512, 2)).astype(np.float32)

    def config(out, steps):
        return TrainConfig(framework="diffflow", out=str(tmp_path / out), steps=steps, batch_size=32, lr=1e-3,
                           network="mlp", network_options={"hidden": 16, "depth": 2},
                           process_options={"num_steps": 4}, loss_options={"progressive": "2,3", "stage_steps": 2},
                           sample_every=10**6, checkpoint_every=3, num_preview=4)
    whole = train(config("whole", 6), data=data, progress=False)
    train(config("parts", 3), data=data, progress=False)
    resumed = train(config("parts", 6), data=data, progress=False, resume=True)
    assert resumed.losses == whole.losses[3:]
    for name in ("model", "ema", "state"):
        a = load_file(whole.checkpoint / f"{name}.safetensors")
        b = load_file(resumed.checkpoint / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert int(load_file(whole.checkpoint / "state.safetensors")["objective_state.steps_done"]) == 6
    train(config("plain", 2).replace(loss_options={}), data=data, progress=False)
    with pytest.raises(sl.store.CheckpointError, match="holds no state of the loss"):      # progressive added later
        train(config("plain", 4), data=data, progress=False, resume=True)


def test_progressive_training_grows_the_grid():
    state = sl.diffflow.Progressive([5, 10, 30], stage_steps=2)
    seen = []
    for _ in range(7):
        seen.append(state.num_steps())
        state.update(*state.take_pending())
    assert seen == [5, 5, 10, 10, 30, 30, 30]


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="integer >= 1"):
        DiffFlow(num_steps=0)
    with pytest.raises(ValueError, match="beta must be a positive"):
        DiffFlow(beta=-1.0)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        DiffFlow(horizon=1.5)
    x = torch.randn(4, 2, dtype=torch.float64)
    wrong_shape = DiffFlowModel(DiffFlowNet(drift=LinearDrift(np.ones((3, 2))), score=ZeroScore()), DiffFlow())
    with pytest.raises(ValueError, match="must return f\\(x, t\\) of x's shape"):
        wrong_shape.process.drift(x, 0.5)

    class Exploding(nn.Module):
        def forward(self, x, t):
            return torch.where(t[:, None] > 0.5, x * float("inf"), x)

    exploding = DiffFlowModel(DiffFlowNet(drift=Exploding(), score=ZeroScore()), DiffFlow(num_steps=4, beta=1.0))
    with pytest.raises(FloatingPointError, match="NaN or Inf at step 3 of 4"):
        path_loss(exploding, x, exploding.process.grid())
    with pytest.raises(ValueError, match="built from modules"):
        sl.store.network_spec(wrong_shape.net)
    with pytest.raises(ValueError, match="has no drift network"):
        DiffFlow().drift(x, 0.5)
