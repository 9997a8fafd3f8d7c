"""Deploy scheduled retraining to a Prefect work pool, run by the team's workers.

    prefect work-pool create ganforge --type process      # once per Prefect server
    python -m pipelines.deploy --pool ganforge            # from the project directory
    prefect worker start --pool ganforge                  # on every machine that may train

The deployment runs ``retrain_flow`` from this project's source (``--repo``, default this
directory: a worker runs it there, so a worker on another machine needs the project at the
same path) on ``schedule.cron`` from params.yaml. At most one run of it trains at a time:
a run triggered or scheduled while another trains waits for it (Prefect's deployment
concurrency limit, collision strategy ENQUEUE), so two runs never train into one directory.
Deploying again updates the deployment in place. ``python -m pipelines.schedule`` (serving
from one terminal, no pool or worker) stays the single-machine way.

    python -m pipelines.deploy --pause     # stop the schedule: nothing that has not started trains
    python -m pipelines.deploy --resume

``--pause`` pauses the schedule and cancels the scheduled runs that have not started, those
already due and waiting for the slot included (Prefect's own pause leaves those to train one
after another); a run that is training finishes. A scheduled run that a pause from the UI
left waiting ends Cancelled when it starts (``flows.paused_schedule``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from ganforge.config import load_params
from ganforge.errors import GanforgeError
from pipelines.flows import ONE_AT_A_TIME, ROOT, paused_schedule, retrain_flow

ENTRYPOINT = "pipelines/flows.py:retrain_flow"


def deploy(pool: str, repo: Path, cron: str | None = None, name: str | None = None) -> str:
    """Create or update the retraining deployment on ``pool``; returns ``<flow>/<deployment>``."""
    repo = repo.resolve()
    schedule = load_params(repo / "params.yaml").schedule
    name = name or schedule.deployment
    source = retrain_flow.from_source(source=str(repo), entrypoint=ENTRYPOINT)
    source.deploy(
        name=name, work_pool_name=pool, cron=cron or schedule.cron,
        concurrency_limit=ONE_AT_A_TIME, parameters={"repo": str(repo)},
        description=f"ganforge retraining of {repo}: one run at a time",
        build=False, push=False, print_next_steps=False,
    )  # fmt: skip
    return f"{retrain_flow.name}/{name}"


def pause(name: str) -> int:
    """Pause deployment ``name``'s schedule and cancel its scheduled runs that have not
    started; returns how many were cancelled."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )  # fmt: skip
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    waiting = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
    )
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{retrain_flow.name}/{name}")
        client.pause_deployment(dep.id)  # from here on the scheduler adds no run
        why = paused_schedule(True, True, dep.name)
        of_dep, queued, page = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), [], [None]
        while page:  # every page first: cancelling shifts the pages under a running offset
            page = client.read_flow_runs(
                flow_run_filter=waiting, deployment_filter=of_dep, offset=len(queued), limit=200
            )
            queued += page
        cancelled = [r for r in queued if r.auto_scheduled and r.run_count == 0]
        for run in cancelled:
            client.set_flow_run_state(run.id, Cancelled(message=why), force=True)
    return len(cancelled)


def resume(name: str) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.resume_deployment(client.read_deployment_by_name(f"{retrain_flow.name}/{name}").id)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", help="work pool (prefect work-pool create NAME --type process)")
    ap.add_argument("--repo", type=Path, default=ROOT, help="project directory (default: this one)")
    ap.add_argument("--cron", help="override schedule.cron")
    ap.add_argument("--name", help="deployment name (default: schedule.deployment)")
    act = ap.add_mutually_exclusive_group()
    act.add_argument(
        "--pause", action="store_true", help="pause the schedule, cancel what has not started"
    )
    act.add_argument("--resume", action="store_true", help="resume the paused schedule")
    args = ap.parse_args(argv)
    if not (args.pause or args.resume or args.pool):
        ap.error("--pool is required to deploy (or --pause / --resume an existing deployment)")
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # else Prefect deploys into a temporary server, then loses it
        sys.exit("pipelines.deploy: error: PREFECT_API_URL is not set: point it at the Prefect server "
                 "(e.g. http://127.0.0.1:4200/api after prefect server start)")  # fmt: skip
    try:
        name = args.name or load_params(args.repo.resolve() / "params.yaml").schedule.deployment
        if args.pause:
            print(
                f"paused {retrain_flow.name}/{name}; cancelled {pause(name)} scheduled run(s) that had not started"
            )
        elif args.resume:
            resume(name)
            print(f"resumed {retrain_flow.name}/{name}")
        else:
            deployed = deploy(args.pool, args.repo, args.cron, name)
            print(f"deployed {deployed} to work pool {args.pool}; run it now: prefect deployment run {deployed}; "
                  f"workers: prefect worker start --pool {args.pool}")  # fmt: skip
    except ObjectNotFound:
        sys.exit(
            f"pipelines.deploy: error: no deployment {retrain_flow.name}/{name} on {PREFECT_API_URL.value()}"
        )
    except (GanforgeError, ValueError, OSError) as exc:  # no pool, bad params.yaml
        sys.exit(f"pipelines.deploy: error: {str(exc).strip().splitlines()[0]}")
    except httpx.HTTPError as exc:  # no server there
        sys.exit(f"pipelines.deploy: error: Prefect server {PREFECT_API_URL.value()}: {exc}")


if __name__ == "__main__":
    main()
