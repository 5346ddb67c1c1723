"""Exact ground truth: Gaussian mixtures through every process (MATH.md section 6).

For data ``sum_k w_k N(m_k, C_k)`` the marginal of ``x_t = a x0 + s eps`` is
again a mixture, ``sum_k w_k N(a m_k, a^2 C_k + s^2 I)``, so its log-density,
score and denoiser ``E[x0 | x_t]`` are known in closed form at every time of
every process. :meth:`GaussianMixture.model` packages them as a model with
the same interface as a trained one, so every sampler and likelihood can be
checked against the truth without training anything.

Each covariance is kept as its eigendecomposition ``C_k = U_k diag(lam_k) U_k^T``
(``U_k`` omitted for diagonal and isotropic forms), which makes
``a^2 C_k + s^2 I = U_k diag(a^2 lam_k + s^2) U_k^T`` cheap at any ``(a, s)``.
All arithmetic is float64.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ._util import TimeLike, as_time, expand_as, require
from .models import ModelBase, Prediction
from .noise import normal
from .processes import NoiseProcess

__all__ = ["ExactClassModel", "ExactClassifier", "ExactEnergyModel", "GaussianMixture", "ExactModel"]


class GaussianMixture:
    """``sum_k w_k N(m_k, C_k)`` in any dimension D (MATH.md 6).

    Args:
        weights: ``(K,)``, non-negative, summing to 1.
        means: ``(K, D)``.
        covariances: full ``(K, D, D)`` symmetric positive definite, diagonal
            ``(K, D)`` variances, or isotropic ``(K,)`` variances.
        singular: allow positive semi-definite covariances (eigenvalues 0), as a posterior
            given exact observations has along what it observes (:meth:`condition`). Such a
            mixture samples and has marginals at every noise level ``s > 0``, but no density at ``s = 0``.
    """

    def __init__(self, weights: Sequence[float] | Tensor, means: Sequence | Tensor,
                 covariances: Sequence | Tensor, *, singular: bool = False):
        w = torch.as_tensor(weights, dtype=torch.float64)
        m = torch.as_tensor(means, dtype=torch.float64)
        c = torch.as_tensor(covariances, dtype=torch.float64)
        require(w.ndim == 1 and w.numel() >= 1, f"weights must be a 1-D sequence, got shape {tuple(w.shape)}")
        k = w.numel()
        require(bool(torch.isfinite(w).all()) and bool((w >= 0).all()),
                "weights must be finite and non-negative")
        require(abs(float(w.sum()) - 1.0) <= 1e-6,
                f"weights sum to {float(w.sum()):.6g}; they must sum to 1 (divide them by their sum)")
        require(m.ndim == 2 and m.shape[0] == k,
                f"means must have shape (K, D) = ({k}, D) to match {k} weights, got {tuple(m.shape)}")
        require(bool(torch.isfinite(m).all()), "means must be finite")
        d = m.shape[1]
        self.weights, self.means = w, m
        self.eigvecs: Tensor | None = None
        if c.shape == (k, d, d):
            require(torch.allclose(c, c.transpose(1, 2), rtol=1e-8, atol=1e-10),
                    "full covariances must be symmetric")
            lam, u = torch.linalg.eigh(c)
            self.eigvals, self.eigvecs = lam, u
        elif c.shape == (k, d):
            self.eigvals = c.clone()
        elif c.shape == (k,):
            self.eigvals = c[:, None].expand(k, d).clone()
        else:
            raise ValueError(f"covariances must have shape ({k}, {d}, {d}) (full), ({k}, {d}) "
                             f"(diagonal) or ({k},) (isotropic), got {tuple(c.shape)}")
        if singular:                                  # round-off below zero is zero
            floor = -1e-9 * max(float(self.eigvals.abs().max()), 1.0)
            require(bool((self.eigvals >= floor).all()), "covariances must be positive semi-definite; "
                    f"smallest eigenvalue is {float(self.eigvals.min()):.3g}")
            self.eigvals = self.eigvals.clamp(min=0.0)
        require(bool(torch.isfinite(self.eigvals).all()) and (singular or bool((self.eigvals > 0).all())),
                "covariances must be positive definite (every eigenvalue > 0); "
                f"smallest eigenvalue is {float(self.eigvals.min()):.3g}")
        self._log_w = torch.log(w)
        # The per-component pieces laid out flat, component k at columns k D ... (k + 1) D - 1: the rotation of x
        # into every component's eigenbasis is one product with [U_1 ... U_K] (D, K D), and a sum over each
        # component's columns one product with the block indicator (K, K D). Sums and softmaxes over short axes
        # of a (N, K, D) tensor are several times slower than these products on the CPU.
        self._eigvals_flat = self.eigvals.reshape(-1)
        self._blocks = torch.repeat_interleave(torch.eye(k, dtype=torch.float64), d, dim=1)
        if self.eigvecs is not None:
            self._basis = self.eigvecs.permute(1, 0, 2).reshape(d, k * d)
            self.eigvecs = self._basis.reshape(d, k, d).permute(1, 0, 2)     # a view of it, not a copy
            self._rotated_means = torch.einsum("kde,kd->ke", self.eigvecs, m).reshape(-1)    # U_k^T m_k, flat

    @property
    def dim(self) -> int:
        """Dimension D of one point."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.weights.numel()

    def covariances(self) -> Tensor:
        """The full ``(K, D, D)`` covariance matrices."""
        lam = torch.diag_embed(self.eigvals)
        if self.eigvecs is None:
            return lam
        return self.eigvecs @ lam @ self.eigvecs.transpose(1, 2)

    def mean(self) -> Tensor:
        """The mixture's mean ``sum_k w_k m_k``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """The mixture's covariance (law of total covariance)."""
        mu = self.mean()
        dm = self.means - mu
        return torch.einsum("k,kij->ij", self.weights, self.covariances()) + \
            torch.einsum("k,ki,kj->ij", self.weights, dm, dm)

    # ---- sampling ---------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, return_labels: bool = False
               ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` points, shape ``(n, D)`` (with their component labels when asked)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = normal((n, self.dim), generator, dtype=torch.float64) * self.eigvals[labels].sqrt()
        if self.eigvecs is not None:
            z = torch.einsum("nij,nj->ni", self.eigvecs[labels], z)
        x = (self.means[labels] + z).to(dtype)
        return (x, labels) if return_labels else x

    # ---- closed forms at any (a, s) ---------------------------------------------------
    def _flatten(self, x: Tensor) -> Tensor:
        xf = x.reshape(x.shape[0], -1)
        require(xf.shape[1] == self.dim,
                f"points have {xf.shape[1]} dimensions but the mixture has {self.dim}")
        return xf.to(torch.float64)

    def _components(self, xf: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated residuals ``z = U_k^T (x - a m_k)`` and variances ``a^2 lam + s^2``, flat ``(N, K D)``
        (``(1, K D)`` variances when one time serves the batch, as in a sampler's step), and the log of
        ``w_k N(x; a m_k, a^2 C_k + s^2 I)`` as ``(K, N)``."""
        if len(a) > 1 and bool((a == a[0]).all() & (s == s[0]).all()):
            a, s = a[:1], s[:1]
        a2, s2 = a[:, None], s[:, None]
        var = a2**2 * self._eigvals_flat[None] + s2**2
        if self.eigvecs is None:
            z = (xf[:, None, :] - a[:, None, None] * self.means[None]).reshape(len(xf), -1)
        else:                            # U_k^T x - a U_k^T m_k for every k in one product
            z = xf @ self._basis - a2 * self._rotated_means[None]
        quad = self._blocks @ (z * z / var).T
        log_det = self._blocks @ torch.log(2 * math.pi * var).T
        return z, var, self._log_w[:, None] - 0.5 * (quad + log_det)

    def _combine(self, r: Tensor, v: Tensor) -> Tensor:
        """``sum_k r_k U_k v_k`` for weights ``r`` ``(K, N)`` and flat per-component vectors ``v`` ``(N, K D)``."""
        v = v * (r.T @ self._blocks)
        if self.eigvecs is None:
            return v.reshape(len(v), self.num_components, self.dim).sum(1)
        return v @ self._basis.T

    def component_log_probs_at(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """``log w_k N(x; a m_k, a^2 C_k + s^2 I)`` of each component k, ``(N, K)`` (``a``, ``s`` of shape (N,);
        MATH.md 6)."""
        gm = self._moved(x.device)
        return gm._components(gm._flatten(x), a.double(), s.double())[2].T

    def _coefs(self, x: Tensor, t: TimeLike, process: NoiseProcess) -> tuple[Tensor, Tensor]:
        t = as_time(t, x).to(x.device)
        return process.signal_scale(t), process.noise_std(t)

    def _moved(self, device: torch.device) -> "GaussianMixture":
        if self.means.device == device:
            return self
        clone = object.__new__(GaussianMixture)
        clone.__dict__ = {k: (v.to(device) if isinstance(v, Tensor) else v)
                          for k, v in self.__dict__.items()}
        return clone

    def log_prob_at(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """Per-example log-density of ``a x0 + s eps`` at ``x`` (``a``, ``s`` of shape (N,))."""
        gm = self._moved(x.device)
        _, _, logp = gm._components(gm._flatten(x), a.double(), s.double())
        return torch.logsumexp(logp, dim=0)

    def score_at(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """``grad_x log p(x)`` of ``a x0 + s eps``: the posterior-weighted component scores."""
        gm = self._moved(x.device)
        z, var, logp = gm._components(gm._flatten(x), a.double(), s.double())
        score = gm._combine(torch.softmax(logp, dim=0), -z / var)
        return score.reshape(x.shape).to(x.dtype)

    def denoise_at(self, x: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """``E[x0 | a x0 + s eps = x]``: per component ``m + a C (a^2 C + s^2 I)^{-1} (x - a m)``."""
        gm = self._moved(x.device)
        z, var, logp = gm._components(gm._flatten(x), a.double(), s.double())
        r = torch.softmax(logp, dim=0)
        x0 = r.T @ gm.means + gm._combine(r, a[:, None].double() * gm._eigvals_flat[None] / var * z)
        return x0.reshape(x.shape).to(x.dtype)

    # ---- the data distribution and its marginals under a process -----------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """Per-example log-density of the mixture itself, in nats."""
        require(bool((self.eigvals > 0).all()), "this mixture is singular (a posterior given exact observations) "
                "and has no density at s = 0; evaluate log_prob_at(x, a, s) with s > 0, or sample it")
        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self.log_prob_at(x, one, torch.zeros_like(one))

    def marginal_log_prob(self, x: Tensor, t: TimeLike, process: NoiseProcess) -> Tensor:
        """Exact ``log p_t(x)`` under ``process`` (MATH.md 6)."""
        return self.log_prob_at(x, *self._coefs(x, t, process))

    def marginal_score(self, x: Tensor, t: TimeLike, process: NoiseProcess) -> Tensor:
        """Exact ``grad_x log p_t(x)`` under ``process`` (MATH.md 6)."""
        return self.score_at(x, *self._coefs(x, t, process))

    def denoise(self, x: Tensor, t: TimeLike, process: NoiseProcess) -> Tensor:
        """Exact ``E[x0 | x_t = x]`` under ``process`` (MATH.md 6)."""
        return self.denoise_at(x, *self._coefs(x, t, process))

    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone, as a one-component mixture."""
        require(0 <= k < len(self.weights), f"component {k} out of range 0..{len(self.weights) - 1}")
        lam = self.eigvals[k]
        cov = lam if self.eigvecs is None else (self.eigvecs[k] * lam) @ self.eigvecs[k].T
        return GaussianMixture([1.0], self.means[k:k + 1], cov[None])

    def condition(self, operator, y: Tensor, noise_std: float = 0.0) -> "GaussianMixture":
        """The exact posterior ``p(x0 | y)`` for ``y = A x0 + n``, ``n ~ N(0, noise_std^2 I)`` (MATH.md 8).

        ``operator``: a :class:`scorelab.conditional.LinearOperator` or a dense ``(M, D)`` matrix;
        ``y``: one observation shaped like ``A x`` for one example (``(M,)`` for a mask or a matrix). The posterior is
        again a mixture: component k keeps its place with weight ``w_k N(y; A m_k, S_k)``,
        ``S_k = A C_k A^T + noise_std^2 I``, and takes the Kalman update
        ``m_k + K_k (y - A m_k)``, ``C_k - K_k A C_k``, ``K_k = C_k A^T S_k^{-1}``. With
        ``noise_std = 0`` the covariances are singular along the observed directions.
        Its :meth:`model` is the exact posterior at every noise level of any process.
        """
        from .conditional.operators import LinearOperator, MatrixOperator
        op = operator if isinstance(operator, LinearOperator) else MatrixOperator(operator)
        x_shape = op.x_shape(torch.as_tensor(y).shape) if not isinstance(op, MatrixOperator) else (self.dim,)
        require(math.prod(x_shape) == self.dim, f"the operator takes examples of {math.prod(x_shape)} values "
                f"but the mixture has dimension {self.dim}")
        a = op.matrix(x_shape)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        require(y.numel() == a.shape[0], f"the observation has {y.numel()} values but the operator gives "
                f"{a.shape[0]} for inputs of shape {tuple(x_shape)}")
        require(noise_std >= 0 and math.isfinite(noise_std), f"noise_std must be >= 0, got {noise_std}")
        cov = self.covariances()
        ac = torch.einsum("md,kde->kme", a, cov)                        # A C_k, (K, M, D)
        s = ac @ a.T + noise_std**2 * torch.eye(len(a), dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(s)
        require(bool((info == 0).all()), "A C A^T + noise_std^2 I is singular: the operator's rows are "
                "linearly dependent, or they observe directions the mixture already fixes (a posterior given "
                "exact observations); drop those rows or give noise_std > 0")
        resid = y[None] - self.means @ a.T                              # (K, M)
        sol = torch.cholesky_solve(resid[..., None], chol)[..., 0]      # S_k^{-1} (y - A m_k)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)
        log_lik = -0.5 * ((resid * sol).sum(-1) + log_det + len(a) * math.log(2 * math.pi))
        weights = torch.softmax(self._log_w + log_lik, dim=0)
        means = self.means + torch.einsum("kmd,km->kd", ac, sol)
        covs = cov - ac.transpose(1, 2) @ torch.cholesky_solve(ac, chol)
        covs = 0.5 * (covs + covs.transpose(1, 2))
        keep = weights > 0                                              # components y rules out entirely
        return GaussianMixture(weights[keep] / weights[keep].sum(), means[keep], covs[keep], singular=True)

    def _pairs(self, other: "GaussianMixture") -> tuple[Tensor, Tensor, Tensor]:
        """Components ``(i, j)`` of ``p(x) q(x)``: log weights ``log w_i v_j N(m_i; m_j, C_i + C_j)`` (unnormalized),
        means and covariances (MATH.md 9)."""
        require(other.dim == self.dim, f"the mixtures differ in dimension: {self.dim} vs {other.dim}")
        ci, cj = self.covariances(), other.covariances()
        pi, pj = torch.linalg.inv(ci), torch.linalg.inv(cj)
        weights, means, covs = [], [], []
        for i in range(self.num_components):
            for j in range(other.num_components):
                cov = torch.linalg.inv(pi[i] + pj[j])
                cov = 0.5 * (cov + cov.T)
                means.append(cov @ (pi[i] @ self.means[i] + pj[j] @ other.means[j]))
                covs.append(cov)
                both = GaussianMixture([1.0], self.means[i:i + 1], (ci[i] + cj[j])[None])
                weights.append(self._log_w[i] + other._log_w[j] + both.log_prob(other.means[j:j + 1])[0])
        return torch.stack(weights), torch.stack(means), torch.stack(covs)

    def product(self, other: "GaussianMixture") -> "GaussianMixture":
        """The normalized product ``p(x) q(x) / Z`` of two mixtures, again a mixture (MATH.md 9): components
        ``(i, j)`` with weights ``w_i v_j N(m_i; m_j, C_i + C_j)`` (normalized), covariances
        ``(C_i^-1 + C_j^-1)^-1`` and means ``C_ij (C_i^-1 m_i + C_j^-1 m_j)``."""
        log_w, means, covs = self._pairs(other)
        return GaussianMixture(torch.softmax(log_w, 0), means, covs)

    def log_overlap(self, other: "GaussianMixture") -> float:
        """``log Z = log ∫ p(x) q(x) dx = log sum_ij w_i v_j N(m_i; m_j, C_i + C_j)``: the log normalizing constant
        of the product (MATH.md 9)."""
        return float(torch.logsumexp(self._pairs(other)[0], 0))

    def diffused(self, t: TimeLike, process: NoiseProcess) -> "GaussianMixture":
        """The marginal ``p_t`` of ``x_t = a(t) x0 + s(t) eps`` under an affine ``process``: weights kept, means
        ``a m_k``, covariances ``a^2 C_k + s^2 I`` (MATH.md 6)."""
        a, s = (float(v) for v in process.coefficients(as_time(t)))
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        return GaussianMixture(self.weights, a * self.means, a * a * self.covariances() + s * s * eye)

    def energy_model(self, process: NoiseProcess) -> "ExactEnergyModel":
        """The exact model with its energy ``U = -log p_t(x)`` (MATH.md 9): for Metropolis corrections and
        composition."""
        return ExactEnergyModel(self, process)

    def classifier(self, process: NoiseProcess) -> "ExactClassifier":
        """The exact noise-conditional classifier ``log p(k | x_t)`` under ``process`` (class k = component k)."""
        return ExactClassifier(self, process)

    def class_model(self, process: NoiseProcess) -> "ExactClassModel":
        """The optimal class-conditional model when class k is component k (MATH.md 6)."""
        return ExactClassModel(self, process)

    def model(self, process: NoiseProcess) -> "ExactModel":
        """The exact model of this mixture under ``process``: same interface as a trained one."""
        return ExactModel(self, process)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"


class ExactModel(ModelBase):
    """The optimal model of a :class:`GaussianMixture` under a process (MATH.md 6).

    ``predict`` returns ``eps = -s(t) * score``, with the exact score; it takes
    points ``(N, D)`` or any shape whose trailing dimensions multiply to D.
    """

    def __init__(self, mixture: GaussianMixture, process: NoiseProcess):
        self.mixture = mixture
        self.process = process

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        require(labels is None, "the exact model of a mixture is unconditional; use GaussianMixture.class_model")
        t = as_time(t, x)
        a, s = self.process.coefficients(t)
        score = self.mixture.score_at(x, a, s)
        eps = -expand_as(s, x) * score
        return Prediction(x, t, a, s, eps=eps)

    def log_prob(self, x: Tensor, t: TimeLike) -> Tensor:
        """Exact ``log p_t(x)``."""
        return self.mixture.marginal_log_prob(x, t, self.process)


class ExactEnergyModel(ExactModel):
    """:class:`ExactModel` with ``energy(x, t) = -log p_t(x)``, the exact (normalized) energy."""

    @property
    def has_energy(self) -> bool:
        return True

    @property
    def normalized_energy(self) -> bool:
        return True

    def energy(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Tensor:
        require(labels is None, "the exact model of a mixture is unconditional")
        return -self.mixture.marginal_log_prob(x, t, self.process).to(x.dtype)

    def energy_and_score(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        require(labels is None, "the exact model of a mixture is unconditional")
        t = as_time(t, x)
        a, s = self.process.coefficients(t)
        return -self.mixture.log_prob_at(x, a, s).to(x.dtype), self.mixture.score_at(x, a, s)


class ExactClassifier:
    """``log p(k | x_t)`` of a :class:`GaussianMixture` under a process: the noise-conditional classifier
    that classifier guidance assumes (MATH.md 8), called as ``classifier(x, t) -> (N, K)`` log-probabilities."""

    def __init__(self, mixture: GaussianMixture, process: NoiseProcess):
        self.mixture, self.process = mixture, process
        self.num_classes = mixture.num_components

    def __call__(self, x: Tensor, t: TimeLike) -> Tensor:
        a, s = self.process.coefficients(as_time(t, x).to(x.device))
        return torch.log_softmax(self.mixture.component_log_probs_at(x, a, s), dim=1)


class ExactClassModel(ModelBase):
    """Exact class-conditional answers: label k gives component k's score, label -1 (or none) the mixture's.

    Ground truth for class conditioning and classifier-free guidance: with
    labels ``y``, ``predict(x, t, y)`` is ``eps = -s(t) grad log p_t(x | y)``.
    """

    def __init__(self, mixture: GaussianMixture, process: NoiseProcess):
        self.mixture = mixture
        self.process = process
        self.components = [mixture.component(k) for k in range(len(mixture.weights))]

    @property
    def num_classes(self) -> int:
        return len(self.components)

    def predict(self, x: Tensor, t: TimeLike, labels: Tensor | None = None) -> Prediction:
        t = as_time(t, x)
        a, s = self.process.coefficients(t)
        score = self.mixture.score_at(x, a, s)
        if labels is not None:
            labels = labels.to(x.device)
            for k, comp in enumerate(self.components):
                rows = labels == k
                if bool(rows.any()):
                    score[rows] = comp.score_at(x[rows], a[rows], s[rows]).to(score.dtype)
        return Prediction(x, t, a, s, eps=-expand_as(s, x) * score)
