"""The energy-based view against exact mixtures: energies, Metropolis-corrected samplers, composition (MATH.md 9)."""

import copy

import pytest
import torch
from torch import nn

import scorelab as sl
from scorelab import compose
from scorelab.evaluation import energy_distance
from scorelab.samplers.mcmc import mcmc
from scorelab.training.ema import ema_decay_at, update_ema

N = 2000
ED_TOL = 0.006          # the 2000-point noise floor measured in test_samplers.py


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mala_and_hmc_leave_p_t_invariant_where_ula_drifts(mixture_2d):
    """Started from exact samples of p_t, 200 steps of size 0.3 keep MALA and HMC at the noise floor
    (measured 0.000, 0.001; acceptance 45% and 21%), while ULA with the same step drifts to 0.115."""
    process, t = sl.VPSDE(), 0.05
    a, s = process.coefficients(torch.tensor([t]))
    x0 = mixture_2d.sample(N, _gen(1), dtype=torch.float64)
    start = a * x0 + s * torch.randn(N, 2, generator=_gen(1001), dtype=torch.float64)
    reference = a * mixture_2d.sample(N, _gen(2), dtype=torch.float64) + \
        s * torch.randn(N, 2, generator=_gen(1002), dtype=torch.float64)
    model = mixture_2d.energy_model(process)
    for method in ("mala", "hmc"):
        out = mcmc(model, start.clone(), 200, t=t, method=method, step_size=0.3, noise=_gen(5))
        assert energy_distance(out.samples, reference) < ED_TOL, method
        assert 0.1 < out.acceptance < 0.9, (method, out.acceptance)
    drifted = mcmc(model, start.clone(), 200, t=t, method="ula", step_size=0.3, noise=_gen(5))
    assert energy_distance(drifted.samples, reference) > 10 * ED_TOL and drifted.acceptance is None


def test_the_product_of_two_mixtures_is_the_closed_form_mixture():
    p1 = sl.GaussianMixture([0.4, 0.6], [[-1.0, 0.2], [1.0, 0.0]], [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]])
    p2 = sl.GaussianMixture([0.3, 0.7], [[0.0, -1.0], [0.5, 1.0]], [[1.5, 0.05], [0.8, 0.1]])
    u = torch.linspace(-4, 4, 401, dtype=torch.float64)
    xx = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    log_prod = p1.log_prob(xx) + p2.log_prob(xx)
    log_prod = log_prod - torch.logsumexp(log_prod, 0) - 2 * torch.log(u[1] - u[0])       # normalized on the grid
    dens, got = log_prod.exp(), p1.product(p2).log_prob(xx).exp()
    assert float((dens - got).abs().max()) < 1e-6 * float(dens.max())


def test_sampling_a_product_with_the_reverse_sde_alone_is_biased_and_mh_corrects_it():
    """At t > 0 the sum of the diffused scores is not the score of the diffused product. Measured over 4
    seeds: reverse SDE 0.013-0.016; with MALA (2 steps per level, acceptance 78%) 0.000-0.001; with HMC
    (1 step of 3 leapfrogs, 97%) 0.000-0.000."""
    p1 = sl.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.3, 0.3])
    p2 = sl.GaussianMixture([0.3, 0.7], [[0.0, -1.0], [0.0, 1.0]], [[1.5, 0.05], [1.5, 0.05]])
    process = sl.VPSDE()
    model = compose.product(p1.energy_model(process), p2.energy_model(process))
    reference = p1.product(p2).sample(N, _gen(1))
    biased = energy_distance(sl.samplers.sample(model, (N, 2), "em", 200, noise=_gen(3)).samples, reference)
    assert biased > 1.5 * ED_TOL
    mala = sl.samplers.sample(model, (N, 2), "pc", 200, noise=_gen(3), corrector="mala", corrector_steps=2,
                              target_snr=0.5)
    hmc = sl.samplers.sample(model, (N, 2), "pc", 100, noise=_gen(3), corrector="hmc", target_snr=0.4)
    for out in (mala, hmc):
        assert energy_distance(out.samples, reference) < min(ED_TOL, biased / 5)
    assert mala.nfe == sl.samplers.sampler_nfe(process, "pc", 200, corrector="mala", corrector_steps=2) == 801
    assert hmc.nfe == sl.samplers.sampler_nfe(process, "pc", 100, corrector="hmc") == 501
    # A projection moves the state, so each MH step then starts from a fresh energy: counted and declared alike.
    keep = lambda x, a, s: x                                                     # noqa: E731
    for corrector, per_step in (("mala", 1 + 2 * 2), ("hmc", 1 + 2 * 4)):
        out = sl.samplers.sample(model, (8, 2), "pc", 5, noise=_gen(3), corrector=corrector, corrector_steps=2,
                                 project=keep)
        assert out.nfe == sl.samplers.sampler_nfe(process, "pc", 5, corrector=corrector, corrector_steps=2,
                                                  project=keep) == 5 * per_step + 1


def test_an_smc_sampler_gives_a_product_whose_modes_separate_its_weights_and_normalizer():
    """The product of a 3- and a 2-component mixture whose two main modes (x < 0: narrow, 23% of the mass; x > 0:
    wide) part as the noise falls. Annealed MALA freezes their weights where they part (500 samples, 100 levels,
    seeds 3-7: 11-15% in the narrow mode, energy distance 0.039-0.086; the floor is 0.001-0.002); the SMC sampler
    reweighs the particles between levels (Del Moral et al. 2006; MATH.md 12): 20-25% and at most 0.005, its
    evidence within 0.05 of the product's closed-form log Z (-2.957); the test holds it to 0.08."""
    p1 = sl.GaussianMixture([0.1, 0.5, 0.4], [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.15, 0.6, 0.4])
    p2 = sl.GaussianMixture([0.3, 0.7], [[-2.0, 0.3], [2.0, 0.5]], [0.2, 0.7])
    process = sl.VPSDE()
    model = compose.product(p1.energy_model(process), p2.energy_model(process))
    reference = p1.product(p2).sample(N, _gen(1))
    narrow = float((reference[:, 0] < 0).double().mean())                       # 0.23
    annealed = sl.samplers.sample(model, (N // 4, 2), "pc", 100, noise=_gen(3), corrector="mala", corrector_steps=2,
                                  target_snr=0.5).samples
    assert float((annealed[:, 0] < 0).double().mean()) < narrow - 0.05
    assert energy_distance(annealed, reference) > 4 * ED_TOL
    out = sl.samplers.sample(model, (N, 2), "smc", 200, noise=_gen(3))
    assert abs(float((out.samples[:, 0] < 0).double().mean()) - narrow) < 0.045
    assert energy_distance(out.samples, reference) < ED_TOL
    t_min = process.t_min                                                       # the last level's exact product
    log_z = p1.diffused(t_min, process).log_overlap(p2.diffused(t_min, process))
    assert abs(float(out.log_evidence[0]) - log_z) < 0.08
    assert out.nfe == sl.samplers.sampler_nfe(process, "smc", 200) == 1 + 200 * 3
    assert out.ess.shape == (201, 1) and out.particles.shape == (1, N, 2) and out.weights.shape == (1, N)


def test_compositions_equal_their_closed_forms(mixture_2d):
    process = sl.VPSDE()
    x = torch.randn(7, 2, generator=_gen(0), dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 7, dtype=torch.float64)
    other = sl.GaussianMixture([1.0], [[0.5, -0.5]], [0.2])
    # A mixture of mixtures is the mixture of all their components, weighted.
    mix = compose.mixture([mixture_2d.energy_model(process), other.energy_model(process)], [0.25, 0.75])
    joint = sl.GaussianMixture(torch.cat([0.25 * mixture_2d.weights, 0.75 * other.weights]),
                               torch.cat([mixture_2d.means, other.means]),
                               torch.cat([mixture_2d.covariances(), other.covariances()]))
    torch.testing.assert_close(mix.predict(x, t).eps, joint.model(process).predict(x, t).eps)
    torch.testing.assert_close(mix.energy(x, t), -joint.marginal_log_prob(x, t, process))
    # Temperature divides energy and score; classifier-free guidance is a product of powers.
    hot = compose.temperature(mixture_2d.energy_model(process), 2.0)
    torch.testing.assert_close(hot.energy(x, t), -0.5 * mixture_2d.marginal_log_prob(x, t, process))
    torch.testing.assert_close(hot.predict(x, t).eps, 0.5 * mixture_2d.model(process).predict(x, t).eps)
    labels = torch.full((7,), 1)
    cfg = sl.ClassifierFreeGuidance(mixture_2d.class_model(process), labels, 1.5).predict(x, t).eps
    prod = compose.guidance_product(mixture_2d.component(1).model(process), mixture_2d.model(process), 1.5)
    torch.testing.assert_close(prod.predict(x, t).eps, cfg)


class _Quadratic(nn.Module):
    """E(x) = |x - m|^2 / 2 * c(t): a scalar energy with a known gradient."""

    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x, c):
        return 0.5 * (x - self.m).pow(2).sum(1) * (1 + c / 1000)


def test_energy_models_differentiate_their_energy():
    process = sl.VPSDE()
    x = torch.randn(5, 2, generator=_gen(1))
    t = torch.full((5,), 0.3)
    scalar = sl.EnergyModel(_Quadratic(), process)
    pred = scalar.predict(x, t)
    c = process.noise_condition("time", t.double()).float()
    eps = (x - scalar.net.m.detach()) * (1 + c / 1000)[:, None]          # grad_x E by hand
    torch.testing.assert_close(pred.eps, eps)
    s = process.noise_std(t.double()).float()
    torch.testing.assert_close(scalar.energy(x, t), scalar.network_energy(x, t.double()) / s)
    torch.testing.assert_close(pred.score, -eps / s[:, None])
    # The norm form with a zero network is |x|^2 / 2, whose eps is x: exact where the data is forgotten.
    zero = sl.EnergyModel(sl.networks.MLP(dim=2), process, form="norm")
    for p in zero.net.parameters():
        nn.init.zeros_(p)
    torch.testing.assert_close(zero.predict(x, t).eps, x)
    # Training mode keeps the graph: the loss reaches the energy network's parameters (double backprop).
    scalar.train()
    sl.dsm_loss(scalar, x).mean().backward()
    assert scalar.net.m.grad is not None and bool(torch.isfinite(scalar.net.m.grad).all())
    # Exact energies are -log p_t, and their score is the exact one.
    gm = sl.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.3, 0.3])
    exact = gm.energy_model(process)
    torch.testing.assert_close(exact.energy(x.double(), 0.4), -gm.marginal_log_prob(x.double(), 0.4, process))
    # Under another process (a DDPM model on its VP SDE) the energy moves by a constant only.
    adapted = sl.ProcessAdapter(gm.energy_model(sl.DDPM()), sl.VPSDE()).energy(x.double(), 0.4)
    shift = adapted + gm.marginal_log_prob(x.double(), 0.4, sl.VPSDE())
    assert float(shift.max() - shift.min()) < 1e-6


class _DiagonalQuadratic(nn.Module):
    """E(x) = sum_i d_i (x_i - m_i)^2 / 2: eps = d (x - m), Hessian diag(d), so tr and v^T H v are known."""

    def __init__(self):
        super().__init__()
        self.d = nn.Parameter(torch.tensor([0.7, 1.9, 1.2]))
        self.m = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    def forward(self, x, c):
        return 0.5 * (self.d * (x - self.m) ** 2).sum(1)


@pytest.mark.parametrize("loss", ["sm", "ssm-vr"])
def test_score_matching_trains_an_energy_model_by_its_exact_gradient(loss):
    """Exact and sliced score matching reach an energy network through the third derivative of E: with
    s = -d (x_t - m) / s(t), lambda = s(t)^2, the loss is s(t)^2 [-sum d / s(t) + |d (x_t - m)|^2 / (2 s(t)^2)]
    (a diagonal Hessian makes Rademacher slicing exact); values and parameter gradients match by hand."""
    from scorelab.training.trainer import training_loss

    process = sl.VPSDE()
    model = sl.EnergyModel(_DiagonalQuadratic(), process)
    x0, noise = torch.randn(6, 3, generator=_gen(2)), torch.randn(6, 3, generator=_gen(3))
    t = torch.linspace(0.1, 0.9, 6)
    got = training_loss(model, x0, loss, _gen(4), t=t, noise=noise).sum()
    a, s = (c.float()[:, None] for c in process.coefficients(t.double()))
    x_t = a * x0 + s * noise
    d, m = model.net.d, model.net.m
    by_hand = (s[:, 0] ** 2 * (-d.sum() / s[:, 0] + (d * (x_t - m)).pow(2).sum(1) / (2 * s[:, 0] ** 2))).sum() / 3
    torch.testing.assert_close(got, by_hand)
    g_got = torch.autograd.grad(got, (d, m))
    g_hand = torch.autograd.grad(by_hand, (d, m))
    for u, v in zip(g_got, g_hand):
        torch.testing.assert_close(u, v)
    model.eval()                                         # the trace needs the graph in eval mode too
    torch.testing.assert_close(training_loss(model, x0, loss, _gen(4), t=t, noise=noise).sum(), by_hand)


def test_a_loaded_energy_model_keeps_its_score_attached_to_its_weights(mixture_2d):
    """In eval mode, as load_model returns it, a loss on an energy model still reaches its weights (fine-tuning,
    or an energy term inside a larger loss), with the gradient of train mode; a sampler, without gradients,
    gets no graph."""
    torch.manual_seed(0)
    model = sl.EnergyModel(sl.networks.MLP(dim=2, hidden=32, depth=2), sl.VPSDE(), form="norm")
    x0, t = mixture_2d.sample(64, _gen(0)).float(), torch.rand(64, generator=_gen(1), dtype=torch.float64)
    noise = torch.randn(64, 2, generator=_gen(2))
    grads = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        loss = sl.dsm_loss(model, x0, t=t, noise=noise).mean()
        assert loss.requires_grad, mode
        grads[mode] = torch.autograd.grad(loss, list(model.net.parameters()))
    for g_train, g_eval in zip(grads["train"], grads["eval"]):
        torch.testing.assert_close(g_eval, g_train)
    with torch.no_grad():
        assert not model.predict(x0, t).eps.requires_grad


def test_bad_energy_input_is_refused_with_a_clear_message(mixture_2d):
    process = sl.VPSDE()
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="one number per sample"):
        sl.EnergyModel(sl.networks.MLP(dim=2), process).predict(x, 0.5)
    with pytest.raises(ValueError, match="has no energy"):
        sl.samplers.sample(mixture_2d.model(process), (3, 2), "pc", 2, corrector="mala")
    with pytest.raises(ValueError, match="positive and sum to 1"):
        compose.mixture([mixture_2d.energy_model(process)] * 2, [0.5, 0.6])
    with pytest.raises(ValueError, match="share one process"):
        compose.product(mixture_2d.energy_model(process), mixture_2d.energy_model(sl.VESDE()))
    with pytest.raises(ValueError, match="has no energy"):
        compose.mixture([mixture_2d.model(process)] * 2, [0.5, 0.5])
    learned = sl.EnergyModel(sl.networks.MLP(dim=2), process, form="norm")
    with pytest.raises(ValueError, match="known only up to a constant"):    # it would weigh the parts by exp(-c_k)
        compose.mixture([mixture_2d.energy_model(process), learned], [0.5, 0.5])
    with pytest.raises(ValueError, match="known only up to a constant"):    # a rescaled energy is shifted
        compose.mixture([sl.ProcessAdapter(mixture_2d.energy_model(sl.DDPM()), process)] * 2, [0.5, 0.5])
    with pytest.raises(ValueError, match="would un-normalize its parts"):   # p^c has another normalizer
        compose.Composition([mixture_2d.energy_model(process)] * 2, powers=[0.5, 0.5], weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="unknown MCMC method"):
        mcmc(mixture_2d.energy_model(process), (3, 2), 2, method="nuts")
    with pytest.raises(ValueError, match="has no energy"):
        sl.samplers.sample(mixture_2d.model(process), (3, 2), "smc", 2)
    with pytest.raises(ValueError, match="unknown corrector 'langevin' for the SMC sampler"):
        sl.samplers.sample(mixture_2d.energy_model(process), (3, 2), "smc", 2, corrector="langevin")


def _train_dsm(model, mixture, steps=500, batch=256, lr=4e-3, ema_decay=0.99):
    """Adam, and an EMA of the weights (the trainer's, with its warm-up) that is returned."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = _gen(0)
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    for step in range(1, steps + 1):
        loss = sl.dsm_loss(model, mixture.sample(batch, g), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ema, model, ema_decay_at(ema_decay, step))
    return ema.eval()


def test_an_energy_mlp_trained_by_dsm_learns_the_score_and_the_log_density_ratios(mixture_2d):
    """Same MLP, same 500 DSM steps (EMA weights): the energy form's relative score error at t = 0.05, 0.2, 0.5
    was 0.069, 0.0094, 0.0004 against the score form's 0.257, 0.063, 0.0031 (ratios 0.27, 0.15, 0.13; at most
    0.45, 0.25, 0.27 over three other seeds); its energy differences between points match the exact log-density
    ratios to an RMS error of 0.31, 0.092, 0.017 nats (at most 0.42, 0.115, 0.029) on a spread of 1.0, falling
    with the score error (correlation 0.950, 0.995, 0.9999)."""
    process = sl.VPSDE()
    net = lambda: sl.networks.MLP(dim=2, hidden=64, depth=3)             # noqa: E731
    torch.manual_seed(0)
    score_model = _train_dsm(sl.Model(net(), process), mixture_2d)
    torch.manual_seed(0)
    energy_model = _train_dsm(sl.EnergyModel(net(), process, form="norm"), mixture_2d)
    g = _gen(9)
    for t, rms_bound in ((0.05, 0.7), (0.2, 0.25), (0.5, 0.1)):
        a, s = process.coefficients(torch.tensor([t]))
        x = (a * mixture_2d.sample(2000, g, dtype=torch.float64)
             + s * torch.randn(2000, 2, generator=g, dtype=torch.float64)).float()
        exact = mixture_2d.marginal_score(x, t, process)
        err = {name: float(((m.predict(x, t).score.detach() - exact) ** 2).sum() / (exact ** 2).sum())
               for name, m in (("score", score_model), ("energy", energy_model))}
        assert err["energy"] < 1.5 * err["score"], (t, err)
        u = energy_model.energy(x[:500], t).detach().double()
        log_p = mixture_2d.marginal_log_prob(x[:500], t, process)
        du, dl = u - u.mean(), -(log_p - log_p.mean())
        assert float((du - dl).pow(2).mean().sqrt()) < rms_bound * float(dl.std()), t


def test_class_conditional_energies_through_the_label_wrappers():
    torch.manual_seed(0)
    net = sl.networks.UNet(sl.networks.UNetConfig.preset("digits8", num_res_blocks=1, num_classes=3,
                                                         attention_resolutions=()))
    model = sl.EnergyModel(net, sl.DDPM(), form="norm")
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.4)
    labels = torch.tensor([0, 1, 2, -1])
    cond = sl.Conditional(model, labels)
    u, score = cond.energy_and_score(x, t)
    torch.testing.assert_close(u, model.energy(x, t, labels))
    torch.testing.assert_close(score, cond.predict(x, t).score)
    assert not torch.allclose(u[:1], model.energy(x[:1], t[:1], torch.tensor([1])))   # the label matters
    guided = sl.ClassifierFreeGuidance(model, labels, 2.0)
    u_g, s_g = guided.energy_and_score(x, t)
    u_u = model.energy(x, t, torch.full((4,), -1))
    torch.testing.assert_close(u_g, 3 * u - 2 * u_u)
    torch.testing.assert_close(s_g, guided.predict(x, t).score, rtol=1e-4, atol=1e-4)
