"""The variance of masked diffusion's bound estimator against D3PM's, at equal cost, on exact models (MATH.md 10, 13).

The finite-state problem of tests/test_masked.py (K = 3 categories, D = 3 dimensions, p_0 with dependent
dimensions) and its exact models: masked diffusion's exact ``mu`` (``CategoricalOracle.masked_model``) and the
exact factorized ``p(x_0 | x_t)`` of D3PM's absorbing kernel (``CategoricalOracle.model``, T = 1000, the linear
schedule alpha_bar_t = 1 - t/T). Both estimators cost one model call per example: masked diffusion's weighted
cross-entropy at one time, D3PM's term at one step over its probability (uniform steps). For each, over
``draws`` draws of the data and the noise: the mean (both estimate about -log p_0 plus their own gap), the
variance per example, and the variance of a batch mean of 128 (masked: independent times and MD4's
low-discrepancy times). The masked estimator's second moment diverges logarithmically with the linear
schedule (MATH.md 13), so its sample variance grows slowly with the number of draws; the table gives two sizes,
and the polynomial schedule alpha_t = 1 - t^2, whose variance is finite.

    python benchmarks/masked_variance.py

writes benchmarks/results/masked_variance.{json,md}.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scorelab.discrete import (CategoricalModel, CategoricalOracle, MaskedDiffusion, MultinomialDiffusion, masked_loss,
                               multinomial_loss)

OUT = Path(__file__).resolve().parent / "results" / "masked_variance"
K, D, BATCH = 3, 3, 128


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class AbsorbingExact(CategoricalModel):
    """D3PM's exact factorized ``p(x_0^i | x_t)`` under the absorbing kernel: which dimensions are masked says
    nothing of their values, so it is masked diffusion's exact ``mu`` at every step (checked below against the
    oracle's joint-matrix model at a few steps)."""

    def __init__(self, oracle: CategoricalOracle, process: MultinomialDiffusion):
        super().__init__(torch.nn.Identity(), process)
        self.oracle, self.table = oracle, oracle.masked_conditionals()

    def x0_logits(self, x_t, t, labels=None):
        return self.table[self.oracle.index(x_t, self.process.num_states)]


def estimates(estimator, oracle: CategoricalOracle, draws: int, seed: int) -> torch.Tensor:
    """``draws`` estimates, one example each, in batches of BATCH (so low-discrepancy times spread each batch)."""
    x0 = oracle.sample(draws, gen(seed))
    return torch.cat([estimator(x0[i:i + BATCH], gen(seed + 1 + i)).double() for i in range(0, draws, BATCH)])


def main() -> None:
    p0 = torch.rand(K, K, K, generator=gen(0), dtype=torch.float64) ** 3
    oracle = CategoricalOracle(p0 / p0.sum())
    entropy = float(-(oracle.probs * oracle.probs.log()).sum())
    linear, poly = MaskedDiffusion(K), MaskedDiffusion(K, schedule="polynomial", exponent=2.0)
    absorbing = MultinomialDiffusion(K, 1000, "linear", "absorbing")
    d3pm = AbsorbingExact(oracle, absorbing)
    states = torch.tensor([[3, 0, 3], [1, 3, 3], [3, 3, 3], [2, 1, 3]])
    for step in (1, 400, 999):                                   # (at T every x_t is all [MASK])
        exact = oracle.model(absorbing).log_x0(states, step)
        torch.testing.assert_close(d3pm.log_x0(states, step).exp(), exact.exp(), rtol=0, atol=1e-9)
    estimators = {
        "D3PM absorbing, T = 1000, uniform steps": lambda x, g: multinomial_loss(d3pm, x, noise=g, reduction="sum"),
        "masked, linear, independent times": lambda x, g: masked_loss(oracle.masked_model(linear), x, noise=g,
                                                                      time_sampling="uniform", reduction="sum"),
        "masked, linear, low-discrepancy times": lambda x, g: masked_loss(oracle.masked_model(linear), x, noise=g,
                                                                          reduction="sum"),
        "masked, polynomial (t^2), low-discrepancy times": lambda x, g: masked_loss(oracle.masked_model(poly), x,
                                                                                    noise=g, reduction="sum"),
    }
    rows = []
    for draws in (BATCH * 200, BATCH * 1600):
        for name, estimator in estimators.items():
            values = estimates(estimator, oracle, draws, seed=draws)
            batch_means = values.reshape(-1, BATCH).mean(1)
            rows.append({"estimator": name, "draws": draws, "mean": float(values.mean()),
                         "standard_error": float(batch_means.std() / len(batch_means) ** 0.5),
                         "variance_per_example": float(values.var()), "variance_batch_mean": float(batch_means.var())})
            print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({"entropy_nats": entropy, "rows": rows}, indent=1))
    base = {r["draws"]: r for r in rows if r["estimator"].startswith("D3PM")}
    lines = ["# Bound estimators at equal cost on exact models: masked diffusion against D3PM", "",
             f"`python benchmarks/masked_variance.py`; K = {K}, D = {D}; the data's entropy is {entropy:.4f} nats (the "
             "exact masked bound's mean). Nats per example; variance ratio against D3PM at the same number of "
             "draws; a batch is 128 examples.", "",
             "| estimator | draws | mean +- s.e. | variance per example | variance of a batch mean | ratio to D3PM "
             "(example / batch) |", "|---|---:|---|---:|---:|---|"]
    for r in rows:
        b = base[r["draws"]]
        lines.append(f"| {r['estimator']} | {r['draws']} | {r['mean']:.4f} +- {r['standard_error']:.4f} | "
                     f"{r['variance_per_example']:.3f} | {r['variance_batch_mean']:.4f} | "
                     f"{r['variance_per_example'] / b['variance_per_example']:.2f} / "
                     f"{r['variance_batch_mean'] / b['variance_batch_mean']:.2f} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(OUT.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
