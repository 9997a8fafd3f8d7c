"""Stage ``evaluate``: FID, KID, IS, precision/recall and mode-collapse detection, with the
protocol that produced them.

    ganforge evaluate [--data data/prepared] [--generator models/main/generator.pt]
                      [--featurenet models/featurenet/featurenet.pt]
                      [--metrics metrics/eval.json] [--reports reports]

Protocol (every number in ``eval.json`` comes with it under ``protocol``):

1. Generate ``evaluate.num_samples`` images with the EMA generator (seeded; ``cdcgan``
   labels drawn from the real split's label distribution), batched on the device.
2. Take as many real images from ``evaluate.real_split`` as the split has, up to the same
   number. Both sets go through the feature network once: penultimate features (N, F)
   and logits (N, K).
3. FID and KID are torchmetrics' (the features are passed through an identity module,
   so the Frechet and kernel maths are the library's); IS is torchmetrics' on the logits.
4. ``fid_ci95``: percentile bootstrap over the feature rows of both sets.
5. ``fid_floor``: FID between two disjoint halves of the real pool, each of ``m`` images;
   ``fid_at_floor_samples`` is the model's FID at the same ``m``, so the two compare
   like with like. A model cannot be told from real data when they overlap.
6. Mode collapse: the generated class histogram (feature-network argmax) against the
   real one: ``class_coverage`` and ``kl_class``, and the ``mode_collapse`` flag with
   ``mode_collapse_rule`` written beside it.
7. Precision/recall in feature space with k-NN manifolds (Kynkaanniemi et al. 2019),
   overall and per class.

Reports: ``samples.png``, ``interpolation.png`` (slerp between latent pairs) and, for
conditional models, ``per_class.png`` (one row per class).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ganforge.checkpoint import load_generator
from ganforge.config import EvaluateParams, Params
from ganforge.data import load_split
from ganforge.errors import ConfigError, GanforgeError
from ganforge.grids import fixed_grid_inputs, save_grid, slerp
from ganforge.io import sha256_file, write_json

log = logging.getLogger(__name__)
# torchmetrics warns that KID/IS keep their inputs in memory: here those are the (N, F)
# features, already in memory, so the warning says nothing to our users.
warnings.filterwarnings(
    "ignore", message=r"Metric `(Kernel Inception Distance|InceptionScore)` will save"
)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


class EvaluationError(GanforgeError):
    """Inputs that cannot give a trustworthy score (mismatched data, too few images)."""


class _Precomputed(nn.Module):
    """Identity 'feature extractor': lets torchmetrics score features computed once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


# --------------------------------------------------------------------------- metric functions


def fid(real: Tensor, fake: Tensor) -> float:
    """torchmetrics FID of two feature sets (N, F), (M, F)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), normalize=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def fid_bootstrap(real: Tensor, fake: Tensor, replicates: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of FID under resampling the rows of both sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if replicates <= 0:
        return (float("nan"), float("nan"))
    g = torch.Generator().manual_seed(seed + 1)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), normalize=False)
    real64, fake64 = real.double().cpu(), fake.double().cpu()
    values = []
    for _ in range(replicates):
        metric.reset()
        metric.update(real64[torch.randint(len(real64), (len(real64),), generator=g)], real=True)
        metric.update(fake64[torch.randint(len(fake64), (len(fake64),), generator=g)], real=False)
        values.append(float(metric.compute()))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def kid(
    real: Tensor, fake: Tensor, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """torchmetrics KID (polynomial-kernel MMD, unbiased) -> (mean, std over subsets)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    metric = KernelInceptionDistance(
        feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size
    )
    metric.update(real.float(), real=True)
    metric.update(fake.float(), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 2)  # KID draws its subsets from the global RNG
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: Tensor, splits: int, seed: int) -> tuple[float, float]:
    """torchmetrics IS from classifier logits (it applies the softmax) -> (mean, std)."""
    from torchmetrics.image.inception import InceptionScore

    metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits, normalize=False)
    metric.update(logits.float())
    with torch.random.fork_rng():
        torch.manual_seed(seed + 3)  # IS shuffles before splitting
        mean, std = metric.compute()
    return float(mean), float(std)


def class_histogram(pred: Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(pred), minlength=num_classes).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def mode_collapse(
    real_hist: np.ndarray, fake_hist: np.ndarray, coverage_threshold: float, kl_threshold: float
) -> dict[str, Any]:
    """Class coverage, KL(real || generated) and the collapse flag with its rule."""
    present = real_hist > 0
    covered = fake_hist >= coverage_threshold * real_hist
    coverage = float((covered & present).sum() / present.sum())
    eps = 1e-6  # a missing class costs log(p / 1e-6) instead of infinity
    q = (fake_hist + eps) / (fake_hist + eps).sum()
    kl = float(
        np.sum(np.where(present, real_hist * np.log(np.where(present, real_hist, 1.0) / q), 0.0))
    )
    collapsed = coverage < 1.0 or kl > kl_threshold
    return {
        "class_coverage": coverage,
        "classes_missed": [int(i) for i in np.flatnonzero(present & ~covered)],
        "kl_class": kl,
        "mode_collapse": bool(collapsed),
        "mode_collapse_rule": (
            f"mode_collapse = class_coverage < 1 (some class generated at under {coverage_threshold:g}x "
            f"its real share) or kl_class = KL(real || generated class histogram) > {kl_threshold:g}"
        ),
    }


def _kth_radius(x: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance from each row of x (N, F) to its k-th nearest other row -> (N,)."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)  # (c, N), includes the zero self-distance
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 2048) -> Tensor:
    """For each point, whether it lies in any ball (centre, radius) -> bool (P,)."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # (c, C)
        out.append((d <= radii[None]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: Tensor, fake: Tensor, k: int) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    precision: share of generated samples inside the real manifold (fidelity);
    recall: share of real samples inside the generated manifold (diversity).
    """
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    real, fake = real.float(), fake.float()
    precision = _inside(fake, real, _kth_radius(real, k)).float().mean()
    recall = _inside(real, fake, _kth_radius(fake, k)).float().mean()
    return float(precision), float(recall)


# --------------------------------------------------------------------------- feature extractors


class FeatureExtractor:
    """Features (N, F) and logits (N, K) for images (N, C, H, W) in [-1, 1], batched."""

    name: str
    record: dict[str, Any]

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class DomainFeatures(FeatureExtractor):
    def __init__(self, path: str | Path, device: torch.device, batch: int) -> None:
        from ganforge.featurenet import load_featurenet

        self.net, meta = load_featurenet(path, device)
        self.device, self.batch = device, batch
        self.name = "featurenet"
        self.record = {
            "features": "featurenet",
            "featurenet": str(path),
            "featurenet_sha256": meta["sha256"],
            "featurenet_holdout_accuracy": meta["holdout_accuracy"],
            "feature_dim": meta["kwargs"]["feature_dim"],
        }
        self.meta = meta

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for chunk in images.split(self.batch):
            f, lg = self.net.features_and_logits(chunk.to(self.device))
            feats.append(f.float())
            logits.append(lg.float())
        return torch.cat(feats), torch.cat(logits)


def _safe_inception_state(path: Path) -> dict[str, Tensor]:
    """Load user-supplied Inception weights without running pickled code (weights_only)."""
    import pickle

    if not path.is_file():
        raise ConfigError(f"evaluate.inception_weights: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ConfigError(
            f"evaluate.inception_weights: {path} is not a weights file ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ConfigError(
            f"evaluate.inception_weights: {path} is not an FID InceptionV3 state dict ({INCEPTION_FILE})"
        )
    return state


class InceptionFeatures(FeatureExtractor):
    """The standard FID network: torch-fidelity's InceptionV3 (2015 TF weights) via torchmetrics.

    2048-d pool features and the 1008-way unbiased logits; grey images are repeated to RGB.
    """

    def __init__(self, weights: str, device: torch.device, batch: int) -> None:
        import tempfile

        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(f"evaluate.features=inception needs torch-fidelity ({exc})") from None
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        cached = (
            next(iter(sorted(hub.glob("*inception-2015-12-05*.pth"))), None)
            if hub.is_dir()
            else None
        )
        source = Path(weights) if weights else cached
        if source is None and os.environ.get("GANFORGE_OFFLINE", "") not in ("", "0"):
            raise ConfigError(
                f"evaluate.inception_weights: no Inception weights and offline; supply {INCEPTION_FILE} "
                f"(torch-fidelity's FID InceptionV3) as evaluate.inception_weights or put it in {hub}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            weights_path = None
            if source is not None:
                weights_path = Path(tmp) / "inception.pth"
                torch.save(_safe_inception_state(source), weights_path)
            try:
                net = NoTrainInceptionV3(
                    name="inception-v3-compat",
                    features_list=["2048"],
                    feature_extractor_weights_path=str(weights_path) if weights_path else None,
                )
            except OSError as exc:  # the library's download failed
                raise ConfigError(
                    f"evaluate.inception_weights: cannot download the Inception weights ({exc}); supply "
                    f"{INCEPTION_FILE} as evaluate.inception_weights or put it in {hub}"
                ) from None
        self.net = net.to(device)
        self.device, self.batch = device, batch
        self.name = "inception"
        self.record = {
            "features": "inception",
            "inception_weights": str(source) if source else "downloaded by torch-fidelity",
            "inception_sha256": sha256_file(source) if source else None,
            "feature_dim": 2048,
        }

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for chunk in images.split(self.batch):
            x = (
                ((chunk.to(self.device).float() + 1) * 127.5)
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
            )
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            f = self.net(x)  # (N, 2048) pool features
            feats.append(f.float())
            logits.append(f.float() @ self.net.fc.weight.T.float())  # (N, 1008) 'logits_unbiased'
        return torch.cat(feats), torch.cat(logits)


# --------------------------------------------------------------------------- stage


@torch.no_grad()
def generate(
    G: nn.Module,
    n: int,
    latent_dim: int,
    labels: Tensor | None,
    batch: int,
    device: torch.device,
    seed: int,
) -> Tensor:
    """n images (n, C, H, W) in [-1, 1] on ``device``, from seeded noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        z = torch.randn(m, latent_dim, device=device, generator=g)
        y = labels[i : i + m].to(device) if labels is not None else None
        out.append(G(z, y).float())
    return torch.cat(out)


def _round(x: float, nd: int = 5) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def evaluate(
    params: Params,
    data_dir: str | Path,
    generator_path: str | Path,
    featurenet_path: str | Path,
    metrics_path: str | Path,
    reports_dir: str | Path,
) -> dict[str, Any]:
    """Score the generator; write ``metrics_path`` (JSON) and the report images. Returns the metrics."""
    from ganforge.train import resolve_device

    ep: EvaluateParams = params.evaluate
    device = resolve_device(ep.device)
    timings: dict[str, float] = {}
    t_all = t0 = time.perf_counter()

    real_split = load_split(data_dir, ep.real_split)
    manifest = real_split.manifest
    G, gmeta = load_generator(generator_path, device)
    if gmeta["data"]["content_sha256"] != manifest["content_sha256"]:
        raise EvaluationError(
            f"{generator_path}: trained on other data than {data_dir} (content_sha256 differs); "
            "evaluate against the data it was trained on"
        )
    extractor: FeatureExtractor
    if ep.features == "featurenet":
        extractor = DomainFeatures(featurenet_path, device, ep.batch_size)
        if extractor.meta["data_sha256"] != manifest["content_sha256"]:
            raise EvaluationError(
                f"{featurenet_path}: trained on other data than {data_dir}; rerun `ganforge featurenet`"
            )
    else:
        extractor = InceptionFeatures(ep.inception_weights, device, ep.batch_size)
    timings["load_s"] = time.perf_counter() - t0

    num_classes = manifest["num_classes"]
    conditional = gmeta["family"] == "cdcgan"
    latent_dim = gmeta["generator_kwargs"]["latent_dim"]
    # separate streams: the real-pool order (and so the floor) must not depend on the generator
    rng_pool, rng_labels = np.random.default_rng(ep.seed), np.random.default_rng(ep.seed + 5)
    n_fake = ep.num_samples
    n_real = min(ep.num_samples, len(real_split.images))
    requested = None
    if conditional:  # labels at the real split's class frequencies
        requested = torch.as_tensor(rng_labels.choice(real_split.labels, size=n_fake, replace=True))

    # 1-2: generate, then features for both sets, once
    t0 = time.perf_counter()
    fake_images = generate(G, n_fake, latent_dim, requested, ep.batch_size, device, ep.seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    timings["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # real pool in a seeded order: the first n_real are compared with the generated set,
    # the first 2m (two disjoint halves of m) give the floor; only those are featurised
    m = min(n_real, len(real_split.images) // 2)
    used = rng_pool.permutation(len(real_split.images))[: max(n_real, 2 * m)]
    real_images = torch.from_numpy(real_split.images[used]).to(device).float().div_(127.5).sub_(1.0)
    real_f_used, _ = extractor(real_images)  # (max(n_real, 2m), F)
    fake_f, fake_logits = extractor(fake_images)
    real_f_used, fake_f, fake_logits = real_f_used.cpu(), fake_f.cpu(), fake_logits.cpu()
    timings["features_s"] = time.perf_counter() - t0

    # 3-5: FID, its interval, the floor; KID; IS
    t0 = time.perf_counter()
    real_f = real_f_used[:n_real]
    real_labels = torch.from_numpy(real_split.labels[used[:n_real]])
    fid_value = fid(real_f, fake_f)
    ci = fid_bootstrap(real_f, fake_f, ep.bootstrap, ep.seed)
    half_a, half_b = real_f_used[:m], real_f_used[m : 2 * m]
    floor = fid(half_a, half_b) if m >= 2 else float("nan")
    fid_at_m = fid(half_a, fake_f[:m]) if m >= 2 else float("nan")
    kid_mean, kid_std = kid(real_f, fake_f, ep.kid_subsets, ep.kid_subset_size, ep.seed)
    is_mean, is_std = inception_score(fake_logits, ep.is_splits, ep.seed)
    timings["fid_kid_is_s"] = time.perf_counter() - t0

    # 6: mode collapse on the domain classifier's classes
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    if extractor.name == "featurenet":
        fake_pred = fake_logits.argmax(1)
        real_hist = class_histogram(real_labels, num_classes)
        fake_hist = class_histogram(fake_pred, num_classes)
        result.update(mode_collapse(real_hist, fake_hist, ep.coverage_threshold, ep.kl_threshold))
        names = manifest["class_names"]
        result["class_histogram"] = {
            names[i]: round(float(fake_hist[i]), 5) for i in range(num_classes)
        }
        if conditional:
            result["label_accuracy"] = round(float((fake_pred == requested).float().mean()), 5)
    else:
        fake_pred = None
        result["mode_collapse"] = None
        result["mode_collapse_rule"] = (
            "class histograms need evaluate.features=featurenet (a domain classifier)"
        )

    # 7: precision / recall, overall and per class
    n_pr = min(ep.pr_samples, n_real, n_fake)
    precision, recall = precision_recall(real_f[:n_pr], fake_f[:n_pr], ep.pr_k)
    per_class = {}
    if fake_pred is not None:
        for c in range(num_classes):
            r_c = real_f[:n_pr][real_labels[:n_pr] == c]
            f_c = fake_f[:n_pr][fake_pred[:n_pr] == c]
            p_c, rc_c = precision_recall(r_c, f_c, ep.pr_k)
            per_class[manifest["class_names"][c]] = {
                "precision": _round(p_c),
                "recall": _round(rc_c),
                "generated": int(len(f_c)),
            }
    timings["collapse_pr_s"] = time.perf_counter() - t0

    notes = []
    if min(n_real, n_fake) < ep.stable_samples:
        notes.append(
            f"FID from {min(n_real, n_fake)} images per side is biased upward and unstable "
            f"(evaluate.stable_samples = {ep.stable_samples}); compare models by KID, which is unbiased, "
            "and read FID against fid_floor"
        )
    for note in notes:
        log.warning(note)

    # reports
    t0 = time.perf_counter()
    reports_dir = Path(reports_dir)
    z, y, nrow = fixed_grid_inputs(64, latent_dim, num_classes, conditional, ep.seed)
    with torch.no_grad():
        save_grid(
            G(z.to(device), y.to(device) if y is not None else None),
            reports_dir / "samples.png",
            nrow,
        )
        pairs = 6
        gz = torch.Generator().manual_seed(ep.seed + 11)
        a, b = (
            torch.randn(pairs, latent_dim, generator=gz),
            torch.randn(pairs, latent_dim, generator=gz),
        )
        path = slerp(a, b, torch.linspace(0, 1, ep.interpolation_steps)).reshape(-1, latent_dim)
        y_int = (
            (torch.arange(pairs) % num_classes).repeat_interleave(ep.interpolation_steps)
            if conditional
            else None
        )
        strip = G(path.to(device), y_int.to(device) if y_int is not None else None)
        save_grid(strip, reports_dir / "interpolation.png", ep.interpolation_steps)
        if conditional:
            per_row = 10
            yc = torch.arange(num_classes).repeat_interleave(per_row)
            zc = torch.randn(len(yc), latent_dim, generator=gz)
            save_grid(G(zc.to(device), yc.to(device)), reports_dir / "per_class.png", per_row)
    timings["reports_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all

    metrics = {
        "fid": _round(fid_value, 4),
        "fid_ci95": [_round(ci[0], 4), _round(ci[1], 4)],
        "fid_floor": _round(floor, 4),
        "fid_at_floor_samples": _round(fid_at_m, 4),
        "kid_mean": _round(kid_mean, 6),
        "kid_std": _round(kid_std, 6),
        "is_mean": _round(is_mean, 4),
        "is_std": _round(is_std, 4),
        "precision": _round(precision),
        "recall": _round(recall),
        **result,
        "per_class": per_class,
        "warnings": notes,
        "protocol": {
            **extractor.record,
            "num_generated": n_fake,
            "num_real": n_real,
            "real_split": ep.real_split,
            "floor_samples": m,
            "bootstrap_replicates": ep.bootstrap,
            "kid_subsets": ep.kid_subsets,
            "kid_subset_size": min(ep.kid_subset_size, n_real, n_fake),
            "is_splits": ep.is_splits,
            "pr_k": ep.pr_k,
            "pr_samples": n_pr,
            "image_size": manifest["image_size"],
            "channels": manifest["channels"],
            "seed": ep.seed,
            "generator": str(generator_path),
            "generator_sha256": sha256_file(generator_path),
            "generator_family": gmeta["family"],
            "generator_step": gmeta["step"],
            "generator_weights": "ema",
            "data_sha256": manifest["content_sha256"],
            "device": str(device),
            "torch": torch.__version__,
        },
        "timing_s": {k: round(v, 3) for k, v in timings.items()},
    }
    write_json(metrics_path, metrics)
    return metrics


def log_to_tracker(
    tracker, metrics: dict[str, Any], metrics_path: str | Path, reports_dir: str | Path
) -> None:
    """Every number as an MLflow metric, the protocol as tags, eval.json and the reports as artifacts."""
    if not tracker.active:
        return
    numbers = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }
    numbers["fid_ci95_low"], numbers["fid_ci95_high"] = metrics["fid_ci95"]
    if metrics.get("mode_collapse") is not None:
        numbers["mode_collapse"] = float(metrics["mode_collapse"])
    tracker.log_metrics({k: v for k, v in numbers.items() if v is not None})
    tags = {f"eval.{k}": v for k, v in metrics["protocol"].items()}
    tags["eval.mode_collapse_rule"] = metrics.get("mode_collapse_rule")
    tags["eval.warnings"] = " | ".join(metrics.get("warnings", [])) or None
    tracker.set_tags(tags)
    tracker.log_artifact(metrics_path, "eval")
    for png in sorted(Path(reports_dir).glob("*.png")):
        tracker.log_artifact(png, "eval")
