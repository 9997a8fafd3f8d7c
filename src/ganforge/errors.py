"""Errors a user can act on. The CLI prints ``ganforge <stage>: <message>`` and exits non-zero."""


class GanforgeError(Exception):
    """Base class: the message is one line naming the file, key or value at fault."""

    exit_code = 1


class ConfigError(GanforgeError):
    """params.yaml or a --set override is invalid (exit 2, nothing was written)."""

    exit_code = 2


class DataError(GanforgeError):
    """An input or prepared dataset file is missing, corrupt or inconsistent."""


class CheckpointError(GanforgeError):
    """A checkpoint or model file is missing, corrupt or does not fit the config."""


class DivergenceError(GanforgeError):
    """A loss became non-finite during training."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``kill``, ``timeout``, systemd, Kubernetes and Prefect cancellation send),
    raised where the process is, like Ctrl-C: the same clean-up runs (the MLflow run is marked
    KILLED, the last good outputs stay), and the CLI exits 143."""


class LaunchError(GanforgeError):
    """A multi-process run (torchrun) stopped because one of its processes failed."""
