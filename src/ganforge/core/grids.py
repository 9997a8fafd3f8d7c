"""Sample grids as PNG (torchvision's make_grid/save_image), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ganforge.core.files import atomic_path
from ganforge.core.latent import grid_columns, truncate


def save_grid(images: Tensor, path: str | Path, nrow: int, min_tile: int = 48) -> None:
    """PNG grid of (N, C, H, W) images in [-1, 1]; tiles smaller than ``min_tile`` px are
    enlarged by an integer factor (nearest neighbour: pixels stay sharp and honest)."""
    from torchvision.utils import save_image

    images = images.detach().float().cpu()
    factor = max(1, -(-min_tile // images.shape[-1]))
    if factor > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")
    with atomic_path(path) as tmp:
        save_image(
            images, tmp, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2, format="PNG"
        )


def fixed_grid_inputs(
    n: int, latent_dim: int, num_classes: int, conditional: bool, seed: int
) -> tuple[Tensor, Tensor | None, int]:
    """Noise (and labels) for sample grids, the same every run with the same seed
    -> (z, labels, nrow).

    Conditional: labels cycle 0..K-1 and ``n`` is rounded up to whole rows of
    ``grid_columns`` (a whole number of columns per class), so each column is one class.
    With more classes than the square's side, rows are added up to half the columns (at
    most 4x ``n`` samples): 16 classes and 64 samples give 16 x 8, not 16 x 4.
    """
    nrow = grid_columns(n, num_classes, conditional)
    if conditional:
        rows = max(-(-n // nrow), min(-(-nrow // 2), -(-4 * n // nrow)))
        n = rows * nrow
    g = torch.Generator().manual_seed(seed + 7919)
    z = torch.randn(n, latent_dim, generator=g)
    labels = torch.arange(n) % num_classes if conditional else None
    return z, labels, nrow


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between latent batches a, b (N, D) at fractions t (T,) -> (N, T, D).

    Gaussian latents concentrate near a sphere; a straight line between two of them passes
    through the low-norm interior the generator never saw, slerp stays on the shell.
    """
    a_n, b_n = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None, None]  # (N, 1, 1)
    t = t[None, :, None]  # (1, T, 1)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a[:, None] + (torch.sin(t * omega) / so) * b[:, None]


def plot_curves(
    history: list[dict[str, float]], fid_rows: list[dict[str, float]], path: str | Path
) -> bool:
    """Loss curves (and FID per sample step) as a PNG that renders offline; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not history:
        return False
    panels = 2 if fid_rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in history]
    window = max(1, len(history) // 100)  # moving average: raw per-step losses are noise
    for key in ("d_loss", "g_loss"):
        values = torch.tensor([r[key] for r in history], dtype=torch.float64)
        smooth = values.unfold(0, window, 1).mean(1) if len(values) >= window else values
        ax.plot(steps[window - 1 :], smooth.tolist(), label=key)
    ax.set_xlabel("step")
    ax.set_title(f"losses (moving average of {window})")
    ax.legend()
    if fid_rows:
        ax = axes[0][1]
        ax.plot([r["step"] for r in fid_rows], [r["fid"] for r in fid_rows], marker="o")
        ax.set_xlabel("step")
        ax.set_title("FID of EMA samples (feature network)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


@torch.no_grad()
def write_reports(
    G: torch.nn.Module,
    latent: int,
    num_classes: int,
    conditional: bool,
    seed: int,
    steps: int,
    out: Path,
    device: torch.device,
    truncation: float | None = None,
) -> None:
    """The evaluate stage's pictures in ``out``: samples.png (64 from fixed noise),
    interpolation.png (slerp between 6 latent pairs in ``steps`` steps) and, for conditional
    models, per_class.png (a row of 10 per class); the noise truncated at ``truncation``
    (``core.latent``; None: not), as the evaluation's scores are."""
    rng = np.random.default_rng(seed + 17)

    def cut(z: Tensor) -> Tensor:
        return torch.from_numpy(truncate(z.numpy(), truncation, rng))

    def run(z: Tensor, y: Tensor | None) -> Tensor:
        return G(z.to(device), y.to(device) if y is not None else None)

    z, y, nrow = fixed_grid_inputs(64, latent, num_classes, conditional, seed)
    save_grid(run(cut(z), y), out / "samples.png", nrow)
    pairs = 6
    gz = torch.Generator().manual_seed(seed + 11)
    a, b = torch.randn(pairs, latent, generator=gz), torch.randn(pairs, latent, generator=gz)
    a, b = cut(a), cut(b)  # the ends truncated, the path between them left smooth
    path = slerp(a, b, torch.linspace(0, 1, steps)).reshape(-1, latent)
    y_int = (torch.arange(pairs) % num_classes).repeat_interleave(steps) if conditional else None
    save_grid(run(path, y_int), out / "interpolation.png", steps)
    if conditional:
        per_row = 10
        yc = torch.arange(num_classes).repeat_interleave(per_row)
        save_grid(
            run(cut(torch.randn(len(yc), latent, generator=gz)), yc), out / "per_class.png", per_row
        )
