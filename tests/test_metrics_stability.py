"""Tests of the seed-stability metrics at the end of sae_ortho.metrics: match_fraction and histogram_peaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_ortho import metrics
from sae_ortho.data.toy import random_directions


def loop_match_fraction(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """Reference: for every row of a, the best signed cosine with any row of b, by explicit loops."""
    hits = 0
    for u in a:
        best = max(float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)) for v in b)
        hits += best >= threshold
    return hits / len(a)


# ---------------------------------------------------------------------------------- match_fraction


def test_match_fraction_identical_and_scaled_copies():
    a = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    assert metrics.match_fraction(a, a) == 1.0
    assert metrics.match_fraction(a, 3.0 * a, threshold=0.99) == 1.0  # row norms do not matter


def test_match_fraction_orthogonal_is_zero():
    eye = torch.eye(6)
    assert metrics.match_fraction(eye[:3], eye[3:]) == 0.0
    assert metrics.match_fraction(eye[3:], eye[:3], threshold=1e-9) == 0.0  # cos 0 is below any threshold > 0


def test_match_fraction_permuted_with_sign_flips():
    a = random_directions(10, 16, orthogonal=True, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    signs = torch.ones(10)
    signs[[0, 3, 4, 9]] = -1.0  # four rows of b point the opposite way: no match (codes are >= 0)
    b = a[perm] * signs[:, None]
    flipped = set(perm[[0, 3, 4, 9]].tolist())  # rows of a whose only partner in b is flipped
    assert metrics.match_fraction(a, b) == pytest.approx(0.6)
    assert metrics.match_fraction(b, a) == pytest.approx(0.6)
    assert metrics.match_fraction(a, b[[i for i in range(10) if i not in (0, 3, 4, 9)]]) == pytest.approx(0.6)
    # which rows match: exactly those whose partner was not flipped
    single = [metrics.match_fraction(a[i : i + 1], b) for i in range(10)]
    assert single == [0.0 if i in flipped else 1.0 for i in range(10)]


@pytest.mark.parametrize("threshold", [0.4, 0.5, 0.6, 0.7])
def test_match_fraction_against_loop(threshold):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 12, generator=g)
    b = torch.randn(25, 12, generator=g)
    want = loop_match_fraction(a.double().numpy(), b.double().numpy(), threshold)
    assert 0.0 < want < 1.0  # the case is not trivial
    assert metrics.match_fraction(a, b, threshold) == pytest.approx(want)
    assert metrics.match_fraction(b, a, threshold) == pytest.approx(
        loop_match_fraction(b.double().numpy(), a.double().numpy(), threshold)
    )


def test_match_fraction_threshold_edge():
    # cos([1, 0], [3, 4]) = 0.6 exactly (in float64): >= threshold counts as a match
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert metrics.match_fraction(a, b, threshold=0.6) == 1.0
    assert metrics.match_fraction(a, b, threshold=0.6 + 1e-9) == 0.0


def test_match_fraction_threshold_one_matches_exact_copies():
    a = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert metrics.match_fraction(a, a, threshold=1.0) == 1.0


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.01, float("nan")])
def test_match_fraction_bad_threshold(threshold):
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
        metrics.match_fraction(torch.eye(3), torch.eye(3), threshold)


def test_match_fraction_bad_shapes():
    with pytest.raises(ValueError, match="row dimensions differ: 3 vs 4"):
        metrics.match_fraction(torch.eye(3), torch.eye(4))
    with pytest.raises(ValueError, match="b must be a non-empty 2-D"):
        metrics.match_fraction(torch.eye(3), torch.zeros(0, 3))


# --------------------------------------------------------------------------------- histogram_peaks


def test_histogram_peaks_bimodal():
    rng = np.random.default_rng(0)
    values = np.clip(np.concatenate([rng.normal(0.2, 0.03, 2000), rng.normal(0.8, 0.03, 1000)]), 0, 1)
    peaks = metrics.histogram_peaks(values)
    assert len(peaks) == 2
    assert peaks[0] == pytest.approx(0.2, abs=0.03) and peaks[1] == pytest.approx(0.8, abs=0.03)
    # every peak is a bin centre of the 50 bins on [0, 1]
    assert all(abs((p - 0.01) / 0.02 - round((p - 0.01) / 0.02)) < 1e-9 for p in peaks)


def test_histogram_peaks_at_edge_bins():
    rng = np.random.default_rng(1)
    assert metrics.histogram_peaks(rng.uniform(0.985, 1.0, 100)) == [pytest.approx(0.99)]
    assert metrics.histogram_peaks(rng.uniform(0.0, 0.015, 100)) == [pytest.approx(0.01)]
    assert metrics.histogram_peaks(np.ones(7)) == [pytest.approx(0.99)]  # 1.0 is in the last bin
    both = np.concatenate([np.full(30, 0.005), np.full(20, 0.995), np.full(5, 0.51)])
    assert metrics.histogram_peaks(both) == [pytest.approx(0.01), pytest.approx(0.51), pytest.approx(0.99)]
    assert metrics.histogram_peaks(both, bins=10) == [pytest.approx(0.05), pytest.approx(0.55), pytest.approx(0.95)]


def test_histogram_peaks_prominence():
    # masses 0.9 at 0.01 and 0.1 at 0.51 (bins of width 0.02): the small peak is kept only below 0.1
    values = np.concatenate([np.full(90, 0.01), np.full(10, 0.51)])
    assert metrics.histogram_peaks(values, prominence=0.05) == [pytest.approx(0.01), pytest.approx(0.51)]
    assert metrics.histogram_peaks(values, prominence=0.2) == [pytest.approx(0.01)]


def test_histogram_peaks_keeps_cosines_rounded_above_one():
    just_above = np.nextafter(np.float32(1.0), np.float32(2.0))
    values = np.concatenate([np.full(50, 0.3, dtype=np.float32), np.full(50, just_above)])
    assert metrics.histogram_peaks(values) == [pytest.approx(0.31), pytest.approx(0.99)]


@pytest.mark.parametrize("values", [np.array([]), np.array([0.2, np.nan]), np.array([0.5, np.inf])])
def test_histogram_peaks_bad_values(values):
    with pytest.raises(ValueError, match="values must be a non-empty array of finite numbers"):
        metrics.histogram_peaks(values)


@pytest.mark.parametrize("bins", [2, 0, 10.0, "50"])
def test_histogram_peaks_bad_bins(bins):
    with pytest.raises(ValueError, match="bins must be an int >= 3"):
        metrics.histogram_peaks(np.array([0.5]), bins=bins)
