"""The latent noise generators are fed, and the truncation trick that trades diversity for
fidelity at generation time. numpy only: ``generate`` and ``serve`` (no torch) and the
evaluate stage (torch) call the same function, so a threshold means the same thing in
onnxruntime and in torch.

Truncation (Brock et al. 2019, BigGAN): every latent component whose magnitude exceeds the
threshold is drawn again, from the same seeded stream, until it lies inside; components
already inside keep their values. The result is the standard normal truncated to
[-t, t], so the generator sees only its most typical inputs: images nearer the modes
(higher precision and density), less variety (lower recall and coverage). ``None`` is no
truncation: the plain standard normal, bit for bit the noise of an untruncated seed.
The ONNX generator takes z, so truncation is applied to z before it and survives export
unchanged.
"""

from __future__ import annotations

import math

import numpy as np

# below this the resampling loop would need hundreds of rounds (P(|z| < 0.05) = 4%) for a
# latent with hardly any variety left; 0.05-1.0 is where the trade-off is measured
MIN_TRUNCATION, MAX_TRUNCATION = 0.05, 10.0
# a bound on the rounds, never reached above MIN_TRUNCATION (each round keeps >= 4% of
# the outliers inside; 2,000 rounds leave a component outside with chance 0.96^2000)
MAX_ROUNDS = 2000


def check_truncation(threshold: float | None, name: str = "truncation") -> str | None:
    """None when ``threshold`` is usable, else one line naming ``name`` and the range."""
    if threshold is None:
        return None
    if not (np.isfinite(threshold) and MIN_TRUNCATION <= threshold <= MAX_TRUNCATION):
        return (
            f"{name}: {threshold} is outside {MIN_TRUNCATION}..{MAX_TRUNCATION} "
            "(leave it out for no truncation)"
        )
    return None


def truncate(z: np.ndarray, threshold: float | None, rng: np.random.Generator) -> np.ndarray:
    """``z`` (standard normal) with every component beyond +-threshold redrawn from ``rng``
    until inside -> a new float32 array of z's shape (z itself when threshold is None)."""
    if threshold is None:
        return z
    problem = check_truncation(threshold)
    if problem:
        raise ValueError(problem)
    z = np.array(z, dtype=np.float32, copy=True)
    outside = np.abs(z) > threshold
    for _ in range(MAX_ROUNDS):
        count = int(outside.sum())
        if not count:
            return z
        z[outside] = rng.standard_normal(count, dtype=np.float32)
        outside = np.abs(z) > threshold
    raise RuntimeError(
        f"truncation {threshold}: components still outside after {MAX_ROUNDS} rounds"
    )


def noise(n: int, latent_dim: int, seed: int, truncation: float | None = None) -> np.ndarray:
    """float32 (n, latent_dim) from ``seed``, truncated at ``truncation`` (None: not): the
    same for the same arguments on every machine."""
    rng = np.random.default_rng(seed)
    return truncate(rng.standard_normal((n, latent_dim), dtype=np.float32), truncation, rng)


def grid_columns(n: int, num_classes: int, conditional: bool) -> int:
    """Columns of a grid of ``n`` samples whose labels cycle 0..K-1 (conditional models):
    a whole number of columns per class, so that each column holds one class, and as near
    a square as that allows (2 classes and 64 samples: 8 columns of 8, not 2 of 32).
    Unconditional: the square's side. Never more columns than samples."""
    side = math.sqrt(n)
    if not conditional:
        return max(1, math.ceil(side - 1e-9))
    return max(1, min(n, num_classes * max(1, round(side / num_classes))))
