"""Particle (SMC) conditional sampling against the exact posterior and the closed-form evidence (MATH.md 12),
and per-example masks and operators in every conditional method."""

import math

import pytest
import torch

import scorelab as sl
from scorelab import conditional as C
from scorelab.evaluation import energy_distance
from scorelab.noise import PerSampleNoise

N = 400
SEED = int(__import__("os").environ.get("SMC_SEED", 1))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _log_evidence(mixture, a: torch.Tensor, y: torch.Tensor, noise_std: float) -> float:
    """``log p(y) = log sum_k w_k N(y; A m_k, A C_k A^T + noise_std^2 I)``, by torch.distributions."""
    cov = a @ mixture.covariances() @ a.T + noise_std**2 * torch.eye(len(a), dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(mixture.means @ a.T, cov)
    return float(torch.logsumexp(comp.log_prob(y) + mixture.weights.log(), 0))


@pytest.mark.parametrize("proposal, noise_std, eta", [("replace", 0.0, 0.5), ("kalman", 0.0, 1.0),
                                                      ("twisted", 0.2, 1.0), ("kalman", 0.2, 1.0)])
def test_smc_converges_to_the_exact_posterior_and_its_evidence(mixture_2d, proposal, noise_std, eta):
    """Observing x1 = 0.3 (exactly, or with noise 0.2), the exact posterior puts 73% (67%) of its mass on the
    component below x2 = 0. One particle per sample is the proposal alone, which puts ~40% there; with 32
    particles the weights restore the mode weights, the energy distance to the exact posterior falls tenfold,
    and the evidence estimate (unbiased in p(y)) averages to the closed form. SMCDiff runs DDIM's kernel with
    eta = 0.5, its observed path drawn by that kernel's bridge to y (DDPM's posterior at eta = 1)."""
    model = mixture_2d.model(sl.DDPM())
    op = C.Mask(torch.tensor([True, False]))
    y = torch.full((1, 1), 0.3, dtype=torch.float64)
    post = mixture_2d.condition(op, y[0], noise_std)
    reference = post.sample(4000, _gen(7), dtype=torch.float64)
    below = float((post.sample(100_000, _gen(8))[:, 1] < 0).double().mean())
    truth = _log_evidence(mixture_2d, op.matrix((2,)), y[0], noise_std)
    runs = {k: C.linear_inverse(model, y.expand(N, -1), op, noise_std, method="smc", steps=100, proposal=proposal,
                                particles=k, eta=eta, noise=_gen(SEED)) for k in (1, 32)}
    one, many = runs[1], runs[32]
    assert many.nfe == 32 * 100 and many.samples.shape == (N, 2) and many.ess.shape == (100, N)
    if noise_std == 0:                                          # the known coordinate is pasted
        assert torch.equal(many.samples[:, 0], torch.full((N,), 0.3))
    e_one, e_many = (energy_distance(r.samples.double(), reference) for r in (one, many))
    share = float((many.samples[:, 1] < 0).double().mean())
    mean_evidence = float(torch.logsumexp(many.log_evidence, 0)) - math.log(N)
    print(f"{proposal} {noise_std}: ED {e_one:.4f} -> {e_many:.4f}, share {share:.3f} (exact {below:.3f}), "
          f"log mean p(y) {mean_evidence:.3f} (exact {truth:.3f}), |log p(y) error| "
          f"{float((one.log_evidence - truth).abs().mean()):.2f} -> {float((many.log_evidence - truth).abs().mean()):.2f}")
    assert float((one.samples[:, 1] < 0).double().mean()) < below - 0.15     # the proposal alone misses the mode weights
    assert abs(share - below) < 0.07
    assert e_many < e_one / 10
    assert abs(mean_evidence - truth) < 0.2
    assert float((many.log_evidence - truth).abs().mean()) < float((one.log_evidence - truth).abs().mean())


def test_kalman_and_twisted_find_the_modes_of_a_noisy_random_projection():
    """MCGdiff's harder problem, small: a 9-component mixture on a 3x3 grid in 4-D seen through a random 1 x 4
    operator (singular value 0.5) with noise 0.05. One particle per sample leaves the energy distance to the
    exact posterior far above the noise floor; 32 particles bring it to the floor (the evidence on this problem
    converges more slowly: benchmarks/smc.py)."""
    grid = torch.tensor([(i, j) for i in (-1.5, 0.0, 1.5) for j in (-1.5, 0.0, 1.5)], dtype=torch.float64)
    mixture = sl.GaussianMixture(torch.full((9,), 1 / 9), torch.cat([grid, grid], 1),
                                 0.09 * torch.eye(4, dtype=torch.float64).expand(9, 4, 4))
    direction = torch.tensor([[0.9, -0.3, 0.2, 0.25]], dtype=torch.float64)
    op = C.MatrixOperator(0.5 * direction / direction.norm())
    y = torch.tensor([[0.4]], dtype=torch.float64)
    reference = mixture.condition(op, y[0], 0.05).sample(4000, _gen(7), dtype=torch.float64)
    model = mixture.model(sl.DDPM())
    for proposal in ("kalman", "twisted"):
        errors = [energy_distance(C.smc(model, op, y.expand(N, -1), (N, 4), 100, noise_std=0.05, proposal=proposal,
                                        particles=k, noise=_gen(SEED + 1)).samples.double(), reference)
                  for k in (1, 32)]
        print(f"{proposal}: ED {errors[0]:.4f} -> {errors[1]:.4f}")
        assert errors[1] < min(errors[0] / 2, 0.012)
def test_systematic_resampling_keeps_each_particle_floor_or_ceil_of_k_times_its_weight():
    """Systematic resampling's defining property (MATH.md 12): particle k is copied floor(K w_k) or
    ceil(K w_k) times, so the copies' expectation K w_k holds with the least variance."""
    g = _gen(0)
    weights = torch.distributions.Dirichlet(torch.full((16,), 0.3)).sample((50,)).double()
    picked = C.systematic_resample(weights, torch.rand(50, generator=g, dtype=torch.float64))
    counts = torch.zeros_like(weights).scatter_add_(1, picked, torch.ones_like(weights))
    assert bool((counts >= torch.floor(16 * weights - 1e-9)).all() and (counts <= torch.ceil(16 * weights + 1e-9)).all())
    assert bool((picked[:, 1:] >= picked[:, :-1]).all())


@pytest.mark.parametrize("method, options", [
    ("replace", {}), ("repaint", {"jump_length": 2, "resample": 2}), ("dps", {"scale": 0.3}),
    ("smc", {"proposal": "twisted", "particles": 4}), ("smc", {"proposal": "kalman", "particles": 4}),
    ("smc", {"proposal": "replace", "particles": 4, "batch_size": 8})])
def test_a_batch_of_masks_equals_each_example_run_alone_bit_for_bit(mixture_16d, method, options):
    """Eight 4x4 images, eight different masks (N, 1, H, W), one seed each: every example's result equals its
    run alone with its own mask; SMC's grouping of examples (batch_size 8 = two examples of 4 particles) too."""
    model = mixture_16d.model(sl.DDPM())
    g = _gen(3)
    masks = torch.rand(8, 1, 4, 4, generator=g) < 0.5
    x = mixture_16d.sample(8, g).float().reshape(8, 1, 4, 4).clamp(-1, 1)
    batch = C.inpaint(model, x, masks, method=method, steps=10, noise=PerSampleNoise(range(8)), **options).samples
    for i in range(8):
        alone = C.inpaint(model, x[i:i + 1], masks[i:i + 1], method=method, steps=10, noise=PerSampleNoise([i]),
                          **options).samples
        assert torch.equal(batch[i:i + 1], alone)
    if method != "dps":                                       # the known pixels are returned exactly
        assert torch.equal(batch[masks.expand_as(batch)], x[masks.expand_as(x)])


def test_per_example_operators_and_the_exact_posterior_of_each(mixture_16d):
    """A stack of matrices (N, M, D) gives each example its own operator; ``example(n, y)`` is what the exact
    posterior of example n takes; SMC's evidence for each matches its own closed form."""
    g = _gen(4)
    a = torch.randn(3, 2, 16, generator=g, dtype=torch.float64) / 4
    op = C.MatrixOperator(a)
    x = mixture_16d.sample(3, g).double()
    y = op(x) + 0.1 * torch.randn(3, 2, generator=g, dtype=torch.float64)
    for n in range(3):
        one, y_n = op.example(n, y)
        torch.testing.assert_close(one(x[n:n + 1])[0], (a[n] @ x[n]))
        assert mixture_16d.condition(one, y_n, 0.1).dim == 16
    runs = 100
    out = C.smc(mixture_16d.model(sl.DDPM()), C.MatrixOperator(a.repeat_interleave(runs, 0)),
                y.repeat_interleave(runs, 0), (3 * runs, 16), 100, noise_std=0.1, proposal="twisted", particles=16,
                noise=_gen(SEED + 4))
    for n in range(3):
        truth = _log_evidence(mixture_16d, a[n], y[n], 0.1)
        mean_evidence = float(torch.logsumexp(out.log_evidence[n * runs:(n + 1) * runs], 0)) - math.log(runs)
        print(f"example {n}: log mean p(y) {mean_evidence:.3f}, exact {truth:.3f}")
        assert abs(mean_evidence - truth) < 0.3


def test_bad_smc_input_is_refused_in_one_line(mixture_2d):
    model = mixture_2d.model(sl.DDPM())
    op = C.Mask(torch.tensor([True, False]))
    y = torch.zeros(4, 1)
    for kwargs, match in [({"particles": 0}, "particles must be a positive integer"),
                          ({"proposal": "bootstrap"}, "unknown proposal"),
                          ({"ess_threshold": 1.5}, r"ess_threshold must lie in \[0, 1\]"),
                          ({"eta": 0.0}, r"eta must lie in \(0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            C.linear_inverse(model, y, op, method="smc", steps=5, **kwargs)
    with pytest.raises(ValueError, match="takes exact observations"):
        C.linear_inverse(model, y, op, 0.1, method="smc", proposal="replace", steps=5)
    for method in ("replace", "repaint"):                 # they write y into x: noisy y is refused, not ignored
        with pytest.raises(ValueError, match="takes exact observations; for y with noise"):
            C.linear_inverse(model, y, op, 0.1, method=method, steps=5)
    with pytest.raises(ValueError, match="orthogonal rows"):
        C.linear_inverse(model, torch.zeros(4, 2), C.MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]])),
                         method="smc", proposal="replace", steps=5)
    with pytest.raises(ValueError, match="linearly dependent"):
        C.linear_inverse(model, torch.zeros(4, 2), C.MatrixOperator(torch.tensor([[1.0, 2.0], [2.0, 4.0]])),
                         0.1, method="smc", proposal="kalman", steps=5)
    with pytest.raises(FloatingPointError, match="more particles"):
        C.linear_inverse(model, torch.full((4, 1), 1e200, dtype=torch.float64), op, method="smc", steps=5,
                         proposal="kalman")
    with pytest.raises(ValueError, match="one per example for 3 examples, but the batch has 4"):
        C.inpaint(model, torch.zeros(4, 2), torch.tensor([[True, False]] * 3), method="smc")
    with pytest.raises(ValueError, match="ambiguous"):
        C.inpaint(model, torch.zeros(3, 3, 4, 4), torch.rand(3, 4, 4, generator=_gen(0)) < 0.5)
    with pytest.raises(ValueError, match=r"reads as a stack of 5 masks; give it as \(N, 1, H, W\)"):
        C.inpaint(model, torch.zeros(5, 3, 4, 4), torch.rand(5, 4, 4, generator=_gen(0)) < 0.5)
