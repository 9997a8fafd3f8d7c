"""The truncation trick (core/latent.py): what a threshold does to the noise, the same in
onnxruntime and in torch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ganforge.core.latent import check_truncation, noise, truncate


def test_no_truncation_is_the_plain_seeded_normal():
    plain = np.random.default_rng(7).standard_normal((64, 100), dtype=np.float32)
    assert np.array_equal(noise(64, 100, 7), plain)
    assert np.array_equal(noise(64, 100, 7, None), noise(64, 100, 7))


def test_truncation_redraws_only_the_components_outside_and_keeps_the_rest():
    plain = noise(256, 100, 3)
    cut = noise(256, 100, 3, 0.7)
    assert np.abs(cut).max() <= 0.7 and cut.dtype == np.float32
    inside = np.abs(plain) <= 0.7
    assert np.array_equal(cut[inside], plain[inside])  # the same sample, pulled in
    assert not np.array_equal(cut[~inside], plain[~inside])
    assert np.array_equal(cut, noise(256, 100, 3, 0.7))  # the same seed, the same noise


def test_truncated_noise_is_the_truncated_normal():
    """Redrawing is exact: a Kolmogorov-Smirnov test against the standard normal truncated
    to [-t, t] does not reject it (fixed seeds: the same p every run)."""
    for t in (0.5, 1.0, 2.0):
        sample = noise(200, 100, 11, t).ravel()
        p = stats.kstest(sample, stats.truncnorm(-t, t).cdf).pvalue
        assert p > 0.01, (t, p)
    # and it is not the untruncated normal
    assert stats.kstest(noise(200, 100, 11, 1.0).ravel(), stats.norm.cdf).pvalue < 1e-6


@pytest.mark.parametrize("bad", [0.0, 0.01, -1.0, 11.0, float("nan"), float("inf")])
def test_thresholds_outside_the_range_are_refused_with_one_line(bad):
    problem = check_truncation(bad, "--truncation")
    assert problem and problem.startswith("--truncation: ") and "0.05..10" in problem
    with pytest.raises(ValueError, match="outside"):
        truncate(np.zeros((2, 2), np.float32), bad, np.random.default_rng(0))


def test_the_smallest_threshold_finishes_quickly():
    z = noise(4096, 512, 0, 0.05)  # the most a request can ask for, at the lowest threshold
    assert np.abs(z).max() <= 0.05
