"""Likelihoods and latents: the survey's links to VAEs and flows made usable (MATH.md 2 and 4).

* :mod:`~scorelab.likelihood.ode`: the exact log-density of the probability-flow ODE (a continuous
  normalizing flow) and bits/dim of 8-bit images through dequantization;
* :mod:`~scorelab.likelihood.vlb`: DDPM's variational bound on the same images (an ELBO, like a VAE's);
* :mod:`~scorelab.likelihood.latents`: data <-> latent through the ODE or DDIM, and ``slerp``.
"""

from .latents import decode, encode, slerp
from .ode import ODELikelihood, dequantize, dequantized_bits_per_dim, ode_bits_per_dim, ode_log_likelihood
from .vlb import vlb_bits_per_dim, vlb_bits_per_dim_sampled

__all__ = ["ODELikelihood", "ode_log_likelihood", "dequantize", "dequantized_bits_per_dim", "ode_bits_per_dim",
           "vlb_bits_per_dim", "vlb_bits_per_dim_sampled", "encode", "decode", "slerp"]
