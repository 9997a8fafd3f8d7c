"""Differentiable augmentation (train.augment): the operations, ADA's probability, exact
resume, and that augmentations do not leak into what the generator makes."""

from __future__ import annotations

import pytest
import torch

from ganforge.engine import augment as A
from ganforge.errors import ConfigError
from ganforge.stages.train import train

from .conftest import tiny_params


def images(n=6, c=1, s=16):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("op", A.OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_operation_is_differentiable_and_seeded(op, channels):
    x = images(c=channels).requires_grad_(True)
    a = op(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert not torch.equal(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the images
    b = op(x.detach(), torch.Generator().manual_seed(1))
    assert torch.equal(a.detach(), b)


def test_translation_moves_content_and_fills_black():
    x = torch.full((1, 1, 16, 16), -1.0)
    x[0, 0, 8, 8] = 1.0
    for seed in range(20):
        out = A._translation(x, torch.Generator().manual_seed(seed))
        ys, xs = torch.nonzero(out[0, 0] > 0, as_tuple=True)
        assert len(ys) <= 1 and out.min() == -1.0
        if len(ys):
            assert abs(int(ys[0]) - 8) <= 2 and abs(int(xs[0]) - 8) <= 2  # 1/8 of 16 px


def test_cutout_greys_one_half_side_square():
    x = torch.ones(4, 1, 16, 16)
    out = A._cutout(x, torch.Generator().manual_seed(3))
    for img in out[:, 0]:
        hole = img == 0
        assert 16 <= int(hole.sum()) <= 81  # a 9x9 square, clipped at the border
        rows, cols = torch.nonzero(hole, as_tuple=True)
        assert int(hole[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all())


def test_ada_probability_follows_the_overfitting_signal():
    aug = A.Augment("ada", torch.device("cpu"), seed=0, batch_size=1000)
    assert aug.p == 0.0 and torch.equal(aug(images()), images())  # p = 0: nothing applied
    for _ in range(40):
        aug.observe(torch.tensor(0.9))  # D sure of 95% of the reals: overfitting
    assert aug.p == pytest.approx(40 * 1000 / (A.ADA_KIMG * 1000))
    high = aug.p
    for _ in range(8):
        aug.observe(torch.tensor(0.0))
    assert aug.p < high
    for _ in range(10_000):
        aug.observe(torch.tensor(1.0))
    assert aug.p == 1.0
    assert A.Augment("diffaugment", torch.device("cpu"), 0, 64).p == 1.0


@pytest.mark.parametrize(
    ("r_t", "rises"), [(0.5, False), (0.59, False), (0.61, True), (-0.5, False)]
)
def test_ada_moves_p_by_the_threshold_on_the_mean_sign_itself(r_t, rises):
    """r_t is already E[sign(D(real))]: 0.5 (three reals in four scored real) is under the 0.6
    target and must lower p; taking the sign of r_t again would make every positive r_t 1.0."""
    aug = A.Augment("ada", torch.device("cpu"), seed=0, batch_size=1000)
    aug.p = 0.5
    for _ in range(A.ADA_INTERVAL):
        aug.observe(torch.tensor(r_t))
    assert (aug.p > 0.5) is rises and aug.p != 0.5


def test_trainer_feeds_ada_the_variant_signal_unchanged(digits_dir):
    """The trainer's observation is the d_real_sign stat of the step, not its sign."""
    from ganforge.core.dataset import load_split
    from ganforge.engine.trainer import Trainer

    split = load_split(digits_dir, "train")
    params = tiny_params(train={"augment": "ada"})
    trainer = Trainer(params, split.images, split.labels, 10, torch.device("cpu"))
    seen: list[float] = []
    observe = trainer.augment.observe
    trainer.augment.observe = lambda r: (seen.append(float(r)), observe(r))[1]
    stats = trainer.step()
    assert seen == [pytest.approx(float(stats["d_real_sign"]))]


@pytest.mark.parametrize("mode", ["diffaugment", "ada"])
def test_training_with_augmentation_resumes_exactly(tmp_path, digits_dir, mode):
    straight = tiny_params(train={"steps": 16, "checkpoint_every": 8, "augment": mode})
    train(straight, digits_dir, tmp_path / "a", progress=False)
    half = tiny_params(train={"steps": 8, "checkpoint_every": 8, "augment": mode})
    train(half, digits_dir, tmp_path / "b", progress=False)
    train(straight, digits_dir, tmp_path / "b", resume=True, progress=False)
    a, b = (torch.load(p / "main/generator.pt", weights_only=True) for p in (tmp_path / "a", tmp_path / "b"))  # fmt: skip
    for k, v in a["raw_state_dict"].items():
        assert torch.equal(v, b["raw_state_dict"][k]), k


def test_ada_needs_a_signed_discriminator():
    with pytest.raises(ConfigError, match=r"train\.augment: ada .*train\.model=wgan-gp"):
        tiny_params(train={"model": "wgan-gp", "augment": "ada"})
    tiny_params(train={"model": "wgan-gp", "augment": "diffaugment"})  # fine


@pytest.mark.slow
def test_augmentations_do_not_leak_into_generated_images(tmp_path, digits_dir, digits_featurenet):
    """Trained with every augmentation on every image, the generator makes plain digits: in
    the feature network's space its samples are closer to the real images than to the
    augmented real images (a generator that learned the augmentations would be closer to
    those)."""
    from ganforge.core.dataset import load_split
    from ganforge.core.device import to_unit_range
    from ganforge.metrics.features import DomainFeatures
    from ganforge.metrics.scores import fid
    from ganforge.models import load_generator

    params = tiny_params(
        train={"steps": 600, "augment": "diffaugment", "g_width": 16, "d_width": 16,
               "sample_every": 600, "checkpoint_every": 600, "latent_dim": 32}
    )  # fmt: skip
    train(params, digits_dir, tmp_path, progress=False)
    G, _ = load_generator(tmp_path / "main/generator.pt")
    extract = DomainFeatures(digits_featurenet, torch.device("cpu"), batch=500)
    real = to_unit_range(load_split(digits_dir, "train").images)
    augmented = A.Augment("diffaugment", torch.device("cpu"), 5, 64)(real)
    with torch.no_grad():
        fake = G(torch.randn(len(real), 32, generator=torch.Generator().manual_seed(0)))
    fake_f, real_f, aug_f = (extract(x)[0] for x in (fake, real, augmented))
    to_real, to_augmented = fid(real_f, fake_f), fid(aug_f, fake_f)
    assert to_real < to_augmented, (to_real, to_augmented)
