"""GAN losses as pure functions of discriminator outputs (logits or critic scores).

All take and return tensors; none touches a model except the two penalties, which
differentiate through the critic. Known values (tested):
``d_loss_bce(0, 0) = 2 ln 2``, ``g_loss_nonsaturating(0) = ln 2``, ``d_loss_hinge(0, 0) = 2``;
a linear critic ``f(x) = w.x`` has gradient ``w`` everywhere, so its penalty is ``(|w| - 1)^2``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def d_loss_bce(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Minimax discriminator loss: -log D(x) - log(1 - D(G(z))), from logits (stable form)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_nonsaturating(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, sec. 3)."""
    return F.softplus(-fake_logits).mean()


def g_loss_minimax(fake_logits: Tensor) -> Tensor:
    """The original saturating generator loss log(1 - D(G(z))); kept for reference and tests."""
    return -F.softplus(fake_logits).mean()


def d_loss_wasserstein(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Critic loss E[f(G(z))] - E[f(x)]: its negative estimates the Wasserstein-1 distance."""
    return fake_scores.mean() - real_scores.mean()


def g_loss_wasserstein(fake_scores: Tensor) -> Tensor:
    return -fake_scores.mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP penalty E[(||grad_x f(x_hat)||_2 - 1)^2] on random interpolates
    (Gulrajani et al. 2017).

    real, fake: (N, ...) same shape. ``critic`` maps (N, ...) -> (N,). Computed in fp32.
    """
    n = real.shape[0]
    eps = torch.rand((n,) + (1,) * (real.dim() - 1), device=real.device, generator=generator)
    x_hat = (eps * real.detach().float() + (1 - eps) * fake.detach().float()).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = critic(x_hat).float()
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)  # (N,)
    return ((norms - 1.0) ** 2).mean()


def r1_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 regulariser E[||grad_x D(x)||^2] on real data (Mescheder et al. 2018).

    Penalising the discriminator's gradient on the data keeps it from sharpening around
    the real samples, the instability behind oscillation and dropped modes. real: (N, ...).
    """
    x = real.detach().float().requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = discriminator(x).float()
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def d_loss_hinge(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Hinge discriminator loss E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]
    (Lim & Ye 2017; SNGAN)."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def g_loss_hinge(fake_scores: Tensor) -> Tensor:
    """Hinge generator loss -E[D(G(z))] (Miyato et al. 2018)."""
    return -fake_scores.mean()
