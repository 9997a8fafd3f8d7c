from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ganforge.core.dataset import load_split
from ganforge.core.device import to_unit_range as to_float
from ganforge.core.files import read_csv
from ganforge.errors import ConfigError
from ganforge.metrics.featurenet import load_featurenet
from ganforge.metrics.features import InceptionFeatures
from ganforge.metrics.scores import (
    class_histogram,
    fid,
    fid_bootstrap,
    inception_score,
    kid,
    mode_collapse,
    precision_recall,
)
from ganforge.stages.evaluate import EvaluationError, evaluate
from ganforge.stages.train import train

from .conftest import tiny_params


def gaussian(n, d=16, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    x = gaussian(2000)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    noisy = [fid(x, x + s * gaussian(2000, seed=1)) for s in (0.1, 0.5, 1.0, 2.0)]
    assert noisy == sorted(noisy) and noisy[0] > 0
    # two draws of one Gaussian: small; a mean shift of 1 in each of 16 dims adds |mu|^2 = 16
    assert fid(x, gaussian(2000, seed=2)) < 0.5
    assert fid(x, gaussian(2000, seed=2, shift=1.0)) == pytest.approx(16.0, rel=0.1)


@pytest.mark.parametrize("shift", [0.5, 0.0], ids=["apart", "one-distribution"])
def test_fid_interval_brackets_the_estimate(shift):
    """Also near zero, where resampling with replacement (duplicate rows) inflates every
    replicate: a plain percentile interval then lies wholly above the estimate (measured on a
    digits cdcgan: FID 0.1206, interval [0.1515, 0.3924])."""
    a, b = gaussian(1000), gaussian(1000, seed=3, shift=shift)
    lo, hi = fid_bootstrap(a, b, replicates=50, seed=0)
    assert 0 <= lo < fid(a, b) < hi


def test_kid_is_near_zero_for_one_distribution_and_positive_otherwise():
    a, b = gaussian(1000), gaussian(1000, seed=1)
    same, _ = kid(a, b, subsets=20, subset_size=500, seed=0)
    diff, _ = kid(a, gaussian(1000, seed=1, shift=1.0), subsets=20, subset_size=500, seed=0)
    assert abs(same) < 0.01 and diff > 10 * max(abs(same), 1e-3)


def test_inception_score_known_values():
    confident = torch.eye(10).repeat(1000, 1) * 100.0  # sure of one class each, all classes equally
    mean, _ = inception_score(confident, splits=5, seed=0)
    assert mean == pytest.approx(10.0, rel=0.01)  # splits of a shuffle are only nearly uniform
    mean, _ = inception_score(torch.zeros(500, 10), splits=5, seed=0)  # no idea: IS = 1
    assert mean == pytest.approx(1.0, abs=1e-4)
    stuck = torch.zeros(500, 10)
    stuck[:, 3] = 100.0  # sure, but always the same class: IS = 1
    assert inception_score(stuck, splits=5, seed=0)[0] == pytest.approx(1.0, abs=1e-3)


def test_precision_recall_known_cases():
    real = gaussian(1000)
    p, r = precision_recall(real, gaussian(1000, seed=1), k=3)
    assert p > 0.7 and r > 0.7 and abs(p - r) < 0.1  # one distribution: symmetric, high
    collapsed = real[:1].repeat(1000, 1) + 0.01 * gaussian(
        1000, seed=2
    )  # every sample ~ one real point
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.05
    far = gaussian(1000, seed=3, shift=10.0)
    assert precision_recall(real, far, k=3) == (0.0, 0.0)


def test_mode_collapse_rule_on_real_data(digits_dir, digits_featurenet):
    """Real held-out digits are not flagged; a 'generator' that only makes zeros is."""
    net, _ = load_featurenet(digits_featurenet)
    train_split, hold = load_split(digits_dir, "train"), load_split(digits_dir, "holdout")
    real_hist = class_histogram(train_split.labels, 10)
    with torch.no_grad():
        hold_pred = net(to_float(hold.images, torch.device("cpu"))).argmax(1)
        zeros = hold.images[hold.labels == 0]
        zero_pred = net(to_float(zeros, torch.device("cpu"))).argmax(1)
    healthy = mode_collapse(real_hist, class_histogram(hold_pred, 10), 0.5, 0.2)
    assert (
        healthy["mode_collapse"] is False
        and healthy["class_coverage"] == 1.0
        and healthy["kl_class"] < 0.05
    )
    stuck = mode_collapse(real_hist, class_histogram(zero_pred, 10), 0.5, 0.2)
    assert stuck["mode_collapse"] is True and stuck["class_coverage"] == pytest.approx(0.1)
    assert stuck["classes_missed"] == list(range(1, 10)) and stuck["kl_class"] > 2.0
    assert "class_coverage < 1" in stuck["mode_collapse_rule"]


def test_evaluate_end_to_end(tmp_path, digits_dir, digits_featurenet, digits_generator):
    params = tiny_params(
        evaluate={"num_samples": 600, "bootstrap": 20, "kid_subsets": 10, "pr_samples": 400}
    )
    m = evaluate(
        params,
        digits_dir,
        digits_generator,
        digits_featurenet,
        tmp_path / "eval.json",
        tmp_path / "rep",
    )
    headline = json.loads((tmp_path / "eval.json").read_text())
    details = json.loads((tmp_path / "eval_details.json").read_text())
    assert {**details, **headline} == m and "protocol" in details and "protocol" not in headline
    assert all(
        isinstance(v, (int, float, list, type(None))) for v in headline.values()
    )  # a metrics table
    assert m["fid_ci95"][0] <= m["fid"] <= m["fid_ci95"][1]
    assert 0 < m["fid_floor"] < 2  # two real halves: small and positive
    assert (
        m["fid_floor"] < m["fid_at_floor_samples"]
    )  # a 200-step model is told apart from real data
    for key in (
        "kid_mean",
        "is_mean",
        "precision",
        "recall",
        "class_coverage",
        "kl_class",
        "mode_collapse",
    ):
        assert key in m
    proto = m["protocol"]
    assert (proto["num_generated"], proto["num_real"], proto["floor_samples"]) == (600, 600, 600)
    assert proto["featurenet_sha256"] and proto["generator_sha256"] and proto["seed"] == 0
    assert any("less stable" in w and "KID" not in w for w in m["warnings"])  # 600 < stable_samples
    assert (tmp_path / "rep/samples.png").is_file() and (
        tmp_path / "rep/interpolation.png"
    ).is_file()
    assert set(m["per_class"]) == {str(i) for i in range(10)}
    # the judges in pixel space, against the held-out split (180 images per side)
    assert m["c2st_ci95"][0] <= m["c2st_accuracy"] <= m["c2st_ci95"][1]
    assert m["c2st_accuracy"] > 0.9 and not m["c2st_indistinguishable"]  # 200 tiny steps
    assert m["c2st_protocol"]["n_per_side"] == 180 and m["c2st_protocol"]["real"] == "holdout split"
    assert m["copying"] is False and m["copying_z_pixel"] > 0  # blurry, far from every digit
    assert 0 <= m["coverage"] <= 1 and m["density"] >= 0
    assert m["fid_over_floor"] == pytest.approx(
        m["fid_at_floor_samples"] / m["fid_floor"], rel=1e-2
    )
    assert proto["real_split_by_score"]["c2st"].startswith("holdout")
    assert (tmp_path / "rep/copying.png").is_file()
    # same inputs, same numbers
    again = evaluate(
        params,
        digits_dir,
        digits_generator,
        digits_featurenet,
        tmp_path / "e2.json",
        tmp_path / "r2",
    )
    same = ("fid", "fid_ci95", "kid_mean", "precision", "c2st_accuracy", "copying_z_pixel")
    assert {k: again[k] for k in same} == {k: m[k] for k in same}


def test_an_evaluation_at_a_truncation_scores_truncated_samples(
    tmp_path, digits_dir, digits_generator, digits_featurenet
):
    """evaluate.truncation: every score is of truncated samples (recall below the plain
    generator's, which the curve's first row still measures), the protocol says so, and a
    curve of no thresholds is the plain row alone."""
    params = tiny_params(evaluate={"num_samples": 600, "truncation": 0.5, "truncation_curve": []})
    m = evaluate(
        params, digits_dir, digits_generator, digits_featurenet, tmp_path / "e.json", tmp_path / "r"
    )
    assert m["protocol"]["truncation"] == 0.5
    (plain,) = m["truncation_curve"]
    assert plain["truncation"] is None and m["recall"] < plain["recall"], (m["recall"], plain)
    with pytest.raises(ConfigError, match=r"evaluate.truncation: .*0.05"):
        tiny_params(evaluate={"truncation": 0.0})


def test_conditional_reports(tmp_path, digits_dir, digits_featurenet):
    params = tiny_params(
        train={"model": "cdcgan", "steps": 30},
        evaluate={"num_samples": 300, "bootstrap": 5, "kid_subsets": 5},
    )
    train(params, digits_dir, tmp_path / "runs", progress=False)
    m = evaluate(
        params,
        digits_dir,
        tmp_path / "runs/main/generator.pt",
        digits_featurenet,
        tmp_path / "e.json",
        tmp_path / "rep",
    )
    assert 0.0 <= m["label_accuracy"] <= 1.0
    assert (tmp_path / "rep/per_class.png").is_file()


def test_mismatched_data_is_refused(tmp_path, digits_dir, digits_featurenet, digits_generator):
    from ganforge.stages.prepare import prepare

    other = tmp_path / "other"
    prepare(tiny_params(prepare={"seed": 1}).prepare, other)  # another split of the same digits
    with pytest.raises(EvaluationError, match="generator.pt: trained on other data"):
        evaluate(
            tiny_params(),
            other,
            digits_generator,
            digits_featurenet,
            tmp_path / "e.json",
            tmp_path / "r",
        )
    assert not (tmp_path / "e.json").exists()


# --------------------------------------------------------------------------- standard Inception FID


@pytest.fixture(scope="module")
def local_inception_weights(tmp_path_factory):
    """A weights file of the FID InceptionV3 architecture, made here (random init, no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    original_fetch, original_load = tfi.load_state_dict_from_url, nn.Module.load_state_dict
    tfi.load_state_dict_from_url = lambda *a, **k: {}  # never the network
    nn.Module.load_state_dict = lambda self, *a, **k: None  # keep the random init
    try:
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url, nn.Module.load_state_dict = original_fetch, original_load
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def _digest(path) -> str:
    from ganforge.core.files import sha256_file

    return sha256_file(path)


def test_inception_weights_with_another_digest_are_refused(local_inception_weights):
    """The file is named like the FID weights but is not them: refused before any score."""
    with pytest.raises(
        ConfigError, match=r"not the expected 6726825d \(evaluate.inception_sha256\)"
    ):
        InceptionFeatures(str(local_inception_weights), torch.device("cpu"), batch=4)


def test_inception_features_from_a_local_file(local_inception_weights):
    digest = _digest(local_inception_weights)
    ext = InceptionFeatures(str(local_inception_weights), torch.device("cpu"), 4, digest[:12])
    f, logits = ext(torch.rand(3, 1, 28, 28) * 2 - 1)
    assert f.shape == (3, 2048) and logits.shape == (3, 1008) and torch.isfinite(f).all()
    assert ext.record["inception_sha256"] == digest


@pytest.mark.slow  # a whole evaluation with Inception at 299 px on the CPU: 2+ minutes
def test_inception_path_is_guarded_by_the_controls(
    tmp_path, digits_dir, digits_featurenet, digits_generator, local_inception_weights
):
    """The Inception space gets the same controls: with its weights (random here, no download)
    it scores and judges collapse by recall; with every BatchNorm weight zero (a broken
    download) all images map to one point and the stage refuses instead of scoring."""
    broken = tmp_path / "broken-inception.pth"
    state = torch.load(local_inception_weights, weights_only=True)
    torch.save({k: v * 0 if k.endswith("bn.weight") else v for k, v in state.items()}, broken)
    for weights in (local_inception_weights, broken):
        params = tiny_params(
            evaluate={
                "features": "inception",
                "inception_weights": str(weights),
                "inception_sha256": _digest(weights),
                "num_samples": 40,
                "bootstrap": 3,
                "kid_subsets": 2,
                "kid_subset_size": 10,
                "is_splits": 2,
                "pr_samples": 20,
                # Inception at 299 px: 0.16 s an image on 2 cores; what is checked here is the
                # space's controls, not the copying test's or the truncation curve's defaults
                "copying_reference": 40,
                "truncation_curve": [],
            }
        )
        out = tmp_path / weights.stem
        run = (params, digits_dir, digits_generator, digits_featurenet, out / "e.json", out / "r")
        if weights == broken:
            with pytest.raises(
                EvaluationError, match=r"broken-inception.pth: feature space cannot"
            ):
                evaluate(*run)
            assert not out.exists()  # nothing published
            continue
        m = evaluate(*run)
        assert m["protocol"]["features"] == "inception" and m["protocol"]["feature_dim"] == 2048
        c = m["negative_controls"]
        assert (
            min(c[k] for k in ("constant", "noise", "blurred", "shuffled")) >= 1.5 * c["floor"] > 0
        )
        assert m["mode_collapse_basis"] == "recall" and m["mode_collapse"] is not None
        assert m["copying_images"] == {"generated": 40, "train": 40, "holdout": 40}


def test_inception_offline_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFORGE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(ConfigError, match="supply pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures("", torch.device("cpu"), batch=4)


class _NotATensor:
    pass


def test_inception_weights_must_be_plain_tensors(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"x": _NotATensor()}, bad)  # loading it would need to run this module's code
    with pytest.raises(ConfigError, match="evil.pth is not a weights file"):
        InceptionFeatures(str(bad), torch.device("cpu"), 4, _digest(bad))
    other = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="not an FID InceptionV3 state dict"):
        InceptionFeatures(str(other), torch.device("cpu"), 4, _digest(other))


@pytest.mark.slow
def test_the_default_trained_model_is_not_flagged(default_project):
    """The `make run` model (default params: cdcgan + R1, 2,600 steps, the FID probe shipping
    the best step) and the default feature
    network: full class coverage, no collapse flag, and FID at the floor's sample size far
    nearer the floor than the weak generators of the judge ladder (RESULTS.md, texture
    space: 2,600 steps 17.6x the floor, 300 steps 152x, an MLP GAN 85x). Issue 15's
    "within 5x the floor" was set in the embedding alone, where the same model scores 2.25x
    and a slight blur of real digits 1.2x: a ruler that could not see what a two-sample
    test sees at once. Read from the session's one `dvc repro` of the defaults."""
    from ganforge.core.files import read_metrics

    run = default_project / "models/main"
    summary = json.loads((run / "summary.json").read_text())
    curve = [(int(r["step"]), float(r["fid"])) for r in read_csv(run / "fid_history.csv")]
    assert len(curve) >= 5 and summary["shipped_step"] == min(curve, key=lambda c: c[1])[0], curve
    m = read_metrics(default_project / "metrics/eval.json")
    assert m["mode_collapse"] is False and m["class_coverage"] == 1.0, (
        m["class_histogram"],
        m["kl_class"],
    )
    assert m["fid_over_floor"] <= 30, (m["fid_at_floor_samples"], m["fid_floor"])
    assert m["protocol"]["feature_texture"] is True and m["separable"] is True
    assert m["protocol"]["generator_step"] == summary["shipped_step"]
    # the default two-sample test: the auto budget, two critics a fold, their spread inside
    # the interval (RESULTS.md: 0.80 on this model; real digits would read about 0.5)
    proto = m["c2st_protocol"]
    assert (proto["steps"], proto["critics"], proto["folds"]) == (1500, 2, 3), proto
    lo, hi = m["c2st_ci95"]
    assert m["c2st_critic_sd"] > 0 and lo < m["c2st_accuracy"] < hi
    assert 0.6 < m["c2st_accuracy"] < 0.95 and not m["c2st_indistinguishable"]
    # the truncation curve (evaluate.truncation_curve: none, 1.5, 1.0, 0.7, 0.5): diversity
    # falls as the threshold tightens (RESULTS.md: recall 0.47 -> 0.006 on this recipe)
    curve = m["truncation_curve"]
    assert [r["truncation"] for r in curve] == [None, 1.5, 1.0, 0.7, 0.5]
    coverage = [r["coverage"] for r in curve]
    assert (
        coverage == sorted(coverage, reverse=True) and curve[-1]["recall"] < curve[0]["recall"] / 4
    )
    assert curve[-1]["fid_at_floor_samples"] > curve[0]["fid_at_floor_samples"]
    assert m["protocol"]["truncation"] is None
    for name in ("truncation.csv", "truncation.png", "truncation_samples.png"):
        assert (default_project / "reports" / name).is_file()
