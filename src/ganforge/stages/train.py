"""Stage ``train``: one adversarial training loop for every GAN variant, CPU or CUDA.

    ganforge train [--params params.yaml] [--set train.model=wgan-gp] [--data data/prepared]
                   [--out models] [--resume]

Writes ``<out>/<train.run_name>/``::

    generator.pt         self-describing generator (EMA + raw weights, constructor kwargs, params)
    checkpoints/         full training state every train.checkpoint_every steps (newest 2 kept)
    samples/step_*.png   fixed-noise grids from the EMA generator every train.sample_every steps
    samples.png          the final grid (one column per class for conditional models)
    history.csv          per-step losses and images/s, for plots
    fid_history.csv      FID of EMA samples at every grid (with a feature network)
    curves.png           losses and FID per step
    summary.json         steps, time, throughput, final losses, device

The step itself is ``ganforge.engine.trainer.Trainer``; this module is the I/O around it:
resume, the loss log (one host sync every ``train.log_every`` steps), grids, the FID
probe, checkpoints and the final files.

A run works in ``<out>/.<run_name>.partial/`` and replaces ``<out>/<run_name>/`` with it
only when it succeeds: a failed run (bad input, divergence, a crash) leaves the last good
run, its checkpoints and its provenance (``mlflow_run.json``) exactly as they were, and
keeps its own checkpoints in the partial directory for ``--resume``.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ganforge.config import Params
from ganforge.core import fastpath
from ganforge.core.checkpoint import list_checkpoints, load_latest, save_state
from ganforge.core.dataset import PreparedSplit, load_split
from ganforge.core.device import resolve_device
from ganforge.core.files import claim_dir, mark_dir, read_csv, replace_dir, write_csv, write_json
from ganforge.core.grids import fixed_grid_inputs, plot_curves, save_grid
from ganforge.core.progress import Progress
from ganforge.core.runlog import RUN_FILE, RunLog, Untracked
from ganforge.engine.best import KeepBest
from ganforge.engine.distributed import World
from ganforge.engine.losslog import LossLog
from ganforge.engine.schedule import Schedule
from ganforge.engine.trainer import Trainer, check_resumable
from ganforge.errors import CheckpointError, ConfigError
from ganforge.models import save_generator

log = logging.getLogger(__name__)

# What generator.pt says about the data it was trained on (from the manifest).
DATA_KEYS = ("source", "image_size", "channels", "num_classes", "class_names", "content_sha256")


def work_dir(out_dir: str | Path, run_name: str) -> Path:
    """Where a run writes until it succeeds."""
    return Path(out_dir) / f".{run_name}.partial"


def _open_work(run_dir: Path, work: Path, resume: bool) -> None:
    """Claim both directories; start ``work`` fresh, or for ``--resume`` keep a failed run's
    state there, else seed it from the finished run (to train it further)."""
    claim_dir(run_dir, "train")
    claim_dir(work, "train")
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    elif not list_checkpoints(work / "checkpoints") and list_checkpoints(run_dir / "checkpoints"):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(run_dir, work)
    elif not list_checkpoints(work / "checkpoints"):
        raise CheckpointError(
            f"{work / 'checkpoints'}: no checkpoints to resume from (nor in {run_dir})"
        )
    work.mkdir(parents=True, exist_ok=True)
    mark_dir(work, "train")


def _resume(trainer, best: KeepBest, run_dir: Path, params: Params, split: PreparedSplit, device):
    """Load the newest intact checkpoint into ``trainer`` and ``best``; returns (loss history,
    FID history)."""
    state, path = load_latest(run_dir / "checkpoints", map_location=device)
    check_resumable(state["params"], params, path)
    if state.get("data_sha256") != split.manifest["content_sha256"]:
        raise CheckpointError(
            f"{path}: trained on other data than this dataset (content_sha256 differs)"
        )
    trainer.load_state_dict(state)
    if state.get("best") is not None:
        best.load_state_dict(state["best"])
    history = [dict(zip(state["history_cols"], r, strict=True)) for r in state["history"].tolist()]
    fid_rows = [r for r in read_csv(run_dir / "fid_history.csv") if r["step"] <= trainer.step_count]
    log.info("resumed from %s at step %d", path, trainer.step_count)
    return history, fid_rows


def _fid_probe(featurenet: str | Path | None, split: PreparedSplit, trainer: Trainer, device):
    """The in-training FID probe, or None (no feature network, fid_samples 0, no torchmetrics)."""
    tp = trainer.params.train
    if featurenet is None or not tp.fid_samples:
        return None
    try:
        import torchmetrics  # noqa: F401 - the probe's FID is torchmetrics'

        from ganforge.metrics.features import FidProbe
    except ImportError as exc:  # the core runs without the eval extra
        log.warning("no FID during training: %s (install ganforge[eval])", exc)
        return None
    # building the feature network draws from the global RNG: keep training's stream intact
    # (else the probe would change the run, and a resumed run would differ from a straight one)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return FidProbe.create(
            Path(featurenet),
            split.images,
            split.labels,
            split.manifest["content_sha256"],
            n=tp.fid_samples,
            latent_dim=tp.latent_dim,
            conditional=trainer.conditional,
            seed=tp.seed,
            device=device,
            fast=trainer.fast,
        )


def _follow(trainer: Trainer, run_dir: Path, resume: bool, device) -> dict[str, Any]:
    """A rank other than 0: the same steps, no files, no tracking, stop when rank 0 says."""
    world, steps = trainer.world, trainer.params.train.steps
    world.barrier()  # rank 0 has opened (and for --resume, checked) the work directory
    if resume:
        state, _ = load_latest(run_dir / "checkpoints", map_location=device)
        trainer.load_state_dict(state)
    while trainer.step_count < steps:
        trainer.step()
        if world.agree(False, device):
            break
    world.close()
    return {"rank": world.rank, "steps": trainer.step_count}


def _save_checkpoint(trainer: Trainer, best: KeepBest, history, run_dir: Path, data_sha256):
    cols = list(history[0]) if history else []
    rows = torch.tensor([[r[c] for c in cols] for r in history], dtype=torch.float64)
    extra = {
        "data_sha256": data_sha256,
        "history_cols": cols,
        "history": rows,
        "best": best.state_dict(),
    }
    save_state({**trainer.state_dict(), **extra}, run_dir / "checkpoints")
    write_csv(run_dir / "history.csv", history)


def _inputs(params: Params, data_dir) -> tuple[PreparedSplit, torch.device, World]:
    """The training split (checked against prepare.image_size), the device and this process's
    place in the world (one process, or a rank of torchrun's: its own GPU on CUDA)."""
    split = load_split(data_dir, "train")
    if split.manifest["image_size"] != params.prepare.image_size:
        raise ConfigError(
            f"prepare.image_size: params say {params.prepare.image_size} px but {data_dir} holds "
            f"{split.manifest['image_size']} px images; rerun `ganforge prepare`"
        )
    device = resolve_device(params.train.device)
    world = World.from_env(device.type)
    if world.active and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return split, device, world


def train(
    params: Params,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    tracker: RunLog | None = None,
    featurenet: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``params.train.model`` on the prepared ``data_dir``; returns the summary dict.

    ``tracker`` receives per-step losses, grids and FID (MLflow when the CLI opens a run);
    with a ``featurenet`` file, the FID of ``train.fid_samples`` EMA samples is measured at
    every sample grid (``fid_history.csv``): quality over training, next to the losses.
    ``progress``: a tqdm bar (on a terminal); else a log line every tenth of the run.
    """
    tracker = tracker or Untracked()
    tp = params.train
    split, device, world = _inputs(params, data_dir)
    manifest = split.manifest
    final_dir, run_dir = Path(out_dir) / tp.run_name, work_dir(out_dir, tp.run_name)
    trainer = Trainer(params, split.images, split.labels, manifest["num_classes"], device, world)
    if not world.is_main:
        return _follow(trainer, run_dir, resume, device)
    probe = _fid_probe(featurenet, split, trainer, device)
    if probe is None and tp.patience:
        raise ConfigError(
            f"train.patience: {tp.patience} needs the in-training FID probe (a feature network "
            "and train.fid_samples > 0); set train.patience=0"
        )
    best = KeepBest(tp.patience)
    _open_work(final_dir, run_dir, resume)
    history: list[dict[str, float]] = []
    fid_rows: list[dict[str, float]] = []
    if resume:
        history, fid_rows = _resume(trainer, best, run_dir, params, split, device)
    world.barrier()  # the work directory is ready: the other ranks may read its checkpoint
    record = tracker.record()
    if record is not None:  # this run's provenance, moved into place with its outputs
        write_json(run_dir / RUN_FILE, record)
    log.info("%s on %s: %s", tp.model, device, trainer.fast.describe())

    step0 = trainer.step_count
    loop = _Loop(trainer, probe, best, tracker, run_dir, history, fid_rows, progress)
    stopped, elapsed = loop.run(manifest)
    trained = trainer.step_count - step0
    summary = {
        "model": tp.model,
        "run_dir": str(final_dir),
        "device": str(device),
        "steps": trainer.step_count,
        "steps_this_run": trained,
        "seconds": round(elapsed, 3),
        "img_per_s": round(trained * loop.losses.images_per_step / elapsed, 1) if trained else 0.0,
        "final_d_loss": history[-1]["d_loss"] if history else None,
        "final_g_loss": history[-1]["g_loss"] if history else None,
        "torch": torch.__version__,
        "fast_path": trainer.fast.record(),
        # every count the threads took (they follow the free cores): bit-identical retrains
        # need the same counts, e.g. OMP_NUM_THREADS fixed
        "threads_used": fastpath.threads_used() or [trainer.fast.threads],
        "stopped": stopped,  # steps | max_minutes | patience
        **best.ship(trainer.ema.module, trainer.G, tp.keep, trainer.step_count),
    }
    if summary["shipped_step"] != trainer.step_count:
        log.info("generator.pt: step %d (probe FID %.4g), the best of run", best.step, best.fid)
    _save_outputs(trainer, params, manifest, run_dir, summary, history, fid_rows, tracker)
    claim_dir(final_dir, "train")
    replace_dir(run_dir, final_dir)  # the run's outputs move into place together
    return summary


class _Loop:
    """Rank 0's loop: steps, and what ``Schedule`` says is due after each (losses to the
    host and the tracker, grids and the FID probe, keep-best and patience, checkpoints)."""

    def __init__(self, trainer, probe, best, tracker, run_dir, history, fid_rows, progress):
        self.trainer, self.probe, self.best, self.tracker = trainer, probe, best, tracker
        self.run_dir, self.history, self.fid_rows = run_dir, history, fid_rows
        self.progress = progress
        self.losses: LossLog  # made when the loop starts: its first window starts there
        self.unsent: list[dict[str, float]] = []  # loss rows not yet sent to the tracker

    def run(self, manifest) -> tuple[str, float]:
        """-> (why it stopped: steps | max_minutes | patience, seconds in the loop)."""
        trainer, tp = self.trainer, self.trainer.params.train
        z, y, nrow = fixed_grid_inputs(
            tp.grid_size, tp.latent_dim, manifest["num_classes"], trainer.conditional, tp.seed
        )
        samples = self.run_dir / "samples"
        if trainer.step_count == 0:
            save_grid(trainer.sample(z, y), samples / "step_00000000.png", nrow)
        self.losses = LossLog(trainer, self.history, self.run_dir)
        schedule, stopped = Schedule.from_params(tp), "steps"
        bar = Progress(tp.model, trainer.device.type, trainer.step_count, tp.steps, self.progress)
        t_start = time.perf_counter()
        while trainer.step_count < tp.steps and stopped == "steps":
            self.losses.pending.append(trainer.step())
            step = trainer.step_count
            if tp.max_minutes and time.perf_counter() - t_start >= 60 * tp.max_minutes:
                stopped = "max_minutes"
            due = schedule.at(step, stopping=stopped != "steps")
            if due.log:
                self.unsent += self.losses.flush()
                bar.update(step, self.history[-1], self.losses.rate)
            if due.sample:
                grid = samples / f"step_{step:08d}.png"
                save_grid(trainer.sample(z, y), grid, nrow)
                self.tracker.log_artifact(grid, "samples")
                self.tracker.log_image(grid, "samples", step)
                if self._probe(step) and not due.last:
                    stopped, due = "patience", schedule.at(step, stopping=True)
            if due.flush:
                self.tracker.log_history(self.unsent + self.losses.flush())
                self.unsent = []
            if due.checkpoint:
                data_sha256 = manifest["content_sha256"]
                _save_checkpoint(trainer, self.best, self.history, self.run_dir, data_sha256)
            trainer.world.agree(stopped != "steps", trainer.device)  # the others stop with rank 0
        trainer.world.close()  # the collectives are over; what follows is rank 0's I/O
        if stopped != "steps":
            log.info("stopped at step %d of %d: train.%s", trainer.step_count, tp.steps, stopped)
        bar.close()
        self.tracker.log_history(self.unsent + self.losses.flush())
        return stopped, time.perf_counter() - t_start

    def _probe(self, step: int) -> bool:
        """FID of EMA samples now (with a probe): recorded, kept if best. -> plateaued."""
        if self.probe is None:
            return False
        self.fid_rows.append({"step": step, "fid": self.probe(self.trainer.sample)})
        write_csv(self.run_dir / "fid_history.csv", self.fid_rows)
        self.tracker.log_metrics({"fid_ema": self.fid_rows[-1]["fid"]}, step)
        self.best.update(step, self.fid_rows[-1]["fid"], self.trainer.ema.module, self.trainer.G)
        return self.best.plateaued


def _save_outputs(trainer, params, manifest, run_dir, summary, history, fid_rows, tracker) -> None:
    """The final grid, generator.pt, summary.json and curves.png, each logged to the tracker.
    The artifacts are logged from the work directory, before it moves into place."""
    tp = params.train
    z, y, nrow = fixed_grid_inputs(
        tp.grid_size, tp.latent_dim, manifest["num_classes"], trainer.conditional, tp.seed
    )
    save_grid(trainer.sample(z, y), run_dir / "samples.png", nrow)
    digest = save_generator(
        run_dir / "generator.pt",
        family=trainer.variant.name,
        conditional=trainer.conditional,
        generator_kwargs=trainer.variant.generator_kwargs(),
        ema_state=trainer.ema.module.state_dict(),
        raw_state=trainer.G.state_dict(),
        params=params.model_dump(),
        data={k: manifest[k] for k in DATA_KEYS},
        step=summary["shipped_step"],
    )
    write_json(run_dir / "summary.json", summary)
    plot_curves(history, fid_rows, run_dir / "curves.png")
    tracker.log_metrics({"img_per_s": summary["img_per_s"], "train_seconds": summary["seconds"]})
    for name in ("samples.png", "curves.png", "history.csv", "fid_history.csv", "summary.json"):
        if (run_dir / name).is_file():
            tracker.log_artifact(run_dir / name)
    record = tracker.settle(digest)  # a bit-identical retrain keeps the run that made it first
    if record is not None:
        write_json(run_dir / RUN_FILE, record)
