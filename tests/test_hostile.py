"""Hostile and odd inputs: each stage's entry point answers generated params values, --set
strings and small generated files with exit 1 or 2, exactly one error line naming the
problem, no traceback, and no existing output changed. Plus one test per known case.

The property tests call ``ganforge.cli.main`` in-process (a traceback would surface as an
exception and fail the example); ``EXAMPLES`` sets how many inputs each one tries.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganforge import cli
from ganforge.config import Params
from ganforge.core.files import OWNER_FILE

from .conftest import ROOT, tiny_params

EXAMPLES = int(os.environ.get("GANFORGE_HYPOTHESIS_EXAMPLES", "60"))  # more for a deeper sweep
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
KEYS = [f"{s}.{k}" for s, m in Params.model_fields.items() for k in m.annotation.model_fields]
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-5, max_value=10**6), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def invoke(argv: list[str], capsys) -> tuple[int, list[str], str]:
    rc = cli.main(argv)  # any exception here is a traceback a user would see
    err = capsys.readouterr().err
    stage = argv[0]
    return rc, [ln for ln in err.splitlines() if ln.startswith(f"ganforge {stage}: error: ")], err


def assert_one_line(rc: int, lines: list[str], err: str) -> None:
    assert rc in (1, 2), (rc, err[-500:])
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert len(lines[0]) < 800


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def owned_output(path: Path, stage: str) -> Path:
    """An earlier good output of ``stage`` that a failed run must leave as it was."""
    path.mkdir(parents=True)
    (path / OWNER_FILE).write_text(stage + "\n")
    (path / "earlier.bin").write_bytes(b"the last good output")
    return path


@pytest.fixture(scope="module")
def params_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


# --------------------------------------------------------------------------- params and --set


@SETTINGS
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_generated_param_values(key, value, params_path, capsys):
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    with tempfile.TemporaryDirectory() as d:
        out = owned_output(Path(d) / "fn", "featurenet")
        before = snapshot(out)
        argv = ["featurenet", "--params", str(params_path), "--set", f"{key}={text}",
                "--data", str(Path(d) / "no-data"), "--out", str(out)]  # fmt: skip
        rc, lines, err = invoke(argv, capsys)
        assert_one_line(rc, lines, err)  # valid params still fail on the missing data
        assert snapshot(out) == before


@SETTINGS
@given(assignment=st.text(max_size=200))
def test_generated_set_strings(assignment, params_path, capsys):
    with tempfile.TemporaryDirectory() as d:
        argv = ["featurenet", "--params", str(params_path), "--set", assignment,
                "--data", str(Path(d) / "no-data"), "--out", str(Path(d) / "fn")]  # fmt: skip
        assert_one_line(*invoke(argv, capsys))


@SETTINGS
@given(content=st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_generated_params_files(content, capsys):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "params.yaml"
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        argv = [
            "featurenet",
            "--params",
            str(p),
            "--data",
            str(Path(d) / "none"),
            "--out",
            str(Path(d) / "fn"),
        ]
        assert_one_line(*invoke(argv, capsys))


# --------------------------------------------------------------------------- generated files

IDX_MAGIC = st.sampled_from([b"", b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", b"\x1f\x8b"])


@SETTINGS
@given(
    magic=IDX_MAGIC,
    images=st.binary(max_size=600),
    labels=st.binary(max_size=100),
    gz=st.booleans(),
)
def test_generated_idx_files(magic, images, labels, gz, params_path, capsys):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "idx"
        src.mkdir()
        blob = magic + images
        (src / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))).write_bytes(
            gzip.compress(blob) if gz else blob
        )
        (src / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + labels)
        out = owned_output(Path(d) / "prepared", "prepare")
        before = snapshot(out)
        argv = ["prepare", "--params", str(params_path), "--set", "prepare.source=mnist-idx",
                "--set", f"prepare.path={src}", "--out", str(out)]  # fmt: skip
        rc, lines, err = invoke(argv, capsys)
        if rc != 0:
            assert_one_line(rc, lines, err)
            assert snapshot(out) == before


@SETTINGS
@given(files=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=3))
def test_generated_image_files(files, params_path, capsys):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "imgs"
        for cls in ("a", "b"):
            (src / cls).mkdir(parents=True)
            for i, blob in enumerate(files):
                (src / cls / f"{i}.png").write_bytes(blob)
        out = owned_output(Path(d) / "prepared", "prepare")
        before = snapshot(out)
        argv = ["prepare", "--params", str(params_path), "--set", "prepare.source=imagefolder",
                "--set", f"prepare.path={src}", "--out", str(out)]  # fmt: skip
        rc, lines, err = invoke(argv, capsys)
        assert_one_line(rc, lines, err)
        assert snapshot(out) == before


JSONISH = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from ganforge.stages.prepare import prepare

    out = tmp_path_factory.mktemp("prep") / "prepared"
    prepare(tiny_params().prepare, out)
    return out


@SETTINGS
@given(edit=st.dictionaries(st.sampled_from(["source", "image_size", "channels", "num_classes", "class_names",
                                             "splits", "content_sha256", "format", "params", "path"]),
                            JSONISH, min_size=1, max_size=3),
       npz=st.one_of(st.none(), st.binary(max_size=300)))  # fmt: skip
def test_generated_manifests_and_splits(edit, npz, prepared, params_path, capsys):
    """A hand-edited manifest (and a replaced split file whose sha256 the manifest then states)."""
    import hashlib

    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        shutil.copytree(prepared, data)
        manifest = json.loads((data / "manifest.json").read_text())
        manifest.update(edit)
        if npz is not None:
            (data / "train.npz").write_bytes(npz)
            if isinstance(manifest.get("splits"), dict) and isinstance(
                manifest["splits"].get("train"), dict
            ):
                manifest["splits"]["train"]["sha256"] = hashlib.sha256(npz).hexdigest()
        (data / "manifest.json").write_text(json.dumps(manifest))
        out = owned_output(Path(d) / "fn", "featurenet")
        before = snapshot(out)
        argv = ["featurenet", "--params", str(params_path), "--set", "featurenet.steps=5",
                "--data", str(data), "--out", str(out)]  # fmt: skip
        rc, lines, err = invoke(argv, capsys)
        if rc != 0:
            assert_one_line(rc, lines, err)
            assert snapshot(out) == before


@SETTINGS
@given(sidecar=st.binary(max_size=120), cut=st.integers(min_value=0, max_value=64))
def test_generated_sidecars_and_truncations(sidecar, cut, digits_generator, params_path, capsys):
    with tempfile.TemporaryDirectory() as d:
        gen = Path(d) / "generator.pt"
        blob = digits_generator.read_bytes()
        gen.write_bytes(blob[: len(blob) - cut])
        (Path(d) / "generator.pt.sha256").write_bytes(sidecar)
        (Path(d) / "model.onnx").write_bytes(b"earlier")
        argv = ["export", "--params", str(params_path), "--generator", str(gen),
                "--out", str(Path(d) / "new.onnx"), "--metrics", str(Path(d) / "export.json")]  # fmt: skip
        assert_one_line(*invoke(argv, capsys))
        assert not (Path(d) / "new.onnx").exists() and not (Path(d) / "export.json").exists()


@SETTINGS
@given(
    blob=st.binary(max_size=400),
    n=st.integers(min_value=-10, max_value=10**7),
    seed=st.integers(min_value=-10, max_value=2**70),
)
def test_generated_onnx_files_and_generate_arguments(blob, n, seed, tiny_onnx, capsys):
    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "bad.onnx"
        bad.write_bytes(blob)
        out = Path(d) / "grid.png"
        out.write_bytes(b"earlier")
        rc, lines, err = invoke(["generate", "--model", str(bad), "--out", str(out)], capsys)
        assert_one_line(rc, lines, err)
        rc, lines, err = invoke(
            [
                "generate",
                "--model",
                str(tiny_onnx),
                "-n",
                str(n),
                "--seed",
                str(seed),
                "--out",
                str(out),
            ],
            capsys,
        )
        if rc != 0:
            assert_one_line(rc, lines, err)
            assert out.read_bytes() == b"earlier"
        else:
            assert 1 <= n <= 4096 and 0 <= seed < 2**63


@SETTINGS
@given(ev=JSONISH, ex=JSONISH)
def test_generated_metrics_files(ev, ex, params_path, capsys, monkeypatch):
    with tempfile.TemporaryDirectory() as d:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
        (Path(d) / "eval.json").write_text(json.dumps(ev))
        (Path(d) / "export.json").write_text(json.dumps(ex))
        argv = ["promote", "--params", str(params_path), "--eval", str(Path(d) / "eval.json"),
                "--export", str(Path(d) / "export.json"), "--out", str(Path(d) / "promote.json")]  # fmt: skip
        assert_one_line(*invoke(argv, capsys))
        assert not (Path(d) / "promote.json").exists()


# --------------------------------------------------------------------------- known cases


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (tmp_path / "params.yaml").write_text("\n".join(levels) + "\n")
    t0 = time.monotonic()
    rc, lines, err = invoke(["train", "--params", str(tmp_path / "params.yaml")], capsys)
    assert_one_line(rc, lines, err)
    assert "anchors are not allowed" in lines[0] and time.monotonic() - t0 < 5


def test_duplicate_keys_and_infinite_floats_are_refused(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    rc, lines, err = invoke(["train", "--params", str(tmp_path / "p.yaml")], capsys)
    assert rc == 2 and "duplicate key 'lr' (line 3)" in lines[0]
    for key in ("evaluate.kl_threshold", "train.gp_lambda", "train.r1_gamma"):
        rc, lines, err = invoke(
            ["train", "--params", str(ROOT / "params.yaml"), "--set", f"{key}=.inf"], capsys
        )
        assert rc == 2 and f"--set {key}: Input should be a finite number" in lines[0]


def _png16(path: Path, value: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((12, 12), value, dtype=np.uint16)).save(path)


def test_16_bit_palette_and_alpha_images_keep_their_values(tmp_path):
    from PIL import Image

    from ganforge.core.sources import load_imagefolder

    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
    _png16(tmp_path / "src/a/mid.png", 32768)  # half of the 16-bit range
    _png16(tmp_path / "src/a/low.png", 4096)
    Image.new("LA", (12, 12), (200, 0)).save(
        tmp_path / "src/b/transparent.png"
    )  # fully transparent
    Image.new("P", (12, 12), 0).save(tmp_path / "src/b/palette.png")
    ds = load_imagefolder(tmp_path / "src", 8, 1)
    assert Image.open(tmp_path / "src/a/mid.png").mode.startswith("I")
    means = ds.images.reshape(len(ds.images), -1).mean(1)
    assert (
        abs(means[0] - 16) < 2 and abs(means[1] - 128) < 2
    )  # low.png, mid.png: not saturated to 255
    assert means[2] < 1  # palette index 0 is black
    assert means[3] < 1  # transparent over black


def test_special_files_in_an_image_folder_do_not_hang(tmp_path):
    from PIL import Image

    from ganforge.core.sources import load_imagefolder

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", (8, 8), 100).save(tmp_path / cls / "ok.png")
    os.mkfifo(tmp_path / "a" / "pipe.png")
    t0 = time.monotonic()
    assert len(load_imagefolder(tmp_path, 8, 1).images) == 2
    assert time.monotonic() - t0 < 10


def test_inflation_and_idx_header_bombs(tmp_path, monkeypatch):
    from ganforge.core import sources
    from ganforge.errors import DataError

    monkeypatch.setattr(sources, "MAX_INPUT_BYTES", 1 << 20)
    bomb = tmp_path / "bomb-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(3 << 20)))
    with pytest.raises(DataError, match="inflates to more than 1 MiB"):
        sources.read_idx(bomb, 3)
    huge = tmp_path / "huge-images-idx3-ubyte"
    huge.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 2**32 - 1, 2**32 - 1, 2**32 - 1))
    with pytest.raises(DataError, match="wrong length"):
        sources.read_idx(huge, 3)
    zero = tmp_path / "zero-images-idx3-ubyte"
    zero.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 1, 0, 28))
    with pytest.raises(DataError, match="degenerate idx dims"):
        sources.read_idx(zero, 3)


def test_non_square_idx_images_are_refused(tmp_path):
    from ganforge.core.sources import load_mnist_idx
    from ganforge.errors import DataError

    (tmp_path / "x-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + struct.pack(">III", 2, 4, 6) + bytes(48)
    )
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(
        b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(2)
    )
    with pytest.raises(DataError, match="images are 4x6; only square idx images"):
        load_mnist_idx(tmp_path)


def test_resume_falls_back_past_a_garbled_sidecar(tmp_path, digits_dir, caplog):
    import logging

    from ganforge.stages.train import train

    params = tiny_params(train={"steps": 20, "checkpoint_every": 10})
    train(params, digits_dir, tmp_path, progress=False)
    (tmp_path / "main/checkpoints/step_00000020.pt.sha256").write_bytes(b"\xff\xfe\x00garbage")
    more = tiny_params(train={"steps": 30, "checkpoint_every": 10})
    with caplog.at_level(logging.WARNING):
        summary = train(more, digits_dir, tmp_path, resume=True, progress=False)
    assert summary["steps"] == 30 and summary["steps_this_run"] == 20  # from step 10
    assert "step_00000020.pt: sha256 does not match" in caplog.text


def test_unusable_out_and_port_are_one_line(tmp_path, tiny_onnx, capsys):
    (tmp_path / "dir.png").mkdir()
    rc, lines, err = invoke(
        ["generate", "--model", str(tiny_onnx), "--out", str(tmp_path / "dir.png")], capsys
    )
    assert_one_line(rc, lines, err)
    for port in ("0", "70000"):
        rc, lines, err = invoke(["serve", "--model", str(tiny_onnx), "--port", port], capsys)
        assert_one_line(rc, lines, err)
        assert "--port" in lines[0]
