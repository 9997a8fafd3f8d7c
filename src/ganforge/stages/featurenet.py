"""Stage ``featurenet``: train and check the feature network that FID, KID and IS use.

    ganforge featurenet [--data data/prepared] [--out models/featurenet]

Trains ``ganforge.metrics.featurenet.FeatureNet`` on the prepared training split for
``featurenet.steps`` optimiser steps (``ganforge.engine.featurenet``), with the objective
the data can support (``featurenet.objective: auto``):

- ``classifier`` when there are at least ``RICH_LABELS`` classes and ``MIN_PER_CLASS``
  training images in each; ``hybrid`` (classifier + contrastive) with 2 to RICH_LABELS - 1
  classes. Checked on the held-out split: overall accuracy must reach
  ``featurenet.min_accuracy`` (auto: the measured 98% for MNIST, 95% for digits; for any
  other data chance + 75% of the way to 1, e.g. 0.875 for two classes), and the accuracy
  of each class is recorded (the evaluate stage issues a collapse verdict only when every
  class is recognised well enough).
- ``contrastive`` otherwise (one class, or too few images to learn classes from): SimCLR on
  augmented views. Checked by held-out view retrieval (``retrieval_accuracy``), which must
  reach ``featurenet.min_accuracy`` (auto: half-way from the untrained network's figure,
  recorded beside it, to 1: proof that it learned).

Either way an auto gate fails only a score below it beyond its sampling error (``upper_bound``:
the Wilson 95% upper bound on the number of held-out images; 28 right of 30 is no evidence
against 95%); a number set by the user is taken as written. And either way the evaluate
stage still scores negative controls in this space before it
publishes a number. Writes ``<out>/featurenet.pt`` (+ ``.sha256``: the version every score
records) and ``<out>/metrics.json``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganforge.config import Params
from ganforge.core import fastpath
from ganforge.core.dataset import load_split
from ganforge.core.device import resolve_device, to_unit_range
from ganforge.core.files import claim_dir, mark_dir, write_json
from ganforge.core.sources import source
from ganforge.engine.featurenet import (
    accuracy,
    class_accuracy,
    fit_featurenet,
    predictions,
    resolve_steps,
    retrieval_accuracy,
)
from ganforge.errors import ConfigError, GanforgeError
from ganforge.metrics.featurenet import FeatureNet, save_featurenet

log = logging.getLogger(__name__)

# classifier objective (auto) needs this many training images in every class
MIN_PER_CLASS = 20
# auto: with fewer classes than this the labels alone teach too little (measured: a two-class
# photo classifier could not tell tile-shuffled patches from real ones), so hybrid
RICH_LABELS = 10
# contrastive objective, min_accuracy auto: held-out view retrieval must close at least this
# share of the gap between the untrained network's and 1 (measured on 200 grey photo patches
# at 16 px: 0.20 at init, 0.85 after 300 steps; on colour at 32 px 0.17 -> 0.97)
AUTO_RETRIEVAL_GAIN = 0.5
# view retrieval is measured among at most this many held-out images
RETRIEVAL_IMAGES = 1000
# featurenet.texture: the texture statistics' scale is measured on at most this many images
TEXTURE_IMAGES = 5000


class FeatureNetError(GanforgeError):
    """The feature network is too weak to judge generators with."""


def resolve_objective(setting: str, labels: np.ndarray, num_classes: int) -> tuple[str, str]:
    """(objective, why) for ``featurenet.objective``."""
    counts = np.bincount(labels, minlength=num_classes)
    if setting in ("classifier", "hybrid") and num_classes < 2:
        raise ConfigError(
            f"featurenet.objective: {setting} needs at least two classes; use auto or contrastive"
        )
    if setting != "auto":
        return setting, "featurenet.objective"
    if num_classes < 2:
        return "contrastive", "one class: labels cannot teach features"
    if counts.min() < MIN_PER_CLASS:
        return "contrastive", f"a class has {counts.min()} training images (< {MIN_PER_CLASS})"
    if num_classes < RICH_LABELS:
        return "hybrid", f"{num_classes} classes: labels alone teach too little"
    return "classifier", f"{num_classes} classes, >= {MIN_PER_CLASS} training images each"


def min_accuracy(
    setting: float | str, manifest: dict[str, Any], objective: str, at_init: float = 0.0
) -> float:
    """The held-out gate for this dataset and objective (see the module docstring);
    ``at_init``: the untrained network's view-retrieval accuracy (contrastive)."""
    if setting != "auto":
        return float(setting)
    if objective == "contrastive":
        return round(at_init + AUTO_RETRIEVAL_GAIN * (1.0 - at_init), 4)
    measured = source(manifest["source"]).min_accuracy(manifest)  # the source's own gate
    if measured is not None:
        return measured
    chance = 1.0 / manifest["num_classes"]
    return round(chance + 0.75 * (1.0 - chance), 4)


def upper_bound(score: float, n: int, z: float = 1.96) -> float:
    """Wilson score upper bound (95% for z = 1.96) of a proportion ``score`` measured on ``n``
    images: how high the true accuracy may be, given only ``n`` held-out images."""
    if n <= 0:
        return 1.0
    centre = score + z * z / (2 * n)
    spread = z * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def train_featurenet(params: Params, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Train, check and save the feature network; returns its metrics."""
    fp = params.featurenet
    out_dir = claim_dir(out_dir, "featurenet")
    device = resolve_device(fp.device, "featurenet.device")
    train_split, hold = load_split(data_dir, "train"), load_split(data_dir, "holdout")
    manifest = train_split.manifest
    k = manifest["num_classes"]
    objective, why = resolve_objective(fp.objective, train_split.labels, k)
    steps = resolve_steps(fp.steps, len(train_split.images), fp.batch_size)

    torch.manual_seed(fp.seed)
    kwargs = {
        "channels": manifest["channels"],
        "num_classes": k,
        "width": fp.width,
        "feature_dim": fp.feature_dim,
        "texture": fp.texture,
    }
    net = FeatureNet(**kwargs).to(device)
    check = hold.images[:RETRIEVAL_IMAGES]
    aug = {"max_shift": fp.max_shift, "hflip": fp.hflip, "seed": fp.seed, "device": device}
    at_init = retrieval_accuracy(net, check, **aug) if objective == "contrastive" else None
    gate = min_accuracy(fp.min_accuracy, manifest, objective, at_init or 0.0)
    fast = fastpath.resolve(device, fp.bf16, fp.channels_last)
    log.info("%s network, %d steps on %s: %s", objective, steps, device, fast.describe())
    t0 = time.perf_counter()
    fit_featurenet(
        net,
        train_split.images,
        train_split.labels,
        objective=objective,
        steps=steps,
        batch_size=fp.batch_size,
        lr=fp.lr,
        max_shift=fp.max_shift,
        hflip=fp.hflip,
        seed=fp.seed,
        device=device,
        fast=fast,
    )
    seconds = time.perf_counter() - t0
    # the texture statistics' weight in the judging space, from a seeded subset of the
    # training split (the variance of 5,000 images is known to a few percent)
    pick = np.random.default_rng(fp.seed).permutation(len(train_split.images))[:TEXTURE_IMAGES]
    texture_scale = net.set_texture_scale(to_unit_range(train_split.images[np.sort(pick)], device))
    names = manifest["class_names"]
    if objective != "contrastive":
        pred = predictions(net, hold.images, device)
        score, what = accuracy(pred, hold.labels), "held-out accuracy"
        per_class = dict(zip(names, class_accuracy(pred, hold.labels, k), strict=True))
        train_score = accuracy(predictions(net, train_split.images, device), train_split.labels)
    else:
        score, what = retrieval_accuracy(net, check, **aug), "held-out view retrieval accuracy"
        per_class, train_score = {}, None
    # an auto gate is a fixed bar, but a score on few held-out images is noisy (30 images:
    # one miss is 3.3 points), so auto fails only a score that is below it beyond its
    # sampling error; a number the user set is taken as written
    n_checked = len(hold.images) if objective != "contrastive" else len(check)
    upper = upper_bound(score, n_checked)
    auto = fp.min_accuracy == "auto"
    if (upper if auto else score) < gate:
        beyond = (
            f" beyond its sampling error (95% upper bound {upper:.4f} on {n_checked} images)"
            if auto
            else ""
        )
        raise FeatureNetError(
            f"featurenet: {what} {score:.4f} is below featurenet.min_accuracy "
            f"{gate:.2f}{beyond} on {data_dir} "
            f"({objective}, {steps} steps); train longer (featurenet.steps) or widen it "
            "(featurenet.width)"
        )
    if score < gate:
        log.warning(
            "%s %.4f is below %.2f but within its sampling error on %d held-out images "
            "(95%% upper bound %.4f): accepted",
            what,
            score,
            gate,
            n_checked,
            upper,
        )
    record = {
        "image_size": manifest["image_size"],
        "class_names": names,
        "data_sha256": manifest["content_sha256"],
        "objective": objective,
        "holdout_accuracy": score,
        "holdout_class_accuracy": per_class,
        "params": fp.model_dump(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    mark_dir(out_dir, "featurenet")
    digest = save_featurenet(net, kwargs, record, out_dir / "featurenet.pt")
    metrics = {
        "objective": objective,
        "objective_reason": why,
        "texture": fp.texture,
        "texture_scale": round(texture_scale, 6) if fp.texture else None,
        "feature_dim": net.num_features,
        "holdout_accuracy": round(score, 5),
        "holdout_accuracy_means": what,
        "holdout_class_accuracy": {
            c: None if a is None else round(a, 5) for c, a in per_class.items()
        },
        "train_accuracy": None if train_score is None else round(train_score, 5),
        "retrieval_accuracy_at_init": None if at_init is None else round(at_init, 5),
        "min_accuracy": gate,
        # auto passes when this reaches min_accuracy; a set value, when holdout_accuracy does
        "holdout_accuracy_upper95": round(upper, 5),
        "holdout_images": len(hold.images),
        "steps": steps,
        "seconds": round(seconds, 2),
        "sha256": digest,
        "device": str(device),
        "fast_path": fast.record(),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics
