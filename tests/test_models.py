from __future__ import annotations

import pytest
import torch

from ganforge.models import VARIANTS, ModelSpec, build_generator, make_variant
from ganforge.models.dcgan import DCGANDiscriminator, DCGANGenerator, conv_plan


def spec(size=16, channels=1, classes=10):
    return ModelSpec(
        latent_dim=8, image_size=size, channels=channels, num_classes=classes, g_width=4, d_width=4
    )


@pytest.mark.parametrize("family", list(VARIANTS))
@pytest.mark.parametrize(("size", "channels"), [(16, 1), (28, 1), (32, 3), (64, 3)])
def test_forward_shapes(family, size, channels):
    v = make_variant(family, spec(size, channels))
    G, D = v.make_generator(), v.make_discriminator()
    z = torch.randn(5, 8)
    labels = torch.arange(5) if v.conditional else None
    x = G(z, labels)
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x, labels).shape == (5,)
    # the generator rebuilds from the kwargs a checkpoint stores
    assert build_generator(family, v.generator_kwargs())(z, labels).shape == x.shape


@pytest.mark.parametrize("family", list(VARIANTS))
def test_one_discriminator_and_generator_step(family):
    torch.manual_seed(0)
    v = make_variant(family, spec(), {"n_critic": 2})
    G, D = v.make_generator(), v.make_discriminator()
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    real = torch.rand(8, 1, 16, 16) * 2 - 1
    labels = torch.randint(0, 10, (8,)) if v.conditional else None
    g0 = [p.clone() for p in G.parameters()]
    d0 = [p.clone() for p in D.parameters()]
    with torch.no_grad():
        fake = G(torch.randn(8, 8), labels)
    d_loss, stats = v.d_loss(D, real, fake, labels)
    opt_d.zero_grad()
    d_loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in D.parameters())
    assert not any(p.grad is not None for p in G.parameters())  # D step leaves G alone
    opt_d.step()
    g_loss, _ = v.g_loss(D, G(torch.randn(8, 8), labels), labels)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    assert any(not torch.equal(a, b) for a, b in zip(g0, G.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, D.parameters(), strict=True))
    assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert all(torch.isfinite(s) for s in stats.values())
    # each family's own settings act (read from the registry, not from family names)
    if "n_critic" in v.settings:
        _, step_stats = v.d_step(D, real, fake, labels)
        assert v.d_steps == 2 and {"wasserstein", "gp"} <= set(step_stats)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    else:
        assert v.d_steps == 1
    if "r1_gamma" in v.all_settings():  # the BCE families take the R1 penalty when asked
        v_r1 = make_variant(family, spec(), {"r1_gamma": 1.0})
        _, r1_stats = v_r1.d_step(D, real, fake, labels)
        assert r1_stats["r1"] > 0


def test_sngan_discriminator_is_spectrally_normalised():
    """Every conv of the SNGAN discriminator has spectral norm 1 (after power iterations)."""
    from torch.nn.utils.parametrize import is_parametrized

    torch.manual_seed(0)
    D = make_variant("sngan", spec()).make_discriminator().train()
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(is_parametrized(m, "weight") for m in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    x = torch.randn(4, 1, 16, 16)
    for _ in range(30):  # let the power iteration converge
        D(x)
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.05


def test_registry_declares_every_family():
    """Config, training, evaluation and export read these; nothing tests family names."""
    from ganforge.config import Params

    for name, cls in VARIANTS.items():
        assert cls.name == name and cls.image_sizes and isinstance(cls.conditional, bool)
        for key, (_, field) in cls.all_settings().items():
            assert key in Params.model_fields["train"].annotation.model_fields
            assert Params().train.model_dump()[key] == field.default


def test_classic_64px_dcgan_sizes():
    """At 64 px, latent 100, width 64, RGB: the parameter counts of the reference DCGAN."""
    G = DCGANGenerator(latent_dim=100, image_size=64, channels=3, g_width=64)
    D = DCGANDiscriminator(image_size=64, channels=3, d_width=64)
    assert sum(p.numel() for p in G.parameters()) == 3_576_704
    assert sum(p.numel() for p in D.parameters()) == 2_765_568


def test_conv_plan():
    assert [conv_plan(s) for s in (16, 28, 32, 64)] == [(4, 2), (7, 2), (4, 3), (4, 4)]
    with pytest.raises(ValueError):
        conv_plan(20)


def test_conditional_generator_uses_the_label():
    torch.manual_seed(0)
    v = make_variant("cdcgan", spec())
    G = v.make_generator().eval()
    z = torch.randn(1, 8).repeat(2, 1)
    out = G(z, torch.tensor([0, 7]))
    assert not torch.allclose(out[0], out[1])
