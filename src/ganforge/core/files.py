"""Atomic file and directory writes, output ownership, and content checksums.

A stage writes every output to a temporary name beside its final place and renames
it into place only when complete, so a crash or an error never leaves a half-written
file where a later stage (or DVC) would take it for a finished one.

A stage replaces only what it owns. Every directory a stage writes carries an owner
file (``.ganforge-owner``, naming the stage); ``claim_dir`` refuses to write into or
replace a directory that exists, is not empty and is not marked as that stage's, so a
mistyped ``--out`` can never delete a user's folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ganforge.errors import GanforgeError

_UMASK = os.umask(0)
os.umask(_UMASK)
OWNER_FILE = ".ganforge-owner"


class OutputError(GanforgeError):
    """An output path is occupied by something the stage did not create."""

    exit_code = 2


def claim_dir(path: str | Path, stage: str) -> Path:
    """Check that ``path`` may be (re)written by ``stage``: absent, an empty directory, or a
    directory marked as ``stage``'s. Raises ``OutputError`` naming it otherwise."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(f"{path}: exists and is not a directory; choose another output path")
    if not path.exists() or not any(path.iterdir()):
        return path
    marker = path / OWNER_FILE
    owner = marker.read_text(errors="replace").strip() if marker.is_file() else None
    if owner != stage:
        what = f"belongs to `ganforge {owner}`" if owner else "was not written by ganforge"
        raise OutputError(
            f"{path}: exists, is not empty and {what}; `ganforge {stage}` only replaces its own "
            "outputs: choose another output path or move it away yourself"
        )
    return path


def mark_dir(path: str | Path, stage: str) -> None:
    """Mark ``path`` (a directory ``stage`` created) as that stage's output."""
    (Path(path) / OWNER_FILE).write_text(stage + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def replace_dir(src: str | Path, dest: str | Path) -> None:
    """Move directory ``src`` onto ``dest`` (which the caller has claimed), replacing it."""
    src, dest = Path(src), Path(dest)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, owner: str) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` as a whole.

    ``path`` must be claimable by ``owner`` (``claim_dir``), checked before any work and
    again just before the swap; the new directory is marked as ``owner``'s.
    """
    path = Path(path)
    claim_dir(path, owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        mark_dir(tmp, owner)
        os.chmod(tmp, 0o777 & ~_UMASK)
        claim_dir(path, owner)
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(*blobs: bytes | memoryview) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()


def details_path(metrics_path: str | Path) -> Path:
    """Where the non-headline part of a metrics file goes:
    ``eval.json`` -> ``eval_details.json``."""
    p = Path(metrics_path)
    return p.with_name(f"{p.stem}_details{p.suffix}")


def write_metrics(
    metrics_path: str | Path, result: dict[str, Any], headline: tuple[str, ...]
) -> None:
    """The headline numbers to ``metrics_path`` (what ``dvc metrics show`` and ``dvc exp show``
    tabulate), everything else (protocol, per-class tables, timings, provenance) to its
    details file beside it."""
    write_json(details_path(metrics_path), {k: v for k, v in result.items() if k not in headline})
    write_json(metrics_path, {k: result[k] for k in headline if k in result})


def read_metrics(metrics_path: str | Path) -> Any:
    """A metrics file with its details file merged in (headline values win); JSON as stored."""
    data = json.loads(Path(metrics_path).read_text())
    details = details_path(metrics_path)
    if isinstance(data, dict) and details.is_file():
        extra = json.loads(details.read_text())
        if isinstance(extra, dict):
            data = {**extra, **data}
    return data


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Rows of numbers as CSV (columns: every key, first seen first), atomically; none: no file."""
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict[str, float]]:
    """``write_csv``'s rows back as floats; no file: no rows."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
