"""Probability-flow ODE samplers (MATH.md 4-5).

* :func:`ode_rk45`: Song et al.'s sampler, ``dx/dt = f(x, t) - g(t)^2 score / 2``
  in the process's own time, solved by an adaptive Dormand-Prince RK45
  (:func:`dopri5`, rtol = atol = 1e-5 by default as in the paper) that stays
  in torch on the model's device and adapts its step per sample.
* :func:`ode_euler`, :func:`ode_heun`: fixed steps on the same ODE written in
  EDM's coordinates, ``dy/dsigma = eps(y, sigma)`` with ``y = x / a``
  (Karras et al. 2022, Algorithms 1-2, with optional churn); Euler here is
  DDIM with eta = 0 (Song, Meng & Ermon 2021, eq. 14).
* :func:`dpm_solver_pp_2m`, :func:`dpm_solver_pp_3m`: DPM-Solver++(2M)/(3M) (Lu et
  al. 2022), multistep solvers in ``lambda = -log sigma`` with data prediction.
* :func:`unipc`: UniPC (Zhao et al. 2023), a multistep predictor with a corrector
  that costs no extra network call.
* :func:`ipndm`: iPNDM (Zhang & Chen 2023), Adams-Bashforth multistep of order up to 4 on
  ``dy/dsigma = eps``, one network call a step.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from .._util import as_time, require
from ..models import DiffusionModel
from ..noise import Randomness, randn_like
from ..processes import SDE, NoiseProcess
from ._common import (Callback, Projection, SampleResult, SigmaView, call_back, final_denoise, finite_or_raise,
                      flow_process, initial_noise, projected, resolve, trained_t_min)
from .grids import check_times, evaluation_times
from .rules import StepRule, rule_times, step_rule

__all__ = ["dopri5", "solve_probability_flow", "ode_rk45", "ode_euler", "ode_heun", "dpm_solver_pp_2m",
           "dpm_solver_pp_3m", "unipc", "ipndm", "adams_bashforth_weights"]

# Dormand & Prince (1980) RK5(4)7FM tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = _A[6] + (0.0,)
_B_STAR = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b - bs for b, bs in zip(_B, _B_STAR))


def dopri5(fun: Callable[[Tensor, Tensor, Tensor], Tensor], y0: Tensor, t0: float, t1: float, *,
           rtol: float = 1e-5, atol: float = 1e-5, first_step: float | None = None,
           max_steps: int = 100_000) -> tuple[Tensor, int]:
    """Integrate ``dy/dt = fun(t, y)`` from ``t0`` to ``t1`` with adaptive Dormand-Prince RK45.

    ``y0`` is a batch ``(N, ...)`` of independent problems; each sample keeps
    its own step size and error control (RMS of ``err / (atol + rtol |y|)``),
    so its trajectory does not depend on the rest of the batch. ``fun(t, y, rows)``
    receives per-sample times ``(M,)`` (float64), the active samples and their
    indices in ``y0``.
    Returns ``(y(t1), number of batched evaluations of fun)``.
    """
    require(rtol > 0 and atol > 0, f"rtol and atol must be positive, got {rtol}, {atol}")
    n = y0.shape[0]
    span = t1 - t0
    if span == 0:
        return y0.clone(), 0
    direction = math.copysign(1.0, span)
    y = y0.clone()
    t = torch.full((n,), float(t0), dtype=torch.float64, device=y0.device)
    h = torch.full_like(t, abs(first_step) if first_step else abs(span) * 0.02)
    k1 = fun(t, y, torch.arange(n, device=y0.device))
    nfe = 1
    done = torch.zeros(n, dtype=torch.bool, device=y0.device)
    view = (-1,) + (1,) * (y0.ndim - 1)
    for _ in range(max_steps):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            return y, nfe
        yi, ti, ki = y[idx], t[idx], k1[idx]
        hi = direction * torch.minimum(h[idx], (t1 - ti).abs())
        hv = hi.to(y.dtype).reshape(view)
        ks = [ki]
        for stage in range(1, 7):
            incr = sum(a * k for a, k in zip(_A[stage], ks) if a != 0.0)
            ks.append(fun(ti + _C[stage] * hi, yi + hv * incr, idx))
        nfe += 6
        y_new = yi + hv * sum(b * k for b, k in zip(_B, ks) if b != 0.0)
        err = hv * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        scale = atol + rtol * torch.maximum(yi.abs(), y_new.abs())
        err_norm = (err / scale).pow(2).reshape(len(idx), -1).mean(1).sqrt().double()
        finite = torch.isfinite(err_norm)
        err_norm = torch.where(finite, err_norm, torch.full_like(err_norm, math.inf))  # reject, shrink
        accept = err_norm <= 1.0
        acc = idx[accept]
        y[acc] = y_new[accept]
        t[acc] = ti[accept] + hi[accept]
        k1[acc] = ks[6][accept]
        done[acc] = (t1 - t[acc]).abs() <= 1e-12 * max(1.0, abs(t1))
        factor = torch.where(err_norm > 0, 0.9 * err_norm.clamp(min=1e-10) ** -0.2,
                             torch.full_like(err_norm, 10.0)).clamp(0.2, 10.0)
        h[idx] = hi.abs() * factor
        if not bool(finite.all()) and bool((h[idx][~finite] < 1e-10 * abs(span)).any()):
            raise FloatingPointError("dopri5: the right-hand side returns NaN or Inf even for tiny "
                                     "steps; check the model's output and the inputs")
    raise RuntimeError(f"dopri5 did not reach t = {t1} in {max_steps} steps; loosen rtol/atol")


def solve_probability_flow(model: DiffusionModel, x: Tensor, t_start: float, t_end: float, *,
                           process: SDE | None = None, rtol: float = 1e-5,
                           atol: float = 1e-5) -> tuple[Tensor, int]:
    """Carry ``x`` from ``t_start`` to ``t_end`` along ``dx/dt = f - g^2 score / 2`` (MATH.md 4), on
    ``process`` (default: the model's continuous SDE: a linear DDPM's VP SDE, NCSN's VE SDE)."""
    model, process = resolve(model, flow_process(model, process))

    def velocity(t: Tensor, x: Tensor, rows: Tensor) -> Tensor:
        return process.probability_flow_drift(x, t, model.select_rows(rows).predict(x, t).score)

    return dopri5(velocity, x, t_start, t_end, rtol=rtol, atol=atol)


@torch.no_grad()
def ode_rk45(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, *, rtol: float = 1e-5,
             atol: float = 1e-5, times: Sequence[float] | Tensor | None = None, process: SDE | None = None,
             t_min: float | None = None, denoise: bool | None = None, noise: Randomness = None) -> SampleResult:
    """Sample by solving the probability-flow ODE from ``t = 1`` to ``t_min`` with adaptive RK45.

    Needs only ``f``, ``g`` and the score, so it runs on any SDE; a DDPM or NCSN
    model runs on its continuous SDE (the VP SDE of a linear DDPM, NCSN's VE SDE), never below the noise
    level it was trained at. ``times``: the two ends ``(t_start, t_end)`` instead (the solver picks its own
    steps between them). ``denoise`` returns ``E[x0 | x_{t_min}]`` (one more
    evaluation; default: for affine processes, never for a general SDE). NFE is the
    number of batched network calls.
    """
    process = flow_process(model, process)
    t_max = 1.0
    if times is not None:
        ends = check_times(times)
        require(len(ends) == 2, f"ode_rk45 adapts its own steps: pass times=(t_start, t_end), not {len(ends)} times")
        t_max, t_min = float(ends[0]), float(ends[1])
    t_min = max(process.t_min, trained_t_min(model, process)) if t_min is None else t_min
    model, process = resolve(model, process)
    x = initial_noise(process, shape_or_x, noise, model)
    x, nfe = solve_probability_flow(model, x, t_max, t_min, process=process, rtol=rtol, atol=atol)
    if final_denoise(process, denoise):
        x = model.predict(x, as_time(t_min, x)).x0
        nfe += 1
    finite_or_raise(x, "ode_rk45")
    return SampleResult(x, nfe)


def _eval_times(process: NoiseProcess, steps: int, grid: str, rho: float,
                times: Sequence[float] | Tensor | None, monotone_only: bool = False,
                rule: StepRule | None = None) -> Tensor:
    """The given ``times`` (checked), else ``steps`` evaluation times of the ``grid`` (``"auto"``: the
    ``rule``'s)."""
    if times is not None:
        checked = check_times(times, increasing=monotone_only)
        require(monotone_only or float(process.sigma(float(checked[-1]))) > 0, "evaluation times are where the "
                "network is asked, so they end at a positive noise level (the last step goes to noise level 0 by "
                "itself); drop the final time")
        return checked
    if grid == "auto" and rule is not None:
        return rule_times(process, steps, rule, rho=rho)
    return evaluation_times(process, steps, grid, rho=rho)


def _settings(solver: str, steps: int, times: Sequence[float] | Tensor | None, order: int | None,
              lower_order_final: bool | None, own_order: int) -> tuple[StepRule, int, bool]:
    """A multistep solver's rule for its step count (``len(times)`` when given) and the order and final-step
    choice it resolves to: the caller's where given, else the rule's (:mod:`~scorelab.samplers.rules`)."""
    rule = step_rule(solver, len(times) if times is not None else steps)
    order = (rule.order or own_order) if order is None else order
    return rule, order, rule.lower_order_final if lower_order_final is None else lower_order_final


def _sigma_ode(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int, order: int, *,
               grid: str, rho: float, times: Sequence[float] | Tensor | None, churn: float,
               s_tmin: float, s_tmax: float, s_noise: float, process: NoiseProcess | None,
               noise: Randomness, callback: Callback | None, name: str,
               to_zero: bool = True, project: Projection | None = None) -> SampleResult:
    """Karras et al. (2022) Algorithm 2 in ``y = x / a``: Euler (order 1) or Heun (order 2) steps
    through the evaluation ``times`` and, with ``to_zero``, a last step to sigma = 0 (returning
    x0). Without it the walk ends at ``times[-1]`` in ``x`` coordinates; ``times`` may then
    increase too (DDIM inversion)."""
    require(churn >= 0 and s_noise >= 0, "churn and s_noise must be non-negative")
    model, process = resolve(model, process)
    times = _eval_times(process, steps, grid, rho, times, monotone_only=not to_zero)
    view = SigmaView(model, process)
    scales, sigmas = view.grid(times)
    sigmas = sigmas + ([0.0] if to_zero else [])
    n = len(sigmas) - 1
    sigma_top = view.sigma(1.0)
    x = initial_noise(process, shape_or_x, noise, model)
    y = x / scales[0]
    gamma = min(churn / n, math.sqrt(2) - 1) if n > 0 else 0.0
    for i in range(n):
        sigma, sigma_next, t, scale = sigmas[i], sigmas[i + 1], times[i], scales[i]
        if gamma > 0 and s_tmin <= sigma <= s_tmax:
            sigma_hat = min(sigma * (1 + gamma), sigma_top)
            t, scale = process.time_of_sigma(as_time(sigma_hat)), None
            y = y + math.sqrt(max(sigma_hat**2 - sigma**2, 0.0)) * s_noise * randn_like(y, noise)
            sigma = sigma_hat
        d = view.predict(y, t, scale).eps                   # dy/dsigma
        y_next = y + (sigma_next - sigma) * d
        if order == 2 and sigma_next > 0:
            d_next = view.predict(y_next, times[i + 1], scales[i + 1]).eps
            y_next = y + (sigma_next - sigma) * 0.5 * (d + d_next)
        y = projected(project, y_next, 1.0, sigma_next)
        last = i + 1 == len(times)
        call_back(callback, i + 1, n, 0.0 if last else float(times[i + 1]), y, view.nfe,
                  scale=1.0 if last else scales[i + 1])
    if not to_zero:
        y = y * scales[-1]
    finite_or_raise(y, name)
    return SampleResult(y, view.nfe)


@torch.no_grad()
def ode_euler(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 50, *,
              grid: str = "karras", rho: float = 7.0, times: Sequence[float] | Tensor | None = None,
              churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
              process: NoiseProcess | None = None, noise: Randomness = None,
              project: Projection | None = None, callback: Callback | None = None) -> SampleResult:
    """Euler on the probability-flow ODE ``dy/dsigma = eps`` (MATH.md 4-5): ``steps`` NFE.

    Evaluates at ``steps`` decreasing times (EDM's rho = 7 grid by default, or
    ``times``) and ends at sigma = 0; equal to DDIM with eta = 0 on the same
    times. ``churn > 0`` adds EDM's stochastic noise injection.
    """
    return _sigma_ode(model, shape_or_x, steps, 1, grid=grid, rho=rho, times=times, churn=churn,
                      s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, process=process, noise=noise,
                      callback=callback, name="ode_euler", project=project)


@torch.no_grad()
def ode_heun(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 18, *,
             grid: str = "karras", rho: float = 7.0, times: Sequence[float] | Tensor | None = None,
             churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
             process: NoiseProcess | None = None, noise: Randomness = None,
             project: Projection | None = None, callback: Callback | None = None) -> SampleResult:
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 2; MATH.md 5): ``2 steps - 1`` NFE.

    Second-order steps through ``steps`` times of the rho = 7 grid (18 steps,
    35 NFE on CIFAR-10) and a final Euler step to sigma = 0; ``churn``,
    ``s_tmin``, ``s_tmax``, ``s_noise`` are EDM's S_churn, S_tmin, S_tmax, S_noise.
    """
    return _sigma_ode(model, shape_or_x, steps, 2, grid=grid, rho=rho, times=times, churn=churn,
                      s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, process=process, noise=noise,
                      callback=callback, name="ode_heun", project=project)


@torch.no_grad()
def dpm_solver_pp_2m(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 20, *,
                     grid: str = "auto", rho: float = 7.0,
                     times: Sequence[float] | Tensor | None = None, lower_order_final: bool | None = None,
                     process: NoiseProcess | None = None, noise: Randomness = None,
                     project: Projection | None = None, callback: Callback | None = None) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; MATH.md 5): ``steps`` NFE.

    With ``lambda = -log sigma`` and ``h = lambda' - lambda``:
    ``y' = (sigma'/sigma) y - (e^{-h} - 1) D``, where ``D`` is the model's x0
    extrapolated from the last two steps, ``D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``,
    ``r = h_{i-1} / h_i``; first order on the first step and on the last one, to
    sigma = 0. With ``lower_order_final`` and fewer than 15 steps the step
    before the last (the last one ending at sigma > 0) is first order too. That is
    diffusers' ``lower_order_final`` heuristic (below 15 steps) on a grid that
    ends at sigma_min, as its older schedulers did; its current grid ends at
    sigma = 0 and lowers only that step, which is always first order here. The
    official DPM-Solver code lowers only the final step, below 10 steps. Neither
    is in the paper's algorithm; both of the others are ``lower_order_final=False``
    here. ``grid="auto"`` and ``lower_order_final=None`` take the settings of
    :mod:`~scorelab.samplers.rules` for the step count: below 20 steps a grid
    uniform in log sigma that stops at sigma 0.07-0.1, without the heuristic; from
    20, the grid to the process's ``t_min``.
    """
    return _dpm_solver_pp(model, shape_or_x, steps, 2, grid=grid, rho=rho, times=times,
                          lower_order_final=lower_order_final, process=process, noise=noise, callback=callback,
                          name="dpm++2m", project=project)


@torch.no_grad()
def dpm_solver_pp_3m(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 20, *,
                     grid: str = "auto", rho: float = 7.0,
                     times: Sequence[float] | Tensor | None = None, lower_order_final: bool | None = None,
                     process: NoiseProcess | None = None, noise: Randomness = None,
                     project: Projection | None = None, callback: Callback | None = None) -> SampleResult:
    """DPM-Solver++(3M), the third-order multistep data-prediction solver (Lu et al. 2022): ``steps`` NFE.

    From the last three data predictions ``x0_i, x0_{i-1}, x0_{i-2}`` with
    ``h = lambda' - lambda``, ``r0 = h_{i-1} / h``, ``r1 = h_{i-2} / h``:
    ``D1_0 = (x0_i - x0_{i-1}) / r0``, ``D1_1 = (x0_{i-1} - x0_{i-2}) / r1``,
    ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)`` (``h`` times the slope of the quadratic
    through the three, at ``lambda``), ``D2 = (D1_0 - D1_1) / (r0 + r1)`` (``h^2`` times its
    curvature coefficient, ``x0''/2``) and
    ``y' = (sigma'/sigma) y - phi1 x0_i + phi2 D1 - 2 phi3 D2``, ``phi1 = e^{-h} - 1``,
    ``phi2 = phi1 / h + 1``, ``phi3 = phi2 / h - 1/2``: the exact integral of that quadratic
    (MATH.md 5). The official DPM-Solver code and diffusers write ``- phi3 D2``, half the
    curvature term; their update's local error is O(h^3), so it converges at second order
    (measured 4.8-5.2x less error per halving of h on the 16-D mixture, against 7.6-8.2x here).
    First and second order while the history fills; ``lower_order_final`` (below 15 steps)
    makes the step before the last first order and the one before it at most second (as
    :func:`dpm_solver_pp_2m`); the last step, to sigma = 0, is first order. ``grid="auto"`` and
    ``lower_order_final=None`` follow :mod:`~scorelab.samplers.rules` for the step count.
    """
    return _dpm_solver_pp(model, shape_or_x, steps, 3, grid=grid, rho=rho, times=times,
                          lower_order_final=lower_order_final, process=process, noise=noise, callback=callback,
                          name="dpm++3m", project=project)


def _multistep_start(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int, grid: str, rho: float,
                     times: Sequence[float] | Tensor | None, process: NoiseProcess | None, noise: Randomness,
                     rule: StepRule) -> tuple[SigmaView, Tensor, list[float], list[float], Tensor]:
    """A multistep solver's start: the model's sigma view, its evaluation times (``rule``'s on the ``"auto"``
    grid), their scales and sigmas (with the end appended: scale 1, sigma 0) and ``y_T = x_T / a``."""
    model, process = resolve(model, process)
    times = _eval_times(process, steps, grid, rho, times, rule=rule)
    view = SigmaView(model, process)
    scales, sigmas = view.grid(times)
    x = initial_noise(process, shape_or_x, noise, model)
    return view, times, scales + [1.0], sigmas + [0.0], x / scales[0]


def _dpm_solver_pp(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int, order: int, *,
                   grid: str, rho: float, times: Sequence[float] | Tensor | None, lower_order_final: bool | None,
                   process: NoiseProcess | None, noise: Randomness, callback: Callback | None,
                   name: str, project: Projection | None = None) -> SampleResult:
    """DPM-Solver++'s multistep updates of order up to ``order`` in ``y = x / a``, ``lambda = -log sigma``."""
    rule, order, lower_order_final = _settings(name, steps, times, order, lower_order_final, order)
    view, times, scales, sigmas, y = _multistep_start(model, shape_or_x, steps, grid, rho, times, process, noise,
                                                      rule)
    n = len(times)
    history: list[tuple[Tensor, float]] = []                 # (x0, h) of earlier steps, newest last
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = view.predict(y, times[i], scales[i]).x0
        if sigma_next == 0:
            y = x0
        else:
            h = math.log(sigma / sigma_next)
            k = min(order, len(history) + 1)
            if lower_order_final and n < 15:
                k = 1 if i == n - 2 else min(k, 2) if i == n - 3 else k
            phi1 = math.expm1(-h)
            if k == 1:
                y = (sigma_next / sigma) * y - phi1 * x0
            elif k == 2:
                r = history[-1][1] / h
                y = (sigma_next / sigma) * y - phi1 * ((1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * history[-1][0])
            else:
                (x0_2, h_1), (x0_1, h_0) = history[-2], history[-1]
                r0, r1 = h_0 / h, h_1 / h
                d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h + 1
                phi3 = phi2 / h - 0.5
                y = (sigma_next / sigma) * y - phi1 * x0 + phi2 * d1 - 2 * phi3 * d2
            history = (history + [(x0, h)])[-2:]
        y = projected(project, y, 1.0, sigma_next)
        call_back(callback, i + 1, n, float(times[i + 1]) if i + 1 < n else 0.0, y, view.nfe, scale=scales[i + 1])
    finite_or_raise(y, name)
    return SampleResult(y, view.nfe)


def _unipc_coefficients(rks: Sequence[float], h: float, variant: str) -> tuple[Tensor, Tensor, float, float]:
    """UniPC's linear system (Zhao et al. 2023, Algorithm 2 with data prediction): the matrix
    ``R[i, j] = r_j^i`` and right-hand side ``b_i = i! phi_{i+1}(-h) / B(h)`` (``i = 0..k-1``), with
    ``phi_1 = e^{-h} - 1`` and ``B(h) = -h`` (bh1) or ``e^{-h} - 1`` (bh2)."""
    hh = -h
    phi1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else phi1
    phi_k, factorial, b = phi1 / hh - 1, 1, []
    for i in range(1, len(rks) + 1):
        b.append(phi_k * factorial / b_h)
        factorial *= i + 1
        phi_k = phi_k / hh - 1 / factorial
    r = torch.tensor(rks, dtype=torch.float64)
    matrix = torch.stack([r ** i for i in range(len(rks))])
    return matrix, torch.tensor(b, dtype=torch.float64), phi1, b_h


@torch.no_grad()
def unipc(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 20, *, order: int | None = None,
          variant: str = "bh2", corrector: bool = True, grid: str = "auto", rho: float = 7.0,
          times: Sequence[float] | Tensor | None = None, lower_order_final: bool | None = None,
          process: NoiseProcess | None = None, noise: Randomness = None, project: Projection | None = None,
          callback: Callback | None = None) -> SampleResult:
    """UniPC (Zhao et al. 2023; MATH.md 5): a multistep predictor (UniP) of order ``order`` and a
    corrector (UniC) that reuses the next step's network call, so ``steps`` NFE.

    In ``y = x / a`` with ``lambda = -log sigma``, ``h = lambda' - lambda`` and the data predictions
    ``m_0`` (now) and ``m_k`` at earlier ``lambda_k``, ``r_k = (lambda_k - lambda) / h``,
    ``D_k = (m_k - m_0) / r_k``: ``y' = (sigma'/sigma) y - phi_1 m_0 - B(h) sum_k rho_k D_k``, with
    ``rho`` solving UniPC's order conditions (``rho = 1/2`` at order 2). Once the network has seen
    ``y'``, the corrector redoes the step with ``D' = m' - m_0`` at ``r = 1`` added: one order
    higher, no extra call. ``variant`` picks ``B(h) = e^{-h} - 1`` (bh2, the paper's choice for
    few steps) or ``-h`` (bh1). Orders rise with the history; ``lower_order_final`` caps each
    step's order at the network calls left (diffusers' rule, so its last step between two grid
    times is at most second order); the last call, at the end of the grid, gives the sample as
    its data prediction. ``order=None``, ``grid="auto"`` and ``lower_order_final=None`` follow
    :mod:`~scorelab.samplers.rules` for the step count (order 2 on the full grid from 20 steps).
    """
    rule, order, lower_order_final = _settings("unipc", steps, times, order, lower_order_final, 2)
    require(order in (1, 2, 3), f"order must be 1, 2 or 3, got {order!r}")
    require(variant in ("bh1", "bh2"), f"variant must be 'bh1' or 'bh2', got {variant!r}")
    model, process = resolve(model, process)
    times = _eval_times(process, steps, grid, rho, times, rule=rule)
    view = SigmaView(model, process)
    n = len(times)
    scales, sigmas = view.grid(times)
    lambdas = [-math.log(s) for s in sigmas]
    x = initial_noise(process, shape_or_x, noise, model)
    y = x / scales[0]
    history: list[tuple[Tensor, float]] = []           # (data prediction, lambda), newest last
    step = None      # the last predictor step's (first-order part, m_0, D_k, system, B(h), order), for the corrector
    for i in range(n):
        m = view.predict(y, times[i], scales[i]).x0
        if corrector and step is not None:             # UniC: the same step, with D' = m - m_0 at r = 1 added
            base, m0, diffs, (matrix, b), b_h, k = step
            rhos = [0.5] if k == 1 else torch.linalg.solve(matrix, b).tolist()
            y = projected(project, base - b_h * sum(r * d for r, d in zip(rhos, diffs + [m - m0])), 1.0, sigmas[i])
        history = (history + [(m, lambdas[i])])[-order:]
        if i == n - 1:
            y = projected(project, m, 1.0, 0.0)
            call_back(callback, n, n, 0.0, y, view.nfe)
            break
        h = lambdas[i + 1] - lambdas[i]
        k = min(order, len(history), n - i if lower_order_final else order)
        m0, lam0 = history[-1]
        earlier = history[-k:-1][::-1]                  # m_1, m_2, ...: newest first
        rks = [(lam - lam0) / h for _, lam in earlier]
        diffs = [(mk - m0) / rk for (mk, _), rk in zip(earlier, rks)]
        matrix, b, phi1, b_h = _unipc_coefficients(rks + [1.0], h, variant)
        base = (sigmas[i + 1] / sigmas[i]) * y - phi1 * m0
        y = base
        if k > 1:                                       # UniP: order k from the k - 1 earlier predictions
            rhos = [0.5] if k == 2 else torch.linalg.solve(matrix[:-1, :-1], b[:-1]).tolist()
            y = base - b_h * sum(r * d for r, d in zip(rhos, diffs))
        step = (base, m0, diffs, (matrix, b), b_h, k)
        y = projected(project, y, 1.0, sigmas[i + 1])
        call_back(callback, i + 1, n, float(times[i + 1]), y, view.nfe, scale=scales[i + 1])
    finite_or_raise(y, "unipc")
    return SampleResult(y, view.nfe)


def adams_bashforth_weights(offsets: Sequence[float]) -> list[float]:
    """The Adams-Bashforth weights ``c_j`` of a step from ``u = 0`` to ``u = 1`` through derivatives known at
    ``u = offsets[j]`` (0 for now, negative for earlier points, in units of the step): the integral over
    ``[0, 1]`` of the polynomial through them, so ``sum_j c_j offsets[j]^m = 1 / (m + 1)`` for
    ``m < len(offsets)`` (MATH.md 5). Equal steps, ``offsets = 0, -1, -2, -3``: 1; (3, -1)/2;
    (23, -16, 5)/12; (55, -59, 37, -9)/24."""
    r = torch.tensor(list(offsets), dtype=torch.float64)
    k = len(r)
    require(k >= 1 and len(set(r.tolist())) == k, f"need distinct offsets, got {list(offsets)}")
    matrix = torch.stack([r ** m for m in range(k)])
    moments = torch.tensor([1 / (m + 1) for m in range(k)], dtype=torch.float64)
    return torch.linalg.solve(matrix, moments).tolist()


@torch.no_grad()
def ipndm(model: DiffusionModel, shape_or_x: Sequence[int] | Tensor, steps: int = 20, *, order: int | None = None,
          variable_step: bool = False, grid: str = "auto", rho: float = 7.0,
          times: Sequence[float] | Tensor | None = None, lower_order_final: bool | None = None,
          process: NoiseProcess | None = None, noise: Randomness = None, project: Projection | None = None,
          callback: Callback | None = None) -> SampleResult:
    """iPNDM (Zhang & Chen 2023, the improved pseudo-numerical method; MATH.md 5): ``steps`` NFE.

    Adams-Bashforth on the probability-flow ODE ``dy/dsigma = eps`` in ``y = x / a``: from the
    derivatives ``d_i = eps(y_i, sigma_i)`` of the last ``k`` steps,
    ``y' = y + (sigma' - sigma) sum_j c_j d_{i-j}``, with ``k`` rising 1, 2, 3, ... to ``order``
    as the history fills (lower-order multistep warm start instead of PNDM's Runge-Kutta steps,
    so every step costs one call). ``variable_step=False`` uses the equal-step weights
    (1; (3, -1)/2; (23, -16, 5)/12; (55, -59, 37, -9)/24) on any grid, as the paper and
    diff-sampler do; ``True`` computes them from the actual gaps in sigma
    (:func:`adams_bashforth_weights`, diff-sampler's iPNDM-v), which keeps order ``k`` on an
    uneven grid. The last step ends at sigma = 0; ``lower_order_final`` makes it first order
    (the data prediction). ``order=None``, ``grid="auto"`` and ``lower_order_final=None`` follow
    :mod:`~scorelab.samplers.rules` for the step count (order 4 on EDM's grid from 20 steps).
    """
    rule, order, lower_order_final = _settings("ipndm", steps, times, order, lower_order_final, 4)
    require(order in (1, 2, 3, 4), f"order must be 1, 2, 3 or 4, got {order!r}")
    view, times, scales, sigmas, y = _multistep_start(model, shape_or_x, steps, grid, rho, times, process, noise,
                                                      rule)
    n = len(times)
    history: list[Tensor] = []                          # d of earlier steps, newest last
    for i in range(n):
        d = view.predict(y, times[i], scales[i]).eps
        history = (history + [d])[-order:]
        k = 1 if lower_order_final and i == n - 1 else len(history)
        h = sigmas[i + 1] - sigmas[i]
        offsets = [(sigmas[i - j] - sigmas[i]) / h if variable_step else -float(j) for j in range(k)]
        weights = adams_bashforth_weights(offsets)
        y = y + h * sum(c * history[-1 - j] for j, c in enumerate(weights))
        y = projected(project, y, 1.0, sigmas[i + 1])
        call_back(callback, i + 1, n, float(times[i + 1]) if i + 1 < n else 0.0, y, view.nfe, d, scales[i + 1])
    finite_or_raise(y, "ipndm")
    return SampleResult(y, view.nfe)
