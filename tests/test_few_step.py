"""Few-step sampling: iPNDM's orders, GITS's timestep search, on the exact Gaussian-mixture oracle (MATH.md 5-6)."""

import itertools
import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab import samplers as S
from scorelab.evaluation import energy_distance
from scorelab.samplers.ode import adams_bashforth_weights
from scorelab.samplers.rules import rule_times, step_rule
from scorelab.samplers.search import cheapest_path, gits_cost, load_times, save_times, search_times


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_adams_bashforth_weights_are_the_papers_on_equal_steps_and_exact_on_uneven_ones():
    """Equal steps give iPNDM's published weights; on any offsets the weights integrate every polynomial of
    degree below their number exactly over the step (the Adams-Bashforth order condition)."""
    published = [[1], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    for k, weights in enumerate(published, start=1):
        assert adams_bashforth_weights([-j for j in range(k)]) == pytest.approx(weights, abs=1e-13)
    offsets = [0.0, -0.7, -1.9, -2.4]
    weights = adams_bashforth_weights(offsets)
    for m in range(4):                             # int_0^1 u^m du against the rule
        assert sum(c * r**m for c, r in zip(weights, offsets)) == pytest.approx(1 / (m + 1), abs=1e-12)


def test_ipndm_converges_at_its_order_with_variable_steps_and_at_second_with_the_papers_weights(mixture_16d):
    """Global order on the exact 16-D mixture (against a 640-step DPM-Solver++(3M) solution, both ending with
    the data prediction): with weights from the actual sigma gaps, iPNDM-k's error falls as h^k (halving h
    at 20-80 steps divides it by 2.0-2.1, 3.4-3.7, 5.2-6.0, 7.2-9.0, rising toward 2^k); the equal-step weights
    on an uneven grid meet the second-order condition only to O(h), so iPNDM-4 with them falls to order 2
    (4.8 then 4.5 at 40-160 steps, toward 4), as theory has it."""
    model = mixture_16d.model(sl.VPSDE())
    x_T = torch.randn(100, 16, generator=gen(0), dtype=torch.float64)
    reference = S.dpm_solver_pp_3m(model, x_T.clone(), 640, lower_order_final=False).samples

    def ratios(order, variable, steps):
        errors = [float((S.ipndm(model, x_T.clone(), n, order=order, variable_step=variable, lower_order_final=True)
                         .samples - reference).abs().mean()) for n in steps]
        return [a / b for a, b in zip(errors, errors[1:])]

    for order, low, high in ((1, 1.8, 2.3), (2, 3.1, 4.3), (3, 4.8, 8.5), (4, 6.5, 17.0)):
        measured = ratios(order, True, (20, 40, 80))
        assert all(low < r < high for r in measured), (order, measured)
    measured = ratios(4, False, (40, 80, 160))
    assert all(3.4 < r < 5.5 for r in measured), measured
    # On a grid uniform in sigma the two weightings are one method.
    ve = sl.VESDE(0.01, 50.0)
    times = ve.time_of_sigma(torch.linspace(50.0, 0.01, 12, dtype=torch.float64))
    ve_model = mixture_16d.model(ve)
    z = torch.randn(50, 16, generator=gen(1), dtype=torch.float64) * 50
    equal, uneven = (S.ipndm(ve_model, z.clone(), times=times, variable_step=v, lower_order_final=True).samples
                     for v in (False, True))
    torch.testing.assert_close(equal, uneven, rtol=0, atol=1e-10)


def test_cheapest_path_is_the_brute_force_minimum():
    """GITS's dynamic programme against every path: ``sum_k coeff^k C[i_k, i_(k+1)]`` from node 0 to the last."""
    rng = np.random.default_rng(3)
    n, steps, coeff = 9, 4, 1.15
    cost = torch.tensor(np.triu(rng.uniform(0.1, 2.0, size=(n, n)), 1), dtype=torch.float64)
    cost[torch.tril(torch.ones(n, n, dtype=torch.bool))] = math.inf
    path, value = cheapest_path(cost, steps, coeff)

    def total(p):
        nodes = list(p) + [n - 1]
        return sum(coeff**k * float(cost[a, b]) for k, (a, b) in enumerate(zip(nodes, nodes[1:])))

    brute = min((total((0,) + c), (0,) + c) for c in itertools.combinations(range(1, n - 1), steps - 1))
    assert value == pytest.approx(brute[0], rel=1e-12) and tuple(path) == brute[1]
    assert value == pytest.approx(total(path), rel=1e-12)


def test_gits_cost_is_the_euler_miss_between_teacher_points():
    """C[i, j] from its definition on a hand-made two-sample trajectory."""
    points = torch.tensor([[[3.0], [1.0]], [[2.0], [0.5]], [[0.0], [0.0]]], dtype=torch.float64)
    eps = torch.tensor([[[1.0], [0.5]], [[2.0], [-1.0]]], dtype=torch.float64)
    sigmas = [2.0, 1.0, 0.0]
    cost = gits_cost(points, eps, sigmas)
    # 0 -> 1: (3 - 1, 1 - 0.5) = (2, 0.5) hits (2, 0.5): 0. 0 -> 2: (1, 0) against (0, 0): mean(1, 0) = 0.5.
    # 1 -> 2: (2 - 2, 0.5 + 1) = (0, 1.5) against (0, 0): mean(0, 1.5) = 0.75.
    assert cost[0, 1] == pytest.approx(0.0) and cost[0, 2] == pytest.approx(0.5) and cost[1, 2] == pytest.approx(0.75)
    assert math.isinf(cost[1, 0]) and math.isinf(cost[1, 1])


@pytest.mark.parametrize("steps", [5, 10])
def test_a_searched_grid_is_never_worse_than_the_default_grid_of_each_fast_solver(mixture_16d, steps, tmp_path):
    """GITS's grid for each solver (a 60-step teacher on 256 draws of the exact 16-D mixture's DDPM model, the
    candidate paths and the solver's default grid run by the solver; a candidate at least 5% nearer the
    teacher's samples than the default, draw by draw and as a set, and of those the nearest as a set, kept:
    the kept grid is the default or 5% nearer by both of the measures it returns) against the
    solver's default call at the same NFE, on 300 other draws and the exact probability-flow map of the same
    draws: neither the mean distance nor the energy distance is larger (measured at 5 NFE 0.10-0.31 against
    0.18-0.78, and 0.0018-0.011 against 0.0038-0.083; at 10, iPNDM and DPM-Solver++(3M) keep their default
    grids and the others gain 40-65% and 65-85%); and the grid survives its JSON file."""
    model = mixture_16d.model(sl.DDPM())
    z = torch.randn(300, 16, generator=gen(2), dtype=torch.float64)
    exact = S.dpm_solver_pp_3m(mixture_16d.model(sl.VPSDE()), z.clone(), 500, lower_order_final=False).samples

    def miss(name, **kw):
        x = S.sample(model, z.clone(), name, **kw).samples
        return float((x - exact).norm(dim=1).mean()), energy_distance(x, exact, unbiased=False)

    for name in ("ipndm", "dpm++2m", "dpm++3m", "unipc"):
        searched = search_times(model, steps, (256, 16), seed=7, sampler=name)
        assert len(searched.times) == steps and searched.times[0] == 1.0 and searched.sampler == name
        assert set(searched.candidates) == {"gits 1", "gits 1.1", "gits 1.15", "gits 1.2", "gits 1.3", "default"}
        near = {k: (searched.candidates[k], searched.set_distances[k]) for k in searched.candidates}
        assert searched.chosen == "default" or all(v <= 0.95 * d for v, d in zip(near[searched.chosen],
                                                                               near["default"])), (name, near)
        default, gits = miss(name, steps=steps), miss(name, times=searched.tensor())
        assert all(g <= d * (1 + 1e-12) for g, d in zip(gits, default)), (name, gits, default, searched.chosen)
        if steps == 5:
            assert gits[0] < 0.85 * default[0], (name, gits, default)
    again = load_times(save_times(tmp_path / "t.json", searched))
    assert again == searched


def test_a_search_on_another_process_runs_its_teacher_and_candidates_there(mixture_2d):
    """``process=``: the teacher and every candidate grid run on that process (the model adapted by noise
    level), so a VP model searched on the sub-VP SDE finds what the sub-VP model's own search finds."""
    own = search_times(mixture_2d.model(sl.SubVPSDE()), 5, (256, 2), sampler="dpm++2m")
    adapted = search_times(mixture_2d.model(sl.VPSDE()), 5, (256, 2), sampler="dpm++2m", process=sl.SubVPSDE())
    assert adapted.times == pytest.approx(own.times, abs=1e-9) and adapted.chosen == own.chosen
    for label, miss in own.candidates.items():
        assert adapted.candidates[label] == pytest.approx(miss, rel=1e-3), label

def test_the_default_settings_bring_three_solvers_to_the_noise_floor_at_10_nfe(mixture_2d, mixture_16d):
    """The default call at 10 network evaluations (``scorelab.samplers.rules``) against exact truth: energy
    distance (V-statistic) to 5,000 exact mixture samples, over the paired floor (the same 2,000 prior draws
    carried by a 60-step DPM-Solver++(3M), equal to the 200-step one's to 0.2%). iPNDM, UniPC and
    DPM-Solver++(3M) stay within 1.5x the floor on the 2-D and 16-D mixtures' DDPM models (measured 1.02 and
    1.02, 0.90 and 1.35, 1.11 and 1.27), where each with its paper's settings (the defaults from 20 calls:
    the grid to t_min, EDM's for iPNDM, log sigma for the others, and their final steps) is further off
    (1.34 and 1.55, 2.11 and 2.19, 5.06 and 3.62). DPM-Solver++(2M), second order, reaches 1.46 and 1.64."""
    for mixture, dim in ((mixture_2d, 2), (mixture_16d, 16)):
        model = mixture.model(sl.DDPM())
        exact = mixture.sample(5000, gen(12345), dtype=torch.float64)
        z = torch.randn(2000, dim, generator=gen(2024), dtype=torch.float64)
        # the exact set's own 5000 x 5000 distances once, for all seven distances
        distance = sl.evaluation.energy_distance_to(exact, unbiased=False)

        floor = distance(S.dpm_solver_pp_3m(model, z.clone(), 60).samples)
        for name in ("ipndm", "unipc", "dpm++3m"):
            paper = step_rule(name, 20)                    # the paper's settings, the defaults from 20 calls on
            options = {"lower_order_final": paper.lower_order_final, **({"order": paper.order} if paper.order else {})}
            default = distance(S.sample(model, z.clone(), name, 10).samples) / floor
            on_paper = distance(S.sample(model, z.clone(), name, times=rule_times(model.process, 10, paper),
                                         **options).samples) / floor
            assert default < 1.5 and default < on_paper, (dim, name, default, on_paper)
