"""Bits/dim of 8-bit images by DDPM's variational bound (MATH.md 2): an ELBO, as a VAE's."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import flat_dim, is_int, require
from ..data import to_model_range
from ..models import DiffusionModel, device_and_dtype
from ..objectives.vlb import VLB, ddpm_of, prior_kl, vlb, vlb_term

__all__ = ["vlb_bits_per_dim", "vlb_bits_per_dim_sampled"]


def vlb_bits_per_dim(model: DiffusionModel, images: Tensor, **kwargs) -> VLB:
    """DDPM's L_vlb of 8-bit ``images`` (integers 0..255): bits/dim with no offset (MATH.md 2, 4)."""
    return vlb(model, to_model_range(images).to(device_and_dtype(model)[1]), **kwargs)


@torch.no_grad()
def vlb_bits_per_dim_sampled(model: DiffusionModel, images: Tensor, num_terms: int, *,
                             generator: torch.Generator | None = None, variance: str | None = None
                             ) -> tuple[Tensor, Tensor]:
    """DDPM's L_vlb of 8-bit ``images`` in bits/dim, its T - 1 middle terms estimated (MATH.md 2).

    ``L = L_T + L_0 + sum_{t=2..T} L_{t-1} = L_T + L_0 + (T - 1) E_{t ~ U{2..T}}[L_{t-1}]``;
    the expectation is averaged over ``num_terms`` uniformly drawn steps per
    image (an unbiased estimate, as Nichol & Dhariwal estimate L_vlb), so
    held-out bits/dim cost ``num_terms + 1`` network calls instead of T.
    Returns (bits/dim per image, standard error per image from the drawn steps).
    """
    require(is_int(num_terms) and num_terms >= 2, f"num_terms must be an integer >= 2, got {num_terms!r}")
    device, dtype = device_and_dtype(model)
    x0 = to_model_range(images.cpu()).to(device=device, dtype=dtype)
    process = ddpm_of(model)
    T, d = process.num_steps, flat_dim(x0)
    ends = (prior_kl(process, x0) + vlb_term(model, x0, 1, variance=variance, generator=generator)).double()
    middle = torch.empty(num_terms, x0.shape[0], dtype=torch.float64, device=x0.device)
    for k in range(num_terms):
        steps = torch.randint(2, T + 1, (x0.shape[0],), generator=generator,
                              device=generator.device if generator is not None else x0.device).to(x0.device)
        middle[k] = vlb_term(model, x0, steps, variance=variance, generator=generator).double()
    nats_to_bpd = 1.0 / (d * math.log(2))
    bpd = (ends + (T - 1) * middle.mean(0)) * nats_to_bpd
    stderr = (T - 1) * middle.std(0) / math.sqrt(num_terms) * nats_to_bpd
    return bpd, stderr
