"""Class conditioning and classifier-free guidance against the exact class-conditional mixture (MATH.md 5, 6)."""

import pytest
import torch

import scorelab as sl
from scorelab import samplers as S
from scorelab.evaluation import energy_distance
from scorelab.models import drop_labels
from scorelab.networks import MLP, UNet, UNetConfig

ED_TOL = 0.006          # the 2000-point noise floor measured in test_samplers.py


def test_guided_eps_is_the_papers_combination_of_exact_scores(mixture_2d):
    process = sl.VPSDE()
    model = mixture_2d.class_model(process)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, -1, 2, 0])
    t = torch.tensor([0.05, 0.2, 0.4, 0.5, 0.7, 0.9], dtype=torch.float64)
    w = 2.5
    got = sl.ClassifierFreeGuidance(model, labels, w).predict(x, t).eps
    # Independently: each row's component alone (or the whole mixture for -1), Ho & Salimans eq. 6.
    for i, k in enumerate(labels.tolist()):
        cond = (mixture_2d if k < 0 else mixture_2d.component(k)).model(process).predict(x[i:i + 1], t[i:i + 1]).eps
        uncond = mixture_2d.model(process).predict(x[i:i + 1], t[i:i + 1]).eps
        torch.testing.assert_close(got[i:i + 1], (1 + w) * cond - w * uncond, rtol=1e-10, atol=1e-12)
    # Without labels the model answers with the whole mixture's score (the null class).
    torch.testing.assert_close(sl.models.unconditional(model, 6).predict(x, t).eps,
                               mixture_2d.model(process).predict(x, t).eps)
    # w = 0 is plain conditional sampling.
    torch.testing.assert_close(sl.ClassifierFreeGuidance(model, labels, 0.0).predict(x, t).eps,
                               sl.Conditional(model, labels).predict(x, t).eps)


@pytest.mark.parametrize("sampler", ["ode", "ancestral"])
def test_conditional_sampling_draws_each_class_from_its_component(mixture_2d, sampler):
    # Two classes in one batch; the adaptive ODE evaluates subsets of rows, so each sample must keep its label.
    n = 2000
    labels = torch.cat([torch.zeros(n, dtype=torch.long), torch.full((n,), 2)])
    model = sl.Conditional(mixture_2d.class_model(sl.DDPM()), labels)
    noise = torch.Generator().manual_seed(3)
    x = (S.ode_rk45(model, (2 * n, 2), noise=noise) if sampler == "ode"
         else S.ddpm_ancestral(model, (2 * n, 2), 250, noise=noise)).samples
    for k, part in ((0, x[:n]), (2, x[n:])):
        reference = mixture_2d.component(k).sample(n, generator=torch.Generator().manual_seed(10 + k))
        assert energy_distance(part, reference) < ED_TOL, (sampler, k)


def test_networks_take_labels_and_the_null_label():
    torch.manual_seed(0)
    net = UNet(UNetConfig.preset("digits8", num_classes=10, num_res_blocks=1))
    x, c = torch.randn(4, 1, 8, 8), torch.full((4,), 10.0)
    a, b = net(x, c, torch.tensor([0, 1, 2, 3])), net(x, c, torch.tensor([4, 5, 6, 7]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net(x, c), net(x, c, torch.full((4,), -1)))
    with pytest.raises(ValueError, match="0..9"):
        net(x, c, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="unconditional"):
        MLP(dim=2)(torch.randn(3, 2), torch.zeros(3), torch.zeros(3, dtype=torch.long))
    model = sl.Model(net, sl.DDPM())
    assert model.num_classes == 10
    with pytest.raises(ValueError, match="labels bound"):
        sl.Conditional(model, torch.arange(3)).predict(x, 0.5)
    with pytest.raises(ValueError, match="unconditional"):
        sl.Conditional(sl.Model(MLP(dim=2), sl.VPSDE()), torch.arange(3))


def test_label_dropout_rate():
    labels = torch.arange(20000) % 10
    dropped = drop_labels(labels, 0.1, torch.Generator().manual_seed(0))
    kept = dropped != -1
    assert torch.equal(dropped[kept], labels[kept])
    assert abs((~kept).float().mean().item() - 0.1) < 0.01        # binomial sd 0.002
