"""``torch.export`` programs of trained models: read back with ``torch.export.load``, they give the library's
answers."""

import json

import pytest
import torch

import scorelab as sl
from scorelab.networks import MLP
from scorelab.store import ModelSpec, export_model, network_spec


def _round_trip(model, tmp_path, name, classes=None):
    spec = ModelSpec(network_spec(model.net), model.process.config(), data_shape=(2,), classes=classes,
                     parameterization=model.parameterization)
    training, grads = model.training, [p.requires_grad for p in model.parameters()]
    path = export_model(model, spec, tmp_path / f"{name}.pt2")
    assert (model.training, [p.requires_grad for p in model.parameters()]) == (training, grads)   # left as it was
    return torch.export.load(str(path)).module()


@pytest.mark.parametrize("name, make", [
    ("ddpm, class-conditional", lambda: sl.Model(MLP(dim=2, hidden=32, depth=2, num_classes=3), sl.DDPM())),
    ("edm, preconditioned", lambda: sl.Model(MLP(dim=2, hidden=32, depth=2, embedding="fourier", embedding_scale=4.0),
                                             sl.VESDE(0.002, 80.0), target="preconditioned")),
    ("general sde, score", lambda: sl.Model(MLP(dim=2, hidden=32, depth=2), sl.named_sde("double_well"),
                                            target="score")),
])
def test_an_exported_denoiser_answers_as_the_model(tmp_path, name, make):
    """Denoiser or score, preconditioning included, at another batch size than the one exported with: equal to
    the library's model (measured: identical; tolerance 1e-6)."""
    torch.manual_seed(0)
    model = make().eval()
    program = _round_trip(model, tmp_path, name.split(",")[0], classes=["a", "b", "c"] if model.num_classes else None)
    x, t = torch.randn(7, 2), torch.rand(7, dtype=torch.float64) * 0.9 + 0.05
    args = (x, t, torch.tensor([0, 1, 2, -1, 0, 1, 2])) if model.num_classes else (x, t)
    with torch.no_grad():
        prediction = model.predict(*args)
        expected = prediction.x0 if model.process.has_kind("affine") else prediction.score
        torch.testing.assert_close(program(*args), expected, rtol=1e-6, atol=1e-6)


def test_a_learned_variance_is_exported_with_the_denoiser(tmp_path):
    """A DDPM model that learned its variance: the program gives the denoiser and Nichol & Dhariwal's
    interpolation v, both equal to the model's, and the JSON names both outputs."""
    torch.manual_seed(0)
    net = sl.networks.UNet(sl.networks.UNetConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2),
                                                  num_res_blocks=1, attention_resolutions=(), norm_groups=8,
                                                  learned_variance=True))
    model = sl.Model(net, sl.DDPM(num_steps=100), learned_variance=True).eval()
    spec = ModelSpec(network_spec(net), model.process.config(), data_shape=(1, 8, 8))
    path = export_model(model, spec, tmp_path / "lv.pt2")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        x0, v = torch.export.load(str(path)).module()(x, t)
        prediction = model.predict(x, t)
    torch.testing.assert_close(x0, prediction.x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v, prediction.variance_frac, rtol=1e-6, atol=1e-6)
    assert json.loads(path.with_suffix(".json").read_text())["output"] == "x0, variance_frac"

def test_an_exported_energy_gives_the_score_by_autograd(tmp_path):
    torch.manual_seed(0)
    model = sl.EnergyModel(MLP(dim=2, hidden=32, depth=2), sl.VPSDE(), form="norm").eval()
    program = _round_trip(model, tmp_path, "energy")
    x, t = torch.randn(5, 2, requires_grad=True), torch.rand(5, dtype=torch.float64)
    energy = program(x, t)
    score = -torch.autograd.grad(energy.sum(), x)[0]
    u, expected = model.energy_and_score(x.detach(), t)
    torch.testing.assert_close(energy.detach(), u, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-6)
