"""Serve the scheduled retraining deployment (``schedule.cron`` in params.yaml).

    prefect server start &                       # a real server: the temporary one never fires schedules
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.schedule [--repo .] [--cron "0 3 * * 0"]

    python -m pipelines.schedule --cron "*/30 * * * *" --name half-hourly   # overrides

Runs until SIGTERM/Ctrl-C. Stopping it pauses the deployment's schedule: with nobody serving
it, scheduled runs would only pile up as Late; start it again to resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ganforge.config import load_params
from pipelines.flows import ROOT, retrain_flow


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(ROOT), help="project directory (default: this one)")
    ap.add_argument("--cron", help="override schedule.cron")
    ap.add_argument("--name", help="deployment name (default: schedule.deployment)")
    args = ap.parse_args(argv)
    schedule = load_params(Path(args.repo) / "params.yaml").schedule
    retrain_flow.serve(
        name=args.name or schedule.deployment,
        cron=args.cron or schedule.cron,
        parameters={"repo": str(Path(args.repo).resolve())},
        pause_on_shutdown=True,
    )


if __name__ == "__main__":
    main()
