"""The headline numbers: one definition of the names that ``metrics/eval.json`` holds, that
``ganforge evaluate`` prints, that promotion records on a registry version and that
``make compare`` shows as columns. Every such list in ganforge is derived from ``EVAL`` (and
``EXPORT``); adding a headline number is one line here.

    python -m ganforge.metrics.headline    # the column regex `make compare` passes to dvc
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    name: str
    printed: bool = False  # in the JSON line `ganforge evaluate` prints
    compared: bool = False  # a column of `make compare` (dvc exp show)
    recorded: bool = False  # a tag on the registry version promote creates


EVAL: tuple[Headline, ...] = (
    Headline("fid", printed=True, compared=True, recorded=True),
    Headline("fid_ci95", printed=True),  # [low, high]; DVC tables show no lists, so also:
    Headline("fid_ci95_low", compared=True, recorded=True),
    Headline("fid_ci95_high", compared=True, recorded=True),
    Headline("fid_floor", printed=True, compared=True, recorded=True),
    Headline("fid_at_floor_samples", printed=True, compared=True, recorded=True),
    # like for like: fid_at_floor_samples / fid_floor, both at the floor's sample sizes
    Headline("fid_over_floor", printed=True, compared=True, recorded=True),
    Headline("separable", recorded=True),
    Headline("kid_mean", printed=True, compared=True, recorded=True),
    Headline("kid_std"),
    Headline("is_mean", printed=True, recorded=True),
    Headline("is_std"),
    Headline("precision", printed=True, compared=True, recorded=True),
    Headline("recall", printed=True, compared=True, recorded=True),
    Headline("class_coverage", printed=True, compared=True, recorded=True),
    Headline("kl_class"),
    Headline("mode_collapse", printed=True, compared=True, recorded=True),
    Headline("label_accuracy"),
    Headline("density", printed=True, compared=True, recorded=True),
    Headline("coverage", printed=True, compared=True, recorded=True),
    # the classifier two-sample test on held-out real images: 0.5 = cannot tell them apart
    Headline("c2st_accuracy", printed=True, compared=True, recorded=True),
    Headline("c2st_ci95", printed=True),
    Headline("c2st_ci95_low", recorded=True),
    Headline("c2st_ci95_high", recorded=True),
    Headline("c2st_null_accuracy", printed=True, compared=True, recorded=True),
    Headline("c2st_indistinguishable", printed=True),
    Headline("copying", printed=True, compared=True, recorded=True),
    Headline("copying_z_pixel", recorded=True),
    Headline("copying_z_feature", recorded=True),
)
EXPORT: tuple[Headline, ...] = (
    Headline("parity_max_abs_diff", compared=True, recorded=True),
    Headline("parity_tolerance"),
    Headline("opset"),
)

EVAL_NAMES = tuple(h.name for h in EVAL)
EXPORT_NAMES = tuple(h.name for h in EXPORT)
PRINTED = tuple(h.name for h in EVAL if h.printed)
RECORDED = tuple(h.name for h in EVAL + EXPORT if h.recorded)

# the params `make compare` shows beside the metrics
COMPARED_PARAMS = (
    "train.model",
    "train.steps",
    "train.lr",
    "train.seed",
    "prepare.name",
    "prepare.source",
    "prepare.image_size",
)


def compare_regex() -> str:
    """Columns of ``dvc exp show --keep``: the experiment, the compared metrics and params."""
    names = [h.name for h in EVAL + EXPORT if h.compared]
    names += [p.replace(".", r"\.") for p in COMPARED_PARAMS]
    return "^(Experiment|Created|" + "|".join(names) + ")$"


if __name__ == "__main__":
    print(compare_regex())
