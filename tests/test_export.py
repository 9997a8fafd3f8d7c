"""ONNX export: parity for every family, metadata, and the gate failing on an altered model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ganforge.deploy.onnxrt import OnnxGenerator
from ganforge.models import VARIANTS
from ganforge.stages.export import ExportError, export, verify
from ganforge.stages.train import train

from .conftest import ROOT, tiny_params


@pytest.mark.parametrize("family", list(VARIANTS))
def test_every_family_exports_with_parity(tmp_path, digits_dir, family):
    params = tiny_params(train={"model": family, "steps": 5, "n_critic": 1})
    train(params, digits_dir, tmp_path / "runs", progress=False)
    result = export(
        params, tmp_path / "runs/main/generator.pt", tmp_path / "g.onnx", tmp_path / "export.json"
    )
    assert result["parity_max_abs_diff"] <= 1e-4 and result["parity_tolerance"] == 1e-4
    assert result["conditional"] == VARIANTS[family].conditional
    assert set(result["parity_per_batch"]) == {"1", "64", "64 truncated 0.5"}
    headline = json.loads((tmp_path / "export.json").read_text())
    details = json.loads((tmp_path / "export_details.json").read_text())
    assert set(headline) == {"parity_max_abs_diff", "parity_tolerance", "opset"}
    assert (
        details["onnx_sha256"]
        == result["onnx_sha256"]
        == hashlib.sha256((tmp_path / "g.onnx").read_bytes()).hexdigest()
    )

    model = onnx.load(tmp_path / "g.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["ganforge.family"] == family and meta["ganforge.latent_dim"] == "16"
    assert json.loads(meta["ganforge.class_names"]) == [str(i) for i in range(10)]
    assert (meta["ganforge.image_size"], meta["ganforge.channels"]) == ("16", "1")
    inputs = [i.name for i in model.graph.input]
    assert inputs == (["z", "labels"] if family == "cdcgan" else ["z"])
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert not list(tmp_path.glob("*.onnx.data"))  # weights inside the file

    gen = OnnxGenerator(tmp_path / "g.onnx")
    for n in (1, 3, 200):
        out = gen.generate(n, seed=0)
        assert out.shape == (n, 1, 16, 16) and out.dtype == np.float32 and np.abs(out).max() <= 1.0


def altered(src, dst, delta=0.05):
    """A copy of the ONNX model with one weight tensor shifted by ``delta``."""
    model = onnx.load(src)
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(init).copy() + delta
    init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
    onnx.save(model, dst)


def test_parity_gate_fails_on_an_altered_model(tmp_path, digits_generator, tiny_onnx):
    assert verify(tiny_params(), tiny_onnx, digits_generator)["max_abs_diff"] <= 1e-4
    altered(tiny_onnx, tmp_path / "bad.onnx")
    with pytest.raises(
        ExportError,
        match=r"bad.onnx: parity fails: max \|onnxruntime - torch\| = \d\.\d+e[-+]\d+ > export.parity_tolerance 0.0001",
    ):
        verify(tiny_params(), tmp_path / "bad.onnx", digits_generator)
    proc = subprocess.run(
        [sys.executable, "-m", "ganforge", "export", "--params", str(ROOT / "params.yaml"),
         "--generator", str(digits_generator), "--verify", str(tmp_path / "bad.onnx")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "parity fails" in proc.stderr


def test_failed_parity_writes_nothing(tmp_path, digits_generator):
    strict = tiny_params(export={"parity_tolerance": 1e-12})  # fp32 reorderings alone exceed this
    with pytest.raises(ExportError, match="parity: max"):
        export(strict, digits_generator, tmp_path / "g.onnx", tmp_path / "export.json")
    assert not (tmp_path / "g.onnx").exists() and not (tmp_path / "export.json").exists()


def test_not_an_onnx_file(tmp_path, digits_generator):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="junk.onnx: not a valid ONNX model"):
        verify(tiny_params(), tmp_path / "junk.onnx", digits_generator)
