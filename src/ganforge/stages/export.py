"""Stage ``export``: the EMA generator as ONNX, gated by a parity check against PyTorch.

    ganforge export [--generator models/main/generator.pt] [--out models/main/generator.onnx]
                    [--metrics metrics/export.json]
    ganforge export --verify path.onnx [--generator ...]   # re-check an existing file

The file (torch.onnx, dynamo exporter, weights inside, opset of the exporter):
- inputs ``z`` float32 (N, latent_dim) and, for conditional models, ``labels`` int64 (N,);
  N is dynamic; output ``images`` float32 (N, C, H, W) in [-1, 1];
- ``metadata_props``: family, latent size, classes and their names, image size, channels,
  output range, training run id, params hash, generator sha256.

Validation: ``onnx.checker``, then onnxruntime against the PyTorch generator on fixed
seeds at ``export.parity_batches`` (1 and 64): the max absolute difference must be at most
``export.parity_tolerance`` (1e-4, fp32). A breach fails the stage with the measured
difference and writes nothing, so a failed export is never registered or promoted. A
passing file is logged to the training run (MLflow's onnx flavour) before ``export.json``
is written, once, with the model URI that ``ganforge promote`` registers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ganforge.config import Params
from ganforge.core import onnxmeta
from ganforge.core.files import OutputError, atomic_path, sha256_bytes, write_metrics
from ganforge.core.latent import noise
from ganforge.core.runlog import RunLog, Untracked
from ganforge.errors import GanforgeError
from ganforge.metrics.headline import EXPORT_NAMES
from ganforge.models import load_generator

log = logging.getLogger(__name__)


class ExportError(GanforgeError):
    """The ONNX model is invalid or does not match the PyTorch generator."""


class _Unconditional(nn.Module):
    """forward(z) for unconditional generators, so the graph has exactly one input."""

    def __init__(self, G: nn.Module) -> None:
        super().__init__()
        self.G = G

    def forward(self, z: Tensor) -> Tensor:
        return self.G(z)


def _params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _export(module: nn.Module, args: tuple, dyn: dict, names: list[str]):
    return torch.onnx.export(
        module,
        args,
        dynamo=True,
        dynamic_shapes=dyn,
        external_data=False,
        input_names=names,
        output_names=["images"],
        verbose=False,
    )


def to_onnx(G: nn.Module, meta: dict[str, Any], run_id: str | None):
    """The ONNX ModelProto of generator G (eval mode, CPU) with ganforge metadata."""
    import onnx
    from torch.export import Dim

    conditional = meta["conditional"]
    latent = meta["generator_kwargs"]["latent_dim"]
    batch = Dim("batch", min=1, max=65536)
    z = torch.randn(2, latent)
    if conditional:
        args, dyn, names = (
            (z, torch.tensor([0, 1])),
            {"z": {0: batch}, "labels": {0: batch}},
            ["z", "labels"],
        )
        module: nn.Module = G
    else:
        args, dyn, names = (z,), {"z": {0: batch}}, ["z"]
        module = _Unconditional(G).eval()
    for name in (
        "onnxscript",
        "torch.onnx",
        "onnx_ir",
    ):  # their pass-by-pass INFO lines are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # torch.onnx notes that z and labels share the batch axis: true, and nothing to act on
        warnings.filterwarnings("ignore", message="The axis name: batch will not be used")
        program = _export(module, args, dyn, names)
    model = program.model_proto
    data = meta["data"]
    props = {
        onnxmeta.FAMILY: meta["family"],
        onnxmeta.LATENT_DIM: str(latent),
        onnxmeta.CONDITIONAL: "true" if conditional else "false",
        onnxmeta.NUM_CLASSES: str(data["num_classes"]),
        onnxmeta.CLASS_NAMES: json.dumps(data["class_names"]),
        onnxmeta.IMAGE_SIZE: str(data["image_size"]),
        onnxmeta.CHANNELS: str(data["channels"]),
        onnxmeta.OUTPUT_RANGE: "[-1, 1] float32 (N, C, H, W)",
        onnxmeta.TRAINING_RUN_ID: run_id or "",
        onnxmeta.PARAMS_SHA256: _params_hash(meta["params"]),
        onnxmeta.GENERATOR_SHA256: meta["sha256"],
        onnxmeta.STEP: str(meta["step"]),
    }
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model


def parity(
    model_bytes: bytes, G: nn.Module, meta: dict[str, Any], batches: list[int], seed: int
) -> dict[str, Any]:
    """Max |onnxruntime - torch| over fixed-seed batches -> {"max_abs_diff", "per_batch"}."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail / InvalidGraph
        raise ExportError(
            f"parity: onnxruntime cannot load the model ({str(exc).splitlines()[0][:200]})"
        ) from None
    conditional = meta["conditional"]
    latent = meta["generator_kwargs"]["latent_dim"]
    k = meta["data"]["num_classes"]
    per_batch = {}
    g = torch.Generator().manual_seed(seed)
    # and a batch of truncated noise (core.latent, as `generate --truncation` feeds it): the
    # smallest inputs the deployed graph sees must match too
    inputs = [(str(n), torch.randn(n, latent, generator=g)) for n in batches]
    inputs.append(("64 truncated 0.5", torch.from_numpy(noise(64, latent, seed, 0.5))))
    for n, z in inputs:
        y = torch.randint(0, k, (len(z),), generator=g) if conditional else None
        with torch.no_grad():
            ref = G(z, y).numpy()
        feeds = {"z": z.numpy()} | ({"labels": y.numpy()} if conditional else {})
        try:
            out = session.run(["images"], feeds)[0]
        except Exception as exc:  # onnxruntime's own error types: not this generator's graph
            raise ExportError(
                f"parity: the ONNX model does not run as this generator at batch {n} "
                f"({str(exc).splitlines()[0][:200]})"
            ) from None
        if out.shape != ref.shape:
            raise ExportError(
                f"parity: ONNX output shape {out.shape} != PyTorch {ref.shape} at batch {n}"
            )
        per_batch[n] = float(np.abs(out.astype(np.float64) - ref).max())
    return {"max_abs_diff": max(per_batch.values()), "per_batch": per_batch}


def _replaceable(path: Path) -> None:
    """Only a ganforge ONNX file may be overwritten: anything else at ``path`` is refused."""
    import onnx

    if not path.exists() and not path.is_symlink():
        return
    try:
        props = {p.key for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # not a file, unreadable, not ONNX: all "not ours"
        props = set()
    if path.is_symlink() or onnxmeta.GENERATOR_SHA256 not in props:
        raise OutputError(
            f"{path}: exists and is not an ONNX generator written by `ganforge export`; "
            "choose another --out or move it away yourself"
        )


def export(
    params: Params,
    generator_path: str | Path,
    out_path: str | Path,
    metrics_path: str | Path,
    run: RunLog | None = None,
) -> dict[str, Any]:
    """Export, check and write the ONNX generator, log it to ``run``; returns the parity report."""
    import onnx

    run = run or Untracked()
    _replaceable(Path(out_path))
    G, meta = load_generator(generator_path, "cpu")
    ep = params.export
    try:
        model = to_onnx(G, meta, run.run_id)
    except onnx.checker.ValidationError as exc:
        raise ExportError(
            f"{generator_path}: exported ONNX fails onnx.checker ({str(exc).splitlines()[0]})"
        ) from None
    blob = model.SerializeToString()
    report = parity(blob, G, meta, ep.parity_batches, ep.parity_seed)
    if report["max_abs_diff"] > ep.parity_tolerance:
        raise ExportError(
            f"parity: max |onnxruntime - torch| = {report['max_abs_diff']:.3e} > "
            "export.parity_tolerance "
            f"{ep.parity_tolerance:g} (per batch: {report['per_batch']}); nothing written"
        )
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(blob)
    run.set_tags({"parity_max_abs_diff": report["max_abs_diff"]})
    result = {
        "onnx": str(out_path),
        "onnx_sha256": sha256_bytes(blob),
        "parity_max_abs_diff": report["max_abs_diff"],
        "parity_per_batch": report["per_batch"],
        "parity_tolerance": ep.parity_tolerance,
        "opset": int(model.opset_import[0].version),
        "family": meta["family"],
        "conditional": meta["conditional"],
        "generator_sha256": meta["sha256"],
        "mlflow_run_id": run.run_id,
        "mlflow_model_uri": run.log_model(out_path),
    }
    write_metrics(metrics_path, result, EXPORT_NAMES)
    return result


def verify(params: Params, onnx_path: str | Path, generator_path: str | Path) -> dict[str, Any]:
    """Re-run the parity gate on an existing ONNX file (e.g. one copied or altered since export)."""
    import onnx

    G, meta = load_generator(generator_path, "cpu")
    path = Path(onnx_path)
    try:
        blob = path.read_bytes()
        onnx.checker.check_model(onnx.load_from_string(blob))
    except Exception as exc:  # OSError, onnx ValidationError, protobuf DecodeError
        raise ExportError(f"{path}: not a valid ONNX model ({str(exc).splitlines()[0]})") from None
    report = parity(blob, G, meta, params.export.parity_batches, params.export.parity_seed)
    if report["max_abs_diff"] > params.export.parity_tolerance:
        raise ExportError(
            f"{path}: parity fails: max |onnxruntime - torch| = {report['max_abs_diff']:.3e} > "
            f"export.parity_tolerance {params.export.parity_tolerance:g}"
        )
    return {"onnx": str(path), **report}
