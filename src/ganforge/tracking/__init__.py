"""The MLflow edge: every call to MLflow in ganforge is in this package (imported lazily, so
the core runs where mlflow is absent).

- Where: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory
  (artifacts in ``./mlruns``); both URIs (tracking and registry) are set from it, here only,
  and so is telemetry (off).
- Runs: ``training_run`` opens one run per training (one experiment per dataset,
  ``ganforge-<dataset>``), records its id in ``<run_dir>/mlflow_run.json`` and closes it
  FINISHED, FAILED or KILLED; ``reopen_run`` gives evaluate and export the same run.
  ``MlflowRun`` implements ``ganforge.core.runlog.RunLog`` for the stages.
- Registry (``registry.py``): ``Registry`` registers versions, reads and moves aliases,
  tags versions and keeps the audit trail; ``download_model`` resolves ``models:/`` URIs
  for deployment.
- A remote server that does not answer fails the stage in seconds, naming the URI.
"""

from ganforge.tracking.registry import Registry, lock_key
from ganforge.tracking.runs import (
    MlflowRun,
    download_model,
    log_evaluation,
    registry_version,
    reopen_run,
    training_run,
)
from ganforge.tracking.store import (
    DEFAULT_URI,
    TrackingError,
    check_reachable,
    enabled,
    tracking_uri,
)

__all__ = [
    "DEFAULT_URI",
    "MlflowRun",
    "Registry",
    "TrackingError",
    "check_reachable",
    "download_model",
    "enabled",
    "lock_key",
    "log_evaluation",
    "registry_version",
    "reopen_run",
    "training_run",
    "tracking_uri",
]
