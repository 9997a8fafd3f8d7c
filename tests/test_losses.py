from __future__ import annotations

import math

import pytest
import torch

from ganforge.models import losses

LN2 = math.log(2.0)


def test_bce_losses_at_zero_logits():
    z = torch.zeros(5)
    assert losses.d_loss_bce(z, z).item() == pytest.approx(2 * LN2)
    assert losses.g_loss_nonsaturating(z).item() == pytest.approx(LN2)
    assert losses.g_loss_minimax(z).item() == pytest.approx(-LN2)


def test_bce_matches_torch_reference_and_is_stable():
    real, fake = torch.tensor([3.0, -2.0, 0.5]), torch.tensor([-1.0, 4.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(real, torch.ones(3)) + bce(fake, torch.zeros(3))
    assert losses.d_loss_bce(real, fake).item() == pytest.approx(expected.item())
    # a confident, correct discriminator: loss ~0, finite even for huge logits
    big = torch.tensor([1e4])
    assert losses.d_loss_bce(big, -big).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(losses.g_loss_nonsaturating(-big).item())
    assert losses.g_loss_nonsaturating(-big).item() == pytest.approx(1e4)


def test_wasserstein_losses():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    assert losses.d_loss_wasserstein(real, fake).item() == pytest.approx(0.0 - 3.0)
    assert losses.g_loss_wasserstein(fake).item() == pytest.approx(0.0)


@pytest.mark.parametrize("w_norm", [0.5, 1.0, 3.0])
def test_gradient_penalty_of_a_linear_critic(w_norm):
    torch.manual_seed(0)
    w = torch.randn(1, 2, 3, 3)
    w = w / w.norm() * w_norm

    def critic(x):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(8, 2, 3, 3), torch.randn(8, 2, 3, 3)
    gp = losses.gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((w_norm - 1.0) ** 2, abs=1e-5)


def test_gradient_penalty_is_differentiable_wrt_critic_params():
    lin = torch.nn.Linear(4, 1)
    gp = losses.gradient_penalty(lambda x: lin(x).flatten(), torch.randn(6, 4), torch.randn(6, 4))
    gp.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_r1_penalty_of_a_linear_discriminator():
    w = torch.tensor([3.0, 4.0])  # |w|^2 = 25 at every point
    r1 = losses.r1_penalty(lambda x: x @ w, torch.randn(7, 2))
    assert r1.item() == pytest.approx(25.0)


def test_hinge_known_values():
    zero = torch.zeros(4)
    assert losses.d_loss_hinge(zero, zero).item() == pytest.approx(2.0)
    # confident and correct beyond the margin costs nothing
    assert losses.d_loss_hinge(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert losses.g_loss_hinge(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)
