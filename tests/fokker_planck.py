"""Independent 1-D Fokker-Planck reference solver (numpy/scipy only; it must not import scorelab).

For the SDE dx = f(x, t) dt + g(t) dw the density obeys

    dp/dt = -d/dx (f p) + (g(t)^2 / 2) d^2p/dx^2   on [-x_max, x_max], zero flux at both ends.

Space: finite volumes on `cells` equal cells, Scharfetter-Gummel (Chang-Cooper) exponentially fitted
face fluxes F = (D/dx) [B(-Pe) p_j - B(Pe) p_{j+1}], D = g^2/2, Pe = f dx / D, B(z) = z / (e^z - 1),
f being the Simpson mean of the drift between the two centres. It is second order, upwind where the drift
dominates, keeps the equilibrium exp(-int f / D) of a drift f(x) D(t) to O(dx^4), and each column of the
operator sums to zero, so mass is conserved to round-off. Time: TR-BDF2 (gamma = 2 - sqrt 2; second order, L-stable) over `time_steps`
uniform steps on [0, max(times)], with the requested times added to the step grid so they are hit exactly.
Each stage is one tridiagonal solve (scipy.linalg.solve_banded). No second-order linear step is positive for
every step size, so a step whose negative part holds more than 1e-15 of the mass is redone as two half steps,
and after four halvings as backward Euler (always positive); smaller negative parts are set to zero. With smooth
data and moderate drift (e.g. the VP process) neither happens.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.linalg import solve_banded

_GAMMA = 2.0 - np.sqrt(2.0)


@dataclass
class FPSolution:
    x: np.ndarray        # (cells,) cell centres
    dx: float
    times: np.ndarray    # (len(times),) the requested times
    density: np.ndarray  # (len(times), cells) cell densities; each row sums to 1 / dx

    def log_density(self, x_query, i: int) -> np.ndarray:
        """log p at time index i, linear interpolation of log p between cell centres (clamped outside)."""
        with np.errstate(divide="ignore"):
            return np.interp(np.asarray(x_query, np.float64), self.x, np.log(self.density[i]))

    def score(self, x_query, i: int) -> np.ndarray:
        """d/dx log p at time index i: central differences of log p at the centres, linearly interpolated.
        Accurate where p is not tiny."""
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.gradient(np.log(self.density[i]), self.dx)
        return np.interp(np.asarray(x_query, np.float64), self.x, s)

    def cdf(self, x_query, i: int) -> np.ndarray:
        """P(X <= x) at time index i (exact integral of the piecewise-constant density)."""
        faces = np.append(self.x - self.dx / 2, self.x[-1] + self.dx / 2)
        c = np.append(0.0, np.cumsum(self.density[i]) * self.dx)
        return np.interp(np.asarray(x_query, np.float64), faces, c)


def _bernoulli(z: np.ndarray) -> np.ndarray:
    """B(z) = z / (e^z - 1), B(0) = 1, without overflow: |z| e^{-max(z, 0)} / (1 - e^{-|z|})."""
    a = np.abs(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = a * np.exp(-np.maximum(z, 0.0)) / -np.expm1(-a)
    return np.where(a < 1e-12, 1.0 - z / 2, out)


def solve_fokker_planck(drift: Callable[[np.ndarray, float], np.ndarray],
                        diffusion: Callable[[float], float],
                        p0: Callable[[np.ndarray], np.ndarray], *,
                        x_max: float, cells: int, time_steps: int, times) -> FPSolution:
    dx = 2.0 * x_max / cells
    x = -x_max + (np.arange(cells) + 0.5) * dx
    half = x[0] + np.arange(2 * cells - 1) * dx / 2            # centres and interior faces (zero flux at ends)

    def operator(t: float) -> np.ndarray:
        """Banded (3, cells) form of L(t), dp/dt = L p."""
        fh = np.asarray(drift(half, t), np.float64) * np.ones_like(half)
        f = (fh[:-2:2] + 4 * fh[1::2] + fh[2::2]) / 6          # Simpson mean of f over [x_j, x_{j+1}]
        d = 0.5 * float(diffusion(t)) ** 2
        if d > 0:
            b = d / dx * _bernoulli(f * dx / d)                # F_{j+1/2} = a_j p_j - b_j p_{j+1}
            a = b + f                                         # B(-z) = B(z) + z
        else:
            a, b = np.maximum(f, 0.0), np.maximum(-f, 0.0)    # pure upwind
        ab = np.zeros((3, cells))
        ab[0, 1:] = b / dx                                    # upper: (j, j+1)
        ab[2, :-1] = a / dx                                   # lower: (j+1, j)
        ab[1, :-1] -= a / dx
        ab[1, 1:] -= b / dx
        return ab

    def apply(ab: np.ndarray, p: np.ndarray) -> np.ndarray:   # L p
        out = ab[1] * p
        out[:-1] += ab[0, 1:] * p[1:]
        out[1:] += ab[2, :-1] * p[:-1]
        return out

    def implicit(ab: np.ndarray, c: float, rhs: np.ndarray) -> np.ndarray:  # (I - c L)^{-1} rhs
        m = -c * ab
        m[1] += 1.0
        return solve_banded((1, 1), m, rhs)

    times = np.asarray(times, np.float64)
    t_end = float(times.max())
    grid = np.union1d(np.linspace(0.0, t_end, time_steps + 1), times)
    grid = grid[np.append(True, np.diff(grid) > 1e-12 * max(t_end, 1.0))]
    p = np.asarray(p0(x), np.float64) * np.ones(cells)
    p = p / (p.sum() * dx)
    out = np.empty((len(times), cells))
    want = [np.flatnonzero(np.abs(times - t) <= 1e-12 * max(t_end, 1.0)) for t in grid]
    out[want[0]] = p

    def advance(p, t, h, l_now, depth=0):
        """One TR-BDF2 step from t to t + h (see the module docstring for the fallback; I - hL is an
        M-matrix, so backward Euler is positive for any h)."""
        l_mid, l_new = operator(t + _GAMMA * h), operator(t + h)
        ps = implicit(l_mid, _GAMMA * h / 2, p + _GAMMA * h / 2 * apply(l_now, p))         # trapezoid
        rhs = (ps - (1 - _GAMMA) ** 2 * p) / (_GAMMA * (2 - _GAMMA))
        q = implicit(l_new, (1 - _GAMMA) / (2 - _GAMMA) * h, rhs)                         # BDF2
        if -q[q < 0].sum() * dx <= 1e-15:                   # negatives below round-off: zero them
            return np.maximum(q, 0.0), l_new
        if depth == 4:
            return implicit(l_new, h, p), l_new
        q, l_half = advance(p, t, h / 2, l_now, depth + 1)
        return advance(q, t + h / 2, h / 2, l_half, depth + 1)

    l_now = operator(0.0)
    for n in range(1, len(grid)):
        p, l_now = advance(p, grid[n - 1], grid[n] - grid[n - 1], l_now)
        out[want[n]] = p
    return FPSolution(x=x, dx=dx, times=times, density=out)
