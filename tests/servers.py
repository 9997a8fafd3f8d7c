"""Real servers for the scale-out tests, each on 127.0.0.1 and gone when its block ends:
a throwaway PostgreSQL cluster, an MLflow tracking server, a Prefect server."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import ROOT, free_port, project_env, stop, wait_http

INSTALL_HINT = (
    "PostgreSQL's initdb is not on PATH nor in /usr/lib/postgresql/*/bin: "
    "install it (Debian: apt-get install postgresql) to run the PostgreSQL tests"
)


def postgres_bin() -> Path | None:
    """The directory holding initdb/pg_ctl/createdb/psql, or None."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(versions[-1]).parent if versions else None


def _version(path: str) -> int:
    v = Path(path).parts[-3]
    return int(v) if v.isdigit() else 0


@dataclass
class Postgres:
    bin: Path
    port: int
    user: str = "ganforge"

    def url(self, db: str, driver: str = "postgresql") -> str:
        """A SQLAlchemy URL: ``postgresql`` (psycopg2, MLflow), ``postgresql+asyncpg`` (Prefect)."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{db}"

    def createdb(self, db: str) -> None:
        subprocess.run([self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, db],
                       check=True, capture_output=True)  # fmt: skip

    def query(self, db: str, sql: str) -> str:
        """psql's unaligned, tuples-only answer to ``sql``."""
        proc = subprocess.run(
            [self.bin / "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", db, "-Atc", sql],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return proc.stdout.strip()


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """``initdb`` a cluster in a fresh temp dir, ``pg_ctl start`` it on a free loopback port
    (trust auth, no fsync: it is thrown away), yield it; stop it and remove the dir.

    PostgreSQL refuses to run as root: as root it runs as the ``postgres`` user that
    Debian's package creates, in a temp dir of its own (pytest's tmp_path is root-only)."""
    import pytest

    bindir = postgres_bin()
    if bindir is None:
        pytest.skip(INSTALL_HINT)
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="ganforge-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, cwd=base)

    try:
        pg(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "ganforge",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        )
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
           "-o", f"-F -h 127.0.0.1 -p {port} -k {base}", "start")  # fmt: skip
        yield Postgres(bindir, port)
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, workers: int = 2) -> Iterator[str]:
    """``mlflow server`` on ``backend`` with artifacts served from ``artifacts``; yields its URI.
    Clients need nothing but that URI (``--serve-artifacts``: uploads go through the server)."""
    port = free_port()
    artifacts.mkdir(parents=True, exist_ok=True)
    log = open(artifacts.parent / f"mlflow-server-{port}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
         "--serve-artifacts", "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, cwd=artifacts.parent,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def prefect_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a Prefect server, worker or client talking to 127.0.0.1:``port``:
    the stages' environment (``project_env``) plus Prefect's home, API URL and ``extra``."""
    return {**project_env(ROOT), "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT), **extra}  # fmt: skip


@contextlib.contextmanager
def prefect_server(home: Path, **extra: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on a free port; yields (API URL, the env clients use).
    ``extra``: server settings, e.g. PREFECT_API_DATABASE_CONNECTION_URL for PostgreSQL."""
    port = free_port()
    env = prefect_env(home, port, **extra)
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", 180, proc)
        yield env["PREFECT_API_URL"], env
    finally:
        stop(proc)
        log.close()


def api_call(method: str, url: str, patience: float = 300, **kwargs):
    """One call to a test server's REST API that waits out a busy server instead of failing:
    on 2 cores a SQLite-backed Prefect server beside a training can take over 10 s to answer
    one poll (a CI run failed on exactly that), which says nothing about what is tested.
    Retries timeouts and refused connections for up to ``patience`` seconds, then raises."""
    import time

    import httpx

    deadline = time.monotonic() + patience
    while True:
        try:
            return httpx.request(method, url, timeout=60, **kwargs)
        except (httpx.TimeoutException, httpx.ConnectError):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
