"""Tests of the neighbour-search methods of sae_ortho.ortho (exact, cached, OrtSAE) against brute force.

The reference is written with plain Python loops over rows and torch ops on single vectors, so
autograd through it gives the reference gradient. Everything is float64 and tiny.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_ortho.core.reproducibility import setup
from sae_ortho.ortho import (
    DEFAULT_CHUNK,
    EXACT_METHODS,
    METHODS,
    PENALTY_SHAPES,
    CertifiedCache,
    NeighbourCache,
    OrthoConfig,
    nearest_neighbour_abs_cos,
    nn_abs_cos,
    ortho_penalty,
)

F64 = torch.float64

# --- brute-force reference ----------------------------------------------------------------------


def _abs_cos(a, b):
    return torch.abs(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))


def ref_nn(W, rows=None, tie_tol=1e-6, reduction="nearest", tie_mode="mean", frozen=None):
    """Per requested row i: |cos| to every j != i, then the max (tie_mode "first"), the mean over
    the j within tie_tol of the max ("mean"), or the mean over all j ("mean_all").

    ``frozen[j]`` detaches row j when it acts as a neighbour. W: [n, d] or [M, n, d] (per model).
    """
    if W.ndim == 3:
        return torch.stack(
            [
                ref_nn(W[m], rows, tie_tol, reduction, tie_mode, None if frozen is None else frozen[m])
                for m in range(W.shape[0])
            ]
        )
    n = W.shape[0]
    rows = list(range(n)) if rows is None else [int(r) for r in rows]
    out = []
    for i in rows:
        vals = []
        for j in range(n):
            if j != i:
                wj = W[j].detach() if frozen is not None and bool(frozen[j]) else W[j]
                vals.append(_abs_cos(W[i], wj))
        if reduction == "mean_all":
            out.append(sum(vals) / len(vals))
            continue
        best = max(float(v.detach()) for v in vals)
        if tie_mode == "first":
            out.append(max(vals, key=lambda v: float(v.detach())))
            continue
        tied = [v for v in vals if float(v.detach()) >= best - tie_tol]
        out.append(sum(tied) / len(tied))
    return torch.stack(out) if out else W.new_zeros(0)


def _loss(vals):
    """A scalar whose gradient depends on every value and its position."""
    weights = torch.arange(1, vals.shape[-1] + 1, dtype=vals.dtype)
    return (vals.square() * weights).sum()


def _grad(fn, W):
    W = W.detach().clone().requires_grad_(True)
    _loss(fn(W)).backward()
    return W.grad


def _assert_matches(fn, ref, W, atol_v=1e-12, atol_g=1e-10):
    """Value and gradient of fn(W) equal those of ref(W)."""
    torch.testing.assert_close(fn(W), ref(W), rtol=0, atol=atol_v)
    torch.testing.assert_close(_grad(fn, W), _grad(ref, W), rtol=0, atol=atol_g)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# (method, chunk): every exact method; chunked with chunk 1, 2, 3 and the default (> n everywhere).
EXACT = [
    ("chunked", 1),
    ("chunked", 2),
    ("chunked", 3),
    ("chunked", DEFAULT_CHUNK),
    ("active", DEFAULT_CHUNK),
    ("naive", DEFAULT_CHUNK),
]
EXACT_IDS = [f"{m}-{c}" for m, c in EXACT]


@pytest.fixture(autouse=True)
def _setup():
    setup(0, threads=1)


def test_exact_list_is_complete():
    assert set(EXACT_METHODS) == {m for m, _ in EXACT}
    assert set(EXACT_METHODS) | {"cached", "ortsae", "certified"} == set(METHODS)


# --- 1. exact methods == brute force --------------------------------------------------------------


def _dup_matrix():
    # rows 0, 1, 4 identical (row 0's nearest: a tie of 1 and 4 at |cos| = 1), rows 2, 3 unrelated
    w = [1.0, 2.0, 0.5]
    return torch.tensor([w, w, [0.0, 1.0, -3.0], [2.0, -1.0, 0.0], w, [0.3, 0.3, 1.0]], dtype=F64)


def _antiparallel_matrix():
    W = _rand(6, 3, seed=21)
    W[4] = -2 * W[1]
    return W


def _tie_matrix():
    # Row 0 = e0 has rows 1 and 2 at exactly |cos| = 1/sqrt(2) (row 2 on the negative side);
    # row 3 is farther away.
    return torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [0.1, -0.3, -1.0]], dtype=F64)


MATRICES = {
    "random_9x4": lambda: _rand(9, 4, seed=1),
    "random_2x3": lambda: _rand(2, 3, seed=2),
    "random_12x20": lambda: _rand(12, 20, seed=3),
    "duplicates": _dup_matrix,
    "antiparallel": _antiparallel_matrix,
    "ties": _tie_matrix,
}


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
@pytest.mark.parametrize("name", sorted(MATRICES))
def test_exact_methods_match_reference(method, chunk, name):
    W = MATRICES[name]()
    _assert_matches(lambda w: nn_abs_cos(w, method=method, chunk=chunk), ref_nn, W)


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
def test_duplicate_and_antiparallel_values(method, chunk):
    got = nn_abs_cos(_dup_matrix(), method=method, chunk=chunk)
    for i in (0, 1, 4):
        assert got[i].item() == pytest.approx(1.0, abs=1e-12)
    got = nn_abs_cos(_antiparallel_matrix(), method=method, chunk=chunk)
    assert got[1].item() == pytest.approx(1.0, abs=1e-12)
    assert got[4].item() == pytest.approx(1.0, abs=1e-12)
    for W in (_dup_matrix(), _antiparallel_matrix()):  # finite gradients at |cos| = 1
        g = _grad(lambda w: PENALTY_SHAPES["neglog"](nn_abs_cos(w, method=method, chunk=chunk)), W)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
def test_exact_tie_both_neighbours_get_gradient(method, chunk):
    W = _tie_matrix()
    rows = torch.tensor([0])
    assert nn_abs_cos(W, rows, method=method, chunk=chunk).item() == pytest.approx(
        1 / math.sqrt(2), abs=1e-12
    )
    g = _grad(lambda w: nn_abs_cos(w, rows, method=method, chunk=chunk), W)
    torch.testing.assert_close(g, _grad(lambda w: ref_nn(w, [0]), W), rtol=0, atol=1e-12)
    assert g[1].abs().sum() > 1e-3 and g[2].abs().sum() > 1e-3
    assert torch.all(g[3] == 0)
    # mean, not sum: each tied neighbour gets half the gradient it would get alone
    g_alone = _grad(lambda w: _abs_cos(w[0], w[1]).reshape(1), W)
    torch.testing.assert_close(g[1], g_alone[1] / 2, rtol=0, atol=1e-12)


ROWS = [[0], [3, 1], [5, 5, 0], [8, 2, 2, 7, 0, 8], list(range(9))[::-1], [4, 0, 6, 1]]


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
@pytest.mark.parametrize("rows", ROWS, ids=[str(r) for r in ROWS])
def test_exact_methods_rows_subset(method, chunk, rows):
    W = _rand(9, 4, seed=4)
    W[6] = -2 * W[3]
    idx = torch.tensor(rows)
    got = nn_abs_cos(W, idx, method=method, chunk=chunk)
    assert got.shape == (len(rows),)
    _assert_matches(lambda w: nn_abs_cos(w, idx, method=method, chunk=chunk), lambda w: ref_nn(w, rows), W)


@pytest.mark.parametrize("method", METHODS)
def test_empty_rows(method):
    W = _rand(5, 3, seed=5)
    cache = NeighbourCache(2)
    cache.refresh(W)
    got = nn_abs_cos(W, torch.tensor([], dtype=torch.long), method=method, cache=cache)
    assert got.shape == (0,)
    assert nn_abs_cos(W.expand(2, 5, 3), torch.tensor([], dtype=torch.long), method=method).shape == (2, 0)


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
def test_exact_methods_stacked(method, chunk):
    Ws = _rand(3, 7, 4, seed=6)
    Ws[1, 5] = -2 * Ws[1, 2]  # antiparallel pair in one model
    Ws[2, 4] = Ws[2, 0]  # duplicate pair in another
    rows = [6, 0, 5, 0]
    idx = torch.tensor(rows)
    got = nn_abs_cos(Ws, idx, method=method, chunk=chunk)
    assert got.shape == (3, 4)
    _assert_matches(lambda w: nn_abs_cos(w, idx, method=method, chunk=chunk), lambda w: ref_nn(w, rows), Ws)
    _assert_matches(lambda w: nn_abs_cos(w, method=method, chunk=chunk), ref_nn, Ws)


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
def test_frozen_rows_get_no_gradient_as_neighbours(method, chunk):
    W = _rand(8, 3, seed=7)
    W[5] = W[0] + 0.05 * W[5]  # a frozen near-duplicate neighbour of row 0
    frozen = torch.tensor([False, False, True, False, True, True, False, True])
    rows = (~frozen).nonzero().flatten()
    fn = lambda w: nn_abs_cos(w, rows, frozen=frozen, method=method, chunk=chunk)
    _assert_matches(fn, lambda w: ref_nn(w, rows, frozen=frozen), W)
    g = _grad(fn, W)
    assert torch.all(g[frozen] == 0)  # exactly zero
    assert torch.all(g[~frozen].abs().sum(-1) > 0)
    # without the mask, the frozen neighbours do get gradient (so the check above can fail)
    g_free = _grad(lambda w: nn_abs_cos(w, rows, method=method, chunk=chunk), W)
    assert g_free[5].abs().sum() > 1e-3
    # a frozen row that is itself scored still gets the gradient of its own value
    _assert_matches(
        lambda w: nn_abs_cos(w, frozen=frozen, method=method, chunk=chunk),
        lambda w: ref_nn(w, frozen=frozen),
        W,
    )


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
def test_frozen_stacked(method, chunk):
    Ws = _rand(2, 6, 3, seed=8)
    frozen = torch.tensor([[False, True, True, False, False, True], [True, False, False, False, True, False]])
    _assert_matches(
        lambda w: nn_abs_cos(w, frozen=frozen, method=method, chunk=chunk),
        lambda w: ref_nn(w, frozen=frozen),
        Ws,
    )


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
def test_tie_mode_first(method, chunk):
    W = _rand(9, 4, seed=9)
    kw = {"tie_mode": "first", "method": method, "chunk": chunk}
    _assert_matches(lambda w: nn_abs_cos(w, **kw), lambda w: ref_nn(w, tie_mode="first"), W)
    # with an exact tie: the value is the max, and exactly one tied neighbour gets gradient
    T = _tie_matrix()
    rows = torch.tensor([0])
    assert nn_abs_cos(T, rows, **kw).item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    torch.testing.assert_close(nn_abs_cos(T, **kw), ref_nn(T, tie_mode="first"), rtol=0, atol=1e-12)
    g = _grad(lambda w: nn_abs_cos(w, rows, **kw), T)
    assert sum(bool(g[j].abs().sum() > 0) for j in (1, 2)) == 1
    # and "first" differs from "mean" on a tie with tie_tol wide enough to tie unequal values
    c1, c2 = 0.8, 0.8 - 1e-4
    U = torch.tensor([[1.0, 0, 0], [c1, math.sqrt(1 - c1**2), 0], [c2, 0, math.sqrt(1 - c2**2)]], dtype=F64)
    first = nn_abs_cos(U, torch.tensor([0]), tie_tol=1e-3, **kw)
    mean = nn_abs_cos(U, torch.tensor([0]), tie_tol=1e-3, method=method, chunk=chunk)
    assert first.item() == pytest.approx(c1, abs=1e-12)
    assert mean.item() == pytest.approx((c1 + c2) / 2, abs=1e-12)


@pytest.mark.parametrize("method,chunk", EXACT, ids=EXACT_IDS)
def test_reduction_mean_all(method, chunk):
    W = _rand(7, 3, seed=10)
    rows = [5, 0, 0, 3]
    idx = torch.tensor(rows)
    kw = {"reduction": "mean_all", "method": method, "chunk": chunk}
    _assert_matches(lambda w: nn_abs_cos(w, **kw), lambda w: ref_nn(w, reduction="mean_all"), W)
    _assert_matches(lambda w: nn_abs_cos(w, idx, **kw), lambda w: ref_nn(w, rows, reduction="mean_all"), W)
    assert torch.all(nn_abs_cos(W, **kw) < nn_abs_cos(W))


def test_public_contract_function():
    W = _antiparallel_matrix()
    _assert_matches(nearest_neighbour_abs_cos, ref_nn, W)
    idx = torch.tensor([3, 1, 3])
    _assert_matches(lambda w: nearest_neighbour_abs_cos(w, idx), lambda w: ref_nn(w, [3, 1, 3]), W)


# --- 2. cached ------------------------------------------------------------------------------------


def _cached(W, cache, rows=None, **kw):
    return nn_abs_cos(W, rows, method="cached", cache=cache, **kw)


@pytest.mark.parametrize("k", [1, 2, 3, 8])
@pytest.mark.parametrize("chunk", [1, 3, DEFAULT_CHUNK])
def test_cached_exact_right_after_refresh(k, chunk):
    W = _rand(9, 4, seed=11)
    if k >= 2:  # an antiparallel pair ties |cos| for every other row: both must be candidates
        W[7] = -2 * W[2]
    cache = NeighbourCache(k, refresh_every=5, chunk=chunk)
    cache.refresh(W, step=3)
    assert cache.candidates.shape == (1, 9, min(k, 8))
    assert cache.refreshed_at == 3 and cache.n_refreshes == 1
    _assert_matches(lambda w: _cached(w, cache), ref_nn, W)
    rows = [8, 2, 2, 0]
    _assert_matches(lambda w: _cached(w, cache, torch.tensor(rows)), lambda w: ref_nn(w, rows), W)
    # "first" on exact ties picks an arbitrary one of them: compare where there are none
    R = _rand(9, 4, seed=11)
    cache_r = NeighbourCache(k, refresh_every=5, chunk=chunk)
    cache_r.refresh(R)
    _assert_matches(lambda w: _cached(w, cache_r, tie_mode="first"), lambda w: ref_nn(w, tie_mode="first"), R)
    frozen = torch.tensor([True, False] * 4 + [True])
    _assert_matches(lambda w: _cached(w, cache, frozen=frozen), lambda w: ref_nn(w, frozen=frozen), W)


def test_cached_ties_and_duplicates_after_refresh():
    for W in (_tie_matrix(), _dup_matrix()):
        cache = NeighbourCache(2)
        cache.refresh(W)
        _assert_matches(lambda w, c=cache: _cached(w, c), ref_nn, W)
    # both tied neighbours of row 0 are candidates with k=2, so both get gradient
    T = _tie_matrix()
    cache = NeighbourCache(2)
    cache.refresh(T)
    g = _grad(lambda w: _cached(w, cache, torch.tensor([0])), T)
    assert g[1].abs().sum() > 1e-3 and g[2].abs().sum() > 1e-3


def test_cached_stacked_after_refresh():
    Ws = _rand(3, 7, 4, seed=12)
    cache = NeighbourCache(3)
    cache.refresh(Ws)
    assert cache.candidates.shape == (3, 7, 3)
    _assert_matches(lambda w: _cached(w, cache), ref_nn, Ws)
    # a cache for the wrong shape is refused
    with pytest.raises(ValueError, match="cache holds"):
        _cached(Ws[:2], cache)
    with pytest.raises(ValueError, match="cache holds"):
        _cached(Ws[:, :6], cache)


def _moving_neighbour_matrix():
    # Orthonormal-ish rows; row 1 is row 0's nearest neighbour (|cos| ~ 0.6).
    W = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.6, 0.8, 0.0, 0.0],
            [0.0, 0.3, 1.0, 0.0],
            [0.0, 0.0, 0.2, 1.0],
            [0.1, -0.2, 0.0, 1.0],
        ],
        dtype=F64,
    )
    moved = W.clone()
    moved[4] = torch.tensor([1.0, 0.01, 0.02, 0.0], dtype=F64)  # now row 0's nearest, |cos| ~ 1
    return W, moved


def test_cached_inexact_when_new_neighbour_outside_candidates():
    W, moved = _moving_neighbour_matrix()
    cache = NeighbourCache(1)
    cache.refresh(W)
    assert int(cache.candidates[0, 0, 0]) == 1
    assert 4 not in cache.candidates[0, 0].tolist()
    stale = _cached(moved, cache)
    exact = ref_nn(moved)
    assert stale[0].item() < exact[0].item() - 0.3  # exact only among the candidates
    assert torch.all(stale <= exact + 1e-12)  # a max over a subset never exceeds the true max
    torch.testing.assert_close(stale[0], _abs_cos(moved[0], moved[1]), rtol=0, atol=1e-12)
    g = _grad(lambda w: _cached(w, cache, torch.tensor([0])), moved)
    assert torch.all(g[4] == 0) and g[1].abs().sum() > 0  # gradient into the stale candidate only
    cache.refresh(moved, step=1)
    assert cache.n_refreshes == 2
    _assert_matches(lambda w: _cached(w, cache), ref_nn, moved)


def test_cached_k_at_least_n_minus_1_is_always_exact():
    W = _rand(6, 3, seed=13)
    for k in (5, 6, 50):
        cache = NeighbourCache(k)
        cache.refresh(W)
        assert cache.candidates.shape == (1, 6, 5)
        assert sorted(cache.candidates[0, 2].tolist()) == [0, 1, 3, 4, 5]
        other = _rand(6, 3, seed=14)  # any new W: every other row is a candidate
        _assert_matches(lambda w, c=cache: _cached(w, c), ref_nn, other)
        _assert_matches(lambda w, c=cache: _cached(w, c), ref_nn, W)
    two = _rand(2, 3, seed=15)
    cache = NeighbourCache(8)
    cache.refresh(two)
    _assert_matches(lambda w: _cached(w, cache), ref_nn, two)


def test_maybe_refresh_schedule():
    W, moved = _moving_neighbour_matrix()
    cache = NeighbourCache(1, refresh_every=3)
    cache.maybe_refresh(W, 0)
    assert (cache.n_refreshes, cache.refreshed_at) == (1, 0)
    first = cache.candidates.clone()
    for step in (1, 2):  # not due yet, even though W changed
        cache.maybe_refresh(moved, step)
        assert (cache.n_refreshes, cache.refreshed_at) == (1, 0)
        assert torch.equal(cache.candidates, first)
    cache.maybe_refresh(moved, 3)  # step - refreshed_at == refresh_every
    assert (cache.n_refreshes, cache.refreshed_at) == (2, 3)
    assert int(cache.candidates[0, 0, 0]) == 4
    cache.maybe_refresh(moved, 5)
    assert cache.n_refreshes == 2
    cache.maybe_refresh(moved[:4], 5)  # a shape change refreshes at once
    assert (cache.n_refreshes, cache.refreshed_at) == (3, 5)
    assert cache.candidates.shape == (1, 4, 1)
    cache.maybe_refresh(moved[:4], 7)
    assert cache.n_refreshes == 3
    cache.maybe_refresh(moved[:4], 20)  # long after: refreshes
    assert (cache.n_refreshes, cache.refreshed_at) == (4, 20)


def test_cache_state_dict_round_trip():
    W, moved = _moving_neighbour_matrix()
    cache = NeighbourCache(2, refresh_every=4)
    cache.maybe_refresh(W, 0)
    cache.maybe_refresh(moved, 4)
    buf = io.BytesIO()
    torch.save(cache.state_dict(), buf)  # as the training checkpoint stores it
    buf.seek(0)
    other = NeighbourCache(2, refresh_every=4)
    other.load_state_dict(torch.load(buf, weights_only=False))
    assert torch.equal(other.candidates, cache.candidates)
    assert (other.refreshed_at, other.n_refreshes) == (4, 2)
    assert torch.equal(_cached(W, other), _cached(W, cache))  # stale candidates kept, not recomputed
    other.maybe_refresh(W, 7)
    assert other.n_refreshes == 2
    other.maybe_refresh(W, 8)
    assert (other.n_refreshes, other.refreshed_at) == (3, 8)


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"k": 0}, "k"),
        ({"k": -1}, "k"),
        ({"k": True}, "k"),
        ({"k": 2.0}, "k"),
        ({"refresh_every": 0}, "refresh_every"),
        ({"chunk": 0}, "chunk"),
    ],
)
def test_cache_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive int"):
        NeighbourCache(**kw)


def test_cached_without_refreshed_cache_raises():
    W = _rand(5, 3, seed=16)
    with pytest.raises(ValueError, match="cached"):
        nn_abs_cos(W, method="cached")
    with pytest.raises(ValueError, match="cached"):
        nn_abs_cos(W, method="cached", cache=NeighbourCache(2))
    with pytest.raises(ValueError, match="cached"):
        ortho_penalty(W, torch.ones(3, 5, dtype=F64), OrthoConfig(method="cached"), W_enc=W.T)


def test_config_cache_fields():
    cfg = OrthoConfig(method="cached", cache_k=3, refresh_every=7, chunk=5)
    cache = cfg.make_cache()
    assert isinstance(cache, NeighbourCache)
    assert (cache.k, cache.refresh_every, cache.chunk, cache.candidates) == (3, 7, 5, None)
    for method in ("chunked", "active", "naive", "ortsae"):
        assert OrthoConfig(method=method).make_cache() is None
    cert = OrthoConfig(method="certified", cache_k=5, chunk=3, check_rows=7).make_cache()
    assert isinstance(cert, CertifiedCache)
    assert (cert.k, cert.chunk, cert.check_rows, cert.state) == (5, 3, 7, None)


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"method": "exact"}, "method"),
        ({"cache_k": 0}, "cache_k"),
        ({"refresh_every": 0}, "refresh_every"),
        ({"chunk": 0}, "chunk"),
        ({"chunk": 1.5}, "chunk"),
        ({"ortsae_chunk": 1}, "ortsae_chunk"),
        ({"ortsae_chunk": True}, "ortsae_chunk"),
        ({"check_rows": -1}, "check_rows"),
        ({"check_rows": 2.0}, "check_rows"),
    ],
)
def test_bad_config_fields(kw, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        OrthoConfig(**kw)


@pytest.mark.parametrize(
    "kw,users",
    [
        ({"method": "chunked", "cache_k": 32}, "method='cached' or method='certified'"),
        ({"method": "ortsae", "cache_k": 4}, "method='cached' or method='certified'"),
        ({"method": "certified", "refresh_every": 10}, "method='cached'"),
        ({"method": "active", "ortsae_chunk": 16}, "method='ortsae'"),
        ({"method": "cached", "check_rows": 0}, "method='certified'"),
    ],
)
def test_an_option_of_another_method_is_refused(kw, users):
    """It would be silently ignored; at its default it is accepted (every method's default config works)."""
    name = next(k for k in kw if k != "method")
    with pytest.raises(ValueError, match=rf"^{name}={kw[name]} has no effect with method='{kw['method']}'; "
                                         rf"leave it at its default .* or use {users}$"):
        OrthoConfig(**kw)
    default = getattr(OrthoConfig(), name)
    assert getattr(OrthoConfig(**{**kw, name: default}), name) == default


# --- 2b. certified --------------------------------------------------------------------------------


def _cert(W, cache, rows=None, **kw):
    return nn_abs_cos(W, rows, method="certified", cache=cache, **kw)


def _walk(W, steps, seed, big_every=5, small=0.02, big=0.5):
    """Rows drifting a little each step, with an occasional large jump (new nearest neighbours)."""
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        W = W + (big if t % big_every == big_every - 1 else small) * torch.randn(W.shape, generator=g, dtype=W.dtype)
        yield t, W


@pytest.mark.parametrize("k,chunk", [(1, 2), (3, DEFAULT_CHUNK), (8, 3)])
def test_certified_matches_reference_while_rows_move(k, chunk):
    cache = CertifiedCache(k, chunk=chunk, check_rows=3)
    rows = torch.tensor([0, 2, 3, 5, 8])
    for t, W in _walk(_rand(9, 4, seed=40), 10, seed=41):
        r = None if t % 3 == 0 else rows
        _assert_matches(lambda w, r=r: _cert(w, cache, r), lambda w, r=r: ref_nn(w, r), W)
    summary = cache.summary()
    assert summary["full_refreshes"] == 1
    assert summary["certified_fraction"] < 1  # the jumps broke certificates, and those rows were re-searched
    assert summary["agreement"] == 1.0 and summary["rows_checked"] > 0


def test_certified_stacked_frozen_and_first():
    Ws = _rand(2, 8, 3, seed=42)
    frozen = torch.zeros(2, 8, dtype=torch.bool)
    frozen[0, 1] = frozen[1, 4] = True
    caches = [CertifiedCache(2, chunk=3) for _ in range(3)]
    for _, W in _walk(Ws, 6, seed=43, big_every=3):
        _assert_matches(lambda w: _cert(w, caches[0]), ref_nn, W)
        _assert_matches(lambda w: _cert(w, caches[1], frozen=frozen), lambda w: ref_nn(w, frozen=frozen), W)
        _assert_matches(lambda w: _cert(w, caches[2], tie_mode="first"), lambda w: ref_nn(w, tie_mode="first"), W)


def test_certified_ties_duplicates_antiparallel():
    for make in (_dup_matrix, _tie_matrix, _antiparallel_matrix):
        W = make()
        for k in (1, 2, 5):
            cache = CertifiedCache(k)
            _assert_matches(lambda w, c=cache: _cert(w, c), ref_nn, W)
            _assert_matches(lambda w, c=cache: _cert(w, c), ref_nn, W)  # again, from the certificate
    # duplicated rows: more tied rows than candidates, so the certificate fails and rows are searched
    cache = CertifiedCache(1)
    W = _dup_matrix()
    _assert_matches(lambda w: _cert(w, cache), ref_nn, W)
    assert cache.summary()["certified_fraction"] < 1


def test_certified_exact_where_cached_is_not():
    """The case of test_cached_inexact_when_new_neighbour_outside_candidates: a row moves next to
    a row outside the candidates; the certificate notices and that row is searched again."""
    W = _rand(8, 3, seed=15)
    cache, cert = NeighbourCache(1), CertifiedCache(1, check_rows=8)
    cache.refresh(W)
    _cert(W, cert)
    target = int(cache.candidates[0, 0, 0])
    other = next(j for j in range(1, 8) if j != target)
    moved = W.clone()
    moved[0] = W[other] + 1e-3 * W[0]
    assert not torch.allclose(_cached(moved, cache), ref_nn(moved))  # cached: stale
    before = cert.stats["rows_researched"]
    _assert_matches(lambda w: _cert(w, cert), ref_nn, moved)  # certified: exact
    assert cert.stats["rows_researched"] > before
    assert cert.summary()["agreement"] == 1.0


def test_certified_still_rows_cost_one_evaluation_each():
    W = torch.eye(6, dtype=F64) + 0.1 * _rand(6, 6, seed=44)  # well separated neighbours
    cert = CertifiedCache(3)
    _cert(W, cert)
    before = dict(cert.stats)
    for _ in range(3):
        _cert(W.clone(), cert)  # the same rows: nothing moved
    keys = ("rows_scored", "rows_certified", "rows_examined", "rows_researched", "pairs_evaluated")
    done = {k: cert.stats[k] - before[k] for k in keys}
    # only each row's best candidate was evaluated: the row-level bound covered the others
    assert done == {"rows_scored": 18, "rows_certified": 18, "rows_examined": 0, "rows_researched": 0, "pairs_evaluated": 0}
    assert cert.summary()["evaluated_per_row"] == 1.0


def test_certified_new_shape_searches_everything():
    cert = CertifiedCache(2)
    W = _rand(7, 3, seed=45)
    _cert(W, cert)
    _assert_matches(lambda w: _cert(w, cert), ref_nn, W[:5])  # a stage of 5 rows
    _assert_matches(lambda w: _cert(w, cert), ref_nn, W)
    assert cert.summary()["full_refreshes"] == 3


def test_certified_state_dict_round_trip():
    cert = CertifiedCache(2, check_rows=2)
    walk = list(_walk(_rand(9, 3, seed=46), 8, seed=47, big_every=3))
    for _, W in walk[:4]:
        _cert(W, cert)
    buf = io.BytesIO()
    torch.save(cert.state_dict(), buf)
    other = CertifiedCache(2, check_rows=2)
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    for _, W in walk[4:]:
        assert torch.equal(_cert(W, other), _cert(W, cert))
    assert other.stats == cert.stats
    assert torch.equal(other._gen.get_state(), cert._gen.get_state())


@given(
    n=st.integers(2, 10), d=st.integers(1, 4), k=st.integers(1, 9), seed=st.integers(0, 10**6),
    scales=st.lists(st.sampled_from([0.0, 1e-3, 0.05, 0.3, 2.0]), min_size=1, max_size=6),
)
@settings(max_examples=40, deadline=None)
def test_certified_property_exact_at_every_step(n, d, k, seed, scales):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=F64)
    cert = CertifiedCache(k, chunk=3, check_rows=2)
    rows = torch.randperm(n, generator=g)[: max(1, n // 2)]
    for scale in scales:
        W = W + scale * torch.randn(n, d, generator=g, dtype=F64)
        if scale == 2.0:
            W[0] = -W[-1]  # an exact antiparallel pair
        torch.testing.assert_close(_cert(W, cert, rows), nn_abs_cos(W, rows), rtol=0, atol=1e-12)
    assert cert.summary()["agreement"] == 1.0


def test_certified_needs_its_cache():
    W = _rand(5, 3, seed=48)
    for bad in (None, NeighbourCache(2)):
        with pytest.raises(ValueError, match="CertifiedCache"):
            nn_abs_cos(W, method="certified", cache=bad)
    for kw, name in (({"k": 0}, "k"), ({"chunk": -1}, "chunk"), ({"check_rows": -1}, "check_rows"), ({"k": True}, "k")):
        with pytest.raises(ValueError, match=f"^{name} must"):
            CertifiedCache(**kw)


# --- 3. ortsae ------------------------------------------------------------------------------------


def _ortsae(W, rows=None, size=4, seed=0, **kw):
    return nn_abs_cos(
        W, rows, method="ortsae", ortsae_chunk=size, generator=torch.Generator().manual_seed(seed), **kw
    )


@pytest.mark.parametrize("n,size", [(21, 4), (5, 4), (13, 4), (9, 2), (12, 3), (7, 6)])
def test_ortsae_is_a_lower_bound_and_a_real_pair(n, size):
    # n % size == 1 leaves a row alone in the last chunk: it must join another chunk
    W = _rand(n, 4, seed=17)
    exact = ref_nn(W)
    pairs = torch.stack([torch.stack([_abs_cos(W[i], W[j]) for j in range(n)]) for i in range(n)])
    pairs.fill_diagonal_(-1)
    strictly_below = 0
    for seed in range(3):
        got = _ortsae(W, size=size, seed=seed)
        assert got.shape == (n,) and torch.isfinite(got).all()
        assert torch.all(got <= exact + 1e-12)
        strictly_below += int((got < exact - 1e-9).sum())
        # each value is |cos| to an actual other row (exact within its chunk), never 0 for a lone row
        dist = (pairs - got[:, None]).abs().min(dim=1).values
        assert dist.max() < 1e-12
        # gradient: that of the chosen pair
        j = (pairs - got[:, None]).abs().argmin(dim=1)
        g = _grad(lambda w, s=seed: _ortsae(w, size=size, seed=s), W)
        g_ref = _grad(lambda w, j=j: torch.stack([_abs_cos(w[i], w[int(j[i])]) for i in range(n)]), W)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)
    if n >= 3 * size:
        assert strictly_below > 0  # it is an approximation: some rows miss their true neighbour


def test_ortsae_deterministic_given_generator():
    W = _rand(16, 4, seed=18)
    a, b = _ortsae(W, seed=5), _ortsae(W, seed=5)
    assert torch.equal(a, b)
    assert torch.equal(_grad(lambda w: _ortsae(w, seed=5), W), _grad(lambda w: _ortsae(w, seed=5), W))
    assert any(not torch.equal(a, _ortsae(W, seed=s)) for s in range(6, 10))  # a new partition per seed
    # without a generator the global one drives it
    torch.manual_seed(3)
    c = nn_abs_cos(W, method="ortsae", ortsae_chunk=4)
    torch.manual_seed(3)
    assert torch.equal(c, nn_abs_cos(W, method="ortsae", ortsae_chunk=4))


@pytest.mark.parametrize("size", [9, 10, 1024])
def test_ortsae_exact_when_chunk_covers_all_rows(size):
    W = _antiparallel_matrix()
    W = torch.cat([W, _rand(3, 3, seed=19)])  # n = 9
    _assert_matches(lambda w: _ortsae(w, size=size), ref_nn, W)
    rows = [8, 1, 1, 4]
    _assert_matches(lambda w: _ortsae(w, torch.tensor(rows), size=size), lambda w: ref_nn(w, rows), W)
    Ws = _rand(2, 9, 3, seed=20)
    _assert_matches(lambda w: _ortsae(w, size=size), ref_nn, Ws)


def test_ortsae_rows_subset_and_repeats():
    W = _rand(12, 3, seed=22)
    full = _ortsae(W, seed=1)
    rows = torch.tensor([5, 5, 0, 11, 5, 3])
    got = _ortsae(W, rows, seed=1)  # same generator seed: same partition
    torch.testing.assert_close(got, full[rows], rtol=0, atol=1e-15)
    assert torch.all(got > 0)
    g = _grad(lambda w: _ortsae(w, rows, seed=1), W)
    weights = torch.arange(1, 7, dtype=F64)
    g_ref = W.detach().clone().requires_grad_(True)
    (_ortsae(g_ref, seed=1)[rows].square() * weights).sum().backward()
    torch.testing.assert_close(g, g_ref.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [1, 0, -3, True, 2.5])
def test_ortsae_bad_chunk(size):
    with pytest.raises(ValueError, match="ortsae_chunk"):
        nn_abs_cos(_rand(5, 3), method="ortsae", ortsae_chunk=size)


# --- 4. bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "W", [torch.randn(5), torch.randn(2, 3, 4), torch.randn(1, 2, 3, 4), torch.tensor(1.0)]
)
def test_public_function_needs_2d(W):
    with pytest.raises(ValueError, match="W_dec must be a 2-D"):
        nearest_neighbour_abs_cos(W)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "W,match",
    [
        (torch.empty(0, 3), "W_dec needs at least 2 rows"),
        (torch.empty(4, 0), "W_dec needs at least 2 rows and 1 column"),
        (torch.empty(2, 0, 3), "W_dec needs at least 2 rows"),
        (torch.randn(1, 3), "W_dec needs at least 2 rows"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), "W_dec has rows of norm 0"),
        (torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]]), "W_dec has rows of norm 0"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0]]), "W_dec contains non-finite"),
        (torch.tensor([[1.0, 2.0], [float("-inf"), 1.0]]), "W_dec contains non-finite"),
        (
            torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[float("nan"), 0.0], [1.0, 1.0]]]),
            "W_dec contains non-finite",
        ),
        (torch.randn(5), "W_dec must be a 2-D"),
        (torch.randn(1, 2, 3, 4), "W_dec must be a 2-D"),
    ],
)
def test_bad_matrix_every_method(method, W, match):
    cache = NeighbourCache(1)
    with pytest.raises(ValueError, match=match):
        nn_abs_cos(W, method=method, cache=cache)


def test_nan_never_silent_through_penalty():
    W = _rand(5, 3, seed=23)
    W[2, 1] = float("nan")
    codes = torch.ones(2, 5, dtype=F64)
    for method in METHODS:
        with pytest.raises(ValueError, match="non-finite"):
            ortho_penalty(W, codes, OrthoConfig(method=method), cache=NeighbourCache(2), W_enc=W.T)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rows", [[0, 5], [-1], [2, 100]])
def test_rows_out_of_range_every_method(method, rows):
    W = _rand(5, 3, seed=24)
    cache = NeighbourCache(2)
    cache.refresh(W)
    with pytest.raises(IndexError, match=r"rows must index into \[0, 5\)"):
        nn_abs_cos(W, torch.tensor(rows), method=method, cache=cache)


@pytest.mark.parametrize("method", ["exact", "", "Chunked", None])
def test_unknown_method(method):
    with pytest.raises(ValueError, match="method must be one of"):
        nn_abs_cos(_rand(4, 3), method=method)


# --- 5. ortho_penalty -----------------------------------------------------------------------------


def _penalty_case(n=8, d=4, active=(0, 2, 3, 6), seed=25):
    W_dec = _rand(n, d, seed=seed)
    W_dec[5] = W_dec[0] + 0.01 * W_dec[5]  # row 0's nearest neighbour, an inactive row
    W_enc = _rand(d, n, seed=seed + 1)
    codes = torch.zeros(4, n, dtype=F64)
    for b, i in enumerate(active):
        codes[b % 4, i] = 0.5 + b
    return W_enc, W_dec, codes, list(active)


def _ref_penalty(W, active, shape):
    vals = ref_nn(W, active)
    return PENALTY_SHAPES[shape](vals).mean()


PEN_METHODS = [*EXACT_METHODS, "cached", "certified"]


def _cache_k(method: str, k: int) -> dict:
    """``cache_k`` for the methods with a cache (the others must leave it at its default)."""
    return {"cache_k": k} if method in ("cached", "certified") else {}


@pytest.mark.parametrize("method", PEN_METHODS)
@pytest.mark.parametrize("shape", ["neglog", "square"])
def test_penalty_single_model_active_scope(method, shape):
    W_enc, W_dec, codes, active = _penalty_case()
    cfg = OrthoConfig(shape=shape, method=method, chunk=3, **_cache_k(method, 2))
    cache = cfg.make_cache()
    if isinstance(cache, NeighbourCache):
        cache.refresh(W_dec)
    fn = lambda w: ortho_penalty(w, codes, cfg, cache=cache, W_enc=W_enc).reshape(1)
    _assert_matches(fn, lambda w: _ref_penalty(w, active, shape).reshape(1), W_dec, atol_g=1e-9)
    # gradient reaches the inactive neighbour row 5
    assert _grad(fn, W_dec)[5].abs().sum() > 1e-3


@pytest.mark.parametrize("method", PEN_METHODS)
def test_penalty_limit(method):
    W_enc, W_dec, codes, active = _penalty_case()
    limit = 5  # row 5 (row 0's nearest) and the active row 6 do not exist yet
    cfg = OrthoConfig(shape="neglog", method=method, chunk=2, **_cache_k(method, 2))
    cache = cfg.make_cache()
    if isinstance(cache, NeighbourCache):
        cache.refresh(W_dec[:limit])
    scored = [i for i in active if i < limit]
    fn = lambda w: ortho_penalty(w, codes, cfg, cache=cache, limit=limit, W_enc=W_enc).reshape(1)
    _assert_matches(fn, lambda w: _ref_penalty(w[:limit], scored, "neglog").reshape(1), W_dec, atol_g=1e-9)
    g = _grad(fn, W_dec)
    assert torch.all(g[limit:] == 0)
    full = ortho_penalty(W_dec, codes, OrthoConfig(shape="neglog"), W_enc=W_enc)
    assert abs(full.item() - fn(W_dec).item()) > 0.1  # the limit matters here
    # nothing active below the limit: zero
    late = torch.zeros_like(codes)
    late[0, 6] = 1.0
    assert ortho_penalty(W_dec, late, cfg, cache=cache, limit=limit, W_enc=W_enc).item() == 0.0


@pytest.mark.parametrize("method", PEN_METHODS)
def test_penalty_limit_stacked(method):
    M, n, d, limit = 2, 7, 3, 4
    W_dec = _rand(M, n, d, seed=27)
    W_enc = _rand(M, d, n, seed=28)
    codes = torch.relu(_rand(M, 5, n, seed=29))
    cfg = OrthoConfig(shape="square", method=method, **_cache_k(method, 1))
    cache = cfg.make_cache()
    if isinstance(cache, NeighbourCache):
        cache.refresh(W_dec[:, :limit])
    got = ortho_penalty(W_dec, codes, cfg, cache=cache, limit=limit, W_enc=W_enc)
    assert got.shape == (M,)
    for m in range(M):
        act = [i for i in range(limit) if bool((codes[m, :, i] > 0).any())]
        assert act
        torch.testing.assert_close(got[m], _ref_penalty(W_dec[m, :limit], act, "square"), rtol=0, atol=1e-12)
    g = _grad(lambda w: ortho_penalty(w, codes, cfg, cache=cache, limit=limit, W_enc=W_enc), W_dec)
    assert torch.all(g[:, limit:] == 0)


def test_penalty_ortsae_exact_with_large_chunk():
    W_enc, W_dec, codes, active = _penalty_case()
    cfg = OrthoConfig(method="ortsae", ortsae_chunk=8)
    torch.testing.assert_close(
        ortho_penalty(W_dec, codes, cfg, W_enc=W_enc), _ref_penalty(W_dec, active, "neglog"), rtol=0, atol=1e-12
    )
