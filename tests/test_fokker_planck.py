"""Checks of the reference Fokker-Planck solver (tests/fokker_planck.py) against closed forms.

The solver is the ground truth for SDEs with a non-affine drift elsewhere, so it is checked here on its own:
the VP / Ornstein-Uhlenbeck marginals of a Gaussian mixture, second-order convergence, the logistic
stationary density of a non-affine drift, mass and positivity. The tolerances are about 2-3x the errors
measured at the stated grids (numpy 2.4, scipy 1.17).
"""
import numpy as np
import pytest
from scipy.special import ndtr

from fokker_planck import solve_fokker_planck

WEIGHTS, MEANS, VARS = np.array([0.3, 0.7]), np.array([-1.5, 1.0]), np.array([0.3, 0.2]) ** 2


def beta(t):
    return 0.1 + 19.9 * t


def vp_drift(x, t):
    return -beta(t) * x / 2


def vp_diffusion(t):
    return np.sqrt(beta(t))


def vp_marginal(t):
    """Means and variances of the exact VP marginal of the mixture at time t."""
    b = 0.1 * t + 19.9 * t * t / 2
    a, s2 = np.exp(-b / 2), -np.expm1(-b)
    return a * MEANS, a * a * VARS + s2


def mixture(x, t):
    """Exact density, score and cdf of the VP marginal at time t."""
    m, v = vp_marginal(t)
    comp = WEIGHTS * np.exp(-(x[:, None] - m) ** 2 / (2 * v)) / np.sqrt(2 * np.pi * v)
    p = comp.sum(1)
    score = (comp * (m - x[:, None]) / v).sum(1) / p
    cdf = (WEIGHTS * ndtr((x[:, None] - m) / np.sqrt(v))).sum(1)
    return p, score, cdf


def vp_solve(cells, time_steps, times):
    return solve_fokker_planck(vp_drift, vp_diffusion, lambda x: mixture(x, 0.0)[0],
                               x_max=8.0, cells=cells, time_steps=time_steps, times=times)


@pytest.fixture(scope="module")
def vp():
    return vp_solve(1600, 1000, [0.0, 0.05, 0.3, 1.0])


# t: (max |p - p_exact| at the centres, max |log p error|, max |score error| / max |score|, max |cdf error|),
# the last three at off-grid points where p > 1e-2 max p. Measured at 1600 cells, x_max = 8, 1000 steps:
# t = 0.05: 8.8e-5, 1.0e-3, 7.9e-4, 1.3e-5;  t = 0.3: 5.8e-6, 5.7e-5, 1.4e-5, 3.4e-6;
# t = 1.0: 3.2e-8, 6.0e-6, 4.6e-8, 1.8e-6 (log p and cdf there are limited by interpolation, O(dx^2)).
VP_TOLERANCES = {0.05: (2e-4, 2.5e-3, 2e-3, 4e-5), 0.3: (1.5e-5, 1.5e-4, 4e-5, 1e-5), 1.0: (1e-7, 1.5e-5, 1.5e-7, 5e-6)}


@pytest.mark.parametrize("i,t", [(1, 0.05), (2, 0.3), (3, 1.0)])
def test_vp_mixture_matches_closed_form(vp, i, t):
    tol_p, tol_log, tol_score, tol_cdf = VP_TOLERANCES[t]
    assert vp.times[i] == t
    assert np.abs(vp.density[i] - mixture(vp.x, t)[0]).max() < tol_p

    xq = np.linspace(-5.0, 5.0, 1001) + 0.0037          # off the cell centres: interpolation included
    p, score, cdf = mixture(xq, t)
    keep = p > 1e-2 * p.max()
    assert np.abs(vp.log_density(xq[keep], i) - np.log(p[keep])).max() < tol_log
    assert np.abs(vp.score(xq[keep], i) - score[keep]).max() < tol_score * np.abs(score[keep]).max()
    assert np.abs(vp.cdf(xq, i) - cdf).max() < tol_cdf


def test_initial_density_is_p0_normalised_on_the_grid(vp):
    assert vp.times[0] == 0.0
    np.testing.assert_allclose(vp.density[0], mixture(vp.x, 0.0)[0], rtol=1e-12)   # p0 integrates to 1 here


def test_second_order_convergence_in_space_and_time_together():
    """Halving dx and dt together divides the error against the closed form by 4 (measured: 4.01, 4.00)."""
    times = [0.05, 0.3, 1.0]
    errors = []
    for k in (1, 2, 4):
        sol = vp_solve(200 * k, 100 * k, times)
        errors.append(max(np.abs(sol.density[i] - mixture(sol.x, t)[0]).max() for i, t in enumerate(times)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert errors[-1] < 5e-4                                                        # measured 3.7e-4
    assert np.all((ratios > 3.6) & (ratios < 4.4)), ratios


def test_second_order_convergence_in_time():
    """On a fixed grid, successive differences under dt -> dt/2 shrink by 4 (measured: 4.05, 4.06)."""
    times = [0.05, 0.3, 1.0]
    sols = [vp_solve(200, steps, times).density for steps in (100, 200, 400, 800)]
    diffs = np.array([np.abs(a - b).max() for a, b in zip(sols[:-1], sols[1:])])
    ratios = diffs[:-1] / diffs[1:]
    assert np.all((ratios > 3.6) & (ratios < 4.4)), ratios


def test_logistic_density_is_stationary_under_a_nonaffine_drift():
    """f = -(g^2/2) u'(x), u = 2 log cosh(x/2): the logistic density exp(-x)/(1+exp(-x))^2 is stationary.
    Exponential fitting with the Simpson mean of f over each face keeps it to 4e-10 relative (measured)."""
    def drift(x, t):
        return -beta(t) / 2 * np.tanh(x / 2)

    def logistic(x):
        return 0.25 / np.cosh(x / 2) ** 2

    sol = solve_fokker_planck(drift, vp_diffusion, logistic, x_max=20.0, cells=800, time_steps=200, times=[0.3, 1.0])
    exact = logistic(sol.x)
    exact /= exact.sum() * sol.dx                     # truncation at |x| = 20 only moves it by ~2e-9 anyway
    for i in range(2):
        np.testing.assert_allclose(sol.density[i], exact, rtol=1e-9, atol=0)
    inner = np.abs(sol.x) < 19.5
    assert np.abs(sol.score(sol.x[inner], 1) + np.tanh(sol.x[inner] / 2)).max() < 2e-4      # measured 8.0e-5
    assert np.abs(sol.cdf(sol.x, 1) - 1 / (1 + np.exp(-sol.x))).max() < 5e-5                # measured 2.0e-5


def test_mass_is_conserved_and_density_is_nonnegative():
    """A discontinuous start, a stiff non-affine drift (~180 at the edges, g^2 up to 20) and coarse steps
    (measured: min p = 0, mass error 2e-14)."""
    def drift(x, t):
        return -beta(t) * x / 2 - 0.2 * x ** 3

    def box(x):
        return (np.abs(x - 1.0) < 0.5).astype(float)

    for cells, time_steps in [(400, 10), (1600, 40)]:
        sol = solve_fokker_planck(drift, vp_diffusion, box, x_max=8.0, cells=cells, time_steps=time_steps,
                                  times=np.linspace(0.0, 1.0, 11))
        assert sol.density.min() >= 0.0
        np.testing.assert_allclose(sol.density.sum(1) * sol.dx, 1.0, rtol=0, atol=1e-12)

    # Drift 2560 at the edges: plain TR-BDF2 steps would dip to -4e-4 max p here, so this exercises the
    # solver's step halving / backward Euler fallback.
    sol = solve_fokker_planck(lambda x, t: -beta(t) * x / 2 - 5 * x ** 3, vp_diffusion,
                              lambda x: mixture(x, 0.0)[0], x_max=8.0, cells=400, time_steps=50, times=[0.1, 1.0])
    assert sol.density.min() >= 0.0
    np.testing.assert_allclose(sol.density.sum(1) * sol.dx, 1.0, rtol=0, atol=1e-12)

    sol = vp_solve(1600, 1000, [0.05, 0.3, 1.0])
    assert sol.density.min() >= 0.0
    np.testing.assert_allclose(sol.density.sum(1) * sol.dx, 1.0, rtol=0, atol=1e-12)


def test_requested_times_off_the_step_grid_are_hit_exactly():
    """Heat equation (f = 0, g = 1) from N(0, 1): the variance is 1 + t at any t, here 7 steps to t = 1."""
    times = [0.0, 0.1234, 1 / 3, 1.0]
    sol = solve_fokker_planck(lambda x, t: np.zeros_like(x), lambda t: 1.0, lambda x: np.exp(-x * x / 2),
                              x_max=10.0, cells=800, time_steps=7, times=times)
    np.testing.assert_array_equal(sol.times, times)
    variance = (sol.x ** 2 * sol.density).sum(1) * sol.dx
    np.testing.assert_allclose(variance, 1 + np.array(times), atol=1e-6)
