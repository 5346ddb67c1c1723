"""Peer check: DDPM ancestral sampling and DDIM against diffusers' schedulers, step for step."""

import pytest
import torch

import scorelab as sl
from scorelab import samplers as S


@pytest.fixture(scope="module")
def diffusers():
    """diffusers, imported by the test that runs here, not by every worker that collects this file."""
    return pytest.importorskip("diffusers")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _trajectory(sampler, **kw):
    xs = []
    sampler(callback=lambda info: xs.append(info.x.clone()), **kw)
    return xs


@pytest.mark.parametrize("variance, diffusers_variance", [("beta", "fixed_large"), ("beta_tilde", "fixed_small")])
@pytest.mark.parametrize("num_steps", [1000, 50])
def test_ddpm_ancestral_matches_diffusers_step_for_step(mixture_2d, diffusers, variance, diffusers_variance,
                                                        num_steps):
    ddpm = sl.DDPM()
    model = mixture_2d.model(ddpm)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                    variance_type=diffusers_variance)
    sched.set_timesteps(num_steps)
    x_t = torch.randn(8, 2, generator=gen(6))
    theirs, x, g = [], x_t.clone(), gen(7)
    for td in sched.timesteps:
        eps = model.predict(x, (int(td) + 1) / 1000).eps
        x = sched.step(eps, td, x, generator=g).prev_sample
        theirs.append(x)
    steps = [int(td) + 1 for td in sched.timesteps]
    ours = _trajectory(S.ddpm_ancestral, model=model, shape_or_x=x_t.clone(), steps=steps,
                       variance=variance, noise=gen(7))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_step_for_step(mixture_2d, diffusers, eta):
    model = mixture_2d.model(sl.DDPM())
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                    set_alpha_to_one=True)
    sched.set_timesteps(50)
    x_t = torch.randn(8, 2, generator=gen(8))
    theirs, x, g = [], x_t.clone(), gen(9)
    for td in sched.timesteps:
        eps = model.predict(x, (int(td) + 1) / 1000).eps
        x = sched.step(eps, td, x, eta=eta, generator=g).prev_sample
        theirs.append(x)
    times = [(int(td) + 1) / 1000 for td in sched.timesteps]
    ours = _trajectory(S.ddim, model=model, shape_or_x=x_t.clone(), times=times, eta=eta, noise=gen(9))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)




@pytest.mark.parametrize("order, steps", [(2, 10), (3, 10), (3, 25)])
def test_unipc_matches_diffusers(mixture_2d, diffusers, order, steps):
    """UniPC-bh2 with data prediction against diffusers' UniPCMultistepScheduler on its own time grid:
    predictor, corrector (reusing each next call), warm-up and lower-order-final rules all agree, step for
    step (the callback's state is x, though the solver works in x / a)."""
    model = mixture_2d.model(sl.DDPM())
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                              solver_order=order, solver_type="bh2", predict_x0=True)
    sched.set_timesteps(steps)
    x_t = torch.randn(16, 2, generator=gen(10), dtype=torch.float64)
    x, theirs = x_t.clone(), []
    for td in sched.timesteps:
        eps = model.predict(x, (int(td) + 1) / 1000).eps
        x = sched.step(eps, td, x).prev_sample
        theirs.append(x)
    times = [(int(td) + 1) / 1000 for td in sched.timesteps]
    ours = S.unipc(model, x_t.clone(), times=times, order=order, lower_order_final=True)   # diffusers' default
    assert ours.nfe == steps
    torch.testing.assert_close(ours.samples, x, rtol=1e-6, atol=1e-6)
    steps_ours = _trajectory(S.unipc, model=model, shape_or_x=x_t.clone(), times=times, order=order,
                             lower_order_final=True)
    torch.testing.assert_close(torch.stack(steps_ours), torch.stack(theirs), rtol=1e-6, atol=1e-6)
