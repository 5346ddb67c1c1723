"""Score matching without a Gaussian kernel (MATH.md 7): exact and sliced score matching, Langevin on one score."""

import math

import pytest
import torch

import scorelab as sl
from scorelab.networks import MLP, MLPConfig


def _score_mlp(process, seed: int) -> sl.Model:
    torch.manual_seed(seed)
    net = MLP(MLPConfig(dim=2, hidden=32, depth=2, embedding_scale=1000.0)).double()
    return sl.Model(net, process, target="score", condition="time")


@pytest.mark.parametrize("distribution, variance_reduced", [
    ("rademacher", True), ("gaussian", True), ("sphere", True), ("rademacher", False), ("gaussian", False)])
def test_sliced_score_matching_averages_to_the_exact_objective(mixture_2d, distribution, variance_reduced):
    """Over its projections SSM (and SSM-VR) has the mean of Hyvarinen's objective, per example
    (Song et al. 2019, eqs. 7-8), checked against the exact trace at the same x_t within 4 standard errors."""
    process = sl.VPSDE()
    model = _score_mlp(process, 0)
    g = torch.Generator().manual_seed(0)
    n, k = 6, 3000
    x0 = mixture_2d.sample(n, g)
    t = torch.linspace(0.05, 0.9, n, dtype=torch.float64)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    rep = lambda v: v.repeat(k, *([1] * (v.ndim - 1)))              # k copies of each example, one projection each
    with torch.no_grad():
        exact = sl.objectives.score_matching_loss(model, x0, t=t, noise=noise)
        sliced = sl.objectives.sliced_score_matching_loss(model, rep(x0), t=rep(t), noise=rep(noise), generator=g,
                                                       distribution=distribution, variance_reduced=variance_reduced)
    sliced = sliced.reshape(k, n)
    stderr = sliced.std(0) / math.sqrt(k)
    assert bool((stderr > 0).all())
    z = (sliced.mean(0) - exact) / stderr
    assert float(z.abs().max()) < 4, z


def test_exact_score_matching_and_dsm_differ_by_a_constant_that_does_not_depend_on_the_model(mixture_2d):
    """E[DSM] = 2 E[SM] + C with C free of the model (Vincent 2011; MATH.md 7): the difference between two
    models is the same under both objectives (common random numbers, 4 standard errors), while the
    models themselves differ by far more."""
    process = sl.VPSDE()
    a, b = mixture_2d.model(process), _score_mlp(process, 1)          # the exact score and an untrained net
    g = torch.Generator().manual_seed(1)
    n = 20000
    x0 = mixture_2d.sample(n, g)
    t = process.sample_train_times(n, g)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        dsm = [sl.dsm_loss(m, x0, t=t, noise=noise) for m in (a, b)]
        sm = [sl.objectives.score_matching_loss(m, x0, t=t, noise=noise) for m in (a, b)]
    gap_dsm, gap_sm = dsm[0] - dsm[1], 2 * (sm[0] - sm[1])
    diff = gap_dsm - gap_sm
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
    assert abs(float(gap_dsm.mean())) > 20 * float(diff.std()) / math.sqrt(n)      # the models really differ


def test_score_matching_refuses_what_it_cannot_do(mixture_2d):
    model = _score_mlp(sl.VPSDE(), 0)
    x0 = mixture_2d.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="sliced_score_matching_loss"):
        sl.objectives.score_matching_loss(model, x0, max_dims=1)
    with pytest.raises(ValueError, match="projection distribution"):
        sl.objectives.sliced_score_matching_loss(model, x0, distribution="uniform")
    with pytest.raises(ValueError, match="projections must be a positive integer"):
        sl.objectives.sliced_score_matching_loss(model, x0, projections=0)


def test_langevin_on_one_score_gets_mode_weights_wrong_and_annealing_recovers_them():
    """Song & Ermon (2019, Fig. 3): for 0.2 N((-5,-5), I) + 0.8 N((5,5), I) and a uniform start on [-8, 8]^2,
    Langevin dynamics with the exact score keeps the start's half-half split (the modes never exchange
    samples), while annealed Langevin through sigma = 20..1 recovers 0.2 within 4 standard errors."""
    mixture = sl.GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])
    n = 2000
    start = 16 * torch.rand(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 8
    first_mode = lambda x: float((x.sum(1) < 0).double().mean())
    bound = 4 * math.sqrt(0.2 * 0.8 / n)
    exact = mixture.model(sl.VESDE(sigma_min=1e-3, sigma_max=20.0))        # the score of p at sigma = 1e-3
    plain = sl.samplers.langevin_dynamics(exact, start, 1000, 0.1, noise=torch.Generator().manual_seed(1))
    assert abs(first_mode(plain.samples) - first_mode(start)) < bound        # still the start's split
    assert abs(first_mode(plain.samples) - 0.2) > 0.2                        # far from the true weight
    ladder = sl.NCSN(sigma_max=20.0, sigma_min=1.0, num_scales=10)
    annealed = sl.samplers.annealed_langevin(mixture.model(ladder), start, epsilon=0.1, steps_per_level=100,
                                             noise=torch.Generator().manual_seed(1))
    assert abs(first_mode(annealed.samples) - 0.2) < bound
    assert plain.nfe == 1000
