from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.core.checkpoint import list_checkpoints
from ganforge.core.dataset import load_split
from ganforge.errors import CheckpointError, ConfigError, DivergenceError
from ganforge.models import ModelSpec, load_generator, make_variant
from ganforge.stages.train import train

from .conftest import tiny_params


def read_history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.parametrize("family", ["mlp", "dcgan", "wgan-gp", "cdcgan"])
def test_every_family_trains_and_writes_its_outputs(tmp_path, digits_dir, family):
    params = tiny_params(train={"model": family, "steps": 10, "n_critic": 2})
    summary = train(params, digits_dir, tmp_path, progress=False)
    run = tmp_path / "main"
    assert summary["steps"] == 10 and summary["img_per_s"] > 0
    for name in (
        "generator.pt",
        "samples.png",
        "history.csv",
        "summary.json",
        "samples/step_00000000.png",
    ):
        assert (run / name).is_file(), name
    assert len(read_history(run)) == 10
    G, meta = load_generator(run / "generator.pt")
    assert meta["family"] == family and meta["data"]["num_classes"] == 10
    labels = torch.arange(4) if family == "cdcgan" else None
    assert G(torch.randn(4, 16), labels).shape == (4, 1, 16, 16)
    grid = Image.open(run / "samples.png")
    # 16 tiles of 16 px enlarged 3x to 48 px, 4 per row (cdcgan: a class a column, rows up
    # to half the 10 columns: 16 becomes 50, near a square), 2 px padding
    per_row, rows = (10, 5) if family == "cdcgan" else (4, 4)
    assert grid.size == (per_row * 50 + 2, rows * 50 + 2)


@pytest.mark.slow
def test_short_real_training_learns(tmp_path, digits_dir):
    """A real run on digits: losses move and the samples are no longer the initial noise."""
    params = tiny_params(
        train={"steps": 600, "g_width": 16, "d_width": 16, "sample_every": 600, "log_every": 10}
    )
    train(params, digits_dir, tmp_path, progress=False)
    run = tmp_path / "main"
    hist = read_history(run)
    # the losses move: their 50-step window means span more than 0.1 (a stuck loop stays flat)
    for key in ("d_loss", "g_loss"):
        windows = np.array([r[key] for r in hist]).reshape(-1, 50).mean(1)
        assert windows.max() - windows.min() > 0.1, (key, windows)
    a = np.asarray(Image.open(run / "samples/step_00000000.png"), dtype=np.float32)
    b = np.asarray(Image.open(run / "samples/step_00000600.png"), dtype=np.float32)
    assert np.abs(a - b).mean() > 20  # of 255

    # pixel-intensity histograms: the untrained generator gives mid-grey (~0), digits are mostly
    # dark background with bright strokes; training must move most of the way to the real one
    def hist(x):
        return np.histogram(np.asarray(x), bins=8, range=(-1, 1))[0] / np.asarray(x).size

    real = hist(load_split(digits_dir).images.astype(np.float32) / 127.5 - 1)
    G, _ = load_generator(run / "generator.pt")
    with torch.no_grad():
        trained = hist(G(torch.randn(512, 16)))
        G0 = make_variant("dcgan", ModelSpec(16, 16, 1, 10, 16, 16)).make_generator().eval()
        init = hist(G0(torch.randn(512, 16)))
    tv_trained, tv_init = 0.5 * np.abs(trained - real).sum(), 0.5 * np.abs(init - real).sum()
    assert tv_trained < 0.3 * tv_init, (tv_trained, tv_init)


@pytest.mark.parametrize(
    "precision",
    [{"bf16": False, "channels_last": False}, {"bf16": True, "channels_last": True}],
    ids=["fp32", "bf16-channels-last"],
)
def test_resume_gives_identical_weights(tmp_path, digits_dir, precision):
    """Bit-identical in each precision: the fp32 master weights, optimiser state and RNG are
    checkpointed, and autocast recomputes the same bf16 casts from them (lazy R1 at steps 0
    and 16 straddles the resume at 15)."""
    straight = tiny_params(train={"steps": 30, "checkpoint_every": 10, **precision})
    train(straight, digits_dir, tmp_path / "a", progress=False)
    half = tiny_params(train={"steps": 15, "checkpoint_every": 10, **precision})
    train(half, digits_dir, tmp_path / "b", progress=False)
    train(straight, digits_dir, tmp_path / "b", resume=True, progress=False)

    a = torch.load(tmp_path / "a/main/generator.pt", weights_only=True)
    b = torch.load(tmp_path / "b/main/generator.pt", weights_only=True)
    for key in ("raw_state_dict", "ema_state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    ca, cb = (
        torch.load(list_checkpoints(p / "main/checkpoints")[0], weights_only=True)
        for p in (tmp_path / "a", tmp_path / "b")
    )
    assert ca["step"] == cb["step"] == 30
    for name, tensor in ca["D"].items():
        assert torch.equal(tensor, cb["D"][name]), name
    ha, hb = read_history(tmp_path / "a/main"), read_history(tmp_path / "b/main")
    assert [r["step"] for r in hb] == list(range(1, 31))
    assert [r["d_loss"] for r in ha] == [r["d_loss"] for r in hb]


def test_fid_probe_changes_nothing_and_resume_stays_exact(tmp_path, digits_dir, digits_featurenet):
    """With FID measured during training, the weights equal a run without it, also after a resume."""
    params = tiny_params(
        train={"steps": 20, "checkpoint_every": 10, "sample_every": 5, "fid_samples": 100}
    )
    train(params, digits_dir, tmp_path / "plain", progress=False)
    train(params, digits_dir, tmp_path / "probed", progress=False, featurenet=digits_featurenet)
    half = tiny_params(
        train={"steps": 10, "checkpoint_every": 10, "sample_every": 5, "fid_samples": 100}
    )
    train(half, digits_dir, tmp_path / "resumed", progress=False, featurenet=digits_featurenet)
    train(
        params,
        digits_dir,
        tmp_path / "resumed",
        resume=True,
        progress=False,
        featurenet=digits_featurenet,
    )

    def last_state(run):  # the training state at step 20 (generator.pt may hold the best)
        return torch.load(list_checkpoints(tmp_path / run / "main/checkpoints")[0], weights_only=True)["G"]  # fmt: skip

    ref = last_state("plain")
    for run in ("probed", "resumed"):
        got = last_state(run)
        assert all(torch.equal(v, got[k]) for k, v in ref.items()), run
    # the best generator survives the resume: both runs ship the same one
    a, b = (torch.load(tmp_path / r / "main/generator.pt", weights_only=True) for r in ("probed", "resumed"))  # fmt: skip
    assert a["step"] == b["step"]
    assert all(torch.equal(v, b["ema_state_dict"][k]) for k, v in a["ema_state_dict"].items())
    assert len(read_history(tmp_path / "resumed/main")) == 20
    assert [r["step"] for r in _fid_rows(tmp_path / "resumed/main")] == [5, 10, 15, 20]


def _fid_rows(run_dir):
    with open(run_dir / "fid_history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_resume_falls_back_to_previous_checkpoint(tmp_path, digits_dir, caplog):
    train(
        tiny_params(train={"steps": 20, "checkpoint_every": 10}),
        digits_dir,
        tmp_path,
        progress=False,
    )
    newest = list_checkpoints(tmp_path / "main/checkpoints")[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    summary = train(
        tiny_params(train={"steps": 25}), digits_dir, tmp_path, resume=True, progress=False
    )
    assert summary["steps_this_run"] == 15  # resumed from step 10
    assert "sha256 does not match" in caplog.text and "step_00000020.pt" in caplog.text


def test_resume_refuses_another_architecture(tmp_path, digits_dir):
    train(tiny_params(train={"steps": 10}), digits_dir, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="trained with train.g_width=8, params say 16"):
        train(
            tiny_params(train={"steps": 20, "g_width": 16}),
            digits_dir,
            tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(CheckpointError, match="no checkpoints to resume from"):
        train(
            tiny_params(train={"run_name": "other"}),
            digits_dir,
            tmp_path,
            resume=True,
            progress=False,
        )


def test_divergence_names_the_step_and_keeps_the_good_checkpoint(tmp_path, digits_dir, monkeypatch):
    """The diverged run keeps its last good checkpoint for --resume, and the last good run
    (generator, checkpoints, everything in models/main) stays exactly as it was."""
    from ganforge.models.dcgan import DCGAN

    train(tiny_params(train={"steps": 10}), digits_dir, tmp_path, progress=False)
    good = {
        p.relative_to(tmp_path): p.read_bytes()
        for p in (tmp_path / "main").rglob("*")
        if p.is_file()
    }

    real_g_loss = DCGAN.g_loss
    calls = {"n": 0}

    def exploding_g_loss(self, D, fake, labels):
        loss, stats = real_g_loss(self, D, fake, labels)
        calls["n"] += 1
        return (loss * math.inf if calls["n"] == 13 else loss), stats

    monkeypatch.setattr(DCGAN, "g_loss", exploding_g_loss)
    with pytest.raises(
        DivergenceError,
        match=r"step 13: g_loss is (inf|nan) \(non-finite\).*last good checkpoint: .*step_00000010.pt",
    ):
        train(
            tiny_params(train={"steps": 20, "checkpoint_every": 10}),
            digits_dir,
            tmp_path,
            progress=False,
        )
    ckpts = list_checkpoints(tmp_path / ".main.partial/checkpoints")
    assert [p.name for p in ckpts] == ["step_00000010.pt"]
    after = {
        p.relative_to(tmp_path): p.read_bytes()
        for p in (tmp_path / "main").rglob("*")
        if p.is_file()
    }
    assert after == good


def test_batch_larger_than_dataset(tmp_path, digits_dir):
    with pytest.raises(
        ConfigError, match="train.batch_size: 5000 is larger than the training split"
    ):
        train(tiny_params(train={"batch_size": 5000}), digits_dir, tmp_path, progress=False)


def test_cuda_requested_without_gpu(tmp_path, digits_dir):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested but no CUDA device"):
        train(tiny_params(train={"device": "cuda"}), digits_dir, tmp_path, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fast_path(tmp_path, digits_dir):
    params = tiny_params(train={"device": "cuda", "bf16": True, "channels_last": True, "steps": 20})
    summary = train(params, digits_dir, tmp_path, progress=False)
    assert summary["device"].startswith("cuda") and summary["steps"] == 20


def test_the_best_fid_generator_is_shipped_with_its_step(tmp_path, digits_dir, digits_featurenet):
    """keep=best: generator.pt is the EMA generator of the lowest probe FID, exactly the one a
    run stopped at that step would ship; keep=last ships the last."""
    probe = {"sample_every": 5, "fid_samples": 100, "checkpoint_every": 100}
    params = tiny_params(train={"steps": 40, **probe})
    summary = train(
        params, digits_dir, tmp_path / "best", progress=False, featurenet=digits_featurenet
    )
    rows = _fid_rows(tmp_path / "best/main")
    best = min(rows, key=lambda r: r["fid"])
    assert summary["shipped_step"] == summary["best_probe_step"] == int(best["step"])
    assert summary["best_probe_fid"] == pytest.approx(best["fid"])
    shipped = torch.load(tmp_path / "best/main/generator.pt", weights_only=True)
    assert shipped["step"] == int(best["step"])
    short = tiny_params(train={"steps": int(best["step"]), **probe, "keep": "last"})
    train(short, digits_dir, tmp_path / "short", progress=False, featurenet=digits_featurenet)
    ref = torch.load(tmp_path / "short/main/generator.pt", weights_only=True)
    for key in ("ema_state_dict", "raw_state_dict"):
        assert all(torch.equal(v, shipped[key][k]) for k, v in ref[key].items()), key
    last = train(
        tiny_params(train={"steps": 40, **probe, "keep": "last"}), digits_dir, tmp_path / "last",
        progress=False, featurenet=digits_featurenet,
    )  # fmt: skip
    assert last["shipped_step"] == 40


def test_patience_stops_on_a_plateau_and_max_minutes_on_the_clock(tmp_path, digits_dir, digits_featurenet):  # fmt: skip
    probe = {"sample_every": 2, "fid_samples": 100, "steps": 400, "lr": 1e-9}  # nothing improves
    s = train(tiny_params(train={**probe, "patience": 2}), digits_dir, tmp_path / "p",
              progress=False, featurenet=digits_featurenet)  # fmt: skip
    rows = _fid_rows(tmp_path / "p/main")
    assert s["stopped"] == "patience" and s["steps"] < 400
    assert s["steps"] == rows[-1]["step"] and len(rows) - 1 - rows.index(min(rows, key=lambda r: r["fid"])) == 2  # fmt: skip
    assert list_checkpoints(tmp_path / "p/main/checkpoints")  # the stop step is checkpointed
    t = train(tiny_params(train={"steps": 10**6, "max_minutes": 0.02}), digits_dir, tmp_path / "t", progress=False)  # fmt: skip
    assert t["stopped"] == "max_minutes" and 0 < t["steps"] < 10**6 and t["seconds"] < 30
    assert (tmp_path / "t/main/generator.pt").is_file()
    with pytest.raises(ConfigError, match="train.patience"):
        train(tiny_params(train={"patience": 3}), digits_dir, tmp_path / "np", progress=False)
    assert not (tmp_path / "np").exists() or not any((tmp_path / "np").iterdir())


def test_plateau_stop_replays_the_trainers_rule():
    """The benchmark's "where would patience stop" is KeepBest's own rule, replayed."""
    from ganforge.engine.best import plateau_stop

    curve = [[100, 5.0], [200, 4.0], [300, 4.5], [400, 4.2], [500, 3.9], [600, 4.0], [700, 4.1]]
    assert plateau_stop(curve, 2) == [400, 4.0]  # two probes without a new best after 200
    assert plateau_stop(curve, 3) is None  # 500 is a new best; only two probes after it
    assert plateau_stop(curve, 0) is None  # 0 = off
    assert plateau_stop([], 1) is None
