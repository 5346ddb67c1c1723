"""Networks against the paper's size, a peer implementation and explicit formulas."""

import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab import samplers as S
from scorelab.networks import MLP, PRESETS, UNet, UNetConfig, count_parameters
from scorelab.networks.embeddings import SinusoidalEmbedding
from scorelab.networks.unet import Attention


def test_cifar10_unet_has_the_papers_size_and_matches_diffusers():
    """Ho et al. report 35.7M parameters; diffusers' UNet2DModel in the same configuration agrees exactly."""
    ours = count_parameters(UNet(UNetConfig.preset("cifar10")))
    assert round(ours / 1e6, 1) == 35.7
    diffusers = pytest.importorskip("diffusers")
    peer = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, norm_num_groups=32, dropout=0.1)
    assert ours == sum(p.numel() for p in peer.parameters()) == 35_746_307


def test_sinusoidal_embedding_is_hos_formula():
    c = torch.tensor([0.0, 1.0, 17.0, 999.0])
    got = SinusoidalEmbedding(128)(c).numpy()
    half = 64
    freqs = np.exp(-math.log(10000) * np.arange(half) / (half - 1))
    args = c.numpy()[:, None] * freqs[None]
    # float32 arguments near 999 carry ~999 * 2^-24 = 6e-5 of rounding
    np.testing.assert_allclose(got, np.concatenate([np.sin(args), np.cos(args)], 1), rtol=0, atol=1e-4)
    # Cast to bfloat16, the embedding keeps its float32 frequencies and arguments and rounds only its output:
    # Ho's features to bfloat16's 2^-8 (frequencies rounded to bfloat16 were off by up to 1.2 at c = 999).
    cast = SinusoidalEmbedding(128).to(torch.bfloat16)
    assert cast.freqs.dtype == torch.float32 and cast(c).dtype == torch.bfloat16
    np.testing.assert_allclose(cast(c).float().numpy(), np.concatenate([np.sin(args), np.cos(args)], 1),
                               rtol=0, atol=2 ** -8 + 1e-4)
    # A network converted to bfloat16 runs in its own dtype.
    torch.manual_seed(0)
    net = UNet(UNetConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                          attention_resolutions=(4,), norm_groups=8)).eval()
    x, c = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 250.0, 600.0, 999.0])
    with torch.no_grad():
        full, half = net(x, c), net.to(torch.bfloat16)(x.bfloat16(), c)
    assert half.dtype == torch.bfloat16 and float((half.float() - full).abs().max()) < 0.1 * float(full.abs().max())


def test_attention_is_softmax_of_scaled_dot_products():
    torch.manual_seed(0)
    block = Attention(32, 8)
    x = torch.randn(2, 32, 4, 4)
    n, c = 2, 32
    qkv = block.qkv(block.norm(x)).reshape(n, 3, c, 16)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                       # (n, c, hw)
    w = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / math.sqrt(c), dim=-1)
    out = torch.einsum("nij,ncj->nci", w, v).reshape(n, c, 4, 4)
    torch.testing.assert_close(block(x), x + block.proj(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["digits8", "mnist28", "cifar32-small"])
def test_presets_run_and_every_parameter_learns(name):
    torch.manual_seed(1)
    net = UNet(UNetConfig.preset(name, learned_variance=True))
    cfg = net.config
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    out = net(x, torch.tensor([0.0, 999.0]))
    assert out.shape == (2, 2 * cfg.in_channels, cfg.image_size, cfg.image_size)
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_unet_drives_samplers_through_the_model_wrapper():
    torch.manual_seed(2)
    net = UNet(UNetConfig.preset("digits8")).eval()
    for process, target in ((sl.DDPM(), "eps"), (sl.VPSDE(), "v"), (sl.VESDE(0.01, 20.0), "x0")):
        model = sl.Model(net, process, target)
        res = S.ddim(model, (3, 1, 8, 8), 4, noise=torch.Generator().manual_seed(0))
        assert res.samples.shape == (3, 1, 8, 8) and torch.isfinite(res.samples).all() and res.nfe == 4


def test_mlp_learns_a_score_on_a_fixed_batch(mixture_2d):
    """A few hundred Adam steps of DSM bring the loss on a fixed batch close to the exact score's."""
    torch.manual_seed(3)
    process = sl.VPSDE()
    model = sl.Model(MLP(dim=2, embedding_scale=1000.0), process)   # VP time t -> DDPM step units
    x0 = mixture_2d.sample(512, torch.Generator().manual_seed(4))
    t = process.sample_train_times(512, torch.Generator().manual_seed(5))
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(6))
    exact = sl.dsm_loss(mixture_2d.model(process), x0.double(), t=t, noise=noise.double()).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(300):
        loss = sl.dsm_loss(model, x0, t=t, noise=noise).mean()
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert loss.item() < exact * 1.5  # a fixed batch can be fitted below the population optimum


@pytest.mark.parametrize("kwargs, words", [
    (dict(image_size=30, channel_mults=(1, 2, 2)), "divisible by 2"),
    (dict(base_channels=48), "divisible by norm_groups"),
    (dict(attention_resolutions=(5,)), "must be among"),
    (dict(dropout=1.0), "dropout"),
    (dict(embedding="learned"), "unknown embedding"),
    (dict(num_res_blocks=0), "num_res_blocks"),
])
def test_bad_unet_configs_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        UNetConfig(**kwargs)


def test_wrong_input_shapes_raise():
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        UNet(UNetConfig.preset("digits8"))(torch.zeros(2, 1, 9, 9), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        MLP(dim=2)(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        UNetConfig.preset("imagenet")
    assert set(PRESETS) >= {"cifar10", "digits8", "mnist28", "cifar32-small"}
