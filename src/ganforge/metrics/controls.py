"""Negative controls: trivially bad "generators" that any usable feature space must tell
from real data, and the checks that stop the evaluation when it cannot.

A score is only as good as the feature space it is computed in. A network that has not
learned (one class, a handful of steps, wrong Inception weights) maps everything to nearly
the same point, and then every generator scores at the real-data floor. So before the
evaluate stage publishes a number it scores, against the same real half as the floor:

- ``constant``: every image the real images' mean colour (flat squares);
- ``noise``: uniform noise in [-1, 1];
- ``blurred``: the other real half, Gaussian-blurred (sigma = side / 8 px);
- ``shuffled``: the other real half with its 4x4 grid of tiles shuffled per image
  (local statistics kept, the object destroyed);
- and three the eye barely sees but a pixel-space two-sample test catches 80-100% of the
  time (benchmarks/judge.py), the faults of real generators: ``slight_blur`` (the other
  half mixed half and half with its 3x3 box blur), ``checkerboard`` (a +-0.1 pixel-period
  checkerboard added: transposed-convolution artefacts) and ``hf_noise`` (Gaussian noise of
  sd 0.1 added). A digit classifier's embedding alone scored these 1.2-1.6x its floor.

The feature space is refused (``FeatureSpaceError``) when the floor is not above zero or
any gated control's FID is under ``ratio`` x the floor at the same number of images. The
subtle three are gated from ``SUBTLE_MIN_IMAGES`` images per side: below that FID's own
sampling bias (which grows with dimensions / images) hides them in any space (measured on
two-class 16 px photo patches, 30-135 per side: 1.1-1.3x the floor with or without the
texture statistics), so there they are recorded, not gated, a warning says so, and the
two-sample test is what sees such faults.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ganforge.errors import GanforgeError

COARSE = ("constant", "noise", "blurred", "shuffled")
SUBTLE_CONTROLS = ("slight_blur", "checkerboard", "hf_noise")
CONTROLS = COARSE + SUBTLE_CONTROLS
SUBTLE_MIN_IMAGES = 500  # per side, for the subtle controls to be gated (digits: 808)
SUBTLE = 0.1  # the checkerboard's amplitude and the added noise's sd, in the [-1, 1] range
TILES = 4  # tiles per side for the shuffled control


class FeatureSpaceError(GanforgeError):
    """The feature space cannot tell trivial generators from real data."""


def control_images(name: str, real: Tensor, seed: int) -> Tensor:
    """The control ``name`` made from (or shaped like) ``real`` (N, C, S, S) in [-1, 1]."""
    from torchvision.transforms.functional import gaussian_blur

    g = torch.Generator().manual_seed(seed)
    n, c, s, _ = real.shape
    if name == "constant":
        return real.mean(dim=(0, 2, 3), keepdim=True).expand(n, c, s, s).contiguous()
    if name == "noise":
        return (torch.rand(n, c, s, s, generator=g) * 2 - 1).to(real.device)
    if name == "blurred":
        sigma = s / 8
        return gaussian_blur(real, kernel_size=2 * int(3 * sigma) + 1, sigma=sigma)
    if name == "shuffled":
        t = s // TILES  # (N, C, S, S) -> (N, C, T*T tiles of t x t) -> shuffled -> back
        x = real[:, :, : t * TILES, : t * TILES]
        tiles = x.reshape(n, c, TILES, t, TILES, t).permute(0, 2, 4, 1, 3, 5)
        tiles = tiles.reshape(n, TILES * TILES, c, t, t)
        order = torch.argsort(torch.rand(n, TILES * TILES, generator=g), dim=1).to(real.device)
        tiles = tiles[torch.arange(n, device=real.device)[:, None], order]
        x = tiles.reshape(n, TILES, TILES, c, t, t).permute(0, 3, 1, 4, 2, 5)
        out = real.clone()
        out[:, :, : t * TILES, : t * TILES] = x.reshape(n, c, t * TILES, t * TILES)
        return out
    if name == "slight_blur":
        box = F.avg_pool2d(F.pad(real, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return 0.5 * real + 0.5 * box
    if name == "checkerboard":
        i = torch.arange(s, device=real.device)
        board = ((i[:, None] + i[None]) % 2 * 2 - 1).to(real.dtype)  # (S, S) of +-1
        return (real + SUBTLE * board).clamp(-1, 1)
    if name == "hf_noise":
        noise = torch.randn(real.shape, generator=g).to(real.device, real.dtype)
        return (real + SUBTLE * noise).clamp(-1, 1)
    raise ValueError(f"unknown control {name!r}")


def score_controls(
    extract: Callable[[Tensor], Tensor],
    fid: Callable[[Tensor, Tensor], float],
    half_a: Tensor,
    floor: float,
    other_real: Tensor,
    seed: int,
) -> dict[str, float]:
    """FID of each control against ``half_a`` (n, F) real features, beside ``floor`` (the FID
    of ``half_a`` and the other real half, both n). ``other_real``: the n real images (in
    [-1, 1]) of that other half, from which the blurred and shuffled controls are made;
    ``extract`` maps images to features (n, F) on the CPU."""
    out = {"floor": floor}
    for i, name in enumerate(CONTROLS):
        out[name] = fid(half_a, extract(control_images(name, other_real, seed + i)))
    return out


def gated_controls(n: int) -> tuple[str, ...]:
    """The controls that must pass at ``n`` images per side (see the module docstring)."""
    return CONTROLS if n >= SUBTLE_MIN_IMAGES else COARSE


def check_controls(
    scores: dict[str, float], ratio: float, where: str, gated: tuple[str, ...] = CONTROLS
) -> None:
    """Refuse the feature space unless the floor is > 0 and every ``gated`` control's FID is
    at least ``ratio`` x the floor."""
    floor = scores["floor"]
    hint = f"the scores in it would be meaningless; {where} (evaluate.control_ratio = {ratio:g})"
    if not floor > 0:
        raise FeatureSpaceError(
            "feature space cannot separate real images from each other (real-vs-real FID "
            f"{floor:.3g}): {hint}"
        )
    weakest = min(gated, key=lambda k: scores[k])
    if not scores[weakest] >= ratio * floor:
        shown = ", ".join(f"{k} {scores[k]:.3g}" for k in CONTROLS)
        raise FeatureSpaceError(
            f"feature space cannot separate these sets: the {weakest} negative control scores FID "
            f"{scores[weakest]:.4g}, under {ratio:g} x the real-data floor {floor:.4g} "
            f"({shown}): {hint}"
        )
