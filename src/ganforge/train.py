"""Stage ``train``: one adversarial training loop for every GAN variant, CPU or CUDA.

    ganforge train [--params params.yaml] [--set train.model=wgan-gp] [--data data/prepared]
                   [--out models] [--resume]

Writes ``<out>/<train.run_name>/``::

    generator.pt         self-describing generator (EMA + raw weights, constructor kwargs, params)
    checkpoints/         full training state every train.checkpoint_every steps (newest 2 kept)
    samples/step_*.png   fixed-noise grids from the EMA generator every train.sample_every steps
    samples.png          the final grid (one column per class for cdcgan)
    history.csv          per-step losses and images/s, for plots
    summary.json         steps, time, throughput, final losses, device

``Trainer`` holds the models and does one step at a time; ``train`` adds the I/O around it
(checkpoints, grids, history, progress bar). The benchmark uses ``Trainer`` directly, so
what it measures is what ``ganforge train`` runs.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from ganforge.checkpoint import list_checkpoints, load_latest, save_generator, save_state
from ganforge.config import Params
from ganforge.data import load_split
from ganforge.errors import CheckpointError, ConfigError, DivergenceError
from ganforge.grids import fixed_grid_inputs, plot_curves, save_grid
from ganforge.io import atomic_path, write_json
from ganforge.models import ModelSpec, make_variant
from ganforge.tracking import Tracker

log = logging.getLogger(__name__)

# Keys that fix the architecture: a checkpoint can only be resumed with the same values.
ARCH_KEYS = ("model", "latent_dim", "g_width", "d_width")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device: '{name}' requested but no CUDA device is available (use auto or cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: '{name}' but only {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


class _WarmupEMA:
    """EMA update for ``AveragedModel``: decay min(ema_decay, (1+t)/(10+t)) at step t.

    The warm-up lets the average follow the fast early changes instead of staying near
    the random init for ~1/(1-decay) steps. ``decay`` is set from the host-side step, so
    the update needs no device-to-host sync.
    """

    def __init__(self, ema_decay: float) -> None:
        self.ema_decay = ema_decay
        self.decay = 0.0

    def set_step(self, step: int) -> None:
        self.decay = min(self.ema_decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def __call__(self, ema: list[Tensor], current: list[Tensor], _n_averaged: Tensor) -> None:
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1.0 - self.decay)
        else:  # integer buffers (BatchNorm's num_batches_tracked): follow the model
            for e, c in zip(ema, current, strict=True):
                e.copy_(c)


class BatchSampler:
    """Batches drawn from a uint8 tensor held on the training device (or in pinned host memory).

    Each epoch is a fresh permutation from a dedicated generator; an incomplete final batch
    is dropped. ``state_dict`` makes the order resumable mid-epoch.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, seed: int, device: torch.device
    ) -> None:
        self.images, self.labels = images, labels  # uint8 (N, C, H, W), int64 (N,)
        self.batch_size, self.device = batch_size, device
        self.index_device = images.device
        self.gen = torch.Generator(device=self.index_device).manual_seed(seed)
        self.perm = torch.randperm(len(images), generator=self.gen, device=self.index_device)
        self.cursor = 0

    def next(self) -> tuple[Tensor, Tensor]:
        """-> (float (B, C, H, W) in [-1, 1] on device, int64 (B,) on device)."""
        if self.cursor + self.batch_size > len(self.perm):
            self.perm = torch.randperm(
                len(self.images), generator=self.gen, device=self.index_device
            )
            self.cursor = 0
        idx = self.perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        x = self.images[idx].to(self.device, non_blocking=True)
        y = self.labels[idx].to(self.device, non_blocking=True)
        return x.float().div_(127.5).sub_(1.0), y

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.cpu(), "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].to(self.index_device)
        self.cursor = int(state["cursor"])


class Trainer:
    """The models, optimisers and EMA of one run, and ``step()``: one generator update
    preceded by ``variant.d_steps`` discriminator updates."""

    def __init__(
        self,
        params: Params,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        device: torch.device,
    ) -> None:
        tp = params.train
        self.params, self.device = params, device
        n, channels, size, _ = images.shape
        if tp.batch_size > n:
            raise ConfigError(
                f"train.batch_size: {tp.batch_size} is larger than the training split ({n} images)"
            )
        torch.manual_seed(tp.seed)
        self.spec = ModelSpec(
            latent_dim=tp.latent_dim,
            image_size=size,
            channels=channels,
            num_classes=num_classes,
            g_width=tp.g_width,
            d_width=tp.d_width,
        )
        self.variant = make_variant(
            tp.model, self.spec, n_critic=tp.n_critic, gp_lambda=tp.gp_lambda, r1_gamma=tp.r1_gamma
        )
        self.conditional = self.variant.conditional
        fmt = torch.channels_last if tp.channels_last else torch.contiguous_format
        self.G = self.variant.make_generator().to(device, memory_format=fmt)
        self.D = self.variant.make_discriminator().to(device, memory_format=fmt)
        self.memory_format = fmt

        cuda = device.type == "cuda"
        d_lr = tp.d_lr if tp.d_lr is not None else tp.lr
        betas = (tp.beta1, tp.beta2)
        self.opt_g = torch.optim.Adam(
            self.G.parameters(), lr=tp.lr, betas=betas, fused=cuda or None
        )
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=betas, fused=cuda or None)
        self.ema_fn = _WarmupEMA(tp.ema_decay)
        self.ema = AveragedModel(self.G, multi_avg_fn=self.ema_fn, use_buffers=True)
        self.ema.module.eval()
        self.amp = torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=tp.bf16 and cuda
        )
        self.step_count = 0

        data_device = device if tp.data_on_device else torch.device("cpu")
        x = torch.from_numpy(images)
        y = torch.from_numpy(labels)
        if data_device.type == "cpu" and cuda:
            x, y = x.pin_memory(), y.pin_memory()
        self.sampler = BatchSampler(
            x.to(data_device), y.to(data_device), tp.batch_size, tp.seed, device
        )

        if tp.compile:
            self.G.compile()
            self.D.compile()

    def _noise(self, n: int) -> Tensor:
        return torch.randn(n, self.spec.latent_dim, device=self.device)

    def step(self) -> dict[str, Tensor]:
        """One training step; returns detached 0-d loss tensors on the device (no host sync)."""
        G, D = self.G, self.D
        stats: dict[str, Tensor] = {}
        for _ in range(self.variant.d_steps):
            real, labels = self.sampler.next()
            real = real.contiguous(memory_format=self.memory_format)
            y = labels if self.conditional else None
            with self.amp:
                with torch.no_grad():
                    fake = G(self._noise(real.shape[0]), y)
                d_loss, stats = self.variant.d_loss(D, real, fake, y)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()

        with self.amp:
            fake = G(self._noise(real.shape[0]), y)
            g_loss, g_stats = self.variant.g_loss(D, fake, y)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()

        self.ema_fn.set_step(self.step_count)
        self.ema.update_parameters(G)
        self.step_count += 1
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), **stats, **g_stats}

    @torch.no_grad()
    def sample(self, z: Tensor, labels: Tensor | None = None, ema: bool = True) -> Tensor:
        """(N, C, H, W) in [-1, 1] from the EMA (default) or the raw generator in eval mode."""
        model = self.ema.module if ema else self.G
        was_training = model.training
        model.eval()
        out = model(z.to(self.device), labels.to(self.device) if labels is not None else None)
        model.train(was_training)
        return out.float()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "family": self.variant.name,
            "spec": self.spec.to_dict(),
            "params": self.params.model_dump(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step_count = int(state["step"])


# --------------------------------------------------------------------------- stage


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _check_resumable(ckpt_params: dict[str, Any], params: Params, path: Path) -> None:
    old, new = ckpt_params["train"], params.train.model_dump()
    for key in ARCH_KEYS:
        if old[key] != new[key]:
            raise CheckpointError(
                f"{path}: trained with train.{key}={old[key]!r}, params say {new[key]!r}; "
                "resume needs the same architecture (or drop --resume)"
            )
    if ckpt_params["prepare"]["image_size"] != params.prepare.image_size:
        raise CheckpointError(
            f"{path}: trained at {ckpt_params['prepare']['image_size']} px, prepare.image_size is "
            f"{params.prepare.image_size}; resume needs the same data"
        )
    changed = [k for k in new if k not in ARCH_KEYS + ("steps",) and old.get(k) != new[k]]
    if changed:
        log.warning(
            "resuming %s with changed params: %s", path, ", ".join(f"train.{k}" for k in changed)
        )


def train(
    params: Params,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    tracker: Tracker | None = None,
    featurenet: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``params.train.model`` on the prepared ``data_dir``; returns the summary dict.

    ``tracker`` receives params, per-step losses and grids (MLflow when the CLI opens one);
    with a ``featurenet`` file, the FID of ``train.fid_samples`` EMA samples is measured at
    every sample grid (``fid_history.csv``): quality over training, next to the losses.
    """
    from tqdm import tqdm

    tracker = tracker or Tracker()

    tp = params.train
    device = resolve_device(tp.device)
    split = load_split(data_dir, "train")
    manifest = split.manifest
    if manifest["image_size"] != params.prepare.image_size:
        raise ConfigError(
            f"prepare.image_size: params say {params.prepare.image_size} px but {data_dir} holds "
            f"{manifest['image_size']} px images; rerun `ganforge prepare`"
        )
    num_classes = manifest["num_classes"]
    run_dir = Path(out_dir) / tp.run_name
    ckpt_dir = run_dir / "checkpoints"

    trainer = Trainer(params, split.images, split.labels, num_classes, device)
    history: list[dict[str, float]] = []
    if resume:
        state, path = load_latest(ckpt_dir, map_location=device)
        _check_resumable(state["params"], params, path)
        if state.get("data_sha256") != manifest["content_sha256"]:
            raise CheckpointError(
                f"{path}: trained on other data than {data_dir} (content_sha256 differs)"
            )
        trainer.load_state_dict(state)
        history = [
            dict(zip(state["history_cols"], row, strict=True)) for row in state["history"].tolist()
        ]
        log.info("resumed from %s at step %d", path, trainer.step_count)
    else:  # a fresh run: no stale state to resume, no stale grids to mistake for this run's
        for stale in (ckpt_dir, run_dir / "samples"):
            shutil.rmtree(stale, ignore_errors=True)

    z_fixed, y_fixed, nrow = fixed_grid_inputs(
        tp.grid_size, tp.latent_dim, num_classes, trainer.conditional, tp.seed
    )
    samples_dir = run_dir / "samples"
    if trainer.step_count == 0:
        save_grid(trainer.sample(z_fixed, y_fixed), samples_dir / "step_00000000.png", nrow)
    probe = None
    if featurenet is not None and tp.fid_samples:
        # building the feature network draws from the global RNG: keep training's stream intact
        # (else the probe would change the run, and a resumed run would differ from a straight one)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            probe = _FidProbe.create(Path(featurenet), split, tp, trainer.conditional, device)
    fid_rows = (
        [r for r in _read_csv(run_dir / "fid_history.csv") if r["step"] <= trainer.step_count]
        if resume
        else []
    )

    images_per_step = tp.batch_size * trainer.variant.d_steps  # real images the discriminator sees
    pending: list[dict[str, Tensor]] = []
    window_start, window_step0 = time.perf_counter(), trainer.step_count
    t_start, step0 = time.perf_counter(), trainer.step_count
    last_rate = 0.0

    def flush() -> None:
        """Move pending per-step losses to the host (one sync), check them, extend history."""
        nonlocal window_start, window_step0, last_rate
        if not pending:
            return
        keys = list(pending[0])
        values = (
            torch.stack([torch.stack([p[k].float() for k in keys]) for p in pending]).cpu().numpy()
        )
        now = time.perf_counter()
        last_rate = (
            (trainer.step_count - window_step0) * images_per_step / max(now - window_start, 1e-9)
        )
        window_start, window_step0 = now, trainer.step_count
        first = trainer.step_count - len(pending) + 1
        for i, row in enumerate(values):
            step = first + i
            bad = [k for k, v in zip(keys, row, strict=True) if not math.isfinite(v)]
            if bad:
                pending.clear()
                _write_history(run_dir / "history.csv", history)
                kept = list_checkpoints(ckpt_dir)
                where = (
                    f"last good checkpoint: {kept[0]}" if kept else "no checkpoint was written yet"
                )
                raise DivergenceError(
                    f"step {step}: {bad[0]} is {row[keys.index(bad[0])]} (non-finite); training stopped, "
                    f"{where}; lower train.lr (or the penalty weights) or check the data"
                )
            history.append(
                {
                    "step": step,
                    **{k: float(v) for k, v in zip(keys, row, strict=True)},
                    "img_per_s": last_rate,
                }
            )
        tracker.log_history(history[-len(values) :])
        pending.clear()

    def checkpoint() -> None:
        cols = list(history[0]) if history else []
        save_state(
            {
                **trainer.state_dict(),
                "data_sha256": manifest["content_sha256"],
                "history_cols": cols,
                "history": torch.tensor(
                    [[r[c] for c in cols] for r in history], dtype=torch.float64
                ),
            },
            ckpt_dir,
        )
        _write_history(run_dir / "history.csv", history)

    bar = tqdm(
        total=tp.steps,
        initial=trainer.step_count,
        disable=not progress,
        mininterval=1.0,
        unit="step",
        dynamic_ncols=True,
    )
    bar.set_description(f"{tp.model} {device.type}")
    while trainer.step_count < tp.steps:
        pending.append(trainer.step())
        step = trainer.step_count
        bar.update(1)
        if step % tp.log_every == 0 or step == tp.steps:
            flush()
            last = history[-1]
            bar.set_postfix(
                d=f"{last['d_loss']:.3f}", g=f"{last['g_loss']:.3f}", img_s=f"{last_rate:,.0f}"
            )
        if step % tp.sample_every == 0 or step == tp.steps:
            grid_path = samples_dir / f"step_{step:08d}.png"
            save_grid(trainer.sample(z_fixed, y_fixed), grid_path, nrow)
            tracker.log_artifact(grid_path, "samples")
            if probe is not None:
                fid_rows.append({"step": step, "fid": probe(trainer)})
                _write_history(run_dir / "fid_history.csv", fid_rows)
                tracker.log_metrics({"fid_ema": fid_rows[-1]["fid"]}, step)
        if step % tp.checkpoint_every == 0 or step == tp.steps:
            flush()
            checkpoint()
    bar.close()
    flush()
    elapsed = time.perf_counter() - t_start

    final = trainer.sample(z_fixed, y_fixed)
    save_grid(final, run_dir / "samples.png", nrow)
    data_info = {
        k: manifest[k]
        for k in (
            "source",
            "image_size",
            "channels",
            "num_classes",
            "class_names",
            "content_sha256",
        )
    }
    save_generator(
        run_dir / "generator.pt",
        family=trainer.variant.name,
        generator_kwargs=trainer.variant.generator_kwargs(),
        ema_state=trainer.ema.module.state_dict(),
        raw_state=trainer.G.state_dict(),
        params=params.model_dump(),
        data=data_info,
        step=trainer.step_count,
    )
    trained = trainer.step_count - step0
    summary = {
        "model": tp.model,
        "run_dir": str(run_dir),
        "device": str(device),
        "steps": trainer.step_count,
        "steps_this_run": trained,
        "seconds": round(elapsed, 3),
        "img_per_s": round(trained * images_per_step / elapsed, 1) if trained else 0.0,
        "final_d_loss": history[-1]["d_loss"] if history else None,
        "final_g_loss": history[-1]["g_loss"] if history else None,
        "torch": torch.__version__,
    }
    write_json(run_dir / "summary.json", summary)
    plot_curves(history, fid_rows, run_dir / "curves.png")
    tracker.log_metrics({"img_per_s": summary["img_per_s"], "train_seconds": summary["seconds"]})
    for name in ("samples.png", "curves.png", "history.csv", "fid_history.csv", "summary.json"):
        if (run_dir / name).is_file():
            tracker.log_artifact(run_dir / name)
    return summary


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class _FidProbe:
    """FID of EMA samples against real training images in the feature network's space.

    Fixed noise (and, for cdcgan, the real label mix), ``train.fid_samples`` per side: cheap
    enough to run at every sample grid, comparable across steps of one run.
    """

    def __init__(self, extract, real_f: Tensor, z: Tensor, y: Tensor | None) -> None:
        self.extract, self.real_f, self.z, self.y = extract, real_f, z, y

    @classmethod
    def create(
        cls, path: Path, split, tp, conditional: bool, device: torch.device
    ) -> _FidProbe | None:
        from ganforge.evaluate import DomainFeatures

        extract = DomainFeatures(path, device, batch=500)
        if extract.meta["data_sha256"] != split.manifest["content_sha256"]:
            log.warning("%s was trained on other data: no FID during training", path)
            return None
        n = min(tp.fid_samples, len(split.images))
        idx = np.random.default_rng(tp.seed).choice(len(split.images), n, replace=False)
        real = torch.from_numpy(split.images[idx]).to(device).float().div_(127.5).sub_(1.0)
        real_f, _ = extract(real)
        z = torch.randn(n, tp.latent_dim, generator=torch.Generator().manual_seed(tp.seed + 13))
        y = torch.from_numpy(split.labels[idx]) if conditional else None
        return cls(extract, real_f.cpu(), z, y)

    def __call__(self, trainer: Trainer) -> float:
        from ganforge.evaluate import fid

        fake_f, _ = self.extract(trainer.sample(self.z, self.y))
        return fid(self.real_f, fake_f.cpu())
