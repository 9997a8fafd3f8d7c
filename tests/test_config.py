from __future__ import annotations

import subprocess
import sys

import pytest

from ganforge.config import Params, load_params, parse_params
from ganforge.errors import ConfigError

from .conftest import ROOT


def test_repo_params_load_and_defaults_match_the_model():
    params = load_params(ROOT / "params.yaml")
    assert params == Params()  # params.yaml documents the defaults exactly
    assert params.flat()["train.lr"] == 5e-4


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0"),
        (
            {"train": {"batch_size": 0}},
            "train.batch_size: Input should be greater than or equal to 1",
        ),
        ({"train": {"lrr": 0.1}}, "train.lrr: unknown key (allowed: model, run_name"),
        (
            {"serve": {}},
            "serve: unknown key (allowed: prepare, train, featurenet, evaluate, export, mlflow, schedule)",
        ),
        ({"train": {"steps": "many"}}, "train.steps: Input should be a valid integer"),
        (
            {"train": {"model": "stylegan"}},
            "train.model: unknown family 'stylegan' (allowed: mlp, dcgan, wgan-gp, cdcgan, sngan)",
        ),
        (
            {"prepare": {"image_size": 20}},
            "prepare.image_size: 20 px is not supported by train.model=cdcgan (allowed: 16, 28, 32, 64)",
        ),
        (
            {"prepare": {"source": "mnist-idx"}},
            "prepare.path: source 'mnist-idx' needs a directory",
        ),
        (
            {"prepare": {"holdout_fraction": 0.9}},
            "prepare.holdout_fraction: Input should be less than or equal to 0.5",
        ),
        ({"prepare": {"channels": 2}}, "prepare.channels: Input should be 'auto', 1 or 3"),
        ({"train": {"device": "tpu"}}, "train.device: String should match pattern"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay: Input should be less than 1"),
        ({"train": {"run_name": "../escape"}}, "train.run_name: String should match pattern"),
        (["not", "a", "mapping"], "top level must be a mapping"),
    ],
)
def test_bad_params_name_the_key(raw, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(raw, "params.yaml")
    msg = str(err.value)
    assert expected in msg
    assert "\n" not in msg


def test_mlp_takes_any_size_in_range():
    assert (
        parse_params({"train": {"model": "mlp"}, "prepare": {"image_size": 20}}).prepare.image_size
        == 20
    )


def test_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 0.1\n")
    params = load_params(path, ["train.lr=1e-4", "train.model=wgan-gp", "prepare.image_size=32"])
    assert (params.train.lr, params.train.model, params.prepare.image_size) == (1e-4, "wgan-gp", 32)
    for bad, expected in [
        ("train.lr", "expected section.key=value"),
        ("lr=1", "expected section.key=value"),
        ("foo.bar=1", "unknown section 'foo'"),
        ("train.lr=[1", "not valid YAML"),
    ]:
        with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
            load_params(path, [bad])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d"):
        load_params(bad)


def test_cli_reports_one_line_and_writes_nothing(tmp_path, params_file):
    path = params_file({"train": {"batch_size": 0}})
    out = tmp_path / "prepared"
    proc = subprocess.run(
        [sys.executable, "-m", "ganforge", "prepare", "--params", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("ganforge prepare: error:")
        and "train.batch_size" in lines[0]
    )
    assert not out.exists()
