"""Multinomial diffusion against a finite-state oracle (MATH.md 10): every distribution over K^D joint states
computed by enumeration, from one-step kernels and Bayes' rule written here."""

import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab.discrete import (CategoricalOracle, MultinomialDiffusion, StepImportance, bits_per_dim, multinomial_loss,
                               vlb_term)

K, D = 3, 3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def oracle():
    """A p_0 on 3^3 states with strongly dependent dimensions (x_2 mostly copies x_0, x_1 avoids x_0)."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 1.0, size=(K,) * D)
    for a in range(K):
        p[a, :, a] *= 12.0
        p[a, a, :] *= 0.1
    return CategoricalOracle(p / p.sum())


def _step_matrices(process: MultinomialDiffusion) -> list[torch.Tensor]:
    """Q_t[j, i] = alpha_t [i = j] + (1 - alpha_t) pi_i by hand, alpha_t from the paper's schedule."""
    T, S = process.num_steps, process.num_states
    t = np.arange(T + 1)
    if process.schedule == "linear":
        alpha_bar = 1 - t / T
    else:                                   # Hoogeboom et al.'s code: sqrt of clipped cos^2 ratios
        f = np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2
        alpha_bar = np.concatenate([[1.0], np.cumprod(np.sqrt(np.clip(f[1:] / f[:-1], 0.001, 1.0)))])
        if process.kernel == "absorbing":     # its prior is all [MASK]: the last step absorbs everything
            alpha_bar[-1] = 0.0
    pi = np.full(S, 1 / K) if process.kernel == "uniform" else np.eye(S)[-1]
    out = [None]
    for step in range(1, T + 1):
        a = alpha_bar[step] / alpha_bar[step - 1]
        out.append(torch.tensor(a * np.eye(S) + (1 - a) * pi[None, :]))
    return out


PROCESSES = [("uniform", "cosine"), ("uniform", "linear"), ("absorbing", "linear"), ("absorbing", "cosine")]


@pytest.mark.parametrize("kernel,schedule", PROCESSES)
def test_marginals_and_posteriors_equal_the_one_step_chain_and_bayes_rule(kernel, schedule):
    process = MultinomialDiffusion(K, 6, schedule=schedule, kernel=kernel)
    Q = _step_matrices(process)
    S = process.num_states
    x0 = torch.arange(K)
    chain = torch.eye(S, dtype=torch.float64)
    marginals = [chain]
    for t in range(1, 7):
        torch.testing.assert_close(process.step_probs(torch.arange(S), t), Q[t], rtol=0, atol=1e-12)
        chain = chain @ Q[t]
        marginals.append(chain)
        torch.testing.assert_close(process.q_probs(x0, t), chain[:K], rtol=0, atol=1e-12)
    for t in range(1, 7):
        for s in range(t):                                          # s = t - 1 and every skip
            gap = torch.eye(S, dtype=torch.float64)
            for u in range(s + 1, t + 1):
                gap = gap @ Q[u]
            for a in range(K):
                q_t = marginals[t][a]
                for b in range(S):
                    if q_t[b] == 0:
                        continue
                    bayes = marginals[s][a] * gap[:, b] / q_t[b]          # q(x_s | x_0 = a) q(x_t = b | x_s) / q(x_t | x_0)
                    got = process.posterior_probs(torch.tensor([b]), torch.tensor([a]), t, s)[0]
                    torch.testing.assert_close(got, bayes, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kernel,schedule", [("uniform", "cosine"), ("absorbing", "linear")])
def test_marginal_draws_follow_the_chain(kernel, schedule):
    """``sample_marginal`` (keep x_0 with probability alpha_bar_t, else draw from pi) against the one-step chain's
    marginal: 20,000 draws per start at three steps, every frequency within 5 binomial standard errors."""
    process = MultinomialDiffusion(K, 6, schedule=schedule, kernel=kernel)
    Q, n = _step_matrices(process), 20000
    chain = torch.eye(process.num_states, dtype=torch.float64)
    for t in range(1, 7):
        chain = chain @ Q[t]
        if t not in (1, 3, 6):
            continue
        x_t = process.sample_marginal(torch.arange(K).repeat(n), t, _gen(t)).reshape(n, K)
        freq = torch.nn.functional.one_hot(x_t, process.num_states).double().mean(0)       # (K starts, S)
        se = (chain[:K] * (1 - chain[:K]) / n).sqrt()
        assert bool(((freq - chain[:K]).abs() <= 5 * se + 1e-12).all()), (t, freq, chain[:K])


def test_the_float32_training_bound_matches_float64_at_256_categories():
    """The loss's float32 posterior work against the float64 computation (the oracle of every other test here),
    at 256 categories where the tables are widest: each L_{t-1} within 1e-4 nats per example (64 dimensions) and
    its gradient within 1e-4 relative, at the decoder, small, middle and last steps of both kernels (measured:
    at most 3e-5 nats and 1.1e-5)."""
    from torch import nn

    from scorelab.discrete import CategoricalModel

    for kernel, schedule in (("uniform", "cosine"), ("absorbing", "linear")):
        process = MultinomialDiffusion(256, 1000, schedule, kernel)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(process.num_states, 16, 3, padding=1), nn.SiLU(),
                            nn.Conv2d(16, 256, 3, padding=1))
        model = CategoricalModel(_NoTime(net), process)
        x0 = torch.randint(0, 256, (8, 1, 8, 8), generator=_gen(1))
        for t in (1, 2, 20, 500, 1000):
            steps = torch.full((8,), t)
            x_t = process.sample_marginal(x0, steps, _gen(t))
            got = {}
            for dtype in (torch.float32, torch.float64):
                net.zero_grad()
                term = vlb_term(model, x0, steps, x_t, dtype=dtype)
                term.sum().backward()
                got[dtype] = term.detach().double(), torch.cat([p.grad.flatten() for p in net.parameters()]).double()
            (v32, g32), (v64, g64) = got[torch.float32], got[torch.float64]
            assert float((v32 - v64).abs().max()) < 1e-4, (kernel, t, v32, v64)
            assert g64.norm() == 0 or float((g32 - g64).norm() / g64.norm()) < 1e-4, (kernel, t)


class _NoTime(torch.nn.Module):
    """A network that ignores the step it is told (``net(x)`` as ``net(x, c)``)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, c):
        return 3 * self.net(x)


def _kernel_matrix(model, process, t: int, s: int) -> torch.Tensor:
    """p(x_s = a | x_t = b) over the S^D joint states, from the library's log_prob_reverse on every pair."""
    states = CategoricalOracle(np.full((K,) * D, 1 / K**D)).states(process.num_states)
    n = len(states)
    x_t, x_s = states.repeat_interleave(n, 0), states.repeat(n, 1)
    steps = torch.full((n * n,), t)
    return model.log_prob_reverse(x_s, x_t, steps, torch.full_like(steps, s)).exp().reshape(n, n).double()


def _generated(model, process, oracle, grid) -> torch.Tensor:
    """The distribution of x_0 the model's chain gives from the prior, by propagation."""
    p = torch.ones(1, dtype=torch.float64)
    for _ in range(D):
        p = torch.kron(p, process.log_pi.exp())
    for t, s in zip(grid[:-1], grid[1:]):
        p = p @ _kernel_matrix(model, process, t, s)
    return p


@pytest.mark.parametrize("kernel", ["uniform", "absorbing"])
def test_autoregressive_transitions_are_exact_at_every_T_and_factorized_ones_only_as_T_grows(oracle, kernel):
    """With alpha_bar_T = 0 the chain starts at q(x_T) exactly. The exact conditionals, multiplied by the
    library, give p_0 to rounding at T = 1, 2, 4, 8; the exact *factorized* kernel (the library's sum over
    x_0 with the exact p(x_0,i | x_t), equal to the joint kernel's marginals) is wrong, less so as T grows.
    Its total variation from p_0 (exact, no sampling), uniform: 0.550, 0.357, 0.180, 0.080; absorbing: 0.550,
    0.300, 0.157, 0.080."""
    tv = []
    for T in (1, 2, 4, 8):
        process = MultinomialDiffusion(K, T, schedule="linear", kernel=kernel)
        S = process.num_states
        exact, factorized = oracle.autoregressive_model(process), oracle.model(process)
        grid = list(range(T, -1, -1))
        if T == 4:    # the factorized kernel is the joint kernel's marginals, and the AR one the joint itself
            joint = oracle.reverse_kernel(process, 3, 2)
            torch.testing.assert_close(_kernel_matrix(exact, process, 3, 2), joint, rtol=0, atol=1e-10)
            per_dim = joint.reshape(-1, *(S,) * D)
            fact = _kernel_matrix(factorized, process, 3, 2).reshape(-1, *(S,) * D)
            for i in range(D):
                others = tuple(d + 1 for d in range(D) if d != i)
                torch.testing.assert_close(fact.sum(others), per_dim.sum(others), rtol=0, atol=1e-10)
        p0 = oracle.p0(S)
        assert float((_generated(exact, process, oracle, grid) - p0).abs().sum()) < 1e-9
        tv.append(0.5 * float((_generated(factorized, process, oracle, grid) - p0).abs().sum()))
    assert tv[-1] > 0.05 and all(a > 1.4 * b for a, b in zip(tv, tv[1:])), tv


def test_samplers_draw_the_propagated_distributions(oracle):
    """20,000 draws through the library's sampler: the autoregressive oracle matches p_0, the factorized
    one its own propagated distribution (and not p_0). Pearson chi^2 with 26 degrees of freedom has mean
    26 and sd 7.2; measured over three seeds 11.8-34.4 and 24.6-45.2, and 22,000-24,000 for the factorized
    samples against p_0."""
    process = MultinomialDiffusion(K, 4, schedule="linear", kernel="uniform")
    n = 20000
    p0 = oracle.p0(K)

    def chi2(states, p):
        counts = torch.bincount(oracle.index(states, K), minlength=K**D).double()
        return float(((counts - n * p) ** 2 / (n * p)).sum())

    ar = sl.samplers.sample(oracle.autoregressive_model(process), (n, D), "multinomial", noise=_gen(0))
    assert ar.nfe == 4 * D and chi2(ar.states, p0) < 60
    factorized = oracle.model(process)
    fs = sl.samplers.sample(factorized, (n, D), "multinomial", noise=_gen(1))
    assert fs.nfe == 4
    assert chi2(fs.states, _generated(factorized, process, oracle, [4, 3, 2, 1, 0])) < 60
    assert chi2(fs.states, p0) > 5000
    # The model range: category k as the grey level 2k / (K - 1) - 1.
    torch.testing.assert_close(fs.samples, fs.states.float() - 1)


def test_the_bound_with_the_exact_kernel_is_the_log_likelihood_plus_the_prior_term(oracle):
    """-ELBO(x_0) = -log p_0(x_0) + E_{q(x_T | x_0)} log(q(x_T) / pi(x_T)) when every reverse kernel is exact
    (MATH.md 10). Enumerated here with the library's posteriors, prior KL and the exact autoregressive
    kernel's log-probabilities; Hoogeboom's cosine schedule leaves a non-zero prior term."""
    process = MultinomialDiffusion(K, 3, schedule="cosine", kernel="uniform")
    model = oracle.autoregressive_model(process)
    states = oracle.states(K)
    n = len(states)
    for x0 in oracle.states(K)[[0, 5, 13, 26]]:
        x0b = x0[None].expand(n, D)
        neg_elbo = float(process.prior_kl(x0[None]))
        for t in range(1, 4):
            q_t = process.q_probs(x0[None], t)[0]                                 # (D, S) per dimension
            weight = q_t[torch.arange(D), states].prod(1)                         # q(x_t | x_0) per joint x_t
            if t == 1:
                terms = -model.log_prob_reverse(x0b, states, torch.full((n,), 1), torch.zeros(n, dtype=torch.long))
            else:
                post = process.posterior_probs(states, x0b, t)                    # (n, D, S): q(x_{t-1} | x_t, x_0)
                terms = torch.zeros(n, dtype=torch.float64)
                for x_s in states:
                    q_s = post[:, torch.arange(D), x_s].prod(1)
                    log_p = model.log_prob_reverse(x_s[None].expand(n, D), states, torch.full((n,), t),
                                                   torch.full((n,), t - 1))
                    terms += torch.where(q_s > 0, q_s * (q_s.clamp(min=1e-300).log() - log_p), 0.0)
            neg_elbo += float((weight * terms).sum())
        q_T = oracle.marginal(process, 3)
        q_T_given = process.q_probs(x0[None], 3)[0][torch.arange(D), states].prod(1)
        prior_term = float((q_T_given * (q_T.log() + D * math.log(K))).sum())
        expected = -float(oracle.log_likelihood(x0[None])) + prior_term
        assert abs(prior_term) > 1e-5 and abs(neg_elbo - expected) < 1e-9, (neg_elbo, expected)


def test_the_losses_estimate_the_enumerated_bound(oracle):
    """The one-step loss is unbiased for the whole bound, and an autoregressive model's sampled KL term for
    the closed-form one: means over 4,000 draws within 4 standard errors of the enumerated values."""
    process = MultinomialDiffusion(K, 3, schedule="cosine", kernel="uniform")
    factorized, ar = oracle.model(process), oracle.autoregressive_model(process)
    x0 = oracle.states(K)[[7]].expand(4000, D)
    # Sampled x_{t-1}: the autoregressive estimate at one fixed x_t, against the enumerated KL.
    x_t = process.sample_marginal(x0[:1], 3, _gen(6)).expand(4000, D)
    sampled = vlb_term(ar, x0, torch.full((4000,), 3), x_t, _gen(7))
    post = process.posterior_probs(x_t[:1], x0[:1], 3)[0]
    states = oracle.states(K)
    q_s = post[torch.arange(D), states].prod(1)
    log_p = ar.log_prob_reverse(states, x_t[:1].expand(len(states), D), torch.full((len(states),), 3))
    kl = float((torch.where(q_s > 0, q_s * (q_s.clamp(min=1e-300).log() - log_p), 0.0)).sum())
    assert abs(float(sampled.mean()) - kl) < 4 * float(sampled.std()) / math.sqrt(4000) + 1e-9
    # The one-step loss (t uniform, T L_t + prior) against the enumeration over t of bits_per_dim's terms.
    loss = multinomial_loss(factorized, x0, noise=_gen(8), reduction="sum").double()
    whole = torch.stack([bits_per_dim(factorized, x0[:500], _gen(9 + k)) for k in range(4)]).mean() * D * math.log(2)
    assert abs(float(loss.mean() - whole)) < 4 * float(loss.std()) / math.sqrt(4000) + 0.02
    # Hoogeboom et al.'s importance sampling: uniform until each t was seen 10 times, then p(t) ∝ sqrt(E[L_t^2])
    # from the running average 0.1 L_t^2 + 0.9 history, the decoder (t = 1) taking t = 2's weight.
    imp = StepImportance(3)
    for k in range(11):
        torch.testing.assert_close(imp.probabilities(), torch.tensor([0, 1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))
        imp.update(torch.tensor([1, 2, 3]), torch.tensor([9.0, 2.0, 4.0]))
    torch.testing.assert_close(imp.probabilities(), torch.tensor([0, 0.25, 0.25, 0.5], dtype=torch.float64),
                               rtol=0, atol=1e-4)
    t, p_t = imp.sample(4000, _gen(3))
    assert abs(float((t == 3).double().mean()) - 0.5) < 0.03 and bool((p_t == imp.probabilities()[t]).all())


class _RandomFactorized(sl.discrete.CategoricalModel):
    """Arbitrary fixed logits of p(x_0,i | x_t), looked up by the joint state of x_t."""

    def __init__(self, process, seed):
        super().__init__(torch.nn.Identity(), process)
        self.table = torch.randn(process.num_states ** D, D, K, generator=_gen(seed), dtype=torch.float64)

    def x0_logits(self, x_t, t, labels=None):
        return self.table[CategoricalOracle(np.full((K,) * D, 1 / K**D)).index(x_t, self.process.num_states)]


@pytest.mark.parametrize("kernel,schedule", [("uniform", "cosine"), ("absorbing", "linear")])
def test_a_factorized_models_bound_terms_equal_their_enumeration(kernel, schedule):
    """vlb_term at every t and x_t against KL(q(x_{t-1} | x_t, x_0) || sum_{x_0} q(. | x_t, x_0) p(x_0 | x_t)) and
    the decoder -log p(x_0 | x_1), both built here from one-step matrices and Bayes' rule, per dimension."""
    process = MultinomialDiffusion(K, 3, schedule=schedule, kernel=kernel)
    model = _RandomFactorized(process, 4)
    Q, S = _step_matrices(process), process.num_states
    marg = [torch.eye(S, dtype=torch.float64)]
    for t in range(1, 4):
        marg.append(marg[-1] @ Q[t])

    def posterior(b, a, t):                         # q(x_{t-1} | x_t = b, x_0 = a) for one dimension
        return marg[t - 1][a] * Q[t][:, b] / marg[t][a, b]

    x0 = torch.tensor([[0, 2, 1], [1, 1, 0]])
    for t in range(1, 4):
        x_t = process.sample_marginal(x0, t, _gen(t))
        got = vlb_term(model, x0, torch.full((2,), t), x_t)
        for n in range(2):
            p_x0 = torch.softmax(model.table[CategoricalOracle(np.full((K,) * D, 1 / K**D)).index(x_t[n:n + 1], S)][0],
                                 -1)
            total = 0.0
            for i in range(D):
                a, b = int(x0[n, i]), int(x_t[n, i])
                reach = [k for k in range(K) if marg[t][k, b] > 0]       # x_0 values that can give x_t
                w = p_x0[i, reach] / p_x0[i, reach].sum()
                if t == 1:
                    total -= math.log(w[reach.index(a)])
                    continue
                kernel_p = sum(w[j] * posterior(b, k, t) for j, k in enumerate(reach))
                q = posterior(b, a, t)
                total += float(torch.where(q > 0, q * (q.clamp(min=1e-300).log() - kernel_p.log()), 0.0).sum())
            assert abs(float(got[n]) - total) < 1e-9, (t, n, float(got[n]), total)


def test_bad_categorical_input_is_refused_with_one_clear_line():
    process = MultinomialDiffusion(4, 10, kernel="absorbing")
    cases = [
        (lambda: process.q_probs(torch.tensor([[0.5, 1.0]]), 3), "fractional"),
        (lambda: process.q_probs(torch.tensor([[0, 7]]), 3), "0..3"),
        (lambda: process.q_probs(torch.tensor([[0, -1]]), 3), "0..3"),
        (lambda: process.q_probs(torch.tensor([[0, 4]]), 3), "[MASK]"),
        (lambda: MultinomialDiffusion(1), "num_categories"),
        (lambda: MultinomialDiffusion(3, kernel="gaussian"), "kernel"),
        (lambda: process.posterior_probs(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 3, 5), "below t"),
        (lambda: process.posterior_probs(torch.tensor([[2]]), torch.tensor([[1]]), 3), "cannot be reached"),
        (lambda: process.q_probs(torch.tensor([[0.0, float("inf")]]), 3), "NaN or Inf"),
        (lambda: process.step_probs(torch.tensor([[0, 5]]), 3), "0..4"),
        (lambda: sl.samplers.sample(CategoricalOracle(np.full((4, 4), 1 / 16)).model(process), torch.tensor([[0.5, 1]]),
                                    "multinomial"), "integer states"),
        (lambda: sl.samplers.sample(sl.GaussianMixture([1.0], [[0.0]], [1.0]).model(sl.VPSDE()), (4, 1),
                                    "multinomial"), "needs a categorical process"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert words in message and "\n" not in message, message


TINY_UNET = ["--network-option", "base_channels=16", "--network-option", "norm_groups=8",
             "--network-option", "num_res_blocks=1", "--network-option", "attention_resolutions=[]"]


def test_the_command_line_trains_samples_and_scores_a_multinomial_model(tmp_path, capsys):
    """`train --framework multinomial` on the digits' 17 grey levels, then `sample` and `nll`. Measured: 150
    steps of a tiny U-Net at T = 20 reach 2.64 held-out bits/dim (64 test digits, standard error 0.05), against
    log2(17) = 4.09 for uniform pixels and 17 for the untrained network."""
    from scorelab.cli import main

    out = tmp_path / "run"
    assert main(["train", "--framework", "multinomial", "--data", "digits", "--out", str(out), "--steps", "150",
                 "--batch-size", "64", "--lr", "5e-3", "--warmup", "0", "--ema-decay", "0.9", "--process-option",
                 "num_steps=20", "--sample-every", "150", "--checkpoint-every", "150", "--num-preview", "4",
                 *TINY_UNET]) == 0
    model, spec, _ = sl.load_model(out)
    assert model.process == MultinomialDiffusion(17, 20) and spec.parameterization == "categorical"
    assert main(["sample", str(out), "--num", "8", "--steps", "5", "--out", str(tmp_path / "s.png")]) == 0
    arrays = np.load(tmp_path / "s.npz")
    levels = arrays["x"].astype(int) * 16 / 255                        # written as the digits are stored
    assert arrays["x"].shape == (8, 1, 8, 8) and np.abs(levels - levels.round()).max() < 0.05
    capsys.readouterr()
    assert main(["nll", str(out), "--num", "64"]) == 0
    bpd = float(capsys.readouterr().out.split(":")[1].split()[0])
    assert bpd < math.log2(17) - 1.0, bpd


def test_autoregressive_training_resumes_exactly(tmp_path):
    """The autoregressive variant through the trainer: 6 steps in one go equal 3 + 3 resumed, bit for bit,
    the importance sampler's history of L_t included (it takes over once each t was seen 10 times)."""
    from scorelab.training import TrainConfig, train

    d = sl.data.load_digits("train")
    data = sl.data.ImageSet(d.images[:16], d.labels[:16], d.classes)
    kw = dict(framework="multinomial", transitions="autoregressive", categories=2, batch_size=16, lr=1e-3, warmup=0,
              ema_decay=0.5, network_options={"width": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1},
              process_options={"num_steps": 3}, sample_every=10**6, checkpoint_every=3, num_preview=2, log_every=1)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), steps=6, **kw), data=data, progress=False)
    train(TrainConfig(out=str(tmp_path / "split"), steps=3, **kw), data=data, progress=False)
    split = train(TrainConfig(out=str(tmp_path / "split"), steps=6, **kw), data=data, resume=True, progress=False)
    assert isinstance(whole.model, sl.discrete.AutoregressiveModel) and whole.model.process.num_categories == 2
    a, b = sl.load_model(tmp_path / "whole")[2], sl.load_model(tmp_path / "split")[2]
    for key, value in a.model.items():
        assert torch.equal(value, b.model[key]), key
    assert split.losses == whole.losses[3:]
    count = a.tensors["objective_state.count"]
    assert int(count.sum()) == 6 * 16 and bool((count[1:] > 10).all())         # importance sampling took over


def test_bad_multinomial_configurations_are_refused_with_one_line():
    from scorelab.training import TrainConfig

    cases = [
        (dict(framework="multinomial", loss="simple"), "--loss vlb or vlb-ce"),
        (dict(framework="ddpm", loss="vlb"), "--framework multinomial"),
        (dict(framework="ddpm", categories=4), "--framework multinomial"),
        (dict(framework="multinomial", categories=1), "2..256"),
        (dict(framework="multinomial", transitions="autoregressive", loss="vlb-ce"), "--loss vlb"),
        (dict(framework="multinomial", transitions="autoregressive", class_conditional=True), "class conditioning"),
    ]
    for kw, words in cases:
        with pytest.raises(ValueError) as info:
            TrainConfig(**kw)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    # The levels a run takes by default: the digits' own 17, and 32 (5 bits) for 8-bit images; recorded resolved.
    from scorelab.training.config import num_categories

    assert num_categories(TrainConfig(framework="multinomial")) == 17
    assert num_categories(TrainConfig(framework="masked", data="fashion-mnist:/data")) == 32


@pytest.mark.parametrize("encoder", ["unet", "transformer"])
def test_the_transition_transformer_is_causal_in_x_prev(encoder):
    """Logits at i change with x_{t-1,j} for j < i only (and with all of x_t), on a (2, 3, 3) image."""
    from scorelab.networks import ARTransformer, ARTransformerConfig

    torch.manual_seed(0)
    net = ARTransformer(ARTransformerConfig(num_tokens=18, num_states=5, width=32, heads=2, encoder=encoder,
                                            encoder_layers=1, image_shape=(2, 3, 3), unet_channels=8)).eval()
    g = _gen(0)
    x_t, prev, c = torch.randint(0, 5, (3, 18), generator=g), torch.randint(0, 5, (3, 18), generator=g), torch.ones(3)
    with torch.no_grad():
        out = net(prev, x_t, c)
        torch.testing.assert_close(net.decode(prev, *net.encode(x_t, c)), out)
        for i in range(18):
            changed = prev.clone()
            changed[:, i:] = (changed[:, i:] + 1 + torch.randint(0, 4, (3, 18 - i), generator=g)) % 5
            other = net(changed, x_t, c)
            torch.testing.assert_close(other[:, :i + 1], out[:, :i + 1])             # at or before i: unchanged
            assert i == 17 or (other[:, i + 1:] - out[:, i + 1:]).abs().max() > 1e-4  # after i: it reads them
        x_t2 = x_t.clone()
        x_t2[:, -1] = (x_t2[:, -1] + 1) % 5
        assert (net(prev, x_t2, c)[:, 0] - out[:, 0]).abs().max() > 1e-4          # all of x_t, even the last pixel
        # Incremental decoding (keys and values cached) gives torch's full decoding at every position.
        cache = net.start_decoding(*net.encode(x_t, c))
        steps = [net.decode_next(prev[:, i - 1] if i else prev[:, 0], i, cache) for i in range(18)]
        torch.testing.assert_close(torch.stack(steps, 1), out, atol=1e-5, rtol=1e-5)
        # Through the model's sampler: the cached path draws what re-running the decoder draws (train mode, no
        # dropout, takes that path), with the same generator, per-example steps included.
        steps = torch.tensor([2, 3, 4])
        for process in (sl.discrete.MultinomialDiffusion(5, num_steps=4),
                        sl.discrete.MultinomialDiffusion(4, num_steps=4, kernel="absorbing")):   # 5 states each
            model = sl.discrete.AutoregressiveModel(net.eval(), process)
            cached = model.sample_reverse(x_t.reshape(3, 2, 3, 3), steps, generator=_gen(7))
            net.train()
            torch.testing.assert_close(model.sample_reverse(x_t.reshape(3, 2, 3, 3), steps, generator=_gen(7)), cached)


@pytest.mark.parametrize("kind", ["multinomial", "masked"])
def test_classifier_free_guidance_of_a_categorical_model_draws_the_guided_posterior(kind):
    """A class-conditional factorized model under :class:`ClassifierFreeGuidance`: its prediction is Ho &
    Salimans' eq. 6 in log space, ``p(x_0 | x_t, y)^(1+w) p(x_0 | x_t)^(-w)`` renormalized, computed here from
    the network's raw logits; in one step the sampler's x_0 is a draw from exactly that row (multinomial
    diffusion at T = 1, masked diffusion from all [MASK] to t = 0)."""
    from torch import nn

    from scorelab.discrete import (CategoricalModel, MaskedDiffusion, MaskedModel, masked_ancestral,
                                   multinomial_ancestral)
    from scorelab.models import ClassifierFreeGuidance

    states = K + (kind == "masked")

    class Net(nn.Module):                   # logits: a row per label plus a fixed random mixing of the input
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(3, 2 * K, generator=_gen(1)))      # rows: no label, 0, 1
            self.mix = nn.Parameter(0.3 * torch.randn(2 * states, 2 * K, generator=_gen(3)))

        def forward(self, inp, c, labels=None):
            labels = torch.full((inp.shape[0],), -1) if labels is None else labels
            return self.table[labels + 1] + inp @ self.mix

    if kind == "masked":
        model = MaskedModel(Net(), MaskedDiffusion(K), num_classes=2, data_shape=(2 * states,))
        sampler = masked_ancestral
    else:
        model = CategoricalModel(Net(), MultinomialDiffusion(K, 1), num_classes=2, data_shape=(2 * K,))
        sampler = multinomial_ancestral
    w, n = 2.0, 40000
    labels = torch.tensor([1] * n)
    guided = ClassifierFreeGuidance(model, labels, w)
    x_1 = torch.full((n, 2), states - 1 if kind == "masked" else 0, dtype=torch.long)       # all [MASK], or any x_1
    with torch.no_grad():
        inp = torch.nn.functional.one_hot(x_1[:1], states).float().flatten(1) * 2 - 1     # one-hot in {-1, 1}
        raw = model.net(inp, None, torch.tensor([1])), model.net(inp, None, None)
        cond, uncond = (torch.log_softmax(r.double().reshape(2, K), -1) for r in raw)
        want = torch.softmax((1 + w) * cond - w * uncond, -1)
        torch.testing.assert_close(guided.predict(x_1, 1).log_x0[0].exp(), want)
        result = sampler(guided, x_1, steps=1, noise=_gen(2))
    counts = torch.stack([torch.bincount(result.states[:, d], minlength=K) for d in range(2)]).double() / n
    assert (counts - want).abs().max() < 4 * (0.25 / n) ** 0.5, (counts, want)     # 4 standard errors at most
    assert (want - torch.softmax(cond, -1)).abs().max() > 0.05                      # guidance changed the row
