"""Tests of sae_ortho.analysis.convergence (gates) and the one-to-one shared fraction of sae_ortho.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_ortho import metrics
from sae_ortho.analysis import convergence as cv


def test_near_init_fraction_counts_rows_that_did_not_move():
    g = torch.Generator().manual_seed(0)
    w0 = cv.random_unit_rows(100, 32, seed=1)
    moved = torch.randn(100, 32, generator=g)
    w = torch.cat([w0[:30] * 3.0, moved[30:]])  # 30 rows kept (any norm), 70 replaced
    assert cv.near_init_fraction(w, w0) == pytest.approx(0.3)
    assert cv.near_init_fraction(w0, w0) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        cv.near_init_fraction(w[:10], w0)


def test_tail_change_and_its_refusal_with_too_few_records():
    steps = np.arange(1, 101)
    flat = np.ones(100)
    assert cv.tail_change(steps, flat) == 0.0
    falling = np.linspace(2.0, 1.0, 100)  # over the last 20 records: from ~1.19 to ~1.0
    change = cv.tail_change(steps, falling)
    assert -0.2 < change < -0.1
    assert cv.tail_change(steps[:4], flat[:4]) is None  # < 6 records in the tail
    assert cv.tail_change(steps, falling, relative=False) == pytest.approx(
        falling[-6:].mean() - falling[80:86].mean())


def test_training_gates_pass_fail_and_not_computable():
    w0 = cv.random_unit_rows(50, 16, seed=0)
    w = cv.random_unit_rows(50, 16, seed=1)
    steps = np.arange(10, 1010, 10)
    hist = {"step": steps, "loss": np.full(100, 2.0), "l0": np.linspace(60, 30, 100), "dead": np.zeros(100)}
    gates = {g.name: g for g in cv.training_gates(hist, w, w0)}
    assert gates["near-init fraction"].passed
    assert gates["loss change, last 20%"].passed and gates["loss change, last 20%"].value == 0.0
    assert not gates["L0 change, last 20%"].passed  # still falling by ~10% over the tail: not stable
    assert gates["dead change, last 20%"].passed
    stuck = {g.name: g for g in cv.training_gates(hist, w0, w0)}
    assert stuck["near-init fraction"].passed is False
    short = {g.name: g for g in cv.training_gates({"step": steps[:3], "loss": np.ones(3)}, w, w0)}
    assert short["loss change, last 20%"].passed is None
    assert "fewer than" in short["loss change, last 20%"].note
    assert short["L0 change, last 20%"].passed is None and "no 'l0'" in short["L0 change, last 20%"].note
    table = cv.gate_table({"ok": list(gates.values()), "short": list(short.values())})
    assert table.loc["ok", "all_pass"] in (False,)
    assert table.loc["short", "all_pass"] is None
    assert "not computable" in str(short["loss change, last 20%"])


def test_match_flattening():
    g = cv.match_flattening([1e5, 2e5, 3e5, 4e5], [0.1, 0.3, 0.35, 0.36])
    assert g.passed and g.value == pytest.approx(0.01)
    rising = cv.match_flattening([1e5, 2e5, 3e5, 4e5], [0.1, 0.2, 0.3, 0.4])
    assert rising.passed is False
    assert cv.match_flattening([4e5], [0.3]).passed is None
    with pytest.raises(ValueError, match="increase"):
        cv.match_flattening([2, 1], [0.1, 0.2])


def test_stacked_history_selects_the_model():
    w0 = cv.random_unit_rows(20, 8, seed=0)
    steps = np.arange(1, 101)
    loss = np.stack([np.ones(100), np.linspace(2, 1, 100)], axis=1)
    hist = {"step": steps, "loss": loss}
    assert cv.training_gates(hist, w0, w0, model=0)[1].passed
    assert cv.training_gates(hist, w0, w0, model=1)[1].passed is False


def test_shared_fraction_one_to_one():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 16, generator=g)
    perm = torch.randperm(40, generator=g)
    b = a[perm].clone()
    assert metrics.shared_fraction(a, b) == 1.0
    assert metrics.shared_fraction(a, b, a, b) == 1.0
    # duplicating one row of b: many-to-one match still finds it, one-to-one cannot share it twice
    dup = torch.cat([a[:1], a[:1], torch.randn(38, 16, generator=g)])
    assert metrics.match_fraction(dup, a) == pytest.approx(2 / 40)
    assert metrics.shared_fraction(dup, a) == pytest.approx(1 / 40)
    # the encoder must agree too: a pair whose encoders disagree is not shared
    enc_b = b.clone()
    enc_b[:10] = torch.randn(10, 16, generator=g)
    assert metrics.shared_fraction(a, b, a, enc_b) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both encoders"):
        metrics.shared_fraction(a, b, a, None)
    # random dictionaries share (almost) nothing
    ra, rb = cv.random_unit_rows(200, 64, 1), cv.random_unit_rows(200, 64, 2)
    assert metrics.shared_fraction(ra, rb) < 0.02
