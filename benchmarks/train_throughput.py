"""Training throughput: ganforge's training step vs the standard DCGAN training loop, CPU or CUDA.

    python -m benchmarks.train_throughput [--data mnist|digits] [--size 64] [--latent 100]
        [--width 64] [--batches 64 128 256 512] [--steps 50] [--windows 5]
        [--equal-time 120] [--device auto]

    # the CPU figures in RESULTS.md: the default config, and MNIST at 28 px
    python -m benchmarks.train_throughput --device cpu --data digits --size 16 --latent 64 --width 32 --batches 64 --equal-time 120
    python -m benchmarks.train_throughput --device cpu --data mnist --size 28 --latent 64 --width 32 --batches 64 --equal-time 120

Both sides train the same DCGAN (built from ganforge.models.dcgan; at 64 px with latent 100
and width 64 it is the classic architecture) on the same prepared images (``--data``: the
embedded digits, or the real MNIST test set), with the same objective (non-saturating BCE,
R1 off for both):

1. reference: written the way the standard PyTorch DCGAN example trains: a torch
   DataLoader over PIL images with torchvision transforms (Resize, ToTensor, Normalize),
   Sigmoid + BCELoss, fp32, Adam(2e-4, 0.5), a ``.item()`` log every step. ``--workers``
   DataLoader workers: 0 on CPU (faster than 2 on the 2-core machine: the workers compete
   with the step for the cores), 2 on CUDA.
2. ganforge: ``ganforge.engine.trainer.Trainer.step``, the code ``ganforge train`` runs, with
   its default fast path (``auto``: bf16 autocast where the device has it, channels-last,
   fused Adam on CUDA, the uint8 dataset resident on the device) and losses read every
   ``train.log_every`` steps.

In one process, interleaved: after a warm-up, ``--windows`` rounds each time ``--steps``
steps of the reference then of ganforge; each side's best window counts (the least
disturbed by the rest of the machine). Printed: images/s (real images the discriminator
sees per second) per batch size, and the ratio. ``--equal-time S`` then trains each for S
seconds at the first batch size and reports the domain FID (evaluate's metric: generated
vs real images in the feature network's space) of each: speed that costs quality does not
count.
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
from ganforge.core.device import resolve_device, to_unit_range
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
    """Digits as PIL images, through torchvision transforms, as the example's ImageFolder does."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        import torchvision.transforms as T

        self.images = images  # uint8 (N, 1, S, S), the prepared split
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


def timed(step, batch: int, steps: int, device) -> float:
    """images/s of ``steps`` calls of ``step``."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def interleaved(steps_by_name: dict, batch: int, steps: int, windows: int, device) -> dict:
    """Best images/s of each side over ``windows`` interleaved rounds, after a warm-up."""
    for step in steps_by_name.values():
        for _ in range(5):
            step()
    best = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(windows):
        for name, step in steps_by_name.items():
            best[name] = max(best[name], timed(step, batch, steps, device))
    return best


def ganforge_trainer(split, size: int, batch: int, latent: int, width: int, device) -> Trainer:
    params = parse_params(
        {
            "prepare": {"image_size": size},
            "train": {
                "model": "dcgan", "latent_dim": latent, "g_width": width, "d_width": width, "batch_size": batch,
                "r1_gamma": 0.0, "device": str(device), "data_on_device": True, "log_every": 50,
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.machine(),
    ) if Path("/proc/cpuinfo").is_file() else platform.machine()  # fmt: skip
    return f"cpu ({model}, {torch.get_num_threads()} threads)"


def equal_time(args, split, tmp: Path, device) -> dict:
    """Each side trains ``args.equal_time`` seconds; the domain FID of what each would ship."""
    fp = parse_params({"featurenet": {"device": str(device)}})
    train_featurenet(fp, tmp / "data", tmp / "fn")
    features = DomainFeatures(tmp / "fn/featurenet.pt", device, batch=500)
    n_real = min(args.fid_samples, len(split.images))
    real_f, _ = features(to_unit_range(split.images[:n_real], device))
    batch = args.batches[0]
    eq = {}
    for name in ("reference", "ganforge"):
        if name == "reference":
            runner = Reference(
                split.images, args.size, batch, args.latent, args.width, device, args.workers
            )
            step, G = runner.step, runner.G
        else:
            trainer = ganforge_trainer(split, args.size, batch, args.latent, args.width, device)
            step, G = ganforge_step(trainer), trainer.ema.module  # ganforge ships the EMA
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
    return eq  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["mnist", "digits"], default="mnist")
    ap.add_argument(
        "--mnist", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    )
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--latent", type=int, default=100)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--steps", type=int, default=50, help="steps per timed window")
    ap.add_argument("--windows", type=int, default=5, help="interleaved windows; best counts")
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers")
    ap.add_argument("--equal-time", type=float, default=0.0, help="seconds of training each for the FID comparison")  # fmt: skip
    ap.add_argument("--fid-samples", type=int, default=10000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.workers is None:
        args.workers = 2 if device.type == "cuda" else 0
    source = {"source": "digits"} if args.data == "digits" else {"source": "mnist-idx", "path": args.mnist}  # fmt: skip
    result: dict = {
        "benchmark": "train_throughput",
        "data": args.data,
        "torch": torch.__version__,
        "image_size": args.size,
        "architecture": f"DCGAN latent {args.latent}, width {args.width}, R1 off",
        "reference_workers": args.workers,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prep = parse_params({"prepare": {**source, "image_size": args.size}}).prepare
        prepare(prep, tmp / "data")
        split = load_split(tmp / "data", "train")
        rows = []
        for b in args.batches:
            ref = Reference(
                split.images, args.size, b, args.latent, args.width, device, args.workers
            )
            trainer = ganforge_trainer(split, args.size, b, args.latent, args.width, device)
            best = interleaved(
                {"reference": ref.step, "ganforge": ganforge_step(trainer)},
                b,
                args.steps,
                args.windows,
                device,
            )
            rows.append({
                "batch": b, "reference_img_per_s": round(best["reference"], 1),
                "ganforge_img_per_s": round(best["ganforge"], 1), "ratio": round(best["ganforge"] / best["reference"], 2),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            result["fast_path"] = trainer.fast.record()
            del ref, trainer
        result["device"] = device_name(device)
        result["throughput"] = rows
        top = max(rows, key=lambda r: r["ganforge_img_per_s"])
        result["ganforge_best"] = {"batch": top["batch"], "img_per_s": top["ganforge_img_per_s"]}
        if args.equal_time > 0:
            result["equal_time"] = equal_time(args, split, tmp, device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
