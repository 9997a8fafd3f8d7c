"""The onnxruntime side of deployment: metadata, seeded generation, grids, refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from ganforge.deploy.onnxrt import ModelLoadError, OnnxGenerator, grid_png, resolve_model


def test_metadata_and_seeded_generation(tiny_onnx):
    gen = OnnxGenerator(tiny_onnx, providers=["CPUExecutionProvider"])
    info = gen.info
    assert (info.family, info.conditional, info.image_size, info.channels) == (
        "dcgan",
        False,
        16,
        1,
    )
    assert info.latent_dim == 16 and info.num_classes == 10 and len(info.class_names) == 10
    a, b = gen.generate(8, seed=5), gen.generate(8, seed=5)
    assert a.shape == (8, 1, 16, 16) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, gen.generate(8, seed=6))
    assert a.min() >= -1.0 and a.max() <= 1.0
    with pytest.raises(ValueError, match="unconditional"):
        gen.generate(2, seed=0, label=3)


def test_grid_png_layout():
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(grid_png(np.zeros((10, 3, 16, 16), np.float32), nrow=5)))
    assert img.mode == "RGB" and img.size == (5 * 50 + 2, 2 * 50 + 2)  # 16 -> 48 px tiles


def test_refusals_name_the_file(tmp_path, tiny_onnx):
    with pytest.raises(ModelLoadError, match="nope.onnx: file not found"):
        resolve_model(str(tmp_path / "nope.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="junk.onnx: not a loadable ONNX model"):
        OnnxGenerator(tmp_path / "junk.onnx")
    model = onnx.load(tiny_onnx)
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "bare.onnx")
    with pytest.raises(ModelLoadError, match="bare.onnx: not a ganforge generator"):
        OnnxGenerator(tmp_path / "bare.onnx")


def test_deploy_imports_no_torch(tiny_onnx):
    code = (
        "import sys; from ganforge.deploy.onnxrt import OnnxGenerator; import ganforge.deploy.service; "
        f"OnnxGenerator({str(tiny_onnx)!r}).generate(4, 0); assert 'torch' not in sys.modules, 'torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
