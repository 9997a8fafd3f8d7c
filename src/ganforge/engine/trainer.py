"""The training engine: models, optimisers, EMA and batches of one run, one step at a time.

No file I/O and no tracking: ``ganforge.stages.train`` adds checkpoints, grids, history
and progress around it, and the throughput benchmark drives ``Trainer.step`` directly, so
what it measures is what ``ganforge train`` runs.

    trainer = Trainer(params, images_uint8, labels, num_classes, device)
    losses = trainer.step()            # detached 0-d tensors on the device (no host sync)
    images = trainer.sample(z, labels) # (N, C, H, W) in [-1, 1], EMA generator
    state = trainer.state_dict()       # everything a bit-exact resume needs
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from ganforge.config import Params
from ganforge.core import fastpath
from ganforge.core.device import to_unit_range
from ganforge.engine.augment import Augment, AugmentedD
from ganforge.engine.distributed import World, globalise_batchnorm
from ganforge.errors import CheckpointError, ConfigError
from ganforge.models import ModelSpec, make_variant

log = logging.getLogger(__name__)


# Keys that fix the architecture: a checkpoint can only be resumed with the same values.
ARCH_KEYS = ("model", "latent_dim", "g_width", "d_width")


def check_resumable(ckpt_params: dict[str, Any], params: Params, path: Path) -> None:
    """A checkpoint trained with ``ckpt_params`` may resume under ``params``: same
    architecture and image size (else one line naming the key), other changes warned of."""
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


class WarmupEMA:
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
    is dropped. ``state_dict`` makes the order resumable mid-epoch. Under torchrun every rank
    walks the same permutation in global batches and returns its ``shard`` of each.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        seed: int,
        device: torch.device,
        shard: slice = slice(None),
    ) -> None:
        self.images, self.labels = images, labels  # uint8 (N, C, H, W), int64 (N,)
        self.batch_size, self.device = batch_size, device
        self.shard = shard  # this rank's rows of the global batch (engine/distributed.py)
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
        idx = self.perm[self.cursor : self.cursor + self.batch_size][self.shard]
        self.cursor += self.batch_size
        y = self.labels[idx].to(self.device, non_blocking=True)
        return to_unit_range(self.images[idx], self.device), y

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
        world: World | None = None,
    ) -> None:
        tp = params.train
        self.params, self.device = params, device
        self.world = world or World()
        self.shard = self.world.shard(tp.batch_size)
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
        self.variant = make_variant(tp.model, self.spec, tp.model_dump())
        self.conditional = self.variant.conditional
        self.fast = fastpath.resolve(device, tp.bf16, tp.channels_last, tp.compile)
        fmt = self.memory_format = self.fast.memory_format
        self.G = self.variant.make_generator().to(device, memory_format=fmt)
        self.D = self.variant.make_discriminator().to(device, memory_format=fmt)
        if self.world.active:  # global-batch BatchNorm, rank 0's initial weights everywhere
            for model in (self.G, self.D):
                globalise_batchnorm(model)
                self.world.broadcast_module(model)
        # what D sees: augmented reals and fakes (engine/augment.py), or the images as they are
        self.augment = Augment(
            tp.augment, device, tp.seed, tp.batch_size, (self.world.rank, self.world.size)
        )
        self.D_seen = AugmentedD(self.D, self.augment) if self.augment.active else self.D

        cuda = device.type == "cuda"
        d_lr = tp.d_lr if tp.d_lr is not None else tp.lr
        betas = (tp.beta1, tp.beta2)
        self.opt_g = torch.optim.Adam(
            self.G.parameters(), lr=tp.lr, betas=betas, fused=cuda or None
        )
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=betas, fused=cuda or None)
        self.ema_fn = WarmupEMA(tp.ema_decay)
        self.ema = AveragedModel(self.G, multi_avg_fn=self.ema_fn, use_buffers=True)
        self.ema.module.eval()
        self.amp = self.fast.autocast(device)
        self.step_count = 0

        data_device = device if tp.data_on_device else torch.device("cpu")
        x = torch.from_numpy(images)
        y = torch.from_numpy(labels)
        if data_device.type == "cpu" and cuda:
            x, y = x.pin_memory(), y.pin_memory()
        self.sampler = BatchSampler(
            x.to(data_device), y.to(data_device), tp.batch_size, tp.seed, device, self.shard
        )

        if self.fast.compile:
            self.G.compile()
            self.D.compile()

    def _noise(self) -> Tensor:
        """(B/W, latent): this rank's rows of the global batch's noise (all of it drawn, so the
        RNG stream is the same on every rank and for every world size)."""
        z = torch.randn(self.params.train.batch_size, self.spec.latent_dim, device=self.device)
        return z[self.shard]

    def step(self) -> dict[str, Tensor]:
        """One training step; returns detached 0-d loss tensors on the device (no host sync).

        The last discriminator update's fake batch is made with its graph and reused for the
        generator update (after the discriminator has stepped), as the standard DCGAN loop
        does: one generator forward fewer per step. During the generator update the
        discriminator's weights do not require gradients, so its backward computes only the
        gradient the generator needs (its weight gradients would be thrown away).
        """
        fastpath.follow_free_cores()  # threads follow the cores other processes leave
        G, D = self.G, self.D_seen
        stats: dict[str, Tensor] = {}
        last = self.variant.d_steps - 1
        for i in range(self.variant.d_steps):
            real, labels = self.sampler.next()
            real = real.contiguous(memory_format=self.memory_format)
            y = labels if self.conditional else None
            with self.amp:
                with torch.set_grad_enabled(i == last):
                    fake = G(self._noise(), y)  # (B/W, C, H, W)
                d_loss, stats = self.variant.d_step(D, real, fake.detach(), y, self.step_count)
            if self.augment.mode == "ada":  # p must move alike on every rank: the global signal
                self.augment.observe(self.world.mean(stats)["d_real_sign"])
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.world.average_gradients(self.D)
            self.opt_d.step()

        self.D.requires_grad_(False)
        with self.amp:
            g_loss, g_stats = self.variant.g_loss(D, fake, y)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.world.average_gradients(self.G)
        self.opt_g.step()
        self.D.requires_grad_(True)

        self.ema_fn.set_step(self.step_count)
        self.ema.update_parameters(G)
        self.step_count += 1
        # stats["d_loss"] (the game's loss, without the penalty) keeps the first column
        out = {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), **stats, **g_stats}
        return self.world.mean(out)  # the global batch's means (one all-reduce; none alone)

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
            "augment": self.augment.state_dict(),
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
        if "augment" in state:  # checkpoints before augmentation have none
            self.augment.load_state_dict(state["augment"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step_count = int(state["step"])
