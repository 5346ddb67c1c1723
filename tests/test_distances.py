"""Sample-set distances against closed forms."""

import math

import torch

from scorelab.evaluation import energy_distance, sliced_wasserstein


def test_sliced_wasserstein_of_a_shift_is_its_length_over_sqrt_d():
    """Shifting a set by m moves every projection on unit u by m.u, so SW_2^2 = E (m.u)^2 = |m|^2 / D."""
    x = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.tensor([0.3, -0.4, 1.2, 0.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + m, num_projections=4000, generator=torch.Generator().manual_seed(1))
    assert abs(sw - m.norm().item() / math.sqrt(4)) < 0.02
    assert sliced_wasserstein(x, x.clone(), generator=torch.Generator().manual_seed(2)) == 0.0
    # Sets of unequal size, by hand: in 1-D every direction is +-1 and SW is W2 itself. The quantile functions
    # of {0, 1} and {0, 0.5, 1} differ by 0.5 on (1/3, 2/3) and agree elsewhere: W2^2 = 0.25 / 3.
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]])
    assert abs(sliced_wasserstein(a, b, num_projections=3) - math.sqrt(0.25 / 3)) < 1e-12


def test_energy_distance_of_one_dimensional_gaussians():
    """For N(0,1) vs N(m,1): 2 E|X-Y| - E|X-X'| - E|Y-Y'| with E|Z| = s sqrt(2/pi) exp(-mu^2/2s^2)
    + mu (1 - 2 Phi(-mu/s)), here s = sqrt(2)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    y = torch.randn(4000, 1, generator=g, dtype=torch.float64) + 1.0
    s, mu = math.sqrt(2), 1.0
    cross = s * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * s**2)) + mu * (1 - 2 * 0.5 * math.erfc(mu / s / math.sqrt(2)))
    within = s * math.sqrt(2 / math.pi)
    exact = 2 * cross - 2 * within
    # the U-statistic is unbiased: mean 0.5436 over 8 seeds against 0.5418, SD 0.019 at n = 4000
    assert abs(energy_distance(x, y) - exact) < 4 * 0.019
    assert energy_distance(x, y, unbiased=False) > energy_distance(x, y)
