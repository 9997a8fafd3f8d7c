"""`ganforge generate` (onnxruntime only, no torch) and the HTTP service on 127.0.0.1."""

from __future__ import annotations

import io
import subprocess
import sys

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


@pytest.fixture(scope="module")
def server(cond_onnx):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganforge", "serve", "--model", str(cond_onnx), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", 60, proc)
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
    assert httpx.post(f"{server}/reload").json()["family"] == "cdcgan"


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
        httpx.post(f"{server}/reload", params={"model": "/etc/passwd"})
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
