"""The command line: one handler per stage, defaults written once, one-line errors."""

from __future__ import annotations

import json

import yaml

from ganforge import cli


def test_every_stage_has_a_handler_and_shows_its_defaults(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage")
    assert set(sub.choices) == {
        "prepare",
        "featurenet",
        "train",
        "evaluate",
        "export",
        "promote",
        "generate",
        "serve",
    }
    for name, p in sub.choices.items():
        assert p.get_default("handler") is getattr(cli, f"_{name}")
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert f"(default: {cli.PREPARED_DIR})" in out and "--resume" in out


def test_bad_override_is_one_line_and_exit_2(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"prepare": {"source": "digits"}}))
    rc = cli.main(
        [
            "prepare",
            "--params",
            str(params),
            "--set",
            "prepare.image_size=7",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("ganforge prepare: error: ") and "prepare.image_size" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_stage_prints_its_result_as_json(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"prepare": {"source": "digits", "image_size": 8}, "train": {"model": "mlp"}}
        )
    )
    assert cli.main(["prepare", "--params", str(params), "--out", str(tmp_path / "o")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == "digits" and result["train"] + result["holdout"] == 1797
    assert (tmp_path / "o/manifest.json").is_file()


def test_missing_params_file(tmp_path, capsys):
    assert cli.main(["featurenet", "--params", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: params file not found" in capsys.readouterr().err


def test_usage_errors_are_one_line(capsys):
    """argparse's own errors (an option where a value belongs, an unknown stage) keep the format."""
    assert cli.main(["featurenet", "--set", "-x=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ganforge featurenet: error: argument --set: expected one argument (see ganforge featurenet --help)"
    ]
    assert cli.main(["fly"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
