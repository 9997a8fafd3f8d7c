"""``ganforge <stage>``: thin command-line entries over the stage functions.

Every stage reads params.yaml (``--params``), accepts ``--set section.key=value``
overrides, takes its paths as arguments (defaults below, written once; dvc.yaml passes
the same), and on bad input prints one line ``ganforge <stage>: error: ...`` and exits
non-zero. Each sub-command is one handler function ``_<stage>(args) -> result``;
``generate`` and ``serve`` import neither torch nor the training code.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ganforge.errors import GanforgeError, Terminated

# Default locations, written once; dvc.yaml passes the same paths explicitly.
PARAMS = "params.yaml"
PREPARED_DIR = "data/prepared"
MODELS_DIR = "models"
FEATURENET_DIR = f"{MODELS_DIR}/featurenet"
FEATURENET = f"{FEATURENET_DIR}/featurenet.pt"
METRICS_DIR = "metrics"
THREADS_HELP = "onnxruntime intra-op threads on CPU (default: measured at load: 1 or every core)"
REPORTS_DIR = "reports"
EXPORTED_DIR = "exported"


def _params(args: argparse.Namespace):
    from ganforge.config import load_params

    return load_params(args.params, args.overrides)


def _generator(args: argparse.Namespace, params) -> str:
    return args.generator or f"{MODELS_DIR}/{params.train.run_name}/generator.pt"


# --------------------------------------------------------------------------- handlers


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.stages.prepare import prepare

    manifest = prepare(_params(args).prepare, args.out)
    counts = {s: v["count"] for s, v in manifest["splits"].items()}
    keys = ("source", "image_size", "channels")
    return {
        "out": args.out,
        **{k: manifest[k] for k in keys},
        "classes": manifest["num_classes"],
        **counts,
    }


def _featurenet(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.stages.featurenet import train_featurenet

    return train_featurenet(_params(args), args.data, args.out)


def _train(args: argparse.Namespace) -> dict[str, Any] | None:
    from ganforge.core.dataset import read_manifest
    from ganforge.engine.distributed import World, launch
    from ganforge.stages.train import train, work_dir
    from ganforge.tracking import training_run

    params = _params(args)
    featurenet = args.featurenet if Path(args.featurenet).is_file() else None
    progress = not args.no_progress and sys.stderr.isatty()
    rank = World.launched_rank()
    if rank is None and params.train.nproc_per_node > 1:
        launch(params.train.nproc_per_node, args.argv)  # rank 0 prints the summary
        return None
    if rank not in (None, 0):  # torchrun's other ranks: no tracking, no output
        train(
            params, args.data, args.out, resume=args.resume, progress=False, featurenet=featurenet
        )
        return None
    # --resume continues the MLflow run the interrupted training recorded (one run, whole curves)
    partial = work_dir(args.out, params.train.run_name) if args.resume else None
    with training_run(params, read_manifest(args.data), resume_from=partial) as run:
        summary = train(
            params,
            args.data,
            args.out,
            resume=args.resume,
            progress=progress,
            tracker=run,
            featurenet=featurenet,
        )
    return {**summary, "mlflow_run_id": run.run_id}


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.metrics.headline import PRINTED
    from ganforge.stages.evaluate import evaluate
    from ganforge.tracking import log_evaluation, reopen_run

    params = _params(args)
    generator = _generator(args, params)
    run = reopen_run(params, Path(generator).parent)
    m = evaluate(params, args.data, generator, args.featurenet, args.metrics, args.reports)
    log_evaluation(run, m, args.metrics, args.reports)
    return {**{k: m.get(k) for k in PRINTED}, "seconds": m["timing_s"]["total_s"]}


def _export(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.stages.export import export, verify
    from ganforge.tracking import reopen_run

    params = _params(args)
    generator = _generator(args, params)
    if args.verify:
        return verify(params, args.verify, generator)
    out = args.out or f"{EXPORTED_DIR}/{params.train.run_name}.onnx"
    return export(
        params, generator, out, args.metrics, run=reopen_run(params, Path(generator).parent)
    )


def _promote(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.stages.promote import format_history, history, promote

    params = _params(args)
    if args.history:
        entries = history(params, args.model_name)
        for line in format_history(entries):
            print(line)
        return {"entries": len(entries)}
    return promote(params, args.eval, args.export, args.out)


def _generate(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.deploy.service import generate_to_file

    return generate_to_file(
        args.model, args.n, args.seed, args.label, args.out, args.threads, args.truncation
    )


def _serve(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.deploy.service import run_server

    run_server(args.model, args.host, args.port, args.threads)
    return {"stopped": True}


# --------------------------------------------------------------------------- parser


def _stage(
    sub, name: str, handler: Callable, help: str, params: bool = True
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.set_defaults(handler=handler)
    if params:
        p.add_argument("--params", default=PARAMS, help="params file (default: %(default)s)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one params key, e.g. --set train.lr=1e-4 (repeatable)",
        )
    return p


def _opt(p: argparse.ArgumentParser, flag: str, default: str | None, help: str = "") -> None:
    shown = " (default: %(default)s)" if default is not None else ""
    p.add_argument(flag, default=default, help=help + shown)


class _Parser(argparse.ArgumentParser):
    """argparse with the stages' error format: one line, no usage block (sub-parsers inherit it)."""

    def error(self, message: str):
        line = " ".join(message.split())[:600]
        self.exit(2, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganforge", description="Train, judge and ship GAN image generators.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = _stage(sub, "prepare", _prepare, "read, resize and split the source dataset")
    _opt(p, "--out", PREPARED_DIR, "output directory")

    p = _stage(sub, "featurenet", _featurenet, "train and check the feature network for evaluation")
    _opt(p, "--data", PREPARED_DIR, "prepared dataset")
    _opt(p, "--out", FEATURENET_DIR, "output directory")

    p = _stage(sub, "train", _train, "adversarial training of train.model")
    _opt(p, "--data", PREPARED_DIR, "prepared dataset")
    _opt(p, "--out", MODELS_DIR, "runs directory; the run goes to OUT/<train.run_name>")
    _opt(p, "--featurenet", FEATURENET, "for FID during training, if the file exists")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest intact checkpoint"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="log lines (every tenth of the run) instead of a bar",
    )

    p = _stage(
        sub,
        "evaluate",
        _evaluate,
        "FID, KID, IS, precision/recall and mode collapse of a generator",
    )
    _opt(p, "--data", PREPARED_DIR, "prepared dataset")
    _opt(p, "--generator", None, "generator file (default: models/<train.run_name>/generator.pt)")
    _opt(p, "--featurenet", FEATURENET)
    _opt(p, "--metrics", f"{METRICS_DIR}/eval.json", "metrics JSON")
    _opt(p, "--reports", REPORTS_DIR, "report images directory")

    p = _stage(sub, "export", _export, "ONNX export of the EMA generator with a parity gate")
    _opt(p, "--generator", None, "generator file (default: models/<train.run_name>/generator.pt)")
    _opt(p, "--out", None, f"ONNX file (default: {EXPORTED_DIR}/<train.run_name>.onnx)")
    _opt(p, "--metrics", f"{METRICS_DIR}/export.json", "parity report")
    p.add_argument(
        "--verify", metavar="ONNX", help="only re-check the parity of an existing ONNX file"
    )

    p = _stage(
        sub,
        "promote",
        _promote,
        "register the exported generator; move the champion alias by metric",
    )
    _opt(p, "--eval", f"{METRICS_DIR}/eval.json")
    _opt(p, "--export", f"{METRICS_DIR}/export.json")
    _opt(p, "--out", f"{METRICS_DIR}/promote.json", "decision record")
    p.add_argument(
        "--history", action="store_true", help="print the audit trail of alias changes instead"
    )
    p.add_argument(
        "--model-name", help="with --history: one registered model (default: every ganforge one)"
    )

    p = _stage(
        sub, "generate", _generate, "images from an ONNX generator (onnxruntime only)", params=False
    )
    p.add_argument("--model", required=True, help="path.onnx or models:/<name>@champion")
    p.add_argument(
        "-n", type=int, default=64, help="number of images, 1..4096 (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed; same seed, same images")
    p.add_argument("--label", type=int, help="class to generate (conditional models)")
    p.add_argument(
        "--truncation",
        type=float,
        help="redraw latent components beyond +-this (0.05..10): more typical images, less "
        "variety (RESULTS.md has the measured trade-off); default: none",
    )
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    _opt(p, "--out", "grid.png", "PNG grid")

    p = _stage(
        sub, "serve", _serve, "HTTP generation service (FastAPI + onnxruntime)", params=False
    )
    p.add_argument("--model", required=True, help="path.onnx or models:/<name>@champion")
    _opt(p, "--host", "127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    return parser


def _error(stage: str, message: str, limit: int = 600) -> None:
    """The one line a user sees: newlines folded, long values cut."""
    line = " ".join(message.split())
    if len(line) > limit:
        line = line[:limit] + f"... ({len(line) - limit} more characters)"
    print(f"ganforge {stage}: error: {line}", file=sys.stderr)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"ganforge {args.stage}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM behaves as Ctrl-C does (signal handlers can only be set from the main thread)
    own = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if own else None
    try:
        result = args.handler(args)
    except GanforgeError as exc:
        _error(args.stage, str(exc))
        return exc.exit_code
    except OSError as exc:  # the environment, not the input: a full disk, a read-only store
        where = f"{exc.filename}: " if exc.filename else ""
        _error(args.stage, f"{where}{exc.strerror or exc}")
        return 1
    except Terminated:
        print(f"ganforge {args.stage}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"ganforge {args.stage}: interrupted", file=sys.stderr)
        return 130
    finally:
        if own:
            signal.signal(signal.SIGTERM, previous)
    if result is not None:  # None: printed by another process (torchrun's rank 0)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
