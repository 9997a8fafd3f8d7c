"""The judges that need no feature network, on known answers: the classifier two-sample test
and the data-copying test (metrics/twosample.py), density/coverage, and how promotion and the
collapse verdict use them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ganforge.core.dataset import load_split
from ganforge.core.device import to_unit_range
from ganforge.metrics.promotion import Candidate, decide
from ganforge.metrics.scores import density_coverage
from ganforge.metrics.twosample import (
    auto_steps,
    c2st,
    c2st_many,
    copying_z,
    nearest_distances,
    wilson,
)

from .conftest import tiny_params

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits(digits_dir):
    """(train, holdout) digits at 16 px in [-1, 1]: 1,617 and 180 real images, the training
    images shuffled (the split keeps sklearn's order, which groups writers: the first 600
    and the next 600 really are different distributions, and the test says so, 0.70)."""
    train, holdout = (
        to_unit_range(load_split(digits_dir, s).images, CPU) for s in ("train", "holdout")
    )
    return train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))], holdout


def blur(x):
    return 0.5 * x + 0.5 * F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)


def test_wilson_interval_known_values():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 10)[0] == 0.0


def test_real_against_real_cannot_be_told_apart(digits):
    train, _ = digits
    result = c2st(train[:400], train[400:800], seed=0)
    lo, hi = result["ci95"]
    assert lo <= 0.5 <= hi, result
    # the default budget is auto: 400 passes over each critic's 533 training rows
    assert result["n_per_side"] == 400 and result["folds"] == 3 and result["steps"] == 3334


def test_the_auto_budget_grows_with_the_images_a_critic_trains_on():
    """1,500 steps had converged on digits (180 a side) but not on MNIST (1,000 a side:
    0.614 at 1,500 steps, 0.68-0.70 at 6,000), so the budget is passes, not steps."""
    assert auto_steps(180, 3, 64) == 1500  # digits, the make run default: as measured
    assert auto_steps(1000, 3, 64) == 8334  # MNIST
    assert auto_steps(20, 3, 64) == 1500  # never fewer than the digits budget
    assert auto_steps(1000, 3, 128) == 4167


def test_noise_and_a_constant_generator_are_told_apart_always(digits):
    train, _ = digits
    noise = torch.rand_like(train[:200]) * 2 - 1
    # a yes-or-no answer: one critic a fold (the default two are tested above and below)
    assert c2st(train[:200], noise, critics=1, seed=0)["accuracy"] > 0.97
    constant = train[:1].expand(200, -1, -1, -1)  # one image for every sample
    assert c2st(train[200:400], constant, critics=1, seed=0)["accuracy"] > 0.97


def test_critics_trained_side_by_side_stay_independent(digits):
    """The evaluate stage trains the model test's and the null's critics as one grouped
    network: an easy pair beside a null pair must not pull the null off 0.5."""
    train, _ = digits
    noise = torch.rand_like(train[:200]) * 2 - 1
    pairs = [(train[:200], train[200:400]), (train[400:600], noise)]
    null, easy = c2st_many(pairs, steps=500, seed=0)  # independence does not need the budget
    assert null["ci95"][0] <= 0.5 <= null["ci95"][1], null
    assert easy["accuracy"] > 0.97 and easy["n_per_side"] == null["n_per_side"] == 200


def test_the_interval_holds_the_critics_own_seed_spread(digits):
    """Two critics a fold (the default): the replicates of a fold disagree on a pair that is
    neither easy nor null, and the interval is Wilson's widened by 1.96 x their spread; one
    critic a fold gives Wilson's alone; a pair every critic gets right has no spread."""
    train, holdout = digits
    hard = holdout, (train[:180] + 0.1 * torch.randn_like(train[:180])).clamp(-1, 1)
    two = c2st(*hard, steps=400, seed=0)
    assert two["critics"] == 2 and two["critic_sd"] > 0.002, two
    lo, hi = wilson(two["accuracy"] * 360, 360)
    assert two["ci95"][0] < lo and two["ci95"][1] > hi
    assert 0.55 < two["accuracy"] < 0.95, two  # hard, not trivial: a spread to measure
    one = c2st(*hard, critics=1, steps=400, seed=0)
    assert one["critic_sd"] is None and one["ci95"] == list(wilson(one["accuracy"] * 360, 360))
    easy = c2st(holdout, torch.rand_like(holdout) * 2 - 1, steps=400, seed=0)
    assert easy["accuracy"] == 1.0 and easy["critic_sd"] == 0.0
    assert easy["ci95"] == list(wilson(360, 360))


def test_a_slightly_blurred_copy_of_real_data_is_caught(digits):
    """Half the weight on a 3x3 box blur: every digit still reads as itself, and the FID of
    a digit classifier barely moves, but a pixel-space critic sees it."""
    train, _ = digits
    result = c2st(train[:400], blur(train[400:800]), seed=0)
    assert result["ci95"][0] > 0.6, result


def test_copying_is_flagged_for_perturbed_training_images_not_for_held_out_ones(digits):
    train, holdout = digits
    d_hold, _ = nearest_distances(holdout, train)
    copies = (train[:400] + 0.05 * torch.randn_like(train[:400])).clamp(-1, 1)
    d_copy, nearest = nearest_distances(copies, train)
    assert torch.equal(nearest, torch.arange(400))  # each copy's nearest is its original
    assert copying_z(d_copy, d_hold) < -3.0
    other = holdout.flip(0)  # held-out images, a different order: as far as held-out ones are
    assert copying_z(nearest_distances(other, train)[0], d_hold) > -3.0


def test_density_and_coverage_known_cases():
    torch.manual_seed(0)
    real, same = torch.randn(800, 8), torch.randn(800, 8)
    density, coverage = density_coverage(real, same, 5)
    assert 0.8 < density < 1.2 and coverage > 0.9
    piled = real[:1].repeat(800, 1) + 0.01 * torch.randn(800, 8)  # one mode only
    density_p, coverage_p = density_coverage(real, piled, 5)
    assert coverage_p < 0.05


def test_recall_under_the_minimum_is_collapse_even_with_every_class_present(digits_dir):
    from ganforge.metrics.verdicts import class_verdict

    split = load_split(digits_dir, "train")
    labels = torch.from_numpy(split.labels)
    accuracy = {name: 1.0 for name in split.manifest["class_names"]}
    ep = tiny_params().evaluate
    ok = class_verdict(ep, split.manifest, accuracy, labels, labels, None, recall=0.8)
    assert ok["mode_collapse"] is False
    narrow = class_verdict(ep, split.manifest, accuracy, labels, labels, None, recall=0.096)
    assert narrow["mode_collapse"] is True and narrow["class_coverage"] == 1.0
    assert (
        "recall" in narrow["mode_collapse_basis"] and "min_recall" in narrow["mode_collapse_rule"]
    )


def candidate(version, fid, c2st_ci=None, copying=False):
    return Candidate(version, fid, (fid - 0.1, fid + 0.1), False, True, "d", c2st_ci95=c2st_ci,
                     copying=copying)  # fmt: skip


def test_promotion_uses_the_copying_verdict_and_the_two_sample_test():
    champion = candidate("1", 5.0, (0.80, 0.86))
    assert "copying" in decide(candidate("2", 1.0, (0.7, 0.75), copying=True), None).reason
    worse = decide(candidate("2", 1.0, (0.90, 0.95)), champion)  # better FID, told apart more
    assert not worse.promote and "two-sample test" in worse.reason
    assert decide(candidate("2", 1.0, (0.84, 0.88)), champion).promote  # intervals overlap
    assert decide(candidate("2", 1.0), champion).promote  # versions without the test: FID
