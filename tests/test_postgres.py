"""A team's set-up: MLflow and Prefect servers on a real PostgreSQL, artifacts served over HTTP.

Every test here runs against one throwaway cluster (``initdb`` + ``pg_ctl`` on a free
127.0.0.1 port, removed afterwards). Without PostgreSQL installed they skip, saying how to
install it; ``.ci/run`` installs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, make_project, project_env
from .servers import mlflow_server, postgres_cluster, prefect_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg():
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mlflow_pg(pg, tmp_path_factory):
    """An MLflow server whose backend store is PostgreSQL and whose artifacts it serves."""
    pg.createdb("mlflow")
    artifacts = tmp_path_factory.mktemp("mlflow-pg") / "artifacts"
    with mlflow_server(pg.url("mlflow"), artifacts) as uri:
        yield uri, artifacts


def run(cmd, cwd, env, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_pipeline_tracks_and_registers_on_postgres(pg, mlflow_pg, tmp_path):
    """`dvc repro` against the PostgreSQL-backed server: the run, its metrics and the registered
    version are rows in PostgreSQL, the artifacts are in the server's store (none in the
    project), and `ganforge generate` of the champion works from another directory with
    nothing but the HTTP URI, giving the bytes the pipeline's own ONNX file gives. Then a
    worse candidate stays challenger and a better one takes champion."""
    from mlflow.tracking import MlflowClient

    from ganforge.core.files import read_metrics
    from ganforge.stages.promote import promote

    from .conftest import tiny_params

    uri, artifacts = mlflow_pg
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    env = {**project_env(project), "MLFLOW_TRACKING_URI": uri}
    run([sys.executable, "-m", "dvc", "repro"], project, env)

    ev = read_metrics(project / "metrics/eval.json")
    pr = json.loads((project / "metrics/promote.json").read_text())
    assert pr["promote"], pr  # the first version of a new model, parity passed
    name = pr["registered_model"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # REST only
    run_id = json.loads((project / "models/main/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).data.metrics["fid"] == ev["fid"]
    assert len(client.get_metric_history(run_id, "g_loss")) == 600
    # the rows are PostgreSQL's, the files the server's
    assert pg.query("mlflow", f"select status from runs where run_uuid = '{run_id}'") == "FINISHED"
    assert pg.query("mlflow", f"select count(*) from model_versions where name = '{name}'") == "1"
    assert pg.query(
        "mlflow", f"select value from metrics where run_uuid = '{run_id}' and key = 'fid'"
    )
    assert any(artifacts.rglob("model.onnx")) and any(artifacts.rglob("samples.png"))
    assert not (project / "mlruns").exists() and not (project / "mlflow.db").exists()

    # another machine: an empty directory, its own HOME, nothing but the URI
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bare = {
        "MLFLOW_TRACKING_URI": uri,
        "HOME": str(elsewhere),
        "PATH": f"{sys.prefix}/bin:/usr/bin:/bin",
    }
    gen = [sys.executable, "-m", "ganforge", "generate", "-n", "16", "--seed", "3"]
    run([*gen, "--model", f"models:/{name}@champion", "--out", "remote.png"], elsewhere, bare)
    run([*gen, "--model", str(project / "exported/main.onnx"), "--out", str(tmp_path / "local.png")], project, env)  # fmt: skip
    assert (elsewhere / "remote.png").read_bytes() == (tmp_path / "local.png").read_bytes()

    def candidate(tag: str, fid: float, half: float):
        """Another generator (its own sha256) with the given FID, sharing the logged model."""
        d = tmp_path / tag
        d.mkdir()
        ex = read_metrics(project / "metrics/export.json")
        (d / "export.json").write_text(json.dumps({**ex, "generator_sha256": f"{tag}-sha"}))
        protocol = {**ev["protocol"], "generator_sha256": f"{tag}-sha"}
        (d / "eval.json").write_text(
            json.dumps({**ev, "protocol": protocol, "mode_collapse": False, "fid": fid,
                        "fid_ci95": [fid - half, fid + half]})
        )  # fmt: skip
        return promote(tiny_params(), d / "eval.json", d / "export.json", d / "promote.json")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        worse = candidate("worse", ev["fid_ci95"][1] * 2 + 10, 1.0)
        better = candidate("better", ev["fid_ci95"][0] / 2, 0.01)  # beats the champion
    assert not worse["promote"] and "does not beat champion" in worse["reason"]
    assert better["promote"] and better["champion_before"] == pr["version"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == better["version"]
    shown = run([sys.executable, "-m", "ganforge", "promote", "--history", "--params", str(ROOT / "params.yaml")],
                elsewhere, bare).stdout  # fmt: skip
    lines = [ln for ln in shown.splitlines() if name in ln]
    assert len(lines) == 3 and f"-> v{better['version']}" in lines[-1]


def test_eight_machines_promote_at_once_through_the_server(
    mlflow_pg, tmp_path, monkeypatch, tiny_onnx
):
    """8 processes, each with its own HOME (no shared file system, so no shared file lock),
    promote into the PostgreSQL-backed registry at once: the lease in the registry serialises
    them, so there is one champion, the best, and an unbroken trail."""
    from .test_promote import promote_concurrently, run_factory

    uri, _ = mlflow_pg
    promote_concurrently(
        run_factory(uri, tmp_path, monkeypatch, tiny_onnx), tmp_path, separate_homes=True
    )


def test_a_dead_holders_lease_is_broken_and_a_live_one_waited_for(mlflow_pg, monkeypatch):
    """A promotion lock left by a process that died (its lease expired) does not block the
    next promotion; a live one makes it wait, and it says who holds it when it gives up."""
    import time

    from ganforge.errors import GanforgeError
    from ganforge.tracking import Registry
    from ganforge.tracking.registry import ServerLock

    uri, _ = mlflow_pg
    registry = Registry(uri)
    lock_name = "promote-lock.ganforge-test-lease"
    registry.client.create_registered_model(lock_name, tags={"holder": "dead:1:x", "expires": f"{time.time() - 1:.0f}"})  # fmt: skip
    with registry.lock("ganforge-test-lease") as held:
        assert registry.client.get_registered_model(lock_name).tags["holder"] == held.holder
        monkeypatch.setattr(ServerLock, "WAIT_S", 1.0)
        t0 = time.monotonic()
        expected = f"{lock_name} .*is held by {held.holder}"
        with pytest.raises(GanforgeError, match=expected), registry.lock("ganforge-test-lease"):
            pass
        assert 1.0 <= time.monotonic() - t0 < 10
    assert not registry.client.search_registered_models(f"name = '{lock_name}'")
    # a lease whose expiry cannot be read counts as expired, not as held for ever
    registry.client.create_registered_model(lock_name, tags={"holder": "odd:2:y", "expires": "nan"})
    with registry.lock("ganforge-test-lease"):
        pass
    assert not registry.client.search_registered_models(f"name = '{lock_name}'")


def test_a_prefect_flow_run_is_recorded_in_postgres(pg, tmp_path):
    """The Prefect server on PostgreSQL (asyncpg): a flow run of the pipeline is a row there."""
    pg.createdb("prefect")
    db = {"PREFECT_API_DATABASE_CONNECTION_URL": pg.url("prefect", "postgresql+asyncpg")}
    with prefect_server(tmp_path / "prefect-home", **db) as (_api, env):
        (tmp_path / "p").mkdir()
        project = make_project(tmp_path / "p")
        code = f"from pipelines.flows import training_flow; training_flow(repo={str(project)!r}, stages=['prepare'])"
        run([sys.executable, "-c", code], ROOT, env)
    rows = pg.query(
        "prefect", "select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id"
    )
    assert rows == "ganforge-training|COMPLETED", rows
    assert (Path(project) / "data/prepared").is_dir()


def test_without_postgresql_the_tests_skip_saying_how_to_install_it(monkeypatch):
    from . import servers

    monkeypatch.setattr(servers, "postgres_bin", lambda: None)
    hint = r"apt-get install postgresql"
    with pytest.raises(pytest.skip.Exception, match=hint), servers.postgres_cluster():
        pass
