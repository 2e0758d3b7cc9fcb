"""Tests of sae_ortho.core.reproducibility.setup."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sae_ortho.core.reproducibility import setup


def _draw():
    return random.random(), float(np.random.rand()), torch.randn(3)


def test_setup_seeds_every_generator():
    g = setup(5, threads=1)
    a = _draw()
    ga = torch.randn(2, generator=g)
    g = setup(5, threads=1)
    b = _draw()
    gb = torch.randn(2, generator=g)
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2]) and torch.equal(ga, gb)
    setup(6, threads=1)
    c = _draw()
    assert a[0] != c[0] and a[1] != c[1] and not torch.equal(a[2], c[2])


def test_setup_threads():
    setup(0, threads=2)
    assert torch.get_num_threads() == 2
    setup(0, threads=1)
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"threads": 0}, "threads"),
        ({"seed": True}, r"^seed must be an int >= 0, got True$"),  # used to fail inside torch.manual_seed
        ({"threads": True}, r"^threads must be a positive int, got True$"),
    ],
)
def test_setup_bad_args(kw, match):
    with pytest.raises(ValueError, match=match):
        setup(**{"seed": 0, "threads": 1, **kw})
