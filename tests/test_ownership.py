"""A stage replaces only what it owns: pointed at a user's folder or file, it refuses by name."""

from __future__ import annotations

import shutil

import pytest

from ganforge.core.files import OWNER_FILE, OutputError
from ganforge.stages.evaluate import evaluate
from ganforge.stages.export import export
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train

from .conftest import tiny_params


def user_folder(path):
    path.mkdir(parents=True)
    (path / "README.md").write_text("mine")
    (path / "photo.png").write_bytes(b"\x89PNG not really")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def unchanged(path, before):
    return {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_prepare_refuses_a_folder_it_did_not_write(tmp_path):
    before = user_folder(tmp_path / "data")
    with pytest.raises(
        OutputError, match=r"data: exists, is not empty and was not written by ganforge"
    ):
        prepare(tiny_params().prepare, tmp_path / "data")
    assert unchanged(tmp_path / "data", before)
    # its own output it replaces, and marks
    prepare(tiny_params().prepare, tmp_path / "prepared")
    assert (tmp_path / "prepared" / OWNER_FILE).read_text().strip() == "prepare"
    prepare(tiny_params().prepare, tmp_path / "prepared")
    # another stage's output is not its own either
    with pytest.raises(OutputError, match="belongs to `ganforge prepare`"):
        train_featurenet(tiny_params(), tmp_path / "prepared", tmp_path / "prepared")


def test_prepare_refuses_its_own_source_folder(tmp_path):
    from PIL import Image

    src = tmp_path / "images"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (16, 16), 30 * i).save(src / cls / f"{i}.png")
    params = tiny_params(prepare={"source": "imagefolder", "path": str(src)}).prepare
    with pytest.raises(OutputError, match="images: exists, is not empty"):
        prepare(params, src)
    assert sorted(p.name for p in src.iterdir()) == ["a", "b"]


def test_train_featurenet_evaluate_and_export_refuse_foreign_outputs(
    tmp_path, digits_dir, digits_featurenet, digits_generator
):
    runs = tmp_path / "runs"
    before = user_folder(runs / "main")
    with pytest.raises(
        OutputError, match=r"main: exists, is not empty and was not written by ganforge"
    ):
        train(tiny_params(train={"steps": 2}), digits_dir, runs, progress=False)
    assert unchanged(runs / "main", before) and not (runs / ".main.partial").exists()

    before = user_folder(tmp_path / "fn")
    with pytest.raises(OutputError, match="fn: exists"):
        train_featurenet(tiny_params(featurenet={"steps": 5}), digits_dir, tmp_path / "fn")
    assert unchanged(tmp_path / "fn", before)

    before = user_folder(tmp_path / "reports")
    with pytest.raises(OutputError, match="reports: exists"):
        evaluate(tiny_params(evaluate={"num_samples": 20, "bootstrap": 0}), digits_dir, digits_generator,
                 digits_featurenet, tmp_path / "e.json", tmp_path / "reports")  # fmt: skip
    assert unchanged(tmp_path / "reports", before) and not (tmp_path / "e.json").exists()

    (tmp_path / "model.onnx").write_bytes(b"someone else's model")
    with pytest.raises(
        OutputError, match="model.onnx: exists and is not an ONNX generator written by"
    ):
        export(tiny_params(), digits_generator, tmp_path / "model.onnx", tmp_path / "x.json")
    assert (tmp_path / "model.onnx").read_bytes() == b"someone else's model"


def test_a_finished_run_is_replaced_only_by_a_successful_one(tmp_path, digits_dir):
    runs = tmp_path / "runs"
    train(tiny_params(train={"steps": 4, "checkpoint_every": 2}), digits_dir, runs, progress=False)
    first = (runs / "main/generator.pt").read_bytes()
    assert (runs / "main" / OWNER_FILE).is_file() and not (runs / ".main.partial").exists()
    with pytest.raises(Exception, match="batch_size"):
        train(tiny_params(train={"steps": 4, "batch_size": 5000}), digits_dir, runs, progress=False)
    assert (runs / "main/generator.pt").read_bytes() == first
    train(tiny_params(train={"steps": 6, "checkpoint_every": 2}), digits_dir, runs, progress=False)
    assert (runs / "main/generator.pt").read_bytes() != first
    shutil.rmtree(runs / "main" / "samples")  # still ours: the owner file stays
    train(tiny_params(train={"steps": 2}), digits_dir, runs, progress=False)
