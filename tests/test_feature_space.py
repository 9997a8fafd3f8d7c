"""The feature space is checked before a score is published: negative controls, the floor,
separability, the per-class gate on the collapse verdict, and small custom folders (one
class, two classes, grey and colour) as a user's own data would be."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ganforge.config import parse_params
from ganforge.metrics.controls import (
    COARSE,
    CONTROLS,
    SUBTLE_CONTROLS,
    SUBTLE_MIN_IMAGES,
    FeatureSpaceError,
    check_controls,
    control_images,
    gated_controls,
)
from ganforge.metrics.featurenet import load_featurenet, save_featurenet
from ganforge.metrics.verdicts import class_verdict
from ganforge.stages.evaluate import EvaluationError, evaluate
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.promote import Candidate, decide
from ganforge.stages.train import train

from .folders import photo_patches


def test_controls_are_what_they_say():
    real = torch.rand(6, 3, 16, 16) * 2 - 1
    const = control_images("constant", real, 0)
    assert torch.allclose(const, real.mean(dim=(0, 2, 3), keepdim=True).expand_as(real))
    noise = control_images("noise", real, 0)
    assert noise.shape == real.shape and noise.min() >= -1 and noise.max() <= 1
    blurred = control_images("blurred", real, 0)
    assert blurred.std() < real.std() / 2  # blurred noise loses most of its variance
    shuffled = control_images("shuffled", real, 0)
    # the same pixels per image and channel (tiles moved, not changed), in another place
    assert torch.equal(shuffled.flatten(2).sort().values, real.flatten(2).sort().values)
    assert not torch.equal(shuffled, real)
    flat = torch.zeros(2, 1, 8, 8)  # on a flat image the three subtle controls show alone
    assert torch.equal(control_images("slight_blur", flat, 0), flat)
    board = control_images("checkerboard", flat, 0)[0, 0]
    assert board[0, 0] == -0.1 and board[0, 1] == 0.1 and board[1, 1] == -0.1  # pixel period
    noise = control_images("hf_noise", flat, 0)
    assert 0.08 < noise.std() < 0.12 and abs(noise.mean()) < 0.03
    edge = torch.tensor([-1.0, -1, 1, 1]).expand(1, 1, 4, 4)  # a vertical edge, softened
    assert control_images("slight_blur", edge, 0)[0, 0, 0].tolist() == pytest.approx(
        [-1, -2 / 3, 2 / 3, 1]
    )


def test_check_controls_refuses_a_space_that_cannot_separate():
    good = {"floor": 0.3, **dict.fromkeys(CONTROLS, 50.0)}
    check_controls(good, 2.0, "hint")
    with pytest.raises(
        FeatureSpaceError, match="shuffled negative control scores FID 0.5, under 2"
    ):
        check_controls({**good, "shuffled": 0.5}, 2.0, "hint")
    with pytest.raises(FeatureSpaceError, match="cannot separate real images from each other"):
        check_controls(dict.fromkeys(["floor", *CONTROLS], 0.0), 2.0, "hint")
    # the subtle controls are gated from SUBTLE_MIN_IMAGES per side, recorded below it
    assert gated_controls(SUBTLE_MIN_IMAGES) == CONTROLS
    assert gated_controls(SUBTLE_MIN_IMAGES - 1) == COARSE
    faint = {**good, "slight_blur": 0.4}
    with pytest.raises(FeatureSpaceError, match="the slight_blur negative control scores FID 0.4"):
        check_controls(faint, 2.0, "hint", gated_controls(808))
    check_controls(faint, 2.0, "hint", gated_controls(135))


def test_collapse_verdict_needs_a_classifier_good_in_every_class():
    ep = parse_params({}).evaluate
    manifest = {"num_classes": 2, "class_names": ["a", "b"]}
    labels, pred = torch.tensor([0, 1] * 50), torch.tensor([0, 1] * 50)
    good = SimpleNamespace(class_accuracy={"a": 1.0, "b": 0.95})
    result = class_verdict(ep, manifest, good.class_accuracy, labels, pred, None)
    assert result["mode_collapse"] is False and result["mode_collapse_basis"] == "class histogram"
    weak = SimpleNamespace(class_accuracy={"a": 1.0, "b": 0.6})
    result = class_verdict(
        ep, manifest, weak.class_accuracy, labels, torch.zeros(100, dtype=torch.long), None
    )
    assert result["mode_collapse"] is None and result["mode_collapse_basis"] == "not assessed"
    assert "b 0.60" in result["mode_collapse_rule"]
    assert result["class_coverage"] == 0.5  # the histogram is still shown, just not judged


def test_promotion_refuses_unseparable_and_unassessed():
    ok = Candidate("1", 5.0, (4.0, 6.0), False, True, "d")
    assert decide(ok, None).promote
    flat = Candidate("1", 0.1, (0.05, 0.2), False, True, "d", separable=False)
    assert "feature space cannot separate" in decide(flat, None).reason
    unassessed = Candidate(
        "1", 5.0, (4.0, 6.0), None, True, "d", collapse_basis="not assessed: b 0.6"
    )
    verdict = decide(unassessed, None)
    assert not verdict.promote
    assert verdict.reason == "no mode-collapse verdict (not assessed: b 0.6)"


# --------------------------------------------------------------------------- small folders


def _folder_project(tmp_path, classes, per_class, grey=False, **featurenet):
    photo_patches(tmp_path / "imgs", classes=classes, per_class=per_class, size=16, grey=grey)
    raw = {
        "prepare": {"source": "imagefolder", "path": str(tmp_path / "imgs"), "image_size": 16},
        "train": {"g_width": 8, "d_width": 8, "batch_size": 32, "latent_dim": 16, "sample_every": 1000,
                  "checkpoint_every": 1000, "fid_samples": 0, "device": "cpu"},
        "featurenet": {"width": 16, "feature_dim": 64, **featurenet},
        "evaluate": {"num_samples": 600, "bootstrap": 20, "kid_subsets": 10, "pr_samples": 300},
    }  # fmt: skip
    params = parse_params(raw)
    prepare(params.prepare, tmp_path / "prep")
    return params


def _bad_generator(params, tmp_path, steps=15):
    """A generator trained for a handful of steps: blobs, nothing like the data."""
    p = params.model_copy(update={"train": params.train.model_copy(update={"steps": steps})})
    train(p, tmp_path / "prep", tmp_path / "runs", progress=False)
    return tmp_path / "runs" / "main" / "generator.pt"


def _evaluate(params, tmp_path):
    return evaluate(
        params, tmp_path / "prep", tmp_path / "runs" / "main" / "generator.pt",
        tmp_path / "fn" / "featurenet.pt", tmp_path / "m" / "eval.json", tmp_path / "reports",
    )  # fmt: skip


@pytest.mark.slow
def test_two_class_colour_folder_never_scores_a_bad_generator_at_the_floor(tmp_path):
    params = _folder_project(tmp_path, ("building", "flower"), 150)
    fn = train_featurenet(params, tmp_path / "prep", tmp_path / "fn")
    assert fn["objective"] == "hybrid" and fn["steps"] == 300
    assert min(fn["holdout_class_accuracy"].values()) >= 0.875
    _bad_generator(params, tmp_path)
    m = _evaluate(params, tmp_path)
    c = m["negative_controls"]
    # 135 per side: too few for FID to see the subtle controls, so they are recorded and said
    gated = m["protocol"]["controls_gated"].split()
    assert gated == list(COARSE) and c["control_samples"] < SUBTLE_MIN_IMAGES
    assert all(c[k] >= 1.5 * c["floor"] for k in gated), c
    assert all(k in c for k in SUBTLE_CONTROLS)
    assert any("subtle negative controls" in w and "not gated" in w for w in m["warnings"])
    assert m["fid_at_floor_samples"] > 5 * m["fid_floor"] and m["separable"] is True
    assert m["kid_mean"] > 0 and m["mode_collapse"] is True  # a 15-step generator covers nothing
    assert m["protocol"]["featurenet_objective"] == "hybrid"


@pytest.mark.slow
def test_single_grey_class_gets_contrastive_features_or_nothing(tmp_path):
    """One class: labels teach nothing, so the features are learned contrastively and the
    collapse verdict rests on recall. A degenerate feature space is refused, not scored."""
    params = _folder_project(tmp_path, ("flower",), 200, grey=True)
    fn = train_featurenet(params, tmp_path / "prep", tmp_path / "fn")
    assert fn["objective"] == "contrastive" and fn["holdout_class_accuracy"] == {}
    assert fn["holdout_accuracy"] >= fn["min_accuracy"] > fn["retrieval_accuracy_at_init"]
    _bad_generator(params, tmp_path)
    m = _evaluate(params, tmp_path)
    assert m["fid_at_floor_samples"] > 5 * m["fid_floor"] > 0
    assert m["mode_collapse_basis"] == "recall" and m["mode_collapse"] is True
    assert m["is_mean"] is None  # no classes, no IS

    # a well-formed file whose network maps every image to one point (all BatchNorm weights
    # zero, as in a broken Inception download): the controls refuse it, nothing is published
    net, meta = load_featurenet(tmp_path / "fn" / "featurenet.pt")
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.zero_()
    record = {k: v for k, v in meta.items() if k not in ("format", "kwargs", "sha256")}
    (tmp_path / "fn2").mkdir()
    save_featurenet(net, meta["kwargs"], record, tmp_path / "fn2" / "featurenet.pt")
    (tmp_path / "fn").rename(tmp_path / "fn-good")
    (tmp_path / "fn2").rename(tmp_path / "fn")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(
        EvaluationError,
        match=r"fn/featurenet.pt: feature space cannot separate real images from each other",
    ):
        _evaluate(params.model_copy(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing published


def test_digits_controls_are_far_above_the_floor(
    tmp_path, digits_dir, digits_featurenet, digits_generator
):
    """The digits space (the `make run` data) separates every control by a wide margin."""
    from .conftest import tiny_params

    params = tiny_params(
        evaluate={"num_samples": 1000, "bootstrap": 10, "kid_subsets": 5, "pr_samples": 300}
    )
    m = evaluate(
        params, digits_dir, digits_generator, digits_featurenet, tmp_path / "e.json", tmp_path / "r"
    )
    c = m["negative_controls"]
    assert min(c[k] for k in COARSE) > 20 * c["floor"] > 0, c
    # the subtle three are gated here (808 per side) and pass: the texture statistics see
    # them (the embedding alone scored them 1.2-1.6x the floor)
    assert m["protocol"]["controls_gated"].split() == list(CONTROLS), m["protocol"]
    assert min(c[k] for k in SUBTLE_CONTROLS) > 2 * c["floor"], c
    assert m["mode_collapse_basis"].split(" and ")[0] in ("class histogram", "not assessed")
