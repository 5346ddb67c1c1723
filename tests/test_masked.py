"""Masked diffusion in continuous time (MATH.md 13) against a finite-state problem computed by enumeration.

``p_0`` over K = 3 categories in D = 3 dimensions. What the library computes (the estimator, the discrete bound,
the sampler) is checked against what this file computes from the definitions alone: the bound as the average
over the D! orders of revealing (the integral of the weight against ``(1 - alpha)^m alpha^(D - m)`` is the Beta
function B(m, D - m + 1), whatever the schedule); the model's own likelihood as the law of revealing one
dimension at a time; the T-step bound as the KL of explicit joint distributions over the ``(K+1)^D`` states of
``x_s``; the T-step sampler's law as a product of explicit transition matrices.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import integrate

from scorelab.discrete import (CategoricalOracle, MaskedDiffusion, MaskedModel, masked_ancestral, masked_discrete_bound,
                               masked_loss)
from scorelab.discrete.masked import draw_times

K, D = 3, 3
MASK = K
SCHEDULES = [dict(schedule="linear"), dict(schedule="cosine"), dict(schedule="polynomial", exponent=2.0),
             dict(schedule="table", alphas=[1.0, 0.9, 0.5, 0.45, 0.0])]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def oracle() -> CategoricalOracle:
    p0 = torch.rand(K, K, K, generator=gen(0), dtype=torch.float64) ** 3        # dimensions that depend on each other
    return CategoricalOracle(p0 / p0.sum())


@pytest.fixture(scope="module")
def tables(oracle):
    """The exact table of ``log mu`` and a distorted one (a model that is wrong everywhere)."""
    exact = oracle.masked_conditionals()
    distorted = torch.log_softmax(exact + 0.8 * torch.randn(exact.shape, generator=gen(1), dtype=torch.float64), -1)
    return {"exact": exact, "distorted": distorted}


def _index(x: tuple[int, ...]) -> int:
    return sum(v * (K + 1) ** (D - 1 - i) for i, v in enumerate(x))


def _masked(x0: tuple[int, ...], hidden) -> tuple[int, ...]:
    return tuple(MASK if i in hidden else v for i, v in enumerate(x0))


def any_order_bound(table: torch.Tensor, x0: tuple[int, ...]) -> float:
    """``L(x_0) = sum_{M != {}} B(|M|, D - |M| + 1) sum_{i in M} -log mu(x_0 masked on M)^i[x_0^i]``."""
    total = 0.0
    for m in range(1, D + 1):
        beta = math.factorial(m - 1) * math.factorial(D - m) / math.factorial(D)
        for hidden in itertools.combinations(range(D), m):
            row = table[_index(_masked(x0, hidden))]
            total += beta * sum(-float(row[i, x0[i]]) for i in hidden)
    return total


def revealing_likelihood(table: torch.Tensor, x0: tuple[int, ...]) -> float:
    """The model's own ``p(x_0)`` in continuous time: one dimension revealed at a time, each order alike."""
    total = 0.0
    for order in itertools.permutations(range(D)):
        hidden, prob = set(range(D)), 1.0
        for i in order:
            prob *= math.exp(float(table[_index(_masked(x0, hidden)), i, x0[i]]))
            hidden.remove(i)
        total += prob
    return total / math.factorial(D)


def _alpha(spec: dict, t: float) -> float:
    """The schedules written out again, from MATH.md 13."""
    if spec["schedule"] == "linear":
        return 1 - t
    if spec["schedule"] == "cosine":
        return 1 - math.cos(math.pi / 2 * (1 - t))
    if spec["schedule"] == "polynomial":
        return 1 - t ** spec["exponent"]
    a = spec["alphas"]
    pos = t * (len(a) - 1)
    i = min(int(pos), len(a) - 2)
    return a[i] + (pos - i) * (a[i + 1] - a[i])


STATES = torch.tensor(list(itertools.product(range(K + 1), repeat=D)))


def step_matrix(table: torch.Tensor, reveal: float) -> torch.Tensor:
    """``P[x_t, x_s]``: each [MASK] revealed with probability ``reveal``, its value from ``mu(x_t)``; an unmasked
    dimension kept."""
    x_t, x_s = STATES[:, None, :], STATES[None, :, :]                              # (S^D, 1, D), (1, S^D, D)
    n = len(STATES)
    mu = torch.nn.functional.pad(table.exp(), (0, 1))                               # a column for [MASK]
    value = mu[:, None].expand(n, n, D, K + 1).gather(-1, x_s.expand(n, n, D)[..., None])[..., 0]
    masked = torch.where(x_s == MASK, 1 - reveal, reveal * value)
    return torch.where(x_t == MASK, masked, (x_s == x_t).double()).prod(-1)


def sampler_law(table: torch.Tensor, spec: dict, steps: int) -> torch.Tensor:
    """The law of the ``steps``-step sampler's output over the K^D data states (even grid from 1 to 0)."""
    law = torch.zeros((K + 1) ** D, dtype=torch.float64)
    law[_index((MASK,) * D)] = 1.0
    for j in range(steps, 0, -1):
        t, s = j / steps, (j - 1) / steps
        a_t, a_s = _alpha(spec, t), _alpha(spec, s)
        law = law @ step_matrix(table, (a_s - a_t) / (1 - a_t))
    data = [_index(x) for x in itertools.product(range(K), repeat=D)]
    return law[data]


def discrete_bounds(table: torch.Tensor, steps: int) -> list[float]:
    """``L_T`` at every data state from its definition (linear schedule):
    ``sum_i E_{q(x_t | x_0)} KL(q(x_s | x_t, x_0) || p(x_s | x_t))``, both laws of ``x_s`` written out over the
    joint states (``q`` is the sampler's step with ``mu`` the point mass on ``x_0``)."""
    totals = [0.0] * len(DATA)
    for j in range(1, steps + 1):
        t, s = j / steps, (j - 1) / steps
        reveal = (t - s) / t
        model = step_matrix(table, reveal)
        for k, x0 in enumerate(DATA):
            point = torch.nn.functional.one_hot(torch.tensor(x0), K).double().clamp(min=1e-300).log()
            truths = step_matrix(point.expand((K + 1) ** D, D, K), reveal)
            for hidden_mask in itertools.product((0, 1), repeat=D):
                hidden = {i for i in range(D) if hidden_mask[i]}
                prob_t = t ** len(hidden) * (1 - t) ** (D - len(hidden))
                if prob_t == 0:
                    continue
                row = _index(_masked(x0, hidden))
                truth, p = truths[row], model[row]
                keep = truth > 0
                totals[k] += prob_t * float((truth[keep] * (truth[keep] / p[keep]).log()).sum())
    return totals


DATA = list(itertools.product(range(K), repeat=D))


def test_the_bound_is_the_average_over_orders_exact_for_the_exact_model_and_above_any_models_nll(oracle, tables):
    """With the exact ``mu`` the bound is ``-log p_0`` at every state (the chain rule in each order); with a wrong
    ``mu`` it is above that model's own ``-log p`` (Jensen over the orders), at every state."""
    p0 = oracle.probs.flatten()
    for k, x0 in enumerate(DATA):
        assert any_order_bound(tables["exact"], x0) == pytest.approx(-math.log(float(p0[k])), abs=1e-10)
    model_law = [revealing_likelihood(tables["distorted"], x0) for x0 in DATA]
    assert sum(model_law) == pytest.approx(1.0, abs=1e-12)
    gaps = [any_order_bound(tables["distorted"], x0) + math.log(q) for x0, q in zip(DATA, model_law)]
    assert min(gaps) >= -1e-12 and max(gaps) > 0.05


@pytest.mark.parametrize("spec", SCHEDULES, ids=lambda s: s["schedule"])
def test_the_estimator_integrates_to_the_bound_on_every_schedule(oracle, tables, spec):
    """``E[masked_loss | t] = w(t) sum_M P(M | t) CE(M)`` at fixed times (the library's draws of ``x_t``, within 4
    standard errors), and the integral of that over t, with the library's weight, is the bound's closed form."""
    process = MaskedDiffusion(K, **spec)
    model = oracle.masked_model(process, tables["distorted"])
    x0 = (2, 0, 1)
    xs = torch.tensor([x0]).expand(40000, D)

    def expected(t: float) -> float:
        a = _alpha(spec, t)
        total = 0.0
        for hidden_mask in itertools.product((0, 1), repeat=D):
            hidden = [i for i in range(D) if hidden_mask[i]]
            row = tables["distorted"][_index(_masked(x0, hidden))]
            total += (1 - a) ** len(hidden) * a ** (D - len(hidden)) * sum(-float(row[i, x0[i]]) for i in hidden)
        return float(process.weight(torch.tensor(t))) * total

    for t in (0.15, 0.6, 0.95):
        draws = masked_loss(model, xs, t=torch.full((len(xs),), t), noise=gen(2), reduction="sum").double()
        assert abs(float(draws.mean()) - expected(t)) < 4 * float(draws.std()) / len(xs) ** 0.5
    breaks = [0.0, 0.25, 0.5, 0.75, 1.0] if spec["schedule"] == "table" else [0.0, 1.0]
    integral = sum(integrate.quad(expected, a, b, epsabs=1e-12, epsrel=1e-11, limit=200)[0]
                   for a, b in zip(breaks, breaks[1:]))
    assert integral == pytest.approx(any_order_bound(tables["distorted"], x0), abs=1e-7)


def test_the_weight_near_t_0_is_the_closed_form_and_the_loss_finite(oracle):
    """Near t = 0 the weight is ``w / t`` (polynomial), ``1 / t`` (linear), ``(pi / 2) cot(pi t / 2)`` (cosine) to
    1e-9, where ``1 - alpha_t`` written as a difference would round to 0 (an infinite weight, a NaN loss)."""
    t = torch.tensor([1e-7, 1e-6, 1e-5, 0.3], dtype=torch.float64)
    closed = {"linear": 1 / t, "cosine": math.pi / 2 / torch.tan(math.pi * t / 2), "polynomial": 3 / t}
    for schedule, w in closed.items():
        process = MaskedDiffusion(K, schedule=schedule, **({"exponent": 3.0} if schedule == "polynomial" else {}))
        torch.testing.assert_close(process.weight(t), w, rtol=1e-9, atol=0)
        xs = torch.tensor([(2, 0, 1)]).expand(64, D)
        loss = masked_loss(oracle.masked_model(process), xs, t=torch.full((64,), 1e-7), noise=gen(3))
        assert bool(torch.isfinite(loss).all()), schedule


def test_training_times_are_uniform_and_low_discrepancy_times_cover_the_interval():
    """Each low-discrepancy time is uniform on (0, 1] over draws (mean 1/2, variance 1/12), and one batch's times
    are evenly spaced 1/N apart (MD4's draws); never 0, where the weight is infinite."""
    n, batches = 8, 4000
    t = torch.stack([draw_times(n, gen(s)) for s in range(batches)])
    assert bool((t > 0).all() and (t <= 1).all())
    gaps = torch.sort(t, 1).values.diff(dim=1)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / n), rtol=0, atol=1e-12)
    se_mean, se_var = (1 / 12 / batches) ** 0.5, (1 / 180 / batches) ** 0.5
    assert (t.mean(0) - 0.5).abs().max() < 4 * se_mean
    assert (t.var(0) - 1 / 12).abs().max() < 4 * se_var
    u = draw_times(20000, gen(7), time_sampling="uniform")
    assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12 / 20000) ** 0.5


def test_the_discrete_bound_decreases_to_the_continuous_one_and_bounds_its_samplers_nll(oracle, tables):
    """``L_T`` (the KL of explicit joint laws of ``x_s``) bounds ``-log`` of the T-step sampler's own law at every
    state; on average over ``p_0`` it falls with T to the continuous bound (exact and wrong model alike), and per
    state it converges to it as a Riemann sum, the gap roughly halving as T doubles (per state L_T may lie below
    L: it bounds the T-step sampler's NLL, not the continuous one's). The library's estimate of ``L_4`` agrees
    with it within 4 standard errors."""
    p0, spec = oracle.probs.flatten(), {"schedule": "linear"}
    for name, table in tables.items():
        bounds = {T: discrete_bounds(table, T) for T in (1, 2, 4, 8, 16, 32)}
        for T in (1, 2, 4):
            nll = -sampler_law(table, spec, T).log()
            assert min(b - float(q) for b, q in zip(bounds[T], nll)) >= -1e-12, (name, T)
        limit = sum(float(p) * any_order_bound(table, x0) for p, x0 in zip(p0, DATA))
        means = [sum(float(p) * b for p, b in zip(p0, bounds[T])) - limit for T in bounds]
        assert all(a > b > 0 for a, b in zip(means, means[1:])) and means[-1] < 0.6 * means[-2], (name, means)
        gaps = [[abs(bounds[T][k] - any_order_bound(table, x0)) for T in (8, 16, 32)] for k, x0 in enumerate(DATA)]
        assert all(g[1] < 0.7 * g[0] and g[2] < 0.7 * g[1] for g in gaps if g[0] > 1e-3), (name, gaps)
        assert max(g[2] for g in gaps) < 0.25, name
    process = MaskedDiffusion(K)
    model = oracle.masked_model(process, tables["distorted"])
    draws = masked_discrete_bound(model, torch.tensor([(2, 0, 1)]).expand(40000, D), 4, noise=gen(3))
    exact = discrete_bounds(tables["distorted"], 4)[DATA.index((2, 0, 1))]
    assert abs(float(draws.mean()) - exact) < 4 * float(draws.std()) / 200


def test_the_sampler_draws_its_chains_law_and_exact_conditionals_reproduce_the_joint(oracle, tables):
    """The library's sampler at 2 and 32 steps draws the law of the explicit chain, which with the exact ``mu``
    goes to ``p_0`` as steps grow (at 2 steps it is not ``p_0``: dimensions revealed together are drawn
    independently). Its cache changes no draw and calls the model at most D + 1 times."""
    spec = {"schedule": "linear"}
    p0 = oracle.probs.flatten()
    model = oracle.masked_model(MaskedDiffusion(K))
    n = 60000
    floor = (len(DATA) / n) ** 0.5                                             # TV of n draws from 27 states, roughly
    laws = {T: sampler_law(tables["exact"], spec, T) for T in (2, 8, 32, 128)}
    tv = {T: 0.5 * float((law - p0).abs().sum()) for T, law in laws.items()}
    assert tv[2] > 5 * floor and tv[2] > tv[8] > tv[32] > tv[128] and tv[128] < 0.005, tv
    for steps in (2, 32):
        result = masked_ancestral(model, (n, D), steps, noise=gen(4))
        counts = torch.bincount(oracle.index(result.states, K), minlength=len(DATA)).double() / n
        assert 0.5 * float((counts - laws[steps]).abs().sum()) < floor, steps
    cached = masked_ancestral(model, (500, D), 64, noise=gen(5))
    every = masked_ancestral(model, (500, D), 64, cache=False, noise=gen(5))
    assert torch.equal(cached.states, every.states)
    assert cached.nfe <= D + 1 and every.nfe == 64

    # A model told the time (its mu changes with t) is not cached by default: reusing a prediction made at
    # another t would draw another law; asking for the cache is refused.
    class ReadsTime(MaskedModel):
        def logits(self, x_t, t, labels=None):
            return (torch.tensor([4.0, 0.0, -4.0], dtype=torch.float64) * (2 * t[:, None, None] - 1)).expand(
                *x_t.shape, K)

    timed = ReadsTime(torch.nn.Identity(), MaskedDiffusion(K), time_conditioning=True)
    default = masked_ancestral(timed, (500, D), 64, noise=gen(6))
    assert torch.equal(default.states, masked_ancestral(timed, (500, D), 64, cache=False, noise=gen(6)).states)
    assert default.nfe == 64
    with pytest.raises(ValueError, match="reads t"):
        masked_ancestral(timed, (500, D), 64, cache=True)


def test_bad_input_gets_one_line_errors(oracle):
    process = MaskedDiffusion(K)
    model = oracle.masked_model(process)
    cases = [
        (lambda: MaskedDiffusion(K, schedule="table", alphas=[1.0, 0.6, 0.7, 0.0]), "decrease from alpha_0 = 1"),
        (lambda: MaskedDiffusion(K, schedule="table", alphas=[1.0, 0.5, 0.1]), "alpha_1 = 0"),
        (lambda: MaskedDiffusion(K, schedule="polynomial", exponent=0.0), "positive number"),
        (lambda: MaskedDiffusion(K, schedule="sigmoid"), "unknown schedule"),
        (lambda: masked_loss(model, torch.tensor([[0, 1, 3]])), "the absorbing kernel's [MASK] state"),
        (lambda: masked_loss(model, torch.tensor([[0, 1, 5]])), "values must lie in 0..2"),
        (lambda: masked_loss(model, torch.tensor([[0, 1, 2]]), t=torch.tensor([1.5])), "times lie in [0, 1]"),
        (lambda: masked_ancestral(model, (2, D), times=[1.0, 0.5]), "down to 0"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)
