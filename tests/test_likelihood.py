"""Likelihoods and latents against the exact mixture density and closed forms (MATH.md 2, 4, 6)."""

import math

import pytest
import torch

import scorelab as sl
from scorelab.data import to_model_range
from scorelab.likelihood import (decode, dequantize, dequantized_bits_per_dim, encode, ode_bits_per_dim,
                                 ode_log_likelihood, slerp, vlb_bits_per_dim, vlb_bits_per_dim_sampled)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("process", [sl.VPSDE(), sl.SubVPSDE(), sl.VESDE(0.01, 50.0), sl.DDPM()], ids=repr)
def test_ode_log_likelihood_equals_the_exact_log_density(mixture_2d, process):
    """Exact trace, RK45 at rtol = atol = 1e-5: log p_1(x_1) + int div v dt is within 1e-3 nats
    of log p_{t_min}(x) (MATH.md 4, 6). The exact p_1 stands in for the prior, which differs from
    the mixture's marginal at t = 1 by a few 1e-3 nats (the prior mismatch every model carries)."""
    x = mixture_2d.sample(16, gen(0), dtype=torch.float64)
    res = ode_log_likelihood(mixture_2d.model(process), x, divergence="exact")
    exact = mixture_2d.marginal_log_prob(x, process.train_t_min, process)
    chain = res.log_prob - res.prior_log_prob + mixture_2d.marginal_log_prob(res.latent, 1.0, process)
    assert (chain - exact).abs().max() < 1e-3, (chain - exact)
    assert (res.log_prob - exact).abs().max() < 0.05  # with the N(0, prior_std^2) prior
    torch.testing.assert_close(res.prior_log_prob, process.prior_log_prob(res.latent))
    assert res.stderr is None and res.nfe > 0


def test_ode_log_likelihood_in_16d(mixture_16d):
    x = mixture_16d.sample(8, gen(1), dtype=torch.float64)
    process = sl.VPSDE()
    res = ode_log_likelihood(mixture_16d.model(process), x, divergence="exact")
    exact = mixture_16d.marginal_log_prob(x, process.train_t_min, process)
    chain = res.log_prob - res.prior_log_prob + mixture_16d.marginal_log_prob(res.latent, 1.0, process)
    assert (chain - exact).abs().max() < 1e-3


@pytest.fixture(scope="module")
def exact_16d(mixture_16d):
    """Six 16-D points, the exact mixture model under VP, and their ODE log-likelihood by the exact divergence
    (computed once: both probes' tests compare with it)."""
    model = mixture_16d.model(sl.VPSDE())
    x = mixture_16d.sample(6, gen(2), dtype=torch.float64)
    return model, x, ode_log_likelihood(model, x, divergence="exact").log_prob


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased_within_its_standard_error(exact_16d, probe):
    model, x, exact = exact_16d
    est = ode_log_likelihood(model, x, probes=48, probe=probe, generator=gen(3))
    assert est.per_probe.shape == (6, 48)
    z = (est.log_prob - exact) / est.stderr
    assert z.abs().max() < 4, z
    assert (est.stderr > 0).all()


@pytest.mark.parametrize("process", [sl.VPSDE(), sl.VESDE(0.01, 50.0)], ids=repr)
def test_encode_then_decode_returns_the_input(mixture_16d, process):
    model = mixture_16d.model(process)
    x = mixture_16d.sample(8, gen(4), dtype=torch.float64)
    z = encode(model, x)
    assert z.shape == x.shape and (z - x).abs().max() > 0.5  # really moved
    torch.testing.assert_close(decode(model, z), x, rtol=0, atol=2e-3)
    # DDIM inversion: its round-trip error falls as steps grow
    errors = [(decode(model, encode(model, x, method="ddim", steps=n), method="ddim", steps=n) - x).abs().max().item()
              for n in (50, 200)]
    assert errors[1] < errors[0] / 2 and errors[1] < 0.05, errors


def test_encoded_data_look_like_the_prior(mixture_2d):
    process = sl.VPSDE()
    x = mixture_2d.sample(2000, gen(5), dtype=torch.float64)
    z = encode(mixture_2d.model(process), x)
    assert (z.mean(0).abs() < 5 / math.sqrt(2000) + 0.01).all()
    torch.testing.assert_close(torch.cov(z.T), torch.eye(2, dtype=torch.float64), rtol=0, atol=0.1)


def test_bits_per_dim_convention_is_exact_for_uniform_data():
    """Uniform density on [-1, 1]^D is 2^-D, so 8-bit data that fill it cost 8 bits/dim; on [0, 1] too."""
    d = 12
    assert dequantized_bits_per_dim(torch.tensor([-d * math.log(2)]), d).item() == pytest.approx(8.0)
    assert dequantized_bits_per_dim(torch.tensor([0.0]), d, "[0,1]").item() == pytest.approx(8.0)
    k = torch.arange(256).repeat(40)
    x = dequantize(k, gen(6))
    assert x.min() >= -1 and x.max() < 1
    assert ((x + 1) * 128).floor().long().eq(k).all()    # each value stays in its own bin
    torch.testing.assert_close(to_model_range(torch.tensor([0, 255, 128])),
                               torch.tensor([-1.0, 1.0, 2 * 128 / 255 - 1]))


def test_ode_bits_per_dim_and_vlb_bits_per_dim_on_8bit_images():
    """The ODE path equals the dequantized bits/dim computed from the exact density."""
    k = torch.randint(0, 256, (4, 1, 2, 2), generator=gen(7))
    wide = sl.GaussianMixture([1.0], [[0.0] * 4], [4.0])
    bpd, se = ode_bits_per_dim(wide.model(sl.VPSDE()), k, draws=3, probes=2, generator=gen(8))
    assert bpd.shape == (4,) and se.shape == (4,)
    # exact for this model: -log2 N(x; 0, 4 + s^2) / D + 7 averaged over dequantization
    x = dequantize(k, gen(9)).reshape(4, -1)
    direct = dequantized_bits_per_dim(wide.marginal_log_prob(x, 1e-5, sl.VPSDE()), 4)
    assert (bpd - direct).abs().max() < 0.05
    res = vlb_bits_per_dim(wide.model(sl.DDPM(num_steps=50)), k, generator=gen(10))
    assert res.terms.shape == (4, 50) and torch.isfinite(res.bits_per_dim).all()
    with pytest.raises(ValueError, match="integer pixel values"):
        dequantize(torch.rand(2, 3))


def test_slerp():
    z0 = torch.tensor([[1.0, 0.0, 0.0]])
    z1 = torch.tensor([[0.0, 1.0, 0.0]])
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    torch.testing.assert_close(slerp(z0, z1, 0.5), torch.tensor([[1.0, 1.0, 0.0]]) / math.sqrt(2))
    path = slerp(z0, z1, torch.linspace(0, 1, 7))
    assert path.shape == (7, 1, 3)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(7, 1))
    torch.testing.assert_close(slerp(z0, 2 * z0, 0.25), 1.25 * z0)     # parallel: linear
    with pytest.raises(ValueError, match="opposite directions"):       # no one great circle
        slerp(z0, -z0 + 1e-9, 0.5)


def test_sampled_vlb_is_an_unbiased_estimate_of_the_full_bound():
    """Averaging the middle terms over drawn steps estimates the full L_vlb (MATH.md 2)."""
    k = torch.randint(0, 256, (32, 1, 2, 2), generator=gen(11))
    model = sl.GaussianMixture([1.0], [[0.0] * 4], [0.3]).model(sl.DDPM(num_steps=50))
    full = torch.stack([vlb_bits_per_dim(model, k, generator=gen(20 + r)).bits_per_dim for r in range(4)])
    sampled, se = vlb_bits_per_dim_sampled(model, k, 200, generator=gen(30))
    assert sampled.shape == se.shape == (32,) and bool((se > 0).all())
    diff = (sampled - full.mean(0)).mean()
    noise = torch.sqrt(((se**2) + full.var(0) / 4).mean() / 32)
    assert abs(diff) < 4 * noise, (diff, noise)
    assert bool(((sampled - full.mean(0)).abs() < 5 * torch.sqrt(se**2 + full.var(0) / 4) + 1e-3).all())


def test_a_ddpm_model_flows_on_its_vp_sde_and_is_never_asked_below_step_1(mixture_2d):
    """DDPM's probability-flow ODE runs on the VP SDE it discretizes (smooth coefficients: fewer RK45
    evaluations than on DDPM's piecewise-constant rate, 110 against 182 here), and neither sampling nor the
    likelihood asks the network for a step index below 0 (step 1), outside its training."""
    from torch import nn

    ddpm = sl.DDPM()
    asked = []

    class Recorder(nn.Module):                      # the exact eps, recording the step index it is asked
        def forward(self, x, c):
            asked.append(float(c.min()))
            return mixture_2d.model(ddpm).predict(x, (c.double() + 1) / ddpm.num_steps).eps

    model = sl.Model(Recorder(), ddpm)
    g = torch.Generator().manual_seed(0)
    ode = sl.samplers.sample(model, (200, 2), "ode", noise=g)
    on_vp = sl.samplers.ode_rk45(model, (200, 2), process=ddpm.continuous(), noise=torch.Generator().manual_seed(0))
    on_chain = sl.samplers.ode_rk45(model, (200, 2), process=ddpm, noise=torch.Generator().manual_seed(0))
    assert ode.nfe == on_vp.nfe < on_chain.nfe, (ode.nfe, on_chain.nfe)
    assert min(asked) >= -1e-9
    x = mixture_2d.sample(8, g)
    result = sl.likelihood.ode_log_likelihood(model, x, divergence="exact")
    assert min(asked) >= -1e-9
    # Integrated on the VP SDE from DDPM's step 1 (sigma 0.01): the log-density there within 1e-3 nats once
    # the exact p_1 stands in for the prior (as in the test above).
    vp = ddpm.continuous()
    t_vp = float(vp.time_of_sigma(ddpm.sigma(1 / ddpm.num_steps)))
    chain = result.log_prob - result.prior_log_prob + mixture_2d.marginal_log_prob(result.latent, 1.0, vp)
    assert (chain - mixture_2d.marginal_log_prob(x, t_vp, vp)).abs().max() < 1e-3
