"""Training throughput: ganforge's training step vs the standard DCGAN training loop.

    python -m benchmarks.train_throughput [--mnist ../shared/data/mnist] [--size 64]
        [--batches 64 128 256 512] [--steps 50] [--equal-time 120] [--device auto]

Both sides train the same DCGAN (at 64 px: latent 100, 64 base filters, the classic
architecture, built from ganforge.models.dcgan) on the same data (the real MNIST test
set, resized to ``--size`` px):

1. reference: written the way the standard PyTorch DCGAN example trains: a torch
   DataLoader over PIL images with torchvision transforms (Resize, ToTensor, Normalize),
   Sigmoid + BCELoss, fp32, Adam(2e-4, 0.5), a ``.item()`` log every step;
2. ganforge: ``ganforge.engine.trainer.Trainer.step``, the code ``ganforge train`` runs, with the
   fast-path params on CUDA (dataset resident on the GPU as uint8, bf16 autocast,
   channels_last, fused Adam, losses read every ``train.log_every`` steps) and the same
   objective (non-saturating BCE, R1 off).

It prints images/s (real images the discriminator sees per second) for each at every
batch size, and the ratio. ``--equal-time S`` then trains each for S seconds at batch 128
and reports the domain FID (evaluate's metric: 10,000 generated vs the real images in the
feature network's space) of each: speed that costs quality does not count.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ganforge.config import parse_params
from ganforge.core.dataset import load_split
from ganforge.core.device import resolve_device
from ganforge.engine.trainer import Trainer
from ganforge.metrics.features import DomainFeatures
from ganforge.metrics.scores import fid
from ganforge.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganforge.stages.evaluate import generate
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- the reference loop


class PILDigits(torch.utils.data.Dataset):
    """MNIST digits as PIL images, through torchvision transforms, as the example's ImageFolder does."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        import torchvision.transforms as T

        self.images = images  # uint8 (N, 1, 28, 28)
        self.tf = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize((0.5,), (0.5,))])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.tf(Image.fromarray(self.images[i, 0])), 0


class Reference:
    def __init__(
        self,
        images: np.ndarray,
        size: int,
        batch: int,
        latent: int,
        width: int,
        device,
        workers: int,
    ):
        torch.manual_seed(0)
        self.device, self.latent = device, latent
        self.G = DCGANGenerator(latent, size, 1, width).to(device)
        self.D = nn.Sequential(DCGANDiscriminator(size, 1, width), nn.Sigmoid()).to(device)
        self.loss = nn.BCELoss()
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.loader = torch.utils.data.DataLoader(
            PILDigits(images, size), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
            persistent_workers=workers > 0,
        )  # fmt: skip
        self.it = iter(self.loader)
        self.log: list[tuple[float, float]] = []

    def step(self) -> None:
        try:
            real, _ = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            real, _ = next(self.it)
        real = real.to(self.device)
        b = real.size(0)
        ones = torch.full((b,), 1.0, device=self.device)
        zeros = torch.full((b,), 0.0, device=self.device)
        self.D.zero_grad()
        err_real = self.loss(self.D(real), ones)
        err_real.backward()
        fake = self.G(torch.randn(b, self.latent, device=self.device))
        err_fake = self.loss(self.D(fake.detach()), zeros)
        err_fake.backward()
        self.opt_d.step()
        self.G.zero_grad()
        err_g = self.loss(self.D(fake), ones)
        err_g.backward()
        self.opt_g.step()
        self.log.append(((err_real + err_fake).item(), err_g.item()))  # the example's per-step log


# --------------------------------------------------------------------------- measurement


def images_per_s(step, batch: int, steps: int, device, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def ganforge_trainer(
    split, size: int, batch: int, latent: int, width: int, device, fast: bool
) -> Trainer:
    cuda = device.type == "cuda"
    params = parse_params(
        {
            "prepare": {"image_size": size},
            "train": {
                "model": "dcgan", "latent_dim": latent, "g_width": width, "d_width": width, "batch_size": batch,
                "r1_gamma": 0.0, "device": str(device), "bf16": fast and cuda, "channels_last": fast and cuda,
                "data_on_device": True, "log_every": 50,
            },
        },
        "benchmark",
    )  # fmt: skip
    return Trainer(params, split.images, split.labels, split.manifest["num_classes"], device)


def ganforge_step(trainer: Trainer, log_every: int = 50):
    """Trainer.step plus what `ganforge train` does around it: losses kept on the device, read every N."""
    pending: list = []

    def step() -> None:
        pending.append(trainer.step())
        if len(pending) == log_every:
            torch.stack([p["d_loss"] for p in pending]).cpu()
            pending.clear()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mnist", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    )
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--latent", type=int, default=100)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    ap.add_argument(
        "--equal-time",
        type=float,
        default=0.0,
        help="seconds of training each for the FID comparison",
    )
    ap.add_argument("--fid-samples", type=int, default=10000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    result: dict = {
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "image_size": args.size,
        "architecture": f"DCGAN latent {args.latent}, width {args.width}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prep = parse_params(
            {"prepare": {"source": "mnist-idx", "path": args.mnist, "image_size": args.size}}
        ).prepare
        prepare(prep, tmp / "data")
        split = load_split(tmp / "data", "train")
        native = prepare(prep.model_copy(update={"image_size": 28}), tmp / "native")
        del native
        native_imgs = load_split(tmp / "native", "train").images  # the reference resizes on the fly

        rows = []
        for b in args.batches:
            ref = Reference(
                native_imgs, args.size, b, args.latent, args.width, device, args.workers
            )
            r_ref = images_per_s(ref.step, b, args.steps, device)
            del ref
            trainer = ganforge_trainer(
                split, args.size, b, args.latent, args.width, device, fast=True
            )
            r_gf = images_per_s(ganforge_step(trainer), b, args.steps, device)
            del trainer
            rows.append(
                {
                    "batch": b,
                    "reference_img_per_s": round(r_ref, 1),
                    "ganforge_img_per_s": round(r_gf, 1),
                    "ratio": round(r_gf / r_ref, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        result["throughput"] = rows
        best = max(rows, key=lambda r: r["ganforge_img_per_s"])
        result["ganforge_best"] = {"batch": best["batch"], "img_per_s": best["ganforge_img_per_s"]}

        if args.equal_time > 0:
            fp = parse_params({"featurenet": {"device": str(device)}})
            train_featurenet(fp, tmp / "data", tmp / "fn")
            features = DomainFeatures(tmp / "fn/featurenet.pt", device, batch=500)
            real = (
                torch.from_numpy(split.images[: args.fid_samples])
                .to(device)
                .float()
                .div_(127.5)
                .sub_(1)
            )
            real_f, _ = features(real)
            eq = {}
            for name in ("reference", "ganforge"):
                if name == "reference":
                    runner = Reference(
                        native_imgs, args.size, 128, args.latent, args.width, device, args.workers
                    )
                    step, G = runner.step, runner.G
                else:
                    trainer = ganforge_trainer(
                        split, args.size, 128, args.latent, args.width, device, fast=True
                    )
                    step, G = ganforge_step(trainer), trainer.ema.module
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < args.equal_time:
                    step()
                    n += 1
                sync(device)
                G.eval()
                fake = generate(G, args.fid_samples, args.latent, None, 500, device, seed=0)
                fake_f, _ = features(fake)
                eq[name] = {
                    "steps": n,
                    "seconds": args.equal_time,
                    "fid": round(fid(real_f.cpu(), fake_f.cpu()), 3),
                }
                print(json.dumps({name: eq[name]}), flush=True)
            result["equal_time"] = eq
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
