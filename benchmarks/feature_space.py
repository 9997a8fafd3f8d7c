"""Is each feature space fit to score in? The real-data floor and the negative controls.

    python -m benchmarks.feature_space [--mnist ../shared/data/mnist] [--only digits,mnist,...]
        [--scales 0.5,1,2]

For each dataset: prepare it, train the feature network with the default params (its
objective chosen by ``featurenet.objective: auto``), train a deliberately bad generator
(``--bad-steps`` DCGAN steps), and run the evaluate stage with the default protocol. Prints
the floor, every negative control's FID and its ratio to the floor, and the bad generator's
FID at the floor's sample count: in a usable space the controls and the bad generator are
all far above the floor. Datasets: ``digits`` (16 px, the ``make run`` data), ``mnist``
(28 px, the real MNIST test set), ``folder2`` (300 colour 32 px photo patches in two class
folders) and ``folder1`` (200 grey 32 px patches, one class folder).

``--scales``: the feature network is trained at each multiple of its auto budget
(``featurenet.steps: auto``), the same bad generator scored in each: the auto budget is
enough when a larger one neither raises the held-out check beyond its sampling error nor
moves the controls' ratios to the floor.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from tests.folders import photo_patches

from ganforge.config import parse_params
from ganforge.core.dataset import load_split
from ganforge.engine.featurenet import resolve_steps
from ganforge.metrics.controls import CONTROLS
from ganforge.stages.evaluate import EvaluationError, evaluate
from ganforge.stages.featurenet import FeatureNetError, train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train


def _prepare_raw(name: str, mnist: str, tmp: Path) -> dict:
    if name == "digits":
        return {"source": "digits", "image_size": 16}
    if name == "mnist":
        return {"source": "mnist-idx", "path": mnist, "image_size": 28}
    classes = ("building", "flower") if name == "folder2" else ("flower",)
    per_class = 150 if name == "folder2" else 200
    photo_patches(tmp / "imgs", classes, per_class, size=32, grey=name == "folder1")
    return {"source": "imagefolder", "path": str(tmp / "imgs"), "image_size": 32}


def run(name: str, mnist: str, bad_steps: int, tmp: Path, scales: list[float]) -> None:
    raw = {
        "prepare": _prepare_raw(name, mnist, tmp),
        "train": {"steps": bad_steps, "fid_samples": 0},
    }
    params = parse_params(raw)
    prepare(params.prepare, tmp / "prep")
    fp = params.featurenet
    auto = resolve_steps(fp.steps, len(load_split(tmp / "prep", "train").images), fp.batch_size)
    train(params, tmp / "prep", tmp / "runs", progress=False)
    for scale in scales:
        steps = max(1, round(scale * auto))
        p = params.model_copy(update={"featurenet": fp.model_copy(update={"steps": steps})})
        _score(name, p, tmp, tmp / f"fn{scale:g}")


def _score(name: str, params, tmp: Path, fn_dir: Path) -> None:
    t0 = time.perf_counter()
    try:
        fn = train_featurenet(params, tmp / "prep", fn_dir)
    except FeatureNetError as exc:
        print(f"| {name} | refused: {exc} |")
        return
    fn_s = time.perf_counter() - t0
    args = (tmp / "prep", tmp / "runs/main/generator.pt", fn_dir / "featurenet.pt")
    try:
        m = evaluate(params, *args, fn_dir / "m/eval.json", fn_dir / "reports")
    except EvaluationError as exc:
        print(f"| {name} | {fn['objective']}, {fn['steps']} steps | refused: {exc} |")
        return
    c = m["negative_controls"]
    ratios = " | ".join(f"{c[k]:.4g} ({c[k] / c['floor']:.1f}x)" for k in CONTROLS)
    bad = m["fid_at_floor_samples"]
    print(
        f"| {name} | {fn['objective']}, {fn['steps']} steps, held-out {fn['holdout_accuracy']:.3f}, "
        f"{fn_s:.0f} s | {c['control_samples']} | {c['floor']:.4g} | {ratios} | "
        f"{bad:.4g} ({bad / m['fid_floor']:.1f}x) | {m['mode_collapse']} ({m['mode_collapse_basis']}) |",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mnist", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    )
    ap.add_argument("--only", default="digits,mnist,folder2,folder1")
    ap.add_argument("--bad-steps", type=int, default=20)
    ap.add_argument("--scales", default="1", help="multiples of the auto featurenet budget")
    args = ap.parse_args()
    scales = [float(v) for v in args.scales.split(",")]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    head = " | ".join(CONTROLS)
    print(
        f"| data | feature network | n/side | floor | {head} | bad generator (FID at floor n) | collapse |"
    )
    print("|---" * (7 + len(CONTROLS) - 1) + "|")
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            run(name, args.mnist, args.bad_steps, Path(tmp), scales)


if __name__ == "__main__":
    main()
