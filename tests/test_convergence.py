"""Convergence gates: loss plateau and decoder movement from initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib import convergence


def test_plateau_of_a_flat_and_a_falling_curve():
    assert convergence.plateau(np.full(100, 3.0)) == pytest.approx(0.0)
    falling = np.linspace(10.0, 1.0, 100)  # still dropping fast at the end
    drop = convergence.plateau(falling)
    before, end = falling[70:80].mean(), falling[90:].mean()
    assert drop == pytest.approx((before - end) / end)
    assert drop > 0.5


def test_plateau_per_stacked_model_and_noise_is_averaged():
    rng = np.random.default_rng(0)
    flat = 5 + 0.1 * rng.standard_normal(200)
    stack = np.stack([flat, np.linspace(5, 2, 200)], axis=1)
    d = convergence.plateau(stack)
    assert d.shape == (2,)
    assert abs(d[0]) < 0.02 and d[1] > 0.1


def test_plateau_bad_input():
    with pytest.raises(ValueError, match="tail"):
        convergence.plateau(np.ones(100), tail=1.5)
    with pytest.raises(ValueError, match="records"):
        convergence.plateau(np.ones(2))


def test_moved_from_init():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(50, 16, generator=g)
    same = convergence.moved_from_init(w0, 3 * w0)  # rescaled rows have not moved
    assert same.mean_cos == pytest.approx(1.0) and same.near_init == 1.0
    other = convergence.moved_from_init(w0, torch.randn(50, 16, generator=g))
    assert abs(other.mean_cos) < 0.2 and other.near_init == 0.0
    half = w0.clone()
    half[:25] = torch.randn(25, 16, generator=g)
    assert convergence.moved_from_init(w0, half).near_init == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ValueError, match="shape"):
        convergence.moved_from_init(w0, w0[:10])
