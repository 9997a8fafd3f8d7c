"""``ganforge generate`` and ``ganforge serve``: the exported generator on onnxruntime.

Neither imports torch: a deployment needs onnxruntime (or onnxruntime-gpu), numpy,
pillow, and for the service FastAPI + uvicorn.

    ganforge generate --model models:/ganforge-digits-cdcgan@champion -n 64 --seed 0 --out grid.png
    ganforge generate --model exported/main.onnx --truncation 0.7 --out typical.png
    ganforge serve --model models:/ganforge-digits-cdcgan@champion --port 8000

HTTP API (OpenAPI at /docs):
    GET  /generate?n=16&seed=1&label=3  -> PNG grid (n in 1..256, seed >= 0, label only for
                                           conditional models and within their classes;
                                           &truncation=0.7: latent components beyond +-0.7
                                           redrawn, 0.05..10, ``core.latent``)
    GET  /healthz                       -> {"status": "ok", ...}; 503 when the model cannot generate
    GET  /model                         -> the model's metadata and the reference it was loaded from
    POST /reload                        -> load the model reference the server was started with
                                           again (a new champion), without a restart. Off unless
                                           GANFORGE_RELOAD_TOKEN is set; then it needs the header
                                           ``Authorization: Bearer <token>``.

Invalid input is answered 422 with a message, never 500. No request names a file or a
model: the server only ever loads the reference it was started with. A reloaded model
runs a fixed test batch before it replaces the one being served (else the old one stays).
A ``models:/`` reference is downloaded into one cache directory per server; each reload
replaces the previous download, and the directory is removed when the server stops.
Cross-site browser calls to /reload are impossible: it needs an ``Authorization`` header,
which a browser only sends cross-site after a CORS preflight this service never grants.

Limits (uvicorn): idle keep-alive connections close after 5 s, at most 64 connections are
served at once (more get 503), and request heads over 16 KiB are refused.
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ganforge.core.files import atomic_path
from ganforge.core.latent import MAX_TRUNCATION, MIN_TRUNCATION, check_truncation, grid_columns
from ganforge.deploy.onnxrt import OnnxGenerator, grid_png, is_registry_uri, resolve_model
from ganforge.errors import ConfigError

log = logging.getLogger(__name__)

MAX_N = 256  # per request: a 256-image grid is ~0.5 s on a 2-core CPU at 32 px
SEED_MAX = 2**63 - 1
RELOAD_TOKEN_ENV = "GANFORGE_RELOAD_TOKEN"
LIMITS = {
    "timeout_keep_alive": 5,
    "limit_concurrency": 64,
    "h11_max_incomplete_event_size": 16 * 1024,
}


def _check_label(gen: OnnxGenerator, label: int | None) -> str | None:
    """None if fine, else the message for the user."""
    info = gen.info
    if label is None:
        return None
    if not info.conditional:
        return f"label: this {info.family} model is unconditional; omit label"
    if not 0 <= label < info.num_classes:
        names = ", ".join(info.class_names)
        return f"label: {label} is not a class of this model (0..{info.num_classes - 1}: {names})"
    return None


def check_threads(threads: int | None) -> int | None:
    """``--threads``: None (measured at load) or 1..1024 onnxruntime intra-op threads."""
    if threads is not None and not 1 <= threads <= 1024:
        raise ConfigError(f"--threads: {threads} is outside 1..1024 (leave it out to measure)")
    return threads


def generate_to_file(
    model: str,
    n: int,
    seed: int,
    label: int | None,
    out: str | Path,
    threads: int | None = None,
    truncation: float | None = None,
) -> dict[str, Any]:
    check_threads(threads)
    problem = check_truncation(truncation, "--truncation")
    if problem:
        raise ConfigError(problem)
    if not 1 <= n <= 4096:
        raise ConfigError(f"-n: {n} is outside 1..4096")
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--seed: {seed} is outside 0..2^63-1")
    with tempfile.TemporaryDirectory(prefix="ganforge-generate-") as download:
        gen = OnnxGenerator(resolve_model(model, download), threads=threads)
        problem = _check_label(gen, label)
        if problem:
            raise ConfigError(f"--{problem}")
        images = gen.generate(n, seed, label, truncation)
    nrow = grid_columns(n, gen.info.num_classes, gen.info.conditional and label is None)
    with atomic_path(out) as tmp:
        tmp.write_bytes(grid_png(images, nrow=nrow))
    return {
        "out": str(out),
        "n": n,
        "seed": seed,
        "label": label,
        "truncation": truncation,
        "model": model,
        "providers": gen.session.get_providers(),
        "threads": gen.threads,
    }


class ModelHolder:
    """The served generator; ``reload`` swaps in a freshly resolved, test-run one atomically.

    A registry reference is downloaded into ``cache/<n>``; after a swap the previous download
    is deleted, so the disk holds one copy (two during a reload) however often it is called.
    """

    def __init__(self, model_ref: str, threads: int | None = None) -> None:
        self.model_ref, self.threads = model_ref, threads
        self._lock = threading.Lock()
        self.cache = (
            Path(tempfile.mkdtemp(prefix="ganforge-serve-")) if is_registry_uri(model_ref) else None
        )
        self._loads = 0
        self.problem: str | None = None  # why the served model cannot generate, if it cannot
        self.version: str | None = None  # the registry version a models:/ reference resolved to
        try:
            self.generator, self._dir = self._load()
        except BaseException:
            self.close()
            raise
        self.loaded_at = time.time()

    def _load(self) -> tuple[OnnxGenerator, Path | None]:
        self._loads += 1
        target = self.cache / str(self._loads) if self.cache else None
        try:
            gen = OnnxGenerator(resolve_model(self.model_ref, target), threads=self.threads)
            if target is not None:
                from ganforge.tracking import registry_version

                self.version = registry_version(self.model_ref)
            return gen, target
        except BaseException:
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)
            raise

    def reload(self) -> OnnxGenerator:
        fresh, fresh_dir = self._load()  # load and test-run outside the lock: requests go on
        with self._lock:
            old_dir = self._dir
            self.generator, self._dir, self.loaded_at, self.problem = (
                fresh,
                fresh_dir,
                time.time(),
                None,
            )
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)
        return fresh

    def close(self) -> None:
        if self.cache is not None:
            shutil.rmtree(self.cache, ignore_errors=True)


def _registry_fields(model_ref: str) -> dict[str, Any]:
    """``models:/name@alias`` or ``models:/name/version`` -> its parts, for /model."""
    if not model_ref.startswith("models:/"):
        return {}
    rest = model_ref.removeprefix("models:/")
    name, _, alias = rest.partition("@")
    if alias:
        return {"registered_model": name, "alias": alias}
    name, _, version = rest.partition("/")
    return {"registered_model": name, "version": version or None}


def create_app(model_ref: str, threads: int | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Header, HTTPException, Query
    from fastapi.responses import JSONResponse, Response

    holder = ModelHolder(model_ref, check_threads(threads))
    token = os.environ.get(RELOAD_TOKEN_ENV, "")

    @asynccontextmanager
    async def lifespan(_app):
        yield
        holder.close()

    app = FastAPI(
        title="ganforge",
        description="GAN image generation with onnxruntime",
        version="1",
        lifespan=lifespan,
    )
    app.state.holder = holder

    def describe(gen: OnnxGenerator) -> dict[str, Any]:
        info = gen.info
        return {
            "model": holder.model_ref,
            **_registry_fields(holder.model_ref),
            "registered_version": holder.version,
            "file": gen.path.name,
            "family": info.family,
            "conditional": info.conditional,
            "latent_dim": info.latent_dim,
            "num_classes": info.num_classes,
            "class_names": info.class_names,
            "image_size": info.image_size,
            "channels": info.channels,
            "providers": gen.session.get_providers(),
            "intra_op_threads": gen.threads,
            "metadata": info.metadata,
            "loaded_at": holder.loaded_at,
        }

    @app.get("/healthz")
    def healthz():
        body = {"model": holder.model_ref, "family": holder.generator.info.family}
        if holder.problem:
            return JSONResponse(
                {"status": "unhealthy", "problem": holder.problem, **body}, status_code=503
            )
        return {"status": "ok", **body}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return describe(holder.generator)

    @app.get(
        "/generate",
        responses={200: {"content": {"image/png": {}}, "description": "PNG grid"}},
        response_class=Response,
    )
    def generate(
        n: int = Query(16, ge=1, le=MAX_N, description="number of images"),
        seed: int = Query(0, ge=0, le=SEED_MAX, description="noise seed: same seed, same images"),
        label: int | None = Query(None, ge=0, description="class, for conditional models"),
        truncation: float | None = Query(
            None,
            ge=MIN_TRUNCATION,
            le=MAX_TRUNCATION,
            description="truncation threshold: latent components beyond +-this are redrawn "
            "(lower = typical images, less variety; leave out for none)",
        ),
    ) -> Response:
        gen = holder.generator
        problem = _check_label(gen, label)
        if problem:
            raise HTTPException(status_code=422, detail=problem)
        try:
            images = gen.generate(n, seed, label, truncation)
        except Exception as exc:  # the model itself fails: say so on /healthz too
            holder.problem = f"generation failed: {str(exc).splitlines()[0][:300]}"
            log.error("%s", holder.problem)
            raise HTTPException(status_code=503, detail=holder.problem) from None
        nrow = grid_columns(n, gen.info.num_classes, gen.info.conditional and label is None)
        return Response(
            grid_png(images, nrow=nrow),
            media_type="image/png",
            headers={
                "X-Seed": str(seed),
                "X-Truncation": "none" if truncation is None else str(truncation),
            },
        )

    @app.post("/reload")
    def reload(authorization: str | None = Header(None)) -> dict[str, Any]:
        if not token:
            raise HTTPException(
                status_code=403,
                detail=f"reload is off; start the server with {RELOAD_TOKEN_ENV} set",
            )
        if not authorization or not hmac.compare_digest(
            authorization.encode(), f"Bearer {token}".encode()
        ):
            raise HTTPException(
                status_code=401, detail="reload needs the header Authorization: Bearer <token>"
            )
        try:
            gen = holder.reload()
        except Exception as exc:  # keep serving the old model; say why the new one failed
            raise HTTPException(
                status_code=503, detail=f"reload failed, still serving the previous model: {exc}"
            ) from None
        return describe(gen)

    return app


def run_server(model_ref: str, host: str, port: int, threads: int | None = None) -> None:
    import socket

    import uvicorn

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: {port} is outside 1..65535")
    try:  # a port in use or not ours is one line, before the model is even loaded
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise ConfigError(
            f"--host/--port: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    app = create_app(model_ref, threads)  # checks threads before loading the model
    log.info("serving %s on http://%s:%d (OpenAPI at /docs)", model_ref, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, **LIMITS)
