"""``ganforge <stage>``: thin command-line entries over the stage functions.

Every stage reads params.yaml (``--params``), accepts ``--set section.key=value``
overrides, takes its paths as arguments (defaults below, written once), and on bad
input prints one line ``ganforge <stage>: error: ...`` and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ganforge.errors import GanforgeError

# Default locations; dvc.yaml passes the same paths explicitly.
PARAMS = "params.yaml"
PREPARED_DIR = "data/prepared"
MODELS_DIR = "models"
FEATURENET_DIR = "models/featurenet"
METRICS_DIR = "metrics"
REPORTS_DIR = "reports"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=PARAMS, help="params file (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one params key, e.g. --set train.lr=1e-4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganforge", description="Train, judge and ship GAN image generators."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = sub.add_parser("prepare", help="read, resize and split the source dataset")
    _common(p)
    p.add_argument("--out", default=PREPARED_DIR, help="output directory (default: %(default)s)")

    p = sub.add_parser("train", help="adversarial training of train.model")
    _common(p)
    p.add_argument("--data", default=PREPARED_DIR, help="prepared dataset (default: %(default)s)")
    p.add_argument(
        "--out", default=MODELS_DIR, help="runs directory; the run goes to OUT/<train.run_name>"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest intact checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("featurenet", help="train and check the feature network for evaluation")
    _common(p)
    p.add_argument("--data", default=PREPARED_DIR, help="prepared dataset (default: %(default)s)")
    p.add_argument("--out", default=FEATURENET_DIR, help="output directory (default: %(default)s)")

    p = sub.add_parser(
        "evaluate", help="FID, KID, IS, precision/recall and mode collapse of a generator"
    )
    _common(p)
    p.add_argument("--data", default=PREPARED_DIR, help="prepared dataset (default: %(default)s)")
    p.add_argument(
        "--generator", help="generator file (default: models/<train.run_name>/generator.pt)"
    )
    p.add_argument(
        "--featurenet", default=f"{FEATURENET_DIR}/featurenet.pt", help="(default: %(default)s)"
    )
    p.add_argument(
        "--metrics", default=f"{METRICS_DIR}/eval.json", help="metrics JSON (default: %(default)s)"
    )
    p.add_argument(
        "--reports", default=REPORTS_DIR, help="report images directory (default: %(default)s)"
    )
    return parser


def _run(args: argparse.Namespace) -> dict:
    from ganforge.config import load_params

    params = load_params(args.params, args.overrides)
    if args.stage == "prepare":
        from ganforge.data import prepare

        manifest = prepare(params.prepare, args.out)
        counts = {s: v["count"] for s, v in manifest["splits"].items()}
        return {
            "out": args.out,
            "source": manifest["source"],
            "image_size": manifest["image_size"],
            "channels": manifest["channels"],
            "classes": manifest["num_classes"],
            **counts,
        }
    if args.stage == "train":
        from ganforge.train import train

        progress = not args.no_progress and sys.stderr.isatty()
        return train(params, args.data, args.out, resume=args.resume, progress=progress)
    if args.stage == "featurenet":
        from ganforge.featurenet import train_featurenet

        return train_featurenet(params, args.data, args.out)
    if args.stage == "evaluate":
        from ganforge.evaluate import evaluate

        generator = args.generator or f"{MODELS_DIR}/{params.train.run_name}/generator.pt"
        m = evaluate(params, args.data, generator, args.featurenet, args.metrics, args.reports)
        keys = (
            "fid",
            "fid_ci95",
            "fid_floor",
            "kid_mean",
            "is_mean",
            "precision",
            "recall",
            "class_coverage",
        )
        return {
            **{k: m.get(k) for k in keys},
            "mode_collapse": m.get("mode_collapse"),
            "seconds": m["timing_s"]["total_s"],
        }
    raise AssertionError(args.stage)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"ganforge {args.stage}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = _run(args)
    except GanforgeError as exc:
        print(f"ganforge {args.stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"ganforge {args.stage}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
