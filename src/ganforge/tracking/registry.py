"""The model registry half of the MLflow edge (see ``ganforge.tracking``)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

from ganforge.tracking.store import (
    TrackingError,
    _client,
    _first_line,
    _mlflow,
    check_reachable,
    tracking_uri,
)


def lock_key(uri: str) -> str:
    """One spelling per SQLite store (absolute, resolved path), so two processes always take
    the same file lock; any other URI as given (a server's lock lives in its registry)."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


class Registry:
    """The MLflow model registry of one store: versions, the ``champion`` alias, audit tags.

    Aliases only (never the deprecated stages). ``lock(name)`` serialises read-decide-write:
    for a SQLite store, a ``filelock`` beside the database (named after ``lock_key`` so every
    spelling of one store shares it); for a tracking server, a lease held in the registry
    itself (``ServerLock``), so promotions from different machines that share nothing but
    the HTTP URI are serialised too. ``apply`` still re-reads the alias just before it moves
    it and reports a champion that changed since the decision (compare-and-set), so even a
    broken lease cannot leave the better model behind silently.
    """

    CHAMPION = "champion"

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or tracking_uri()
        check_reachable(self.uri)
        self.client = _client(self.uri)

    def _call(self, fn, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            raise self.error(exc) from None

    def error(self, exc: BaseException) -> TrackingError:
        """The one-line error for a refused registry call."""
        return TrackingError(f"MLflow registry on {self.uri}: {_first_line(exc)}")

    def lock(self, name: str):
        """The promotion lock of registered model ``name`` in this store (a context manager)."""
        from filelock import FileLock

        key = lock_key(self.uri)
        if key.startswith("sqlite:///"):
            db = Path(key.removeprefix("sqlite:///"))
            return FileLock(db.with_name(db.name + ".promote.lock"))
        return ServerLock(self, name)

    def _versions(self, name: str) -> list:
        return self._call(self.client.search_model_versions, f"name = '{name}'")

    def find_or_register(
        self, name: str, source: str, tags: dict[str, Any]
    ) -> tuple[str, dict[str, str]]:
        """(version, its tags) of the version holding this generator (by ``generator_sha256``),
        or a new version of ``name`` (created if absent) from a logged model URI, tags first."""
        from mlflow.exceptions import MlflowException

        c = self.client
        if self._call(c.search_registered_models, filter_string=f"name = '{name}'"):
            for mv in self._versions(name):
                if mv.tags.get("generator_sha256") == tags["generator_sha256"]:
                    return str(mv.version), dict(mv.tags)
        else:
            try:  # a concurrent first registration from another machine may win: fine
                c.create_registered_model(
                    name, description="ganforge generators (ONNX); alias champion = deployed"
                )
            except MlflowException as exc:
                if "already exists" not in str(
                    exc
                ).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                    raise self.error(exc) from None
        str_tags = {k: str(v) for k, v in tags.items() if v is not None}
        model_id = source.removeprefix("models:/") if source.startswith("models:/m-") else None
        # the registry store resolves a logged model's URI through the process-wide tracking
        # URI, not this client's: point it at this store (else, in a DVC temp copy, the
        # default would be the copy's own empty store and the logged model "not found")
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        mv = self._call(
            c.create_model_version,
            name,
            source,
            run_id=tags.get("run_id"),
            tags=str_tags,
            model_id=model_id,
        )
        return str(mv.version), {}

    def champion(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(version, its tags) of the alias, or None. Read from the alias map: a store error
        fails here instead of passing for "no champion"."""
        version = self._call(self.client.get_registered_model, name).aliases.get(self.CHAMPION)
        if version is None:
            return None
        return str(version), dict(self._call(self.client.get_model_version, name, version).tags)

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call(self.client.set_model_version_tag, name, version, k, v)

    def apply(self, name: str, entry: dict[str, Any]) -> bool:
        """Carry out a recorded decision (idempotent). False: the champion is no longer the one
        the decision was made against, so nothing was moved and the caller decides again."""
        version, before = entry["candidate"], entry["from_version"]
        if not entry["promoted"]:
            self.tag_version(
                name, version, {"role": "challenger", "challenger_reason": entry["reason"][:4000]}
            )
            self._describe(name, version, entry)
            return True
        aliases = self._call(self.client.get_registered_model, name).aliases
        current = str(aliases[self.CHAMPION]) if self.CHAMPION in aliases else None
        if current not in (before, version):
            return False
        if current != version:
            self._call(self.client.set_registered_model_alias, name, self.CHAMPION, version)
        self.tag_version(name, version, {"role": self.CHAMPION})
        if before:
            self.tag_version(name, before, {"role": "former-champion"})
        self._describe(name, version, entry)
        return True

    def _describe(self, name: str, version: str, entry: dict[str, Any]) -> None:
        """The decision where the registry UI shows it: the version's description, promoted
        or not (rule, this version's evidence, the reason)."""
        m = entry["metrics"]
        if entry["promoted"]:
            was = entry["from_version"]
            head = (
                f"PROMOTED to champion (was v{was})" if was else "PROMOTED to champion (the first)"
            )
        else:
            champ = entry["to_version"]
            head = f"challenger; champion stays v{champ}" if champ else "challenger; no champion"
        c2st = m.get("c2st_accuracy")
        judged = (
            f"two-sample test accuracy {c2st} {m.get('c2st_ci95')} on held-out real images (null "
            f"{m.get('c2st_null_accuracy')}; 0.5 = cannot tell them apart), "
            if c2st is not None
            else ""
        )
        text = (
            f"{head}. Rule: parity passed, FID above the real-data floor (separable), a "
            "mode-collapse verdict and no collapse, no data copying, a two-sample test accuracy "
            "not worse than the champion's beyond both intervals, and FID beating the champion's "
            f"beyond both 95% intervals. This version: {judged}FID {m['fid']} {m['fid_ci95']} "
            f"(at the floor's sample size {m.get('fid_at_floor_samples')} vs floor "
            f"{m.get('fid_floor')}), mode collapse {m['mode_collapse']}, copying "
            f"{m.get('copying')}. Reason: {entry['reason']}. Decided {entry['time']} for run "
            f"{entry['run_id']}."
        )
        self._call(self.client.update_model_version, name, version, description=text[:4000])

    def audit(self, name: str, entry: dict[str, Any]) -> None:
        """Append the decision to the model's trail (a tag ``audit.<ns>.<version>``), once."""
        rm = self._call(self.client.get_registered_model, name)
        if any(k.startswith("audit.") and k.endswith(f".{entry['candidate']}") for k in rm.tags):
            return
        key = f"audit.{time.time_ns()}.{entry['candidate']}"
        self._call(self.client.set_registered_model_tag, name, key, json.dumps(entry))

    def history(self, name: str | None, prefix: str) -> list[dict[str, Any]]:
        """Audit entries of one registered model (or every ``<prefix>-*`` one), oldest first."""
        c = self.client
        models = (
            [self._call(c.get_registered_model, name)]
            if name
            else self._call(c.search_registered_models, filter_string=f"name LIKE '{prefix}-%'")
        )
        entries = [
            {"registered_model": rm.name, "key": key, **json.loads(value)}
            for rm in models
            for key, value in rm.tags.items()
            if key.startswith("audit.")
        ]
        return sorted(entries, key=lambda e: int(e["key"].split(".")[1]))


CONTENDED = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


class ServerLock:
    """A lease on a tracking server, held as the registered model ``promote-lock.<name>``.

    Creating a registered model is atomic in every MLflow store (a unique name: the second
    creator gets RESOURCE_ALREADY_EXISTS), so whoever creates it holds the lock, whatever
    machine it runs on; releasing deletes it. A holder that died leaves it behind: its
    ``expires`` tag (epoch seconds, ``LEASE_S`` after taking it, far longer than a promotion
    takes) lets the next promotion break it. Waiting gives up after ``WAIT_S`` with a line
    that names the holder. The name does not start with the registered-model prefix, so the
    audit history never lists it.
    """

    LEASE_S = 300.0
    WAIT_S = 600.0

    def __init__(self, registry: Registry, name: str) -> None:
        import os
        import uuid

        self.registry, self.name = registry, f"promote-lock.{name}"
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def _held_by(self) -> dict[str, str] | None:
        """The current lease's tags, or None when nobody holds it."""
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.registry.client.get_registered_model(self.name).tags)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise self.registry.error(exc) from None

    def _delete(self) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already gone: the same outcome
            self.registry.client.delete_registered_model(self.name)

    def __enter__(self) -> ServerLock:
        import random

        from mlflow.exceptions import MlflowException

        client, deadline = self.registry.client, time.monotonic() + self.WAIT_S
        while True:
            tags = {"holder": self.holder, "expires": f"{time.time() + self.LEASE_S:.0f}"}
            try:
                client.create_registered_model(
                    self.name,
                    tags=tags,
                    description="held while ganforge promote decides; deleted when it is done",
                )
                return self
            except MlflowException as exc:
                # taken; or taken and released at once: MLflow's SQL store answers a duplicate
                # name by reading the existing model, and when its holder has just deleted
                # it, that read says RESOURCE_DOES_NOT_EXIST (seen in CI): both mean try again
                if getattr(exc, "error_code", "") not in CONTENDED:
                    raise self.registry.error(exc) from None
            held = self._held_by()
            if held is not None and _expires(held) < time.time():
                # the holder died: break its lease, unless it was renewed since we read it
                if self._held_by() == held:
                    self._delete()
                continue
            if time.monotonic() > deadline:
                who = (held or {}).get("holder", "?")
                raise TrackingError(
                    f"MLflow registry on {self.registry.uri}: registered model {self.name} "
                    f"(the promotion lock) is held by {who}; gave up after {self.WAIT_S:.0f} s "
                    "(if no promotion is running, delete that registered model)"
                )
            time.sleep(random.uniform(0.1, 0.4))  # jitter: waiters do not poll in step

    def __exit__(self, *exc_info) -> None:
        held = self._held_by()
        if held is not None and held.get("holder") == self.holder:
            self._delete()


def _expires(tags: dict[str, str]) -> float:
    """A lease's expiry (epoch seconds); a missing or garbled tag counts as expired."""
    try:
        expires = float(tags.get("expires", 0))
    except ValueError:
        return 0.0
    return expires if expires == expires and expires != float("inf") else 0.0  # not NaN or inf
