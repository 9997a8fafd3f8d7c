"""``ganforge generate`` and ``ganforge serve``: the exported generator on onnxruntime.

Neither imports torch: a deployment needs onnxruntime (or onnxruntime-gpu), numpy,
pillow, and for the service FastAPI + uvicorn.

    ganforge generate --model models:/ganforge-digits-dcgan@champion -n 64 --seed 0 --out grid.png
    ganforge serve --model models:/ganforge-digits-dcgan@champion --port 8000

HTTP API (OpenAPI at /docs):
    GET  /generate?n=16&seed=1&label=3  -> PNG grid (n in 1..256, seed >= 0, label only for
                                           conditional models and within their classes)
    GET  /healthz                       -> {"status": "ok", ...}
    GET  /model                         -> the model's metadata
    POST /reload                        -> load the model reference the server was started with
                                           again (a new champion), without a restart
Invalid input is answered 422 with a message, never 500. No request names a file or a
model: the server only ever loads the reference it was started with.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ganforge.core.files import atomic_path
from ganforge.deploy.onnxrt import OnnxGenerator, grid_png, resolve_model
from ganforge.errors import ConfigError

log = logging.getLogger(__name__)

MAX_N = 256  # per request: a 256-image grid is ~0.5 s on a 2-core CPU at 32 px
SEED_MAX = 2**63 - 1


def _check_label(gen: OnnxGenerator, label: int | None) -> str | None:
    """None if fine, else the message for the user."""
    info = gen.info
    if label is None:
        return None
    if not info.conditional:
        return f"label: this {info.family} model is unconditional; omit label"
    if not 0 <= label < info.num_classes:
        return f"label: {label} is not a class of this model (0..{info.num_classes - 1}: {', '.join(info.class_names)})"
    return None


def generate_to_file(
    model: str, n: int, seed: int, label: int | None, out: str | Path
) -> dict[str, Any]:
    if not 1 <= n <= 4096:
        raise ConfigError(f"-n: {n} is outside 1..4096")
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--seed: {seed} is outside 0..2^63-1")
    gen = OnnxGenerator(resolve_model(model))
    problem = _check_label(gen, label)
    if problem:
        raise ConfigError(f"--{problem}")
    images = gen.generate(n, seed, label)
    nrow = gen.info.num_classes if gen.info.conditional and label is None else None
    with atomic_path(out) as tmp:
        tmp.write_bytes(grid_png(images, nrow=nrow))
    return {
        "out": str(out),
        "n": n,
        "seed": seed,
        "label": label,
        "model": model,
        "providers": gen.session.get_providers(),
    }


class ModelHolder:
    """The loaded generator; ``reload`` swaps in a freshly resolved one atomically."""

    def __init__(self, model_ref: str) -> None:
        self.model_ref = model_ref
        self._lock = threading.Lock()
        self.generator = OnnxGenerator(resolve_model(model_ref))
        self.loaded_at = time.time()

    def reload(self) -> OnnxGenerator:
        fresh = OnnxGenerator(
            resolve_model(self.model_ref)
        )  # load outside the lock: requests go on
        with self._lock:
            self.generator, self.loaded_at = fresh, time.time()
        return fresh


def create_app(model_ref: str):
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import Response

    holder = ModelHolder(model_ref)
    app = FastAPI(
        title="ganforge", description="GAN image generation with onnxruntime", version="1"
    )

    def describe(gen: OnnxGenerator) -> dict[str, Any]:
        info = gen.info
        return {
            "model": holder.model_ref,
            "file": gen.path.name,
            "family": info.family,
            "conditional": info.conditional,
            "latent_dim": info.latent_dim,
            "num_classes": info.num_classes,
            "class_names": info.class_names,
            "image_size": info.image_size,
            "channels": info.channels,
            "providers": gen.session.get_providers(),
            "metadata": info.metadata,
            "loaded_at": holder.loaded_at,
        }

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": holder.model_ref, "family": holder.generator.info.family}

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
    ) -> Response:
        gen = holder.generator
        problem = _check_label(gen, label)
        if problem:
            raise HTTPException(status_code=422, detail=problem)
        images = gen.generate(n, seed, label)
        nrow = (
            gen.info.num_classes
            if gen.info.conditional and label is None and n >= gen.info.num_classes
            else None
        )
        return Response(
            grid_png(images, nrow=nrow), media_type="image/png", headers={"X-Seed": str(seed)}
        )

    @app.post("/reload")
    def reload() -> dict[str, Any]:
        try:
            gen = holder.reload()
        except Exception as exc:  # keep serving the old model; say why the new one failed
            raise HTTPException(
                status_code=503, detail=f"reload failed, still serving the previous model: {exc}"
            ) from None
        return describe(gen)

    return app


def run_server(model_ref: str, host: str, port: int) -> None:
    import uvicorn

    app = create_app(model_ref)
    log.info("serving %s on http://%s:%d (OpenAPI at /docs)", model_ref, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
