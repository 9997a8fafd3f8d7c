"""`ganforge generate` (onnxruntime only, no torch) and the HTTP service on 127.0.0.1."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ganforge.stages.export import export
from ganforge.stages.train import train

from .conftest import free_port, stop, tiny_params, wait_http

NO_TORCH = (
    "import sys, runpy; sys.argv = ['ganforge'] + sys.argv[1:]; "
    "from ganforge.cli import main; rc = main(); "
    "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
)


def generate(*args):
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, "generate", *args], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def cond_onnx(digits_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("cdcgan")
    params = tiny_params(train={"model": "cdcgan", "steps": 5})
    train(params, digits_dir, d / "runs", progress=False)
    export(params, d / "runs/main/generator.pt", d / "c.onnx", d / "export.json")
    return d / "c.onnx"


def test_generate_without_torch_same_seed_same_images(tmp_path, tiny_onnx):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        proc = generate(
            "--model", str(tiny_onnx), "-n", "16", "--seed", str(seed), "--out", str(out)
        )
        assert proc.returncode == 0, proc.stderr
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    img = Image.open(a)
    assert img.size == (4 * 50 + 2, 4 * 50 + 2)  # 16 tiles of 16 px shown at 48 px


def test_generate_a_class(tmp_path, cond_onnx, tiny_onnx):
    assert (
        generate(
            "--model", str(cond_onnx), "-n", "8", "--label", "3", "--out", str(tmp_path / "g.png")
        ).returncode
        == 0
    )
    bad = generate("--model", str(cond_onnx), "--label", "10", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "--label: 10 is not a class of this model (0..9" in bad.stderr
    bad = generate("--model", str(tiny_onnx), "--label", "1", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "unconditional" in bad.stderr
    bad = generate("--model", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 1 and "missing.onnx: file not found" in bad.stderr
    assert not (tmp_path / "x.png").exists()


def test_truncation_without_torch_and_identically_in_torch(tmp_path, tiny_onnx, digits_generator):
    """``--truncation``: typical images from the same seed, deterministic, refused out of
    range with one line and no file; onnxruntime on truncated noise gives what torch's
    generator gives on the same noise (truncation is applied to z, before the graph)."""
    import numpy as np
    import torch

    from ganforge.core.latent import noise
    from ganforge.deploy.onnxrt import OnnxGenerator
    from ganforge.models import load_generator

    a, b, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "plain.png"
    for out, extra in ((a, ["--truncation", "0.5"]), (b, ["--truncation", "0.5"]), (plain, [])):
        proc = generate(
            "--model", str(tiny_onnx), "-n", "16", "--seed", "2", "--out", str(out), *extra
        )
        assert proc.returncode == 0, proc.stderr
    assert a.read_bytes() == b.read_bytes() != plain.read_bytes()
    for bad in ("0.01", "nan", "11"):
        proc = generate(
            "--model", str(tiny_onnx), "--truncation", bad, "--out", str(tmp_path / "x.png")
        )
        assert proc.returncode == 2 and f"--truncation: {bad}" in proc.stderr, proc.stderr
        assert "0.05..10" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()

    onnx = OnnxGenerator(tiny_onnx).generate(32, 5, truncation=0.7)
    G, _ = load_generator(digits_generator, torch.device("cpu"))
    with torch.no_grad():
        ref = G(torch.from_numpy(noise(32, G.latent_dim, 5, 0.7))).numpy()
    assert np.abs(onnx - ref).max() < 1e-4


TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(cond_onnx):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganforge", "serve", "--model", str(cond_onnx), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GANFORGE_RELOAD_TOKEN": TOKEN},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", 180, proc)
        yield base
    finally:
        stop(proc)


def test_service_endpoints(server):
    assert httpx.get(f"{server}/healthz").json()["status"] == "ok"
    info = httpx.get(f"{server}/model").json()
    assert (
        info["family"] == "cdcgan"
        and info["num_classes"] == 10
        and "CPUExecutionProvider" in info["providers"]
    )
    r = httpx.get(f"{server}/generate", params={"n": 16, "seed": 1, "label": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (4 * 50 + 2, 4 * 50 + 2)
    assert (
        httpx.get(f"{server}/generate", params={"n": 16, "seed": 1, "label": 3}).content
        == r.content
    )
    cut = httpx.get(
        f"{server}/generate", params={"n": 16, "seed": 1, "label": 3, "truncation": 0.5}
    )
    assert cut.status_code == 200 and cut.headers["x-truncation"] == "0.5"
    assert cut.content != r.content and r.headers["x-truncation"] == "none"
    assert httpx.post(f"{server}/reload", headers=AUTH).json()["family"] == "cdcgan"
    assert httpx.post(f"{server}/reload").status_code == 401
    assert (
        httpx.post(f"{server}/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
    )


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"n": 0}, "greater than or equal to 1"),
        ({"n": 257}, "less than or equal to 256"),
        ({"n": "many"}, "valid integer"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"seed": 2**64}, "less than or equal to"),
        ({"seed": "1.5"}, "valid integer"),
        ({"label": 10}, "not a class of this model"),
        ({"label": -3}, "greater than or equal to 0"),
        ({"label": "seven"}, "valid integer"),
        ({"truncation": 0.01}, "greater than or equal to 0.05"),
        ({"truncation": 11}, "less than or equal to 10"),
        ({"truncation": "nan"}, "truncation"),
        ({"truncation": "inf"}, "truncation"),
    ],
)
def test_bad_input_is_a_422_with_a_message(server, query, needle):
    r = httpx.get(f"{server}/generate", params=query)
    assert r.status_code == 422
    assert needle in r.text


def test_no_request_can_name_a_file(server):
    r = httpx.get(f"{server}/generate", params={"model": "/etc/passwd", "n": 1})
    assert (
        r.status_code == 200
    )  # unknown query keys are ignored: the model is the one it started with
    assert (
        httpx.post(f"{server}/reload", params={"model": "/etc/passwd"}, headers=AUTH)
        .json()["model"]
        .endswith("c.onnx")
    )
    assert httpx.get(f"{server}/../../etc/passwd").status_code == 404


# --------------------------------------------------------------------------- abuse


@pytest.mark.slow
def test_fuzzed_queries_never_get_a_500(server):
    """Property-based: any query string values give 200 (valid) or 422 (invalid), never 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.text(max_size=30),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.sampled_from(["", " ", "1e3", "0x10", "-0", "NaN", "%00", "1" * 400]),
    )
    query = st.dictionaries(st.sampled_from(["n", "seed", "label", "other"]), values, max_size=4)

    with httpx.Client(base_url=server, timeout=30) as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(query)
        def check(q):
            r = client.get("/generate", params=q)
            assert r.status_code in (200, 422), (q, r.status_code, r.text[:200])
            if r.status_code == 200:
                assert r.content[:8] == b"\x89PNG\r\n\x1a\n"

        check()


@pytest.mark.slow
def test_load_2000_requests_at_concurrency_16(server):
    from benchmarks.http_load import run_load

    result = run_load(server, total=2000, concurrency=16, n=16, conditional=True)
    print(f"\nload: {result}")
    assert result["errors"] == 0 and result["requests"] == 2000


def test_idle_connections_are_closed(server):
    """A keep-alive connection left idle is closed by the server (uvicorn timeout_keep_alive)."""
    import socket
    import time

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while not got.endswith(b"}"):  # the head and the JSON body may come in two reads
            got += sock.recv(65536)
        assert b"200 OK" in got
        t0 = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - t0 < 12


# --------------------------------------------------------------------------- in-process app


def test_reload_is_off_unless_a_token_is_set(tiny_onnx, monkeypatch):
    from fastapi.testclient import TestClient

    from ganforge.deploy.service import create_app

    monkeypatch.delenv("GANFORGE_RELOAD_TOKEN", raising=False)
    with TestClient(create_app(str(tiny_onnx))) as client:
        r = client.post("/reload", headers=AUTH)
        assert r.status_code == 403 and "GANFORGE_RELOAD_TOKEN" in r.text


def test_a_reload_that_cannot_run_keeps_the_old_model(tiny_onnx, tmp_path, monkeypatch):
    """The new file loads but its metadata disagrees with its graph: the test batch fails, the
    previous model keeps serving and /healthz stays ok. A model that fails at generation
    turns /healthz to 503."""
    import shutil

    import onnx
    from fastapi.testclient import TestClient

    from ganforge.deploy.service import create_app

    monkeypatch.setenv("GANFORGE_RELOAD_TOKEN", TOKEN)
    served = tmp_path / "served.onnx"
    shutil.copy(tiny_onnx, served)
    with TestClient(create_app(str(served))) as client:
        model = onnx.load(served)
        for p in model.metadata_props:
            if p.key == "ganforge.latent_dim":
                p.value = "7"  # the graph takes 16
        onnx.save(model, served)
        r = client.post("/reload", headers=AUTH)
        assert r.status_code == 503 and "still serving the previous model" in r.text
        assert client.get("/generate", params={"n": 2}).status_code == 200
        assert client.get("/healthz").json()["status"] == "ok"
        holder = client.app.state.holder

        def broken(*args, **kwargs):
            raise RuntimeError("kernel failed")

        monkeypatch.setattr(holder.generator, "generate", broken)
        assert client.get("/generate", params={"n": 2}).status_code == 503
        h = client.get("/healthz")
        assert h.status_code == 503 and "kernel failed" in h.json()["problem"]


def test_registry_reloads_reuse_one_download_and_generate_leaves_none(
    tiny_onnx, tmp_path, monkeypatch
):
    """100 reloads of models:/...@champion keep one downloaded copy; the cache goes at shutdown;
    `ganforge generate` from the registry leaves no temporary directory behind."""
    import tempfile

    import mlflow
    import onnx
    from fastapi.testclient import TestClient
    from mlflow.tracking import MlflowClient

    from ganforge.deploy.service import create_app

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GANFORGE_RELOAD_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.set_experiment("ganforge-test")  # not an experiment id left by an earlier test
    with mlflow.start_run(experiment_id=exp.experiment_id):
        info = mlflow.onnx.log_model(onnx.load(tiny_onnx), name="generator",
                                     onnx_execution_providers=["CPUExecutionProvider"])  # fmt: skip
    mv = mlflow.register_model(info.model_uri, "ganforge-test-dcgan")
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        "ganforge-test-dcgan", "champion", mv.version
    )
    ref = "models:/ganforge-test-dcgan@champion"
    with TestClient(create_app(ref)) as client:
        cache = client.app.state.holder.cache
        assert client.get("/model").json()["registered_version"] == "1"
        assert client.get("/model").json()["alias"] == "champion"
        for _ in range(100):
            assert client.post("/reload", headers=AUTH).status_code == 200
        copies = [p for p in cache.iterdir()]
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        assert len(copies) == 1 and size < 3 * tiny_onnx.stat().st_size
    assert not cache.exists()
    before = set(Path(tempfile.gettempdir()).glob("ganforge-generate-*"))
    out = tmp_path / "g.png"
    proc = subprocess.run([sys.executable, "-m", "ganforge", "generate", "--model", ref, "-n", "4", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and set(Path(tempfile.gettempdir()).glob("ganforge-generate-*")) == before


def test_a_registry_lookup_elsewhere_names_the_uri_and_creates_no_store(tmp_path):
    """`ganforge generate --model models:/...` outside a project, without MLFLOW_TRACKING_URI:
    one line naming the URI it tried and how to set it; no empty mlflow.db left behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-m", "ganforge", "generate", "--model", "models:/ganforge-digits-cdcgan@champion",
                           "--out", str(tmp_path / "g.png")], capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in line and "MLFLOW_TRACKING_URI" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "g.png").exists()
