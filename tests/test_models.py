"""The model wrapper: targets, noise conditions, learned variance and cross-process use (MATH.md 1)."""

import itertools

import pytest
import torch
from torch import nn

import scorelab as sl

PROCESSES = [sl.DDPM(), sl.NCSN(), sl.VPSDE(), sl.SubVPSDE(), sl.VESDE()]


def time_from_condition(process, condition, c):
    """Undo a noise condition by the frameworks' own conventions (written here, not the library's)."""
    c = c.double()
    if condition == "time":
        return c
    if condition == "sigma":
        return process.time_of_sigma(c)
    if condition == "log_sigma":
        return process.time_of_sigma(c.exp())
    if isinstance(process, sl.DDPM):  # Ho et al. feed the 0-based step 0..N-1
        return (c + 1) / process.num_steps
    return 1 - c / (process.num_scales - 1)  # NCSN level index 0 (sigma_max) .. L-1 (sigma_min)


class OracleNet(nn.Module):
    """A 'trained' network that is exact: it recovers t from its condition and returns the true target."""

    def __init__(self, mixture, process, target, condition, variance=None):
        super().__init__()
        self.mixture, self.process, self.target, self.condition = mixture, process, target, condition
        self.variance = variance

    def forward(self, x, c):
        t = time_from_condition(self.process, self.condition, c)
        out = self.mixture.model(self.process).predict(x, t).target(self.target)
        if self.variance is not None:
            out = torch.cat([out, self.variance.expand_as(out)], dim=1)
        return out


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_targets_convert_into_each_other_and_back(process):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    a, s = process.signal_scale(t), process.noise_std(t)
    ab, sb = a.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)
    x = ab * x0 + sb * eps
    truth = {"eps": eps, "score": -eps / sb, "x0": x0, "v": ab * eps - sb * x0}
    for name, value in truth.items():
        torch.testing.assert_close(sl.from_eps(eps, name, x, a, s), value, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sl.to_eps(value, name, x, a, s), eps, rtol=1e-9, atol=1e-9)
    for src, dst in itertools.permutations(truth, 2):
        converted = sl.from_eps(sl.to_eps(truth[src], src, x, a, s), dst, x, a, s)
        torch.testing.assert_close(converted, truth[dst], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
@pytest.mark.parametrize("target", sl.TARGETS)
def test_model_answers_every_target_from_any_network_target(mixture_2d, process, target):
    conditions = ["time", "sigma", "log_sigma"] + (["index"] if isinstance(process, (sl.DDPM, sl.NCSN)) else [])
    exact = mixture_2d.model(process)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.linspace(0.05, 1.0, 7, dtype=torch.float64)
    want = exact.predict(x, t)
    for condition in conditions:
        model = sl.Model(OracleNet(mixture_2d, process, target, condition), process, target, condition)
        got = model.predict(x, t)
        for name in sl.TARGETS:
            torch.testing.assert_close(got.target(name), want.target(name), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(got.x0, mixture_2d.denoise(x, t, process), rtol=1e-7, atol=1e-9)


def test_default_conditions_follow_each_framework():
    net = nn.Identity()
    assert sl.Model(net, sl.DDPM()).condition == "index"
    assert sl.Model(net, sl.NCSN()).condition == "index"
    assert sl.Model(net, sl.VPSDE()).condition == "time"
    assert sl.Model(net, sl.SubVPSDE()).condition == "time"
    assert sl.Model(net, sl.VESDE()).condition == "log_sigma"
    ddpm = sl.Model(net, sl.DDPM(num_steps=1000))
    torch.testing.assert_close(ddpm.noise_condition(torch.tensor([0.001, 1.0], dtype=torch.float64)),
                               torch.tensor([0.0, 999.0], dtype=torch.float64))


def test_learned_variance_channels(mixture_2d):
    process = sl.DDPM()
    raw = torch.tensor([[-1.0, 0.2]], dtype=torch.float64)  # Nichol's v in [-1, 1]
    net = OracleNet(mixture_2d, process, "eps", "index", variance=raw)
    model = sl.Model(net, process, "eps", learned_variance=True)
    x = torch.randn(3, 2, dtype=torch.float64)
    pred = model.predict(x, 0.5)
    torch.testing.assert_close(pred.variance_frac, ((raw + 1) / 2).expand(3, 2))
    torch.testing.assert_close(pred.eps, mixture_2d.model(process).predict(x, 0.5).eps)


@pytest.mark.parametrize("base, view", [
    (sl.DDPM(), sl.VPSDE()), (sl.VPSDE(), sl.DDPM()), (sl.NCSN(), sl.VESDE()),
    (sl.VESDE(0.01, 50.0), sl.NCSN(1.0, 0.01, 10)), (sl.SubVPSDE(), sl.VPSDE()), (sl.VPSDE(), sl.VESDE(0.01, 50.0)),
], ids=lambda p: type(p).__name__)
def test_a_model_answers_in_another_process_by_matching_noise_levels(mixture_2d, base, view):
    """Adapting the exact model of one process to another gives the other's exact model (MATH.md 1)."""
    model = sl.Model(OracleNet(mixture_2d, base, "eps", base.default_condition), base)
    adapted = model.in_process(view)
    g = torch.Generator().manual_seed(2)
    t = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)
    # stay inside the base process's range of sigma
    lo, hi = base.sigma(torch.tensor(base.t_min + 1e-3, dtype=torch.float64)), base.sigma(torch.tensor(1.0, dtype=torch.float64))
    t = t[(view.sigma(t) > lo) & (view.sigma(t) < hi)]
    x = view.signal_scale(t)[:, None] * mixture_2d.sample(len(t), g, dtype=torch.float64) + \
        view.noise_std(t)[:, None] * torch.randn(len(t), 2, generator=g, dtype=torch.float64)
    got, want = adapted.predict(x, t), mixture_2d.model(view).predict(x, t)
    torch.testing.assert_close(got.eps, want.eps, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got.score, want.score, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("make, words", [
    (lambda: sl.Model(nn.Identity(), sl.VPSDE(), target="noise"), "unknown prediction target"),
    (lambda: sl.Model(nn.Identity(), sl.VPSDE(), condition="step"), "unknown noise condition"),
    (lambda: sl.Model(nn.Identity(), sl.VPSDE(), condition="index"), "needs DDPM's discrete chain or NCSN's noise ladder"),
    (lambda: sl.Model(nn.Identity(), sl.VESDE(), learned_variance=True), "learned_variance"),
    (lambda: sl.to_eps(torch.zeros(2, 2), "mu", torch.zeros(2, 2), torch.ones(2), torch.ones(2)), "unknown prediction target"),
])
def test_bad_model_arguments_raise(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_wrong_network_output_shape_raises():
    class Bad(nn.Module):
        def forward(self, x, c):
            return x[:, :1]
    with pytest.raises(ValueError, match=r"returned shape \(4, 1\).*expected \(4, 3\)"):
        sl.Model(Bad(), sl.VPSDE()).predict(torch.zeros(4, 3), 0.5)
    class Echo(nn.Module):
        def forward(self, x, c):
            return x
    with pytest.raises(ValueError, match="variance channels"):
        sl.Model(Echo(), sl.DDPM(), learned_variance=True).predict(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match="one time per example"):
        sl.Model(Echo(), sl.VPSDE()).predict(torch.zeros(4, 3), torch.zeros(3))


def test_clip_denoised_equals_the_samplers_own_x0_clipping(mixture_2d):
    """ClipDenoised re-expresses a clipped x0 as eps; DDPM ancestral and DDIM with clip_x0=True clip inside
    the step. Both must give the same samples from the same noise."""
    from scorelab.models import ClipDenoised
    from scorelab.samplers import sample

    # Mixture means reach |x| = 1.5, so the exact model's x0 leaves [-1, 1] and clipping matters.
    model = mixture_2d.model(sl.DDPM(num_steps=200))
    for name, steps in (("ancestral", 50), ("ddim", 20)):
        inside = sample(model, (256, 2), name, steps, noise=torch.Generator().manual_seed(0), clip_x0=True).samples
        wrapped = sample(ClipDenoised(model), (256, 2), name, steps, noise=torch.Generator().manual_seed(0)).samples
        assert torch.allclose(inside, wrapped, atol=1e-5), (name, (inside - wrapped).abs().max())
        assert inside.abs().max() <= 1 + 1e-5
        free = sample(model, (256, 2), name, steps, noise=torch.Generator().manual_seed(0)).samples
        assert free.abs().max() > 1.2                    # without clipping the samples leave the range
    # Where x0 already lies in the range the wrapper changes nothing.
    x = torch.randn(64, 2) * 0.1
    p, q = model.predict(x, 0.02), ClipDenoised(model, -10, 10).predict(x, 0.02)
    assert torch.allclose(p.eps, q.eps, atol=1e-5)
