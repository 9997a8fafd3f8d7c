"""Run an exported generator with onnxruntime, numpy and pillow only (no torch import).

A deployment image needs nothing else: ``ganforge generate`` and ``ganforge serve`` use
this module. The ONNX file is self-describing (``metadata_props`` written by
``ganforge export``): family, latent size, classes, image size and channels.

Inputs ``z`` float32 (N, latent_dim) and, for conditional models, ``labels`` int64 (N,);
output ``images`` float32 (N, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganforge.core import latent, onnxmeta
from ganforge.core.cores import usable_cores
from ganforge.errors import GanforgeError

# Above this many seconds per image on one thread, a generator gets every usable core.
# Measured on the 2-core CPU (benchmarks/RESULTS.md, "ONNX generation: onnxruntime session
# options", benchmarks/onnx_speed.py): one intra-op thread was
# faster for the 16 px default (27 us/image) and a 28 px DCGAN (65 us), two threads 1.6x
# faster for the 64 px DCGAN (1.6 ms); the switch sits between the two measurements.
SINGLE_THREAD_MAX_S = 3e-4

log = logging.getLogger(__name__)


class ModelLoadError(GanforgeError):
    """The ONNX file or model URI cannot be loaded."""


@dataclass(frozen=True)
class ModelInfo:
    family: str
    latent_dim: int
    num_classes: int
    class_names: list[str]
    conditional: bool
    image_size: int
    channels: int
    metadata: dict[str, str]

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ModelInfo:
        try:
            return cls(
                family=meta[onnxmeta.FAMILY],
                latent_dim=int(meta[onnxmeta.LATENT_DIM]),
                num_classes=int(meta[onnxmeta.NUM_CLASSES]),
                class_names=json.loads(meta[onnxmeta.CLASS_NAMES]),
                conditional=meta[onnxmeta.CONDITIONAL] == "true",
                image_size=int(meta[onnxmeta.IMAGE_SIZE]),
                channels=int(meta[onnxmeta.CHANNELS]),
                metadata=dict(meta),
            )
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(
                f"{source}: not a ganforge generator (metadata {exc} missing or bad)"
            ) from None


def available_providers() -> list[str]:
    """CUDA when onnxruntime-gpu and a GPU are there, else CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
    return chosen or have


def is_registry_uri(model: str) -> bool:
    return model.startswith(("models:/", "runs:/"))


def resolve_model(model: str, dest: str | Path | None = None) -> Path:
    """A ``.onnx`` path, or an MLflow ``models:/<name>@<alias>`` / ``models:/<name>/<version>``
    URI downloaded into ``dest`` (a directory the caller owns and removes)."""
    if is_registry_uri(model):
        from ganforge.errors import GanforgeError
        from ganforge.tracking import download_model

        if dest is None:
            raise ValueError("a registry URI needs a download directory")
        try:
            local = download_model(model, dest)
        except GanforgeError as exc:
            raise ModelLoadError(str(exc)) from None
        found = sorted(local.rglob("*.onnx")) if local.is_dir() else [local]
        if not found:
            raise ModelLoadError(f"{model}: no .onnx file in the registered model")
        return found[0]
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"{model}: file not found")
    return path


class OnnxGenerator:
    """An onnxruntime session over a ganforge generator, with its metadata."""

    def __init__(
        self, path: str | Path, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        """``threads``: onnxruntime intra-op threads on the CPU; None = measured at load: one,
        or every usable core when one image takes over ``SINGLE_THREAD_MAX_S`` on one."""
        self.path = Path(path)
        self.providers = providers or available_providers()
        self.threads = threads or 1
        self.session = self._session(self.threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, str(self.path))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._self_test()
        if threads is None and self.session.get_providers()[0] == "CPUExecutionProvider":
            self._choose_threads()
        log.info(
            "loaded %s (%s) on %s, %d intra-op threads",
            self.path,
            self.info.family,
            ", ".join(self.session.get_providers()),
            self.threads,
        )

    def _session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelLoadError(
                f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})"
            ) from None

    def _choose_threads(self) -> None:
        """Time a batch of 8 on one thread (best of 3); a costly generator gets every core."""
        import time

        cores = usable_cores()
        if cores == 1:
            return
        z = self.noise(8, 0)
        labels = np.zeros(8, np.int64) if self.info.conditional else None
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            self.run(z, labels)
            best = min(best, time.perf_counter() - t0)
        if best / 8 > SINGLE_THREAD_MAX_S:
            self.session, self.threads = self._session(cores), cores

    def _self_test(self) -> None:
        """Run a fixed batch of 2 before the model is used: its inputs and outputs must be a
        generator's as its metadata describes it (a file that loads but cannot run is refused)."""
        info = self.info
        expected = {"z"} | ({"labels"} if info.conditional else set())
        outputs = [o.name for o in self.session.get_outputs()]
        if set(self.input_names) != expected or "images" not in outputs:
            raise ModelLoadError(
                f"{self.path}: inputs {self.input_names} / outputs {outputs} are not a generator's "
                f"(expected inputs {sorted(expected)}, output images)"
            )
        try:
            out = self.generate(2, seed=0, label=0 if info.conditional else None)
        except Exception as exc:  # onnxruntime's own error types: the model cannot run
            raise ModelLoadError(
                f"{self.path}: does not run ({str(exc).splitlines()[0][:300]})"
            ) from None
        want = (2, info.channels, info.image_size, info.image_size)
        if out.shape != want or not np.isfinite(out).all():
            raise ModelLoadError(
                f"{self.path}: a test batch gave {out.shape}, expected {want} finite values"
            )

    def noise(self, n: int, seed: int, truncation: float | None = None) -> np.ndarray:
        """float32 (n, latent_dim): the same for the same seed (and truncation) on every
        machine; ``core.latent.noise``."""
        return latent.noise(n, self.info.latent_dim, seed, truncation)

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        feeds: dict[str, Any] = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.info.conditional:
            if labels is None:
                raise ValueError("a conditional model needs labels")
            feeds["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        return self.session.run(["images"], feeds)[0]  # (N, C, H, W) in [-1, 1]

    def generate(
        self, n: int, seed: int, label: int | None = None, truncation: float | None = None
    ) -> np.ndarray:
        """n images; for conditional models ``label`` fixes the class, else classes cycle
        0..K-1; ``truncation`` (``core.latent``) trades variety for fidelity."""
        labels = None
        if self.info.conditional:
            labels = (
                np.full(n, label, np.int64)
                if label is not None
                else np.arange(n) % self.info.num_classes
            )
        elif label is not None:
            raise ValueError(f"label given but {self.info.family} is unconditional")
        return self.run(self.noise(n, seed, truncation), labels)


def grid_png(
    images: np.ndarray, nrow: int | None = None, padding: int = 2, min_tile: int = 48
) -> bytes:
    """PNG bytes of a grid of (N, C, H, W) images in [-1, 1] (numpy + pillow; small tiles
    enlarged)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    factor = max(1, -(-min_tile // w))
    pix = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if factor > 1:
        pix = pix.repeat(factor, axis=2).repeat(factor, axis=3)
        h, w = h * factor, w * factor
    rows = -(-n // nrow)
    canvas = np.zeros((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[:, y : y + h, x : x + w] = pix[i]
    img = Image.fromarray(canvas[0] if c == 1 else canvas.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
