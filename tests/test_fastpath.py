"""The fast path: what ``auto`` resolves to per device (with and without native bf16), the
threads chosen, the lazy R1 penalty, exact resume in each precision, and the onnxruntime
thread choice. The FID check (bf16 must not change what users see) is a slow test below."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ganforge.core import cores, fastpath
from ganforge.deploy import onnxrt
from ganforge.models import ModelSpec, make_variant
from ganforge.models import losses as L
from ganforge.stages.train import train

from .conftest import tiny_params
from .test_train import read_history

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(fastpath, "cpu_native_bf16", lambda: native)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fast = fastpath.resolve(CPU, "auto", "auto", "auto")
    assert fast.bf16 is native
    assert fast.channels_last is True and fast.compile is False
    assert fast.memory_format == torch.channels_last
    assert ("cpu has native bf16" if native else "cpu has no native bf16") in fast.why
    assert 1 <= fast.threads == torch.get_num_threads() <= cores.usable_cores()
    assert f"of {cores.usable_cores()} usable cores free" in fast.why
    assert fast.record()["bf16"] is native
    assert fast.describe().startswith(f"bf16 {'on' if native else 'off'}, channels-last on")


def test_explicit_values_are_kept(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_native_bf16", lambda: True)
    fast = fastpath.resolve(CPU, False, False, True)
    assert (fast.bf16, fast.channels_last, fast.compile) == (False, False, True)
    assert "bf16 auto" not in fast.why
    monkeypatch.setattr(fastpath, "cpu_native_bf16", lambda: False)
    assert fastpath.resolve(CPU, True, "auto").bf16 is True  # asked for: emulated, but honoured


def test_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    fast = fastpath.resolve(CPU, False, False)
    assert fast.threads == 1 and "OMP_NUM_THREADS" in fast.why


def test_free_cores_leave_what_others_keep_busy():
    assert [cores.free_cores(busy, 2) for busy in (None, 0.0, 0.25, 0.35, 1.0, 1.8, 7.0)] == [
        2,
        2,
        2,
        1,
        1,
        1,
        1,
    ]
    assert [cores.free_cores(busy, 8) for busy in (0.0, 1.0, 2.5, 7.9)] == [8, 7, 5, 1]


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


BUSY = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"


@pytest.mark.skipif(cores.usable_cores() < 2, reason="needs 2 usable cores")
def test_threads_follow_a_busy_neighbour_and_come_back(monkeypatch):
    """A CPU-bound process beside this one takes a core: the meter sees it (and not this
    process's own work), the threads drop to the cores left free and return when it ends."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    meter = cores.CoreMeter()
    _spin(0.6)  # this process's own work is not a neighbour's
    assert meter.others_busy() < 0.5
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(0.5)  # its interpreter has started and spins
        meter.others_busy()
        time.sleep(1.0)
        assert meter.others_busy() > 0.7
        fast = fastpath.resolve(CPU, False, False)
        assert fast.threads == torch.get_num_threads() == cores.usable_cores() - 1
    finally:
        neighbour.kill()
        neighbour.wait()
    time.sleep(0.3)
    fastpath._governor.due = 0.0  # the next step measures (normally every 2 s)
    fastpath.follow_free_cores()
    assert torch.get_num_threads() == cores.usable_cores()
    # both counts are on the record: a run with them is not bit-identical to one without
    assert fastpath.threads_used() == [cores.usable_cores() - 1, cores.usable_cores()]


def test_usable_cores_follows_affinity(monkeypatch):
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda _pid: {0})
    assert cores.usable_cores() == 1


@pytest.mark.parametrize("value", ["fast", 2, "yes please"])
def test_bad_fast_path_values_are_one_line(value):
    from ganforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.bf16"):
        tiny_params(train={"bf16": value})


def test_lazy_r1_is_applied_every_kth_step_with_weight_k():
    spec = ModelSpec(latent_dim=8, image_size=16, channels=1, num_classes=10, g_width=8, d_width=8)
    torch.manual_seed(0)
    v = make_variant("dcgan", spec, {"r1_gamma": 2.0, "r1_every": 4})
    D = v.make_discriminator()
    real, fake = torch.rand(8, 1, 16, 16) * 2 - 1, torch.rand(8, 1, 16, 16) * 2 - 1
    bce = float(L.d_loss_bce(D(real), D(fake)))
    on, stats_on = v.d_step(D, real, fake, None, step=8)
    r1 = float(stats_on["r1"])
    assert r1 > 0 and float(on) == pytest.approx(bce + 0.5 * 2.0 * 4 * r1, rel=1e-5)
    assert float(stats_on["d_loss"]) == pytest.approx(bce, rel=1e-6)  # the history's d_loss
    off, stats_off = v.d_step(D, real, fake, None, step=9)
    assert float(off) == pytest.approx(bce, rel=1e-6) and math.isnan(float(stats_off["r1"]))


def test_lazy_r1_history_and_summary(tmp_path, digits_dir):
    params = tiny_params(train={"steps": 10, "r1_every": 4, "bf16": "auto"})
    train(params, digits_dir, tmp_path, progress=False)
    rows = read_history(tmp_path / "main")
    measured = [int(r["step"]) for r in rows if not math.isnan(r["r1"])]
    assert measured == [1, 5, 9]  # steps 0, 4, 8 before the update
    summary = json.loads((tmp_path / "main/summary.json").read_text())
    fast = summary["fast_path"]
    assert fast["bf16"] is fastpath.cpu_native_bf16() and fast["channels_last"] is True
    assert fast["compile"] is False and fast["threads"] >= 1


def test_onnx_threads_one_for_a_cheap_generator_all_cores_for_a_costly_one(tiny_onnx, monkeypatch):
    gen = onnxrt.OnnxGenerator(tiny_onnx, providers=["CPUExecutionProvider"])
    assert gen.threads == 1  # the tiny generator takes microseconds per image
    monkeypatch.setattr(onnxrt, "usable_cores", lambda: 2)
    monkeypatch.setattr(onnxrt, "SINGLE_THREAD_MAX_S", 0.0)  # every generator is "costly"
    costly = onnxrt.OnnxGenerator(tiny_onnx, providers=["CPUExecutionProvider"])
    assert costly.threads == 2
    fixed = onnxrt.OnnxGenerator(tiny_onnx, providers=["CPUExecutionProvider"], threads=3)
    assert fixed.threads == 3
    assert np.array_equal(gen.generate(4, 1), costly.generate(4, 1))
    assert np.allclose(gen.generate(4, 1), fixed.generate(4, 1), atol=1e-6)


@pytest.mark.slow
def test_auto_leaves_the_judge_unchanged_and_training_within_its_seed_spread(
    tmp_path, default_project
):
    """The default pipeline (feature network, training with the FID probe and keep-best,
    evaluation) with ``auto`` vs all fp32, and each generator under the other run's judge:
    the fp32 generator judged by the bf16 judge lies inside the fp32 judge's 95% interval,
    and the bf16-trained generator judged by the fp32 judge is within the spread of fp32
    training seeds (at most SEED_RATIO = 1.5x the fp32 generator's FID). One pair is not held
    to a sampling interval: fp32 training seeds 0/1/2 score 12.29 / 13.26 / 18.56 under one
    judge and auto seeds 14.24 / 14.31 / 17.20 (benchmarks/RESULTS.md). MNIST is left to
    ``python -m benchmarks.precision``. The auto run is the session's one `dvc repro` of the
    defaults; the fp32 run and the two cross judgements run here."""
    from benchmarks.precision import compare

    out = compare("digits", None, None, tmp_path, defaults=default_project)
    if out["auto"]["fast_path"]["bf16"] is False:
        pytest.skip("this CPU has no native bf16: auto runs fp32, nothing to compare")
    where = {k: out[k] for k in ("fp32", "fp32_generator_auto_judge", "auto_generator_fp32_judge")}
    assert out["judge_unchanged"], where
    assert out["within_seed_spread"], where
    assert out["fp32"]["shipped_step"] == out["fp32"]["best_probe_step"] is not None  # keep-best
    assert out["auto"]["mode_collapse"] == out["fp32"]["mode_collapse"] is False
