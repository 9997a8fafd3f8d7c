"""Verified files: atomic write + sha256 sidecar, refused when damaged, newest-intact resume."""

from __future__ import annotations

import logging

import pytest
import torch

from ganforge.core.checkpoint import (
    STATE_FORMAT,
    list_checkpoints,
    load_latest,
    load_verified,
    save_state,
    save_verified,
)
from ganforge.core.files import sha256_file
from ganforge.errors import CheckpointError


def test_roundtrip_returns_the_digest_it_checked(tmp_path):
    obj = {"format": "test/1", "w": torch.arange(6.0).reshape(2, 3)}
    digest = save_verified(obj, tmp_path / "a.pt")
    assert digest == sha256_file(tmp_path / "a.pt")
    assert (tmp_path / "a.pt.sha256").read_text() == f"{digest}  a.pt\n"
    back = load_verified(tmp_path / "a.pt", "test/1")
    assert torch.equal(back["w"], obj["w"]) and back["sha256"] == digest
    # same content, same bytes, whatever the temporary file was called
    assert save_verified(obj, tmp_path / "b.pt") == digest


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "sha256 does not match"),
        (
            lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]),
            "sha256 does not match",
        ),
        (lambda p: p.with_name(p.name + ".sha256").unlink(), "no a.pt.sha256 checksum file"),
        (lambda p: p.unlink(), "a.pt: not found"),
    ],
)
def test_damaged_files_are_refused_by_name(tmp_path, damage, message):
    save_verified({"format": "test/1", "x": torch.ones(3)}, tmp_path / "a.pt")
    damage(tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match=message):
        load_verified(tmp_path / "a.pt", "test/1")


def test_a_foreign_format_is_refused(tmp_path):
    save_verified({"format": "other/1"}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="format 'other/1', expected 'test/1'"):
        load_verified(tmp_path / "a.pt", "test/1")


def test_state_keeps_the_newest_two_and_falls_back_past_a_damaged_one(tmp_path, caplog):
    for step in (10, 20, 30):
        save_state({"step": step, "w": torch.full((2,), float(step))}, tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030.pt", "step_00000020.pt"]
    state, path = load_latest(tmp_path)
    assert state["step"] == 30 and state["format"] == STATE_FORMAT
    newest = tmp_path / "step_00000030.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        state, path = load_latest(tmp_path)
    assert state["step"] == 20 and path.name == "step_00000020.pt"
    assert "step_00000030.pt: sha256 does not match" in caplog.text
    (tmp_path / "step_00000020.pt.sha256").write_text("0" * 64 + "  step_00000020.pt\n")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        load_latest(tmp_path)


def test_no_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints to resume from"):
        load_latest(tmp_path / "missing")
