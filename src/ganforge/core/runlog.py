"""What a stage may report to an experiment tracker, and the no-tracking implementation.

Stages take a ``RunLog`` and never import the tracker: ``ganforge.tracking.MlflowRun``
implements it at the edge, ``Untracked`` when tracking is off or mlflow is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

# Written into a training run's directory: which tracked run it is (read by later stages).
RUN_FILE = "mlflow_run.json"


class RunLog(Protocol):
    run_id: str | None

    def record(self) -> dict[str, Any] | None:
        """What the run directory keeps to find this run again (None when untracked)."""
        ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_history(self, rows: list[dict[str, float]]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_image(self, path: str | Path, key: str, step: int) -> None: ...

    def settle(self, generator_sha256: str) -> dict[str, Any] | None:
        """The training produced this generator: if an earlier finished run produced the very
        same file, drop this run and stand for that one; returns the record to keep."""
        ...

    def log_model(self, onnx_path: str | Path) -> str | None:
        """Log an ONNX generator as the run's model; its URI (None when untracked)."""
        ...


class Untracked:
    """Tracking is off: every report is dropped."""

    run_id: str | None = None

    def record(self) -> dict[str, Any] | None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_history(self, rows: list[dict[str, float]]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        pass

    def settle(self, generator_sha256: str) -> dict[str, Any] | None:
        return None

    def log_model(self, onnx_path: str | Path) -> str | None:
        return None
