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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from ganforge.config import load_params
from ganforge.errors import GanforgeError
from pipelines.flows import ONE_AT_A_TIME, ROOT, retrain_flow

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pool", required=True, help="work pool (prefect work-pool create NAME --type process)"
    )
    ap.add_argument("--repo", type=Path, default=ROOT, help="project directory (default: this one)")
    ap.add_argument("--cron", help="override schedule.cron")
    ap.add_argument("--name", help="deployment name (default: schedule.deployment)")
    args = ap.parse_args(argv)
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # else Prefect deploys into a temporary server, then loses it
        sys.exit("pipelines.deploy: error: PREFECT_API_URL is not set: point it at the Prefect server "
                 "(e.g. http://127.0.0.1:4200/api after prefect server start)")  # fmt: skip
    try:
        deployed = deploy(args.pool, args.repo, args.cron, args.name)
    except (GanforgeError, ValueError, OSError) as exc:  # no pool, bad params.yaml
        sys.exit(f"pipelines.deploy: error: {str(exc).strip().splitlines()[0]}")
    except httpx.HTTPError as exc:  # no server there
        sys.exit(f"pipelines.deploy: error: Prefect server {PREFECT_API_URL.value()}: {exc}")
    print(f"deployed {deployed} to work pool {args.pool}; run it now: prefect deployment run {deployed}; "
          f"workers: prefect worker start --pool {args.pool}")  # fmt: skip


if __name__ == "__main__":
    main()
