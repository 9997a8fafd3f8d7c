"""Data parallelism for one training run under ``torchrun`` (or ``train.nproc_per_node``).

torchrun starts one process per rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous in the environment; ``World.from_env()`` joins the process group (NCCL on CUDA,
gloo on CPU). What each rank does:

- ``train.batch_size`` is the *global* batch. Every rank holds the same sampler and the same
  RNG streams, draws the whole global batch of indices and noise, and keeps its own slice
  (rank r of W: rows r*B/W .. (r+1)*B/W). So the data order and the noise do not depend on
  the number of ranks, a checkpoint resumes on any number of ranks, and 2 ranks compute what
  1 rank would, up to float summation order. (One exception: wgan-gp's interpolation
  weights are drawn per rank, the same draw on each, so its runs match in distribution only.)
- Gradients are averaged by one explicit all-reduce of the flattened gradients after each
  backward (``World.average_gradients``), not by ``DistributedDataParallel``: the R1 and
  gradient penalties take gradients with ``create_graph=True``, which DDP's reducer does not
  support. Each rank's loss is the mean over its slice, so the average over ranks is the
  mean over the global batch.
- BatchNorm layers become ``GlobalBatchNorm``: batch statistics over the global batch, from
  an all-reduce of per-channel sums (differentiable, twice: R1 back-propagates through it).
  Without it each rank would normalise by its own slice's statistics, a different model from
  the one-process run. torch's ``SyncBatchNorm`` is not used: it runs on CUDA only and its
  backward is not differentiable again (R1 needs that).
- Everything with a side effect (checkpoints, grids, the FID probe, generator.pt, history,
  MLflow) happens on rank 0; the other ranks only step. Rank 0 broadcasts whether to stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ganforge.errors import ConfigError, LaunchError

TIMEOUT = timedelta(
    minutes=30
)  # a collective waits this long for a stalled rank (the FID probe runs on rank 0 alone)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def launched_rank() -> int | None:
        """This process's global rank when torchrun started it (``RANK``), else None: read
        before any process group is joined, to decide whether to launch and who tracks."""
        return int(os.environ["RANK"]) if "WORLD_SIZE" in os.environ else None

    @classmethod
    def from_env(cls, device_kind: str) -> World:
        """Join torchrun's process group (``WORLD_SIZE`` > 1), else the one-process world."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        world = cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if device_kind == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=TIMEOUT)
        return world

    def shard(self, global_batch: int) -> slice:
        """This rank's rows of a global batch (``train.batch_size`` must divide evenly)."""
        if global_batch % self.size:
            raise ConfigError(
                f"train.batch_size: {global_batch} (the global batch) does not split evenly over "
                f"{self.size} processes; use a multiple of {self.size}"
            )
        n = global_batch // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    def average_gradients(self, module: nn.Module) -> None:
        """Mean of every gradient of ``module`` over the ranks: one all-reduce of them flattened."""
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.size
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            g.copy_(synced)

    def mean(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Mean over the ranks of 0-d stats (one all-reduce); NaN stays NaN (stats not measured)."""
        if not self.active or not values:
            return values
        keys = list(values)
        stacked = torch.stack([values[k].float() for k in keys])
        dist.all_reduce(stacked)
        stacked /= self.size
        return dict(zip(keys, stacked.unbind(), strict=True))

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag``, on every rank (e.g. stop now)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's weights and buffers on every rank (same seed makes them equal; this makes
        sure)."""
        if self.active:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> None:
    """Run ``ganforge <argv>`` as ``nproc`` processes on this machine through torchrun
    (``torch.distributed.run --standalone``): what ``train.nproc_per_node`` > 1 does, so the
    DVC stage and the Prefect flow need no torchrun line. Returns when every rank is done;
    if one fails (an error, or killed), torchrun stops the others and this raises."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "-m",
        "ganforge",
        *argv,
    ]
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except BaseException:  # SIGTERM or Ctrl-C reached this launcher: torchrun passes SIGTERM
        proc.terminate()  # on to every rank, whose own handlers close their runs
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if code != 0:
        raise LaunchError(
            f"train.nproc_per_node={nproc}: a training process failed (torchrun exit {code}; its "
            "report is above) and the others were stopped; the last good outputs are unchanged, "
            "and `ganforge train --resume` continues from the newest checkpoint"
        )


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across all ranks.

    Per channel: sum and sum of squares of this rank's slice, all-reduced (differentiably)
    with the element count, give the global mean and biased variance; the running variance
    gets the unbiased one, as ``nn.BatchNorm`` does. In eval mode it is plain BatchNorm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable (twice)

        dims = [0, *range(2, x.dim())]  # every dim but the channels
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])  # (2C + 1,)
        total = all_reduce(local)  # (2C + 1,) summed over the ranks
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def globalise_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm of ``module`` by a ``GlobalBatchNorm`` with the same state (the
    state dict keys stay the same, so checkpoints and generator.pt do not change)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, GlobalBatchNorm
        ):
            new = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            new.to(next(child.buffers(), torch.empty(0)).device)
            setattr(module, name, new)
        else:
            globalise_batchnorm(child)
    return module
