"""Stage ``evaluate``: FID, KID, IS, precision/recall and mode-collapse detection, with the
protocol that produced them.

    ganforge evaluate [--data data/prepared] [--generator models/main/generator.pt]
                      [--featurenet models/featurenet/featurenet.pt]
                      [--metrics metrics/eval.json] [--reports reports]

Protocol (every number in ``eval.json`` comes with it under ``protocol``):

1. Generate ``evaluate.num_samples`` images with the EMA generator (seeded; conditional
   models' labels drawn from the real split's label distribution), batched on the device.
2. Take as many real images from ``evaluate.real_split`` as the split has, up to the same
   number. Both sets go through the feature network once: penultimate features (N, F)
   and logits (N, K).
3. FID and KID are torchmetrics' (the features are passed through an identity module,
   so the Frechet and kernel maths are the library's); IS is torchmetrics' on the logits.
4. ``fid_ci95``: bootstrap over the feature rows of both sets, its spread centred on the
   estimate (metrics/scores.py ``fid_bootstrap`` says why).
5. ``fid_floor``: FID between two disjoint halves of the real pool, each of ``m`` images;
   ``fid_at_floor_samples`` is the model's FID at the same ``m``, so the two compare
   like with like. A model cannot be told from real data when they overlap.
   Negative controls (``ganforge.metrics.controls``: flat colour, noise, blurred and
   tile-shuffled real images, and the subtle three: slightly blurred, a 0.1 checkerboard,
   0.1 high-frequency noise) are scored against the same real half; the stage fails,
   publishing nothing, when the floor is not above zero or a gated control scores under
   ``evaluate.control_ratio`` x the floor: such a feature space cannot rank generators.
   The subtle three are gated from ``SUBTLE_MIN_IMAGES`` (500) images per side, recorded
   with a warning below it (``protocol.controls_gated`` names those gated).
   A model whose FID at the floor's sample count is at or under the floor, or whose KID's
   interval lies below zero, gets ``separable: false`` ("feature space cannot separate
   these sets"), never a good-model reading; promotion refuses it.
6. Mode collapse, on the basis the feature space supports (``mode_collapse_basis``):
   - ``class histogram``: with a classifier feature network whose held-out accuracy is at
     least ``evaluate.collapse_min_class_accuracy`` in every class, the generated class
     histogram (argmax) against the real one: ``class_coverage``, ``kl_class``;
   - ``not assessed``: a classifier that recognises some class less well than that: the
     verdict is null and the reason is in ``mode_collapse_rule`` (promotion refuses);
   - ``recall``: a space without the data's classes (contrastive feature network,
     Inception): collapsed when recall (step 7) is under ``evaluate.min_recall``.
7. Precision/recall in feature space with k-NN manifolds (Kynkaanniemi et al. 2019),
   overall and per class; density and coverage (Naeem et al. 2020). Recall under
   ``evaluate.min_recall`` is collapse on any basis (within-class collapse).
8. The classifier two-sample test in pixel space (``metrics.twosample``), needing no
   feature network: held-out real images (never seen by the generator or the feature
   network) against generated ones, a fresh critic per fold trained for a budget measured
   to be enough, every image predicted once: ``c2st_accuracy`` with its 95%
   interval, and the null measured the same way (held-out vs training images). 0.5: the
   test cannot tell them apart; ``c2st_indistinguishable`` only when the interval holds 0.5.
9. The data-copying test (Meehan et al. 2020): generated vs held-out distances to the
   nearest training image, in pixel and feature space; ``copying`` when either z-score is
   under ``-evaluate.copying_z``; ``reports/copying.png`` shows the 8 generated images
   nearest the training set over their nearest training images.

The metric functions are ``ganforge.metrics.scores``; the feature spaces
``ganforge.metrics.features``. Reports (``core.grids.write_reports``): ``samples.png``,
``interpolation.png`` (slerp between latent pairs) and, for conditional models,
``per_class.png`` (one row per class).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ganforge.config import EvaluateParams, Params
from ganforge.core import fastpath
from ganforge.core.dataset import SPLITS, dataset_name, load_split
from ganforge.core.device import resolve_device, to_unit_range
from ganforge.core.files import atomic_dir, claim_dir, write_metrics
from ganforge.core.grids import save_grid, write_reports
from ganforge.core.progress import Timer
from ganforge.errors import GanforgeError
from ganforge.metrics.controls import (
    CONTROLS,
    SUBTLE_MIN_IMAGES,
    FeatureSpaceError,
    check_controls,
    gated_controls,
    score_controls,
)
from ganforge.metrics.features import DomainFeatures, FeatureExtractor, InceptionFeatures
from ganforge.metrics.headline import EVAL_NAMES
from ganforge.metrics.scores import fid
from ganforge.metrics.truncation import generate, truncation_curve, write_curve
from ganforge.metrics.verdicts import (
    class_verdict,
    copying_verdict,
    distance_scores,
    precision_recall_by_class,
    recall_verdict,
    sample_size_warnings,
    two_sample_verdict,
)
from ganforge.models import load_generator

log = logging.getLogger(__name__)


class EvaluationError(GanforgeError):
    """Inputs that cannot give a trustworthy score (mismatched data, too few images)."""


def _load_inputs(ep: EvaluateParams, data_dir, generator_path, featurenet_path, device):
    """(real split, generator, its metadata, feature extractor), all checked against the data."""
    real_split = load_split(data_dir, ep.real_split)
    data_sha = real_split.manifest["content_sha256"]
    G, gmeta = load_generator(generator_path, device)
    if gmeta["data"]["content_sha256"] != data_sha:
        raise EvaluationError(
            f"{generator_path}: trained on other data than {data_dir} (content_sha256 differs); "
            "evaluate against the data it was trained on"
        )
    extractor: FeatureExtractor
    if ep.features == "featurenet":
        fast = fastpath.resolve(device, ep.bf16, ep.channels_last)  # the standard Inception: fp32
        extractor = DomainFeatures(featurenet_path, device, ep.batch_size, fast)
        log.info("feature network on %s: %s", device, fast.describe())
        if extractor.meta["data_sha256"] != data_sha:
            raise EvaluationError(
                f"{featurenet_path}: trained on other data than {data_dir}; rerun `ganforge "
                "featurenet`"
            )
    else:
        extractor = InceptionFeatures(
            ep.inception_weights, device, ep.batch_size, ep.inception_sha256
        )
    return real_split, G, gmeta, extractor


def _featurise(extractor, real_split, fake_images, n_real: int, rng_pool, device):
    """Step 2: features of both sets, once. The real pool is taken in a seeded order: the first
    ``n_real`` are compared with the generated set, the first 2m (two disjoint halves of m)
    give the floor; only those are featurised. -> (m, used indices, real (max(n_real, 2m), F),
    fake (N, F), fake logits (N, K)), on the CPU."""
    m = min(n_real, len(real_split.images) // 2)
    used = rng_pool.permutation(len(real_split.images))[: max(n_real, 2 * m)]
    real_f, _ = extractor(to_unit_range(real_split.images[used], device))
    fake_f, fake_logits = extractor(fake_images)
    return m, used, real_f.cpu(), fake_f.cpu(), fake_logits.cpu()


def _features_of(extractor, x: Tensor, idx: np.ndarray, known) -> Tensor:
    """Features (on the CPU) of ``x[idx]``. ``known`` = (indices into the same split, their
    features) from step 2, or None: those rows are reused, only the others are featurised
    (with the default real split, step 2 has already featurised every training image)."""
    if known is None:
        return extractor(x[idx])[0].cpu()
    rows, features = known
    where = np.full(len(x), -1)
    where[rows] = np.arange(len(rows))
    have = torch.from_numpy(where[idx] >= 0)
    out = torch.empty(len(idx), features.shape[1], dtype=features.dtype)
    out[have] = features[torch.from_numpy(where[idx][have.numpy()])]
    if not have.all():
        out[~have] = extractor(x[idx[~have.numpy()]])[0].cpu().to(features.dtype)
    return out


def _controls(ep, extractor, real_split, used, real_pool: Tensor, m: int, floor: float, device):
    """Step 5b: the negative controls against the same real half as the floor, at
    nc = min(m, evaluate.control_samples) images (the floor at m is reused when nc = m);
    raises if the space cannot separate them -> (scores, the gated controls' names,
    warnings)."""
    nc = min(m, ep.control_samples)
    other = to_unit_range(real_split.images[used[m : m + nc]], device)
    if nc < m:
        floor = fid(real_pool[:nc], real_pool[m : m + nc])

    def extract(images: Tensor) -> Tensor:
        return extractor(images)[0].cpu()

    scores = score_controls(extract, fid, real_pool[:nc], floor, other, ep.seed)
    space = extractor.record.get("featurenet") or extractor.record.get("inception_weights")
    gated = gated_controls(nc)
    try:
        check_controls(
            scores,
            ep.control_ratio,
            f"retrain the feature network (featurenet.steps), evaluate more images "
            f"(evaluate.num_samples; {nc} per side here) or use evaluate.features=inception",
            gated,
        )
    except FeatureSpaceError as exc:
        raise EvaluationError(f"{space}: {exc}") from None
    warnings = []
    if gated != CONTROLS:
        weak = [k for k in CONTROLS if scores[k] < ep.control_ratio * scores["floor"]]
        warnings.append(
            f"the subtle negative controls (slight blur, checkerboard, high-frequency noise) "
            f"are recorded, not gated: {nc} real images per side is under {SUBTLE_MIN_IMAGES}, "
            "too few for FID to see them"
            + (f" ({', '.join(weak)} under {ep.control_ratio:g} x the floor here)" if weak else "")
            + "; the two-sample test judges such faults"
        )
    scores = {"control_samples": nc, **{k: float(f"{v:.5g}") for k, v in scores.items()}}
    return scores, " ".join(gated), warnings


def _protocol(
    ep, extractor, manifest, gmeta, generator_path, n_fake: int, n_real: int, m: int, device
):
    """How the numbers were made: counts, settings, feature space, generator and data, with
    their checksums; recorded in every eval_details.json and as MLflow tags."""
    return {
        **extractor.record,
        "num_generated": n_fake,
        "num_real": n_real,
        "real_split": ep.real_split,
        # which real images each score is measured against (the generator saw the train split)
        "real_split_by_score": {
            "fid kid is precision recall density coverage mode_collapse": ep.real_split,
            "fid_floor fid_at_floor_samples": f"{ep.real_split} (two disjoint halves of m)",
            "c2st": "holdout (null: holdout vs train)",
            "copying": "nearest train image; generated vs holdout distances (each split at most "
            "evaluate.copying_reference images, seeded)",
        },
        "floor_samples": m,
        "bootstrap_replicates": ep.bootstrap,
        "kid_subsets": ep.kid_subsets,
        "kid_subset_size": min(ep.kid_subset_size, n_real, n_fake),
        "is_splits": ep.is_splits,
        "pr_k": ep.pr_k,
        "pr_samples": min(ep.pr_samples, n_real, n_fake),
        "image_size": manifest["image_size"],
        "channels": manifest["channels"],
        "seed": ep.seed,
        # every score is of samples truncated at this (None: the plain generator); promotion
        # compares only evaluations at the same truncation
        "truncation": ep.truncation,
        "generator": str(generator_path),
        "generator_sha256": gmeta["sha256"],
        "generator_family": gmeta["family"],
        "generator_conditional": gmeta["conditional"],
        "generator_step": gmeta["step"],
        "generator_weights": "ema",
        "dataset": dataset_name(manifest),
        "data_sha256": manifest["content_sha256"],
        "device": str(device),
        "torch": torch.__version__,
    }


def evaluate(
    params: Params,
    data_dir: str | Path,
    generator_path: str | Path,
    featurenet_path: str | Path,
    metrics_path: str | Path,
    reports_dir: str | Path,
) -> dict[str, Any]:
    """Score the generator; write ``metrics_path`` (the headline numbers), its ``_details``
    file (protocol, per-class tables, timings) and the report images. Returns everything."""
    ep: EvaluateParams = params.evaluate
    claim_dir(reports_dir, "evaluate")  # before any work: never replace a user's folder
    device = resolve_device(ep.device, "evaluate.device")
    timer = Timer(device)
    with timer("load_s"):
        real_split, G, gmeta, extractor = _load_inputs(
            ep, data_dir, generator_path, featurenet_path, device
        )
    manifest: dict[str, Any] = real_split.manifest

    # separate streams: the real-pool order (and so the floor) must not depend on the generator
    rng_pool, rng_labels = np.random.default_rng(ep.seed), np.random.default_rng(ep.seed + 5)
    n_fake, n_real = ep.num_samples, min(ep.num_samples, len(real_split.images))
    requested = None
    if gmeta["conditional"]:  # labels at the real split's class frequencies
        requested = torch.as_tensor(rng_labels.choice(real_split.labels, size=n_fake, replace=True))

    # 1-2: generate, then features for both sets, once
    latent = gmeta["generator_kwargs"]["latent_dim"]
    with timer("generate_s"):
        fake_images = generate(
            G, n_fake, latent, requested, ep.batch_size, device, ep.seed, ep.truncation
        )
    with timer("features_s"):
        m, used, real_pool, fake_f, fake_logits = _featurise(
            extractor, real_split, fake_images, n_real, rng_pool, device
        )
    real_f = real_pool[:n_real]
    real_labels = torch.from_numpy(real_split.labels[used[:n_real]])

    # 3-5: FID with its interval and floor, KID, IS; the negative controls
    with timer("fid_kid_is_s"):
        logits = fake_logits if extractor.logits_meaningful else None
        metrics, floor = distance_scores(ep, real_pool, n_real, fake_f, logits, m)
    with timer("controls_s"):
        controls, gated, control_warnings = _controls(
            ep, extractor, real_split, used, real_pool, m, floor, device
        )

    # 6-7: precision/recall, then collapse on the basis the feature space supports
    with timer("collapse_pr_s"):
        fake_pred = fake_logits.argmax(1) if extractor.classes else None
        n_pr = min(ep.pr_samples, n_real, n_fake)
        names = manifest["class_names"]
        metrics.update(
            precision_recall_by_class(ep, names, real_f, fake_f, real_labels, fake_pred, n_pr)
        )
        if fake_pred is not None:
            accuracy, recall = extractor.class_accuracy, metrics["recall"]
            metrics.update(
                class_verdict(ep, manifest, accuracy, real_labels, fake_pred, requested, recall)
            )
        else:
            space = extractor.record.get("featurenet_objective", extractor.name)
            metrics.update(recall_verdict(ep, space, metrics["recall"]))
    metrics["negative_controls"] = controls
    metrics["warnings"] = sample_size_warnings(ep, min(n_real, n_fake)) + control_warnings

    # 8-9: judges in pixel space, against images the generator never saw
    splits = {s: real_split if s == ep.real_split else load_split(data_dir, s) for s in SPLITS}
    x = {s: to_unit_range(split.images, device) for s, split in splits.items()}
    with timer("two_sample_s"):
        metrics.update(two_sample_verdict(ep, x["holdout"], x["train"], fake_images, ep.seed))
    with timer("copying_s"):
        n_copy = min(n_fake, ep.two_sample_samples * 2)
        # a seeded subset, in split order, when a split is larger than evaluate.copying_reference
        rng_copy = np.random.default_rng(ep.seed + 9)
        pick = {s: np.sort(rng_copy.permutation(len(x[s]))[: ep.copying_reference]) for s in x}
        known = {ep.real_split: (used, real_pool)}  # what step 2 featurised
        feats = {s: _features_of(extractor, x[s], pick[s], known.get(s)) for s in x}
        ref_x = x["train"][pick["train"]]
        copying, pairs = copying_verdict(
            ep,
            (ref_x, feats["train"]),
            (x["holdout"][pick["holdout"]], feats["holdout"]),
            (fake_images[:n_copy], fake_f[:n_copy]),
        )
        metrics.update(copying)

    with timer("truncation_s"):  # the fidelity/diversity dial, measured
        features = lambda images: extractor(images)[0].cpu()  # noqa: E731
        curve, strips = truncation_curve(
            ep, G, latent, requested, features, real_f, real_pool[:m], x["holdout"], device
        )
        metrics["truncation_curve"] = curve

    with timer("reports_s"), atomic_dir(reports_dir, owner="evaluate") as tmp:
        conditional, k = gmeta["conditional"], manifest["num_classes"]
        write_reports(
            G, latent, k, conditional, ep.seed, ep.interpolation_steps, tmp, device, ep.truncation
        )
        write_curve(curve, tmp)
        save_grid(strips, tmp / "truncation_samples.png", len(strips) // len(curve))
        closest = torch.cat([fake_images[pairs[:, 0]], ref_x[pairs[:, 1]]])
        save_grid(closest, tmp / "copying.png", len(pairs))  # generated over their nearest
    metrics["protocol"] = _protocol(
        ep, extractor, manifest, gmeta, generator_path, n_fake, n_real, m, device
    ) | {"controls_gated": gated}
    metrics["timing_s"] = timer.seconds()
    write_metrics(metrics_path, metrics, EVAL_NAMES)  # the rest: eval_details.json
    return metrics
