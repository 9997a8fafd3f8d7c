"""The evaluate stage's judgements from the features: the distance scores with their
interval and real-data floor (``distance_scores``), precision/recall overall and per class
(``precision_recall_by_class``), and the mode-collapse verdict, on the basis the feature
space can support:

- With the data's classes (a classifier or hybrid feature network) and every class
  recognised on held-out data at ``evaluate.collapse_min_class_accuracy`` or better: the
  generated class histogram against the real one (``class_verdict``).
- With classes the network recognises less well: no verdict ("not assessed", the reason
  written out): a weak classifier miscounts classes and would flag a working model, or pass
  a collapsed one.
- Without classes (contrastive network, Inception): recall, the share of real images inside
  the generated k-NN manifold, under ``evaluate.min_recall`` (``recall_verdict``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from ganforge.config import EvaluateParams
from ganforge.metrics.scores import (
    class_histogram,
    density_coverage,
    fid,
    fid_bootstrap,
    inception_score,
    kid,
    mode_collapse,
    precision_recall,
    rounded,
)
from ganforge.metrics.twosample import c2st_many, copying_z, nearest_distances

log = logging.getLogger("ganforge.stages.evaluate")


def class_verdict(
    ep: EvaluateParams,
    manifest,
    class_accuracy: dict[str, float | None],
    real_labels,
    fake_pred,
    requested,
    recall: float | None = None,
) -> dict[str, Any]:
    """Step 6 with classes: the generated class mix against the real one, and the collapse
    verdict if the classifier recognises every class well enough to support it. ``recall``
    joins it: a generator that covers each class with a fraction of its variety (recall
    under ``evaluate.min_recall``) is collapsed whatever its class histogram says."""
    k = manifest["num_classes"]
    real_hist, fake_hist = class_histogram(real_labels, k), class_histogram(fake_pred, k)
    result = mode_collapse(real_hist, fake_hist, ep.coverage_threshold, ep.kl_threshold)
    names = manifest["class_names"]
    result["class_histogram"] = {names[i]: round(float(fake_hist[i]), 5) for i in range(k)}
    result["mode_collapse_basis"] = "class histogram"
    if requested is not None:
        result["label_accuracy"] = round(float((fake_pred == requested).float().mean()), 5)
    weak = {
        c: a for c, a in class_accuracy.items() if a is None or a < ep.collapse_min_class_accuracy
    }
    if not class_accuracy or weak:
        result["mode_collapse"] = None
        result["mode_collapse_basis"] = "not assessed"
        shown = ", ".join(
            f"{c} {'unmeasured' if a is None else f'{a:.2f}'}" for c, a in weak.items()
        )
        result["mode_collapse_rule"] = (
            "not assessed: the feature network's held-out accuracy per class "
            f"({shown or 'not recorded'}) is under evaluate.collapse_min_class_accuracy "
            f"{ep.collapse_min_class_accuracy:g}, too weak to count classes by; rerun `ganforge "
            "featurenet`"
        )
    if recall is not None and recall < ep.min_recall:  # collapse within the classes
        result["mode_collapse"] = True
        basis = result["mode_collapse_basis"]
        result["mode_collapse_basis"] = (
            "recall" if basis == "not assessed" else f"{basis} and recall"
        )
    result["mode_collapse_rule"] += f"; or recall < evaluate.min_recall {ep.min_recall:g}"
    return result


def recall_verdict(ep: EvaluateParams, space: str, recall: float | None) -> dict[str, Any]:
    """Step 6 without classes: collapse judged by recall (k-NN coverage of the real set)."""
    collapsed = None if recall is None else bool(recall < ep.min_recall)
    return {
        "mode_collapse": collapsed,
        "mode_collapse_basis": "recall",
        "mode_collapse_rule": (
            f"no classes in this feature space ({space}): "
            f"mode_collapse = recall < evaluate.min_recall {ep.min_recall:g}"
        ),
    }


def distance_scores(
    ep: EvaluateParams, real_pool: Tensor, n_real: int, fake_f: Tensor, fake_logits, m: int
) -> tuple[dict[str, Any], float]:
    """The evaluate stage's steps 3-5: FID of the first n_real real features with its interval,
    the floor on two disjoint halves of m, the model's FID at m, KID and IS (``fake_logits``
    None: the feature space has no meaningful logits, so no IS) -> (scores, the floor)."""
    real_f, half_a, half_b = real_pool[:n_real], real_pool[:m], real_pool[m : 2 * m]
    fid_value = fid(real_f, fake_f)
    lo, hi = fid_bootstrap(real_f, fake_f, ep.bootstrap, ep.seed, fid_value)
    kid_mean, kid_std = kid(real_f, fake_f, ep.kid_subsets, ep.kid_subset_size, ep.seed)
    is_mean, is_std = (
        inception_score(fake_logits, ep.is_splits, ep.seed)
        if fake_logits is not None
        else (None, None)
    )
    floor = fid(half_a, half_b) if m >= 2 else float("nan")
    at_floor = fid(half_a, fake_f[:m]) if m >= 2 else float("nan")
    # at or under the floor, or KID's interval below zero: this space cannot tell them apart
    separable = not (at_floor <= floor or kid_mean + 1.96 * kid_std < 0)
    return {
        "fid": rounded(fid_value, 4),
        "fid_ci95": [rounded(lo, 4), rounded(hi, 4)],
        "fid_ci95_low": rounded(
            lo, 4
        ),  # the same interval as two scalars: DVC tables show no lists
        "fid_ci95_high": rounded(hi, 4),
        "fid_floor": rounded(floor, 4),
        "fid_at_floor_samples": rounded(at_floor, 4),
        "fid_over_floor": rounded(at_floor / floor, 3) if floor > 0 else None,
        "separable": separable,
        "separable_rule": (
            "separable = fid_at_floor_samples > fid_floor and KID's 95% interval not below 0; "
            "false: feature space cannot separate these sets (not a good-model reading)"
        ),
        "kid_mean": rounded(kid_mean, 6),
        "kid_std": rounded(kid_std, 6),
        "is_mean": rounded(is_mean, 4),
        "is_std": rounded(is_std, 4),
    }, floor


def precision_recall_by_class(
    ep: EvaluateParams, class_names, real_f, fake_f, real_labels, fake_pred, n_pr: int
) -> dict[str, Any]:
    """Step 7: k-NN precision/recall of the first ``n_pr`` of each set, overall and, with class
    predictions (``fake_pred``), per class."""
    precision, recall = precision_recall(real_f[:n_pr], fake_f[:n_pr], ep.pr_k)
    density, coverage = density_coverage(real_f[:n_pr], fake_f[:n_pr], ep.pr_k)
    per_class = {}
    if fake_pred is not None:
        for c, name in enumerate(class_names):
            r_c = real_f[:n_pr][real_labels[:n_pr] == c]
            f_c = fake_f[:n_pr][fake_pred[:n_pr] == c]
            p_c, rc_c = precision_recall(r_c, f_c, ep.pr_k)
            per_class[name] = {
                "precision": rounded(p_c),
                "recall": rounded(rc_c),
                "generated": len(f_c),
            }
    return {
        "precision": rounded(precision),
        "recall": rounded(recall),
        "density": rounded(density),
        "coverage": rounded(coverage),
        "per_class": per_class,
    }


def two_sample_verdict(
    ep: EvaluateParams, holdout: Tensor, train: Tensor, fake: Tensor, seed: int
) -> dict[str, Any]:
    """Step 8: the classifier two-sample test (``metrics.twosample.c2st_many``) of held-out real
    images (never seen by the generator or the feature network) against generated ones,
    and the same test of held-out against training images: the null, what "cannot tell
    them apart" measures as on this data. n per side: the held-out split, at most
    ``evaluate.two_sample_samples``."""
    n = min(len(holdout), ep.two_sample_samples, len(fake))
    # auto: by the model test's n (the null's critics train beside them, as long)
    steps = None if ep.two_sample_steps == "auto" else ep.two_sample_steps
    settings = dict(
        folds=ep.two_sample_folds,
        critics=ep.two_sample_critics,
        steps=steps,
        width=ep.two_sample_width,
        seed=seed,
    )
    if n < 2 * ep.two_sample_folds:  # too few images to hold out a fold of each side
        reason = f"not run: {n} images per side, fewer than 2 x evaluate.two_sample_folds"
        keys = ("c2st_accuracy", "c2st_ci95_low", "c2st_ci95_high", "c2st_null_accuracy")
        nothing = {
            "c2st_ci95": [None, None],
            "c2st_null_ci95": [None, None],
            "c2st_critic_sd": None,
        }
        skipped = {"c2st_indistinguishable": None, "c2st_protocol": {"skipped": reason}}
        return {**dict.fromkeys(keys), **nothing, **skipped}
    model, null = c2st_many([(holdout[:n], fake[:n]), (holdout[:n], train)], **settings)
    lo, hi = model["ci95"]
    return {
        "c2st_accuracy": rounded(model["accuracy"], 4),
        "c2st_ci95": [rounded(lo, 4), rounded(hi, 4)],
        "c2st_ci95_low": rounded(lo, 4),
        "c2st_ci95_high": rounded(hi, 4),
        "c2st_null_accuracy": rounded(null["accuracy"], 4),
        "c2st_null_ci95": [rounded(v, 4) for v in null["ci95"]],
        # the critics' own seed spread (sd of the mean accuracy), inside the interval above
        "c2st_critic_sd": None if model["critic_sd"] is None else rounded(model["critic_sd"], 4),
        # the only reading under which "cannot be told from real" may be claimed
        "c2st_indistinguishable": bool(lo <= 0.5 <= hi),
        "c2st_protocol": {
            "real": "holdout split",
            "n_per_side": model["n_per_side"],
            "batch_size": model["batch_size"],
            "lr": model["lr"],
            **settings,
            "steps": model["steps"],  # as resolved
            "steps_setting": ep.two_sample_steps,
        },
    }


def copying_verdict(
    ep: EvaluateParams,
    train: tuple[Tensor, Tensor],
    holdout: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
) -> tuple[dict[str, Any], Tensor]:
    """Step 9: the data-copying test (``metrics.twosample.copying_z``) in pixel space and in
    the feature space; each argument is (images, features). -> (the result, the indices of
    generated images nearest the training set with their training neighbours, (8, 2))."""
    z, pairs = {}, None
    for space, i in (("pixel", 0), ("feature", 1)):
        d_fake, nearest = nearest_distances(fake[i], train[i])
        d_hold, _ = nearest_distances(holdout[i], train[i])
        z[space] = copying_z(d_fake, d_hold)
        if space == "pixel":
            order = d_fake.argsort()[:8]
            pairs = torch.stack([order, nearest[order]], dim=1)
    copying = min(z.values()) < -ep.copying_z
    return {
        "copying": bool(copying),
        "copying_z_pixel": rounded(z["pixel"], 3),
        "copying_z_feature": rounded(z["feature"], 3),
        "copying_images": {
            "generated": len(fake[0]),
            "train": len(train[0]),
            "holdout": len(holdout[0]),
        },
        "copying_rule": (
            "Mann-Whitney z of generated vs held-out distances to the nearest training image "
            f"(Meehan et al. 2020), in pixel and feature space; copying = either z < "
            f"-{ep.copying_z:g} (evaluate.copying_z): generated images closer to the training "
            "set than unseen real ones"
        ),
    }, pairs


def sample_size_warnings(ep: EvaluateParams, n: int) -> list[str]:
    """Warnings (logged and recorded) about scores from ``n`` images per side."""
    notes = []
    if n < ep.stable_samples:
        notes.append(
            f"FID from {n} images per side is biased upward and less stable "
            f"(evaluate.stable_samples = {ep.stable_samples}); promotion still compares FID, by "
            "its 95% interval (which widens with few images, so a small-sample candidate wins "
            "only by a clear margin) and only between models evaluated on the same data by the "
            "same feature network; read it against fid_floor"
        )
    for note in notes:
        log.warning(note)
    return notes
