"""The mode-collapse verdict, on the basis the feature space can support.

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

from ganforge.config import EvaluateParams
from ganforge.metrics.scores import class_histogram, mode_collapse


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
            f"{ep.collapse_min_class_accuracy:g}, too weak to count classes by; rerun `ganforge featurenet`"
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
