"""Quickstart: processes, the exact Gaussian-mixture oracle, losses and cross-process models."""

import torch
import scorelab as sl

# Exact ground truth: a 2-D Gaussian mixture, and its optimal model under the VP SDE.
mixture = sl.GaussianMixture(weights=[0.3, 0.7],
                             means=[[-2.0, 0.0], [2.0, 1.0]],
                             covariances=[0.25, 0.5])          # isotropic variances
process = sl.VPSDE()                                         # beta_min=0.1, beta_max=20
oracle = mixture.model(process)

x0 = mixture.sample(4096, generator=torch.Generator().manual_seed(0))
loss = sl.dsm_loss(oracle, x0, generator=torch.Generator().manual_seed(1))
print(f"DSM loss of the exact score (irreducible): {loss.mean():.3f}")

# One network, every view: a model answers eps, score, x0 and v at any (x, t).
pred = oracle.predict(x0[:2], 0.5)
print(pred.eps.shape, pred.score.shape, pred.x0.shape, pred.v.shape)

# DDPM is the VP SDE's discretization; NCSN is the VE SDE's.
ddpm, ncsn = sl.DDPM(), sl.NCSN()
print(ddpm.continuous(), ncsn.continuous(), ddpm.step_to_time(500), ncsn.level_to_time(1))

# A DDPM-trained model driven in VP-SDE time (noise levels matched, sigma = s/a):
vp_view = mixture.model(ddpm)  # stand-in for a trained DDPM network
adapted = sl.ProcessAdapter(vp_view, process)
print(torch.allclose(adapted.predict(x0[:8].double(), 0.3).eps,
                     oracle.predict(x0[:8].double(), 0.3).eps, atol=1e-6))
