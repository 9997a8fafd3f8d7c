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
import asyncio
import contextlib
from pathlib import Path

from prefect.runner import Runner

from ganforge.config import load_params
from pipelines.flows import ONE_AT_A_TIME, ROOT, retrain_flow


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(ROOT), help="project directory (default: this one)")
    ap.add_argument("--cron", help="override schedule.cron")
    ap.add_argument("--name", help="deployment name (default: schedule.deployment)")
    args = ap.parse_args(argv)
    schedule = load_params(Path(args.repo) / "params.yaml").schedule
    name = args.name or schedule.deployment
    runner = Runner(name=name, pause_on_shutdown=True)
    runner.add_flow(retrain_flow, name=name, cron=args.cron or schedule.cron, concurrency_limit=ONE_AT_A_TIME,
                    parameters={"repo": str(Path(args.repo).resolve())})  # fmt: skip
    # SIGTERM takes Ctrl-C's path: Prefect's own handler calls its async stop without
    # awaiting it ("coroutine 'Runner.astop' was never awaited"); an interrupt shuts the
    # runner down cleanly and still pauses the schedule.
    runner.handle_sigterm = _interrupt
    print(
        f"serving deployment {retrain_flow.name}/{name}; Ctrl-C or SIGTERM stops it and pauses its schedule"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.start())


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
