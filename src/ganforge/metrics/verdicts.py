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

from typing import Any

from torch import Tensor

from ganforge.config import EvaluateParams
from ganforge.metrics.scores import (
    class_histogram,
    fid,
    fid_bootstrap,
    inception_score,
    kid,
    mode_collapse,
    precision_recall,
    rounded,
)


def class_verdict(
    ep: EvaluateParams,
    manifest,
    class_accuracy: dict[str, float | None],
    real_labels,
    fake_pred,
    requested,
) -> dict[str, Any]:
    """Step 6 with classes: the generated class mix against the real one, and the collapse
    verdict if the classifier recognises every class well enough to support it."""
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
    return {"precision": rounded(precision), "recall": rounded(recall), "per_class": per_class}
