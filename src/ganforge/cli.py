"""``ganforge <stage>``: thin command-line entries over the stage functions.

Every stage reads params.yaml (``--params``), accepts ``--set section.key=value``
overrides, takes its paths as arguments (defaults below, written once; dvc.yaml passes
the same), and on bad input prints one line ``ganforge <stage>: error: ...`` and exits
non-zero. ``generate`` and ``serve`` import neither torch nor the training code.
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
FEATURENET = "models/featurenet/featurenet.pt"
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

    p = sub.add_parser("featurenet", help="train and check the feature network for evaluation")
    _common(p)
    p.add_argument("--data", default=PREPARED_DIR, help="prepared dataset (default: %(default)s)")
    p.add_argument(
        "--out", default="models/featurenet", help="output directory (default: %(default)s)"
    )

    p = sub.add_parser("train", help="adversarial training of train.model")
    _common(p)
    p.add_argument("--data", default=PREPARED_DIR, help="prepared dataset (default: %(default)s)")
    p.add_argument(
        "--out", default=MODELS_DIR, help="runs directory; the run goes to OUT/<train.run_name>"
    )
    p.add_argument(
        "--featurenet", default=FEATURENET, help="for FID during training, if the file exists"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest intact checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "evaluate", help="FID, KID, IS, precision/recall and mode collapse of a generator"
    )
    _common(p)
    p.add_argument("--data", default=PREPARED_DIR, help="prepared dataset (default: %(default)s)")
    p.add_argument(
        "--generator", help="generator file (default: models/<train.run_name>/generator.pt)"
    )
    p.add_argument("--featurenet", default=FEATURENET, help="(default: %(default)s)")
    p.add_argument(
        "--metrics", default=f"{METRICS_DIR}/eval.json", help="metrics JSON (default: %(default)s)"
    )
    p.add_argument(
        "--reports", default=REPORTS_DIR, help="report images directory (default: %(default)s)"
    )

    p = sub.add_parser("export", help="ONNX export of the EMA generator with a parity gate")
    _common(p)
    p.add_argument(
        "--generator", help="generator file (default: models/<train.run_name>/generator.pt)"
    )
    p.add_argument("--out", help="ONNX file (default: exported/<train.run_name>.onnx)")
    p.add_argument(
        "--metrics",
        default=f"{METRICS_DIR}/export.json",
        help="parity report (default: %(default)s)",
    )
    p.add_argument(
        "--verify", metavar="ONNX", help="only re-check the parity of an existing ONNX file"
    )

    p = sub.add_parser(
        "promote", help="register the exported generator; move the champion alias by metric"
    )
    _common(p)
    p.add_argument("--run-dir", help="training run directory (default: models/<train.run_name>)")
    p.add_argument("--eval", default=f"{METRICS_DIR}/eval.json", help="(default: %(default)s)")
    p.add_argument("--export", default=f"{METRICS_DIR}/export.json", help="(default: %(default)s)")
    p.add_argument(
        "--out",
        default=f"{METRICS_DIR}/promote.json",
        help="decision record (default: %(default)s)",
    )
    p.add_argument(
        "--history", action="store_true", help="print the audit trail of alias changes instead"
    )
    p.add_argument(
        "--model-name", help="with --history: one registered model (default: every ganforge one)"
    )

    p = sub.add_parser("generate", help="images from an ONNX generator (onnxruntime only)")
    p.add_argument("--model", required=True, help="path.onnx or models:/<name>@champion")
    p.add_argument(
        "-n", type=int, default=64, help="number of images, 1..4096 (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed; same seed, same images")
    p.add_argument("--label", type=int, help="class to generate (conditional models)")
    p.add_argument("--out", default="grid.png", help="PNG grid (default: %(default)s)")

    p = sub.add_parser("serve", help="HTTP generation service (FastAPI + onnxruntime)")
    p.add_argument("--model", required=True, help="path.onnx or models:/<name>@champion")
    p.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    return parser


def _run_dir(params, given: str | None) -> str:
    return given or f"{MODELS_DIR}/{params.train.run_name}"


def _run(args: argparse.Namespace) -> dict | list:
    if args.stage == "generate":
        from ganforge.serve import generate_to_file

        return generate_to_file(args.model, args.n, args.seed, args.label, args.out)
    if args.stage == "serve":
        from ganforge.serve import run_server

        run_server(args.model, args.host, args.port)
        return {"stopped": True}

    from ganforge.config import load_params

    params = load_params(args.params, args.overrides)
    if args.stage == "prepare":
        from ganforge.data import prepare

        manifest = prepare(params.prepare, args.out)
        counts = {s: v["count"] for s, v in manifest["splits"].items()}
        keys = ("source", "image_size", "channels")
        return {
            "out": args.out,
            **{k: manifest[k] for k in keys},
            "classes": manifest["num_classes"],
            **counts,
        }
    if args.stage == "featurenet":
        from ganforge.featurenet import train_featurenet

        return train_featurenet(params, args.data, args.out)
    if args.stage == "train":
        from pathlib import Path

        from ganforge.data import read_manifest
        from ganforge.tracking import start_run
        from ganforge.train import train

        run_dir = Path(args.out) / params.train.run_name
        tracker = start_run(params, read_manifest(args.data), run_dir)
        featurenet = args.featurenet if Path(args.featurenet).is_file() else None
        progress = not args.no_progress and sys.stderr.isatty()
        try:
            summary = train(
                params,
                args.data,
                args.out,
                resume=args.resume,
                progress=progress,
                tracker=tracker,
                featurenet=featurenet,
            )
        except BaseException:
            try:  # best effort: the server may be the thing that failed; keep the original error
                tracker.end("FAILED" if sys.exc_info()[0] is not KeyboardInterrupt else "KILLED")
            except GanforgeError as exc:
                logging.getLogger("ganforge").warning(
                    "could not mark the MLflow run failed: %s", exc
                )
            raise
        tracker.end()
        return {**summary, "mlflow_run_id": tracker.run_id}
    if args.stage == "evaluate":
        from pathlib import Path

        from ganforge.evaluate import evaluate, log_to_tracker
        from ganforge.tracking import reopen_run

        generator = args.generator or f"{_run_dir(params, None)}/generator.pt"
        tracker = reopen_run(params, Path(generator).parent)
        m = evaluate(params, args.data, generator, args.featurenet, args.metrics, args.reports)
        log_to_tracker(tracker, m, args.metrics, args.reports)
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
    if args.stage == "export":
        from pathlib import Path

        from ganforge.export import export, log_to_tracker, verify
        from ganforge.tracking import reopen_run

        generator = args.generator or f"{_run_dir(params, None)}/generator.pt"
        if args.verify:
            return verify(params, args.verify, generator)
        tracker = reopen_run(params, Path(generator).parent)
        out = args.out or f"exported/{params.train.run_name}.onnx"
        result = export(params, generator, out, args.metrics, run_id=tracker.run_id)
        log_to_tracker(tracker, result)
        result.pop("metrics_path")
        return result
    if args.stage == "promote":
        from ganforge.promote import history, promote

        if args.history:
            entries = history(params, args.model_name)
            for e in entries:
                move = (
                    f"champion v{e['from_version']} -> v{e['to_version']}"
                    if e["promoted"]
                    else "no change"
                )
                print(
                    f"{e['time']}  {e['registered_model']}  v{e['candidate']}  "
                    f"{'PROMOTED' if e['promoted'] else 'challenger'}  {move}  "
                    f"fid={e['metrics']['fid']}  run={e['run_id']}  reason: {e['reason']}"
                )
            return {"entries": len(entries)}
        return promote(params, _run_dir(params, args.run_dir), args.eval, args.export, args.out)
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
    print(json.dumps(result, indent=None if isinstance(result, dict) else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
