"""Tests of sae_ortho.analysis.decompose on cases with known answers, and against a brute-force scipy NNLS."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from sae_ortho.analysis.decompose import (
    Decomposition,
    combination_fraction,
    decompose,
    decompose_rows,
    is_combination,
    precision_recall,
)


def _orthonormal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.randn(d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(g)
    return q.T.contiguous()


def _random(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- decompose: known answers --------------------------------------------------------------------


def test_exact_pair_is_found_with_equal_shares():
    D = _random(30, 16, seed=1)
    a, b = D[4] / D[4].norm(), D[11] / D[11].norm()
    dec = decompose(2.0 * (a + b), D, max_terms=3)
    # max_terms=3 allows a third row; the exact two-row fit must still be the one reported
    assert dec.support == (4, 11)
    assert dec.cos == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(dec.shares, [0.5, 0.5], atol=1e-9)
    assert dec.single_cos < 0.95
    assert is_combination(dec)


def test_exact_triple_needs_three_terms():
    D = _orthonormal(10, 16, seed=2)
    t = D[1] + 0.8 * D[5] + 0.6 * D[7]
    dec3 = decompose(t, D, max_terms=3)
    assert dec3.support == (1, 5, 7)
    assert dec3.cos == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(dec3.coef / dec3.coef[0], [1.0, 0.8, 0.6], atol=1e-9)
    dec2 = decompose(t, D, max_terms=2)
    assert dec2.support == (1, 5)
    assert dec2.cos == pytest.approx(math.sqrt(1 + 0.64) / math.sqrt(1 + 0.64 + 0.36), abs=1e-9)
    assert is_combination(dec3)


def test_atom_in_dictionary_is_not_a_combination():
    D = _random(30, 16, seed=3)
    dec = decompose(D[7], D)
    assert dec.support == (7,)
    assert dec.cos == pytest.approx(1.0, abs=1e-12)
    assert dec.single_cos == pytest.approx(1.0, abs=1e-12)
    assert not is_combination(dec)


def test_near_duplicate_fails_the_margin():
    # target = a + 0.15 b: a two-row fit is exact, but a alone already has cos 0.989
    D = _orthonormal(8, 16, seed=4)
    dec = decompose(D[2] + 0.15 * D[6], D)
    assert dec.support == (2, 6)
    assert dec.cos == pytest.approx(1.0, abs=1e-12)
    assert dec.cos - dec.single_cos < 0.05
    assert not is_combination(dec)  # margin (and min_share) reject it
    assert not is_combination(dec, margin=0.0)  # b carries 0.13 < min_share of the mass
    assert is_combination(dec, margin=0.0, min_share=0.1)


def test_unrelated_direction_is_not_a_combination():
    D = _random(40, 64, seed=5)
    dec = decompose(_random(1, 64, seed=6)[0], D)
    assert dec.cos < 0.9
    assert not is_combination(dec)


def test_excluded_rows_are_never_used():
    D = _random(20, 16, seed=7)
    t = D[3] + D[9]
    dec = decompose(t, D, exclude=[3])
    assert 3 not in dec.support
    assert dec.single_cos < 0.99
    # exclude_self: a dictionary containing a sum of two of its rows
    W = D.clone()
    W[5] = D[1] / D[1].norm() + D[2] / D[2].norm()
    decs = decompose_rows(W, W, exclude_self=True)
    for i, dec in enumerate(decs):
        assert i not in dec.support
    assert decs[5].support == (1, 2) and is_combination(decs[5])
    # without exclusion each row explains itself
    assert all(d.support == (i,) for i, d in enumerate(decompose_rows(W, W)))


def test_negative_combinations_are_not_found():
    D = _orthonormal(6, 8, seed=8)
    dec = decompose(D[0] - D[1], D)
    assert dec.support == (0,)
    assert (dec.coef > 0).all()
    assert dec.cos == pytest.approx(1 / math.sqrt(2), abs=1e-9)
    assert not is_combination(dec)


def test_no_positive_row_gives_an_empty_decomposition():
    D = _orthonormal(4, 8, seed=9)
    dec = decompose(-D.sum(0), D)  # every row points away from the target
    assert dec.support == () and dec.coef.shape == (0,) and dec.cos == 0.0
    assert dec.single_cos == pytest.approx(-0.5, abs=1e-12)
    assert not is_combination(dec)


def test_scale_and_dtype_invariance():
    D = _random(25, 12, seed=10)
    t = D[0] + 2 * D[3] + D[8]
    ref = decompose(t, D)
    scaled = decompose(5 * t.float(), D.float() * torch.linspace(0.1, 10, 25)[:, None])
    assert scaled.support == ref.support
    assert scaled.cos == pytest.approx(ref.cos, abs=1e-6)


def _brute_force(target: np.ndarray, D: np.ndarray, cand: list[int], max_terms: int) -> float:
    """Best cosine of a non-negative fit over every subset of cand, by scipy NNLS."""
    t = target / np.linalg.norm(target)
    Dn = D / np.linalg.norm(D, axis=1, keepdims=True)
    best = 0.0
    for k in range(1, max_terms + 1):
        for s in combinations(cand, k):
            coef, _ = nnls(Dn[list(s)].T, t)
            fit = coef @ Dn[list(s)]
            if np.linalg.norm(fit) > 0:
                best = max(best, float(fit @ t / np.linalg.norm(fit)))
    return best


@pytest.mark.parametrize("max_terms", [1, 2, 3])
def test_matches_brute_force_nnls(max_terms):
    # low dimension, so non-negativity binds and the best subsets are not the obvious ones
    D = _random(12, 4, seed=11)
    targets = _random(25, 4, seed=12)
    decs = decompose_rows(targets, D, max_terms=max_terms, n_candidates=12)
    for t, dec in zip(targets.numpy(), decs):
        assert len(dec.support) <= max_terms
        assert dec.cos == pytest.approx(_brute_force(t, D.numpy(), list(range(12)), max_terms), abs=1e-9)
        fit = dec.coef @ (D[list(dec.support)] / D[list(dec.support)].norm(dim=1, keepdim=True)).numpy()
        if dec.support:
            assert dec.cos == pytest.approx(fit @ t / np.linalg.norm(fit) / np.linalg.norm(t), abs=1e-12)


def test_candidates_are_the_most_aligned_rows():
    D = _random(12, 4, seed=13)
    t = _random(1, 4, seed=14)[0]
    cos = (D / D.norm(dim=1, keepdim=True)) @ (t / t.norm())
    cand = torch.argsort(cos, descending=True)[:5].tolist()
    dec = decompose(t, D, n_candidates=5)
    assert set(dec.support) <= set(cand)
    assert dec.cos == pytest.approx(_brute_force(t.numpy(), D.numpy(), cand, 3), abs=1e-9)
    assert dec.single_cos == pytest.approx(float(cos.max()), abs=1e-12)


# --- combination_fraction ------------------------------------------------------------------------


def _dictionary_with_planted_sums(n: int, d: int, n_sums: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Random rows, the last n_sums replaced by noisy sums of 2-3 of the others."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = W / W.norm(dim=1, keepdim=True)
    base = n - n_sums
    for i in range(base, n):
        parts = torch.randperm(base, generator=g)[: 2 + i % 2]
        s = W[parts].sum(0)
        W[i] = s / s.norm() + 0.05 * torch.randn(d, generator=g, dtype=torch.float64) / math.sqrt(d)
    truth = np.arange(n) >= base
    return W, truth


def test_combination_fraction_finds_planted_sums():
    W, truth = _dictionary_with_planted_sums(200, 64, 20, seed=15)
    frac, mask = combination_fraction(W)
    np.testing.assert_array_equal(mask, truth)
    assert frac == pytest.approx(20 / 200)
    # against a reference dictionary: the base rows (the sums are not in it)
    frac_ref, mask_ref = combination_fraction(W, reference=W[:180])
    np.testing.assert_array_equal(mask_ref, truth)
    assert frac_ref == pytest.approx(0.1)


def test_combination_fraction_at_lm_scale():
    # the Q9 use: n ~ 2048 latents, d ~ 576
    W = torch.randn(2048, 576, generator=torch.Generator().manual_seed(16))
    frac, mask = combination_fraction(W)
    assert mask.shape == (2048,) and mask.dtype == bool
    assert frac == 0.0  # random directions in 576 dims are not combinations of each other


# --- precision_recall ----------------------------------------------------------------------------


def test_precision_recall_arithmetic():
    pred = np.array([True, True, True, False, False, False])
    truth = np.array([True, True, False, True, False, False])
    p, r = precision_recall(pred, truth)
    assert p == pytest.approx(2 / 3) and r == pytest.approx(2 / 3)
    assert precision_recall(np.array([1, 0, 0]), np.array([1, 1, 0])) == (1.0, 0.5)


def test_precision_recall_undefined_cases_are_nan():
    p, r = precision_recall(np.zeros(4, bool), np.array([True, False, False, False]))
    assert math.isnan(p) and r == 0.0
    p, r = precision_recall(np.array([True, False]), np.zeros(2, bool))
    assert p == 0.0 and math.isnan(r)
    p, r = precision_recall(np.zeros(0, bool), np.zeros(0, bool))
    assert math.isnan(p) and math.isnan(r)


def test_precision_recall_errors():
    with pytest.raises(ValueError, match="same shape"):
        precision_recall(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="predicted must be boolean"):
        precision_recall(np.array([0.5, 1.0]), np.zeros(2, bool))
    with pytest.raises(ValueError, match="truth must be boolean"):
        precision_recall(np.zeros(2, bool), np.array([2, 0]))


# --- errors --------------------------------------------------------------------------------------


def test_input_errors():
    D = _random(5, 8)
    t = D[0]
    with pytest.raises(ValueError, match="dictionary must be a non-empty"):
        decompose(t, torch.zeros(0, 8))
    with pytest.raises(ValueError, match="target must be a non-empty 1-D"):
        decompose(D, D)
    with pytest.raises(ValueError, match="same d"):
        decompose(t, _random(5, 9))
    with pytest.raises(ValueError, match="dictionary has zero rows"):
        decompose(t, torch.cat([D, torch.zeros(1, 8, dtype=D.dtype)]))
    with pytest.raises(ValueError, match="target has zero rows"):
        decompose(torch.zeros(8), D)
    with pytest.raises(ValueError, match="target contains non-finite"):
        decompose(torch.full((8,), math.nan), D)
    bad = D.clone()
    bad[2, 3] = math.inf
    with pytest.raises(ValueError, match="dictionary contains non-finite"):
        decompose(t, bad)
    with pytest.raises(ValueError, match="rows contains non-finite"):
        decompose_rows(bad, D)


@pytest.mark.parametrize("max_terms", [0, -1, 1.5, True])
def test_bad_max_terms(max_terms):
    with pytest.raises(ValueError, match="max_terms must be a positive int"):
        decompose(_random(1, 8)[0], _random(5, 8), max_terms=max_terms)


def test_bad_search_and_exclusion_arguments():
    D = _random(5, 8)
    with pytest.raises(ValueError, match="n_candidates must be a positive int"):
        decompose(D[0], D, n_candidates=0)
    with pytest.raises(ValueError, match=r"exclude must hold row indices in \[0, 5\)"):
        decompose(D[0], D, exclude=[5])
    with pytest.raises(ValueError, match="no dictionary rows are left"):
        decompose(D[0], D, exclude=range(5))
    with pytest.raises(ValueError, match="no dictionary rows are left"):
        decompose_rows(D[:1], D[:1], exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self needs"):
        decompose_rows(D, D[:3], exclude_self=True)


def test_bad_is_combination_thresholds():
    dec = Decomposition((0, 1), np.array([0.5, 0.5]), 1.0, 0.7)
    for kwargs, msg in (
        ({"fit_tol": 0.0}, "fit_tol"),
        ({"fit_tol": 1.5}, "fit_tol"),
        ({"margin": -0.1}, "margin"),
        ({"margin": math.nan}, "margin"),
        ({"min_share": 0.6}, "min_share"),
    ):
        with pytest.raises(ValueError, match=msg):
            is_combination(dec, **kwargs)
