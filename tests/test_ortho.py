"""Tests of sae_ortho.ortho against brute-force references written with plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from sae_ortho.ortho import PENALTY_SHAPES, OrthoConfig, nearest_neighbour_abs_cos, nn_abs_cos, ortho_penalty

# --- brute-force references ------------------------------------------------------------------


def _abs_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.abs(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))


def ref_nn(W, rows=None, tie_tol=1e-6, reduction="nearest", tie_mode="mean", frozen=None):
    """Per requested row i: |cos| to every j != i; max, then mean over j within tie_tol of the max.

    Written with plain Python loops over rows and torch ops on single vectors (so autograd gives
    the reference gradient). ``frozen[j]`` detaches row j when it acts as a neighbour.
    """
    n = W.shape[0]
    rows = list(range(n)) if rows is None else [int(r) for r in rows]
    out = []
    for i in rows:
        vals = []
        for j in range(n):
            if j == i:
                continue
            wj = W[j].detach() if frozen is not None and bool(frozen[j]) else W[j]
            vals.append(_abs_cos(W[i], wj))
        if reduction == "mean_all":
            out.append(sum(vals) / len(vals))
            continue
        best = max(float(v.detach()) for v in vals)
        if tie_mode == "first":
            first = next(v for v in vals if float(v.detach()) >= best - tie_tol)
            out.append(first)
            continue
        tied = [v for v in vals if float(v.detach()) >= best - tie_tol]
        out.append(sum(tied) / len(tied))
    return torch.stack(out)


def ref_penalty(W, codes, shape, scope="active", **kw):
    active = [bool((codes[:, i] > 0).any()) for i in range(W.shape[0])]
    frozen = None if kw.pop("neighbour_grad", True) else [not a for a in active]
    vals = ref_nn(W, frozen=frozen, **kw)
    f = PENALTY_SHAPES[shape]
    scored = [i for i in range(W.shape[0]) if scope == "all" or active[i]]
    if not scored:
        return torch.zeros((), dtype=W.dtype)
    return sum(f(vals[i]) for i in scored) / len(scored)


def _grad(fn, W):
    W = W.detach().clone().requires_grad_(True)
    fn(W).sum().backward()
    return W.grad


# --- values and gradients on random matrices ----------------------------------------------------


@pytest.mark.parametrize("n,d", [(2, 3), (7, 3), (12, 5), (9, 20)])
@pytest.mark.parametrize("seed", [0, 1])
def test_nn_matches_reference_random(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(nearest_neighbour_abs_cos(W), ref_nn(W), rtol=0, atol=1e-12)
    torch.testing.assert_close(nn_abs_cos(W), ref_nn(W), rtol=0, atol=1e-12)
    torch.testing.assert_close(_grad(nearest_neighbour_abs_cos, W), _grad(ref_nn, W), rtol=0, atol=1e-10)


@pytest.mark.parametrize("rows", [[0], [3, 1], [5, 5, 0], list(range(8))[::-1], []])
def test_nn_rows_subset(rows):
    W = torch.randn(8, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = nearest_neighbour_abs_cos(W, torch.tensor(rows, dtype=torch.long))
    assert got.shape == (len(rows),)
    if rows:
        torch.testing.assert_close(got, ref_nn(W, rows), rtol=0, atol=1e-12)
        torch.testing.assert_close(
            _grad(lambda w: nearest_neighbour_abs_cos(w, torch.tensor(rows)), W),
            _grad(lambda w: ref_nn(w, rows), W),
            rtol=0,
            atol=1e-10,
        )


def test_nn_scale_invariant():
    W = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    scale = torch.tensor([0.01, 1, 5, 100, 3, 0.5], dtype=torch.float64)[:, None]
    torch.testing.assert_close(nn_abs_cos(W * scale), nn_abs_cos(W), rtol=0, atol=1e-12)


# --- adversarial matrices ---------------------------------------------------------------------


def test_duplicate_rows():
    W = torch.tensor(
        [[1.0, 2.0, 0.5], [1.0, 2.0, 0.5], [0.0, 1.0, -3.0], [2.0, -1.0, 0.0]], dtype=torch.float64
    )
    got = nn_abs_cos(W)
    torch.testing.assert_close(got, ref_nn(W), rtol=0, atol=1e-12)
    assert got[0] == pytest.approx(1.0, abs=1e-12) and got[1] == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(_grad(nn_abs_cos, W), _grad(ref_nn, W), rtol=0, atol=1e-10)


def test_antiparallel_rows():
    W = torch.tensor([[1.0, 0.3], [-2.0, -0.6], [0.2, 1.0]], dtype=torch.float64)
    got = nn_abs_cos(W)
    assert got[0].item() == pytest.approx(1.0, abs=1e-12)
    assert got[1].item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(got, ref_nn(W), rtol=0, atol=1e-12)
    torch.testing.assert_close(_grad(nn_abs_cos, W), _grad(ref_nn, W), rtol=0, atol=1e-10)


def _tie_matrix():
    # Row 0 = e0 has neighbours rows 1 and 2 at exactly |cos| = 1/sqrt(2) (one of them
    # antiparallel-ish), and row 3 further away.
    return torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [0.1, -0.3, -1.0]], dtype=torch.float64
    )


def test_exact_tie_is_mean_and_both_neighbours_get_gradient():
    W = _tie_matrix()
    rows = torch.tensor([0])
    val = nn_abs_cos(W, rows)
    assert val.item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    g = _grad(lambda w: nn_abs_cos(w, rows), W)
    g_ref = _grad(lambda w: ref_nn(w, [0]), W)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    assert g[1].abs().sum() > 1e-3 and g[2].abs().sum() > 1e-3  # both tied neighbours
    assert torch.all(g[3] == 0)  # the farther row gets none
    # Each tied neighbour gets half the gradient it would get alone (mean, not sum).
    g_alone = _grad(lambda w: _abs_cos(w[0], w[1]), W)
    torch.testing.assert_close(g[1], g_alone[1] / 2, rtol=0, atol=1e-12)


def test_tie_tol_controls_ties():
    # Row 0's neighbours at |cos| 0.8 and 0.8 - 1e-4: tied only with tie_tol >= 1e-4.
    c1, c2 = 0.8, 0.8 - 1e-4
    W = torch.tensor(
        [[1.0, 0.0, 0.0], [c1, math.sqrt(1 - c1**2), 0.0], [c2, 0.0, math.sqrt(1 - c2**2)]],
        dtype=torch.float64,
    )
    rows = torch.tensor([0])
    assert nn_abs_cos(W, rows, tie_tol=1e-6).item() == pytest.approx(c1, abs=1e-12)
    assert nn_abs_cos(W, rows, tie_tol=1e-3).item() == pytest.approx((c1 + c2) / 2, abs=1e-12)
    for tol in (1e-6, 1e-3):
        torch.testing.assert_close(nn_abs_cos(W, tie_tol=tol), ref_nn(W, tie_tol=tol), rtol=0, atol=1e-12)


def test_tie_mode_first():
    W = _tie_matrix()
    rows = torch.tensor([0])
    val = nn_abs_cos(W, rows, tie_mode="first")
    assert val.item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    g = _grad(lambda w: nn_abs_cos(w, rows, tie_mode="first"), W)
    got_grad = [bool(g[j].abs().sum() > 0) for j in (1, 2)]
    assert sum(got_grad) == 1  # exactly one of the two tied neighbours
    # Without ties, "first" is the plain nearest neighbour.
    R = torch.randn(9, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(
        nn_abs_cos(R, tie_mode="first"), ref_nn(R, tie_mode="first"), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        _grad(lambda w: nn_abs_cos(w, tie_mode="first"), R),
        _grad(lambda w: ref_nn(w, tie_mode="first"), R),
        rtol=0,
        atol=1e-10,
    )


def test_reduction_mean_all():
    W = torch.randn(7, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = nn_abs_cos(W, reduction="mean_all")
    torch.testing.assert_close(got, ref_nn(W, reduction="mean_all"), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        _grad(lambda w: nn_abs_cos(w, reduction="mean_all"), W),
        _grad(lambda w: ref_nn(w, reduction="mean_all"), W),
        rtol=0,
        atol=1e-10,
    )
    assert torch.all(got < nn_abs_cos(W))  # a mean is below the max for random rows


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 11, 100])
def test_chunking_matches_unchunked(chunk):
    # Bitwise equality is not guaranteed (BLAS picks different kernels for different block
    # shapes, ~1 ulp); the result must agree to rounding.
    W = torch.randn(11, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(nn_abs_cos(W, chunk=chunk), nn_abs_cos(W), rtol=0, atol=1e-14)
    torch.testing.assert_close(
        _grad(lambda w: nn_abs_cos(w, chunk=chunk), W), _grad(nn_abs_cos, W), rtol=0, atol=1e-12
    )
    rows = torch.tensor([9, 2, 4, 0, 10])
    torch.testing.assert_close(nn_abs_cos(W, rows, chunk=chunk), ref_nn(W, rows), rtol=0, atol=1e-12)


def test_stacked_equals_per_model():
    Ws = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    Ws[1, 5] = -2 * Ws[1, 2]  # an antiparallel pair in one model only
    rows = torch.tensor([0, 5, 7])
    stacked = nn_abs_cos(Ws, rows, chunk=2)
    assert stacked.shape == (3, 3)
    g = _grad(lambda w: nn_abs_cos(w, rows), Ws)
    for m in range(3):
        torch.testing.assert_close(stacked[m], ref_nn(Ws[m], rows), rtol=0, atol=1e-12)
        torch.testing.assert_close(g[m], _grad(lambda w: ref_nn(w, rows), Ws[m]), rtol=0, atol=1e-10)


# --- ortho_penalty ------------------------------------------------------------------------------


def _penalty_case(seed=9, n=6, d=4, active=(0, 2)):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(n, d, generator=g, dtype=torch.float64)
    W_enc = torch.randn(d, n, generator=g, dtype=torch.float64)
    codes = torch.zeros(5, n, dtype=torch.float64)
    for k, i in enumerate(active):
        codes[k, i] = 0.5 + k
    return W_enc, W_dec, codes


@pytest.mark.parametrize("shape", sorted(PENALTY_SHAPES))
@pytest.mark.parametrize("scope", ["active", "all"])
def test_penalty_matches_reference(shape, scope):
    W_enc, W_dec, codes = _penalty_case()
    cfg = OrthoConfig(shape=shape, scope=scope)
    got = ortho_penalty(W_dec, codes, cfg, W_enc=W_enc)
    want = ref_penalty(W_dec, codes, shape, scope=scope)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    g = _grad(lambda w: ortho_penalty(w, codes, cfg, W_enc=W_enc), W_dec)
    g_ref = _grad(lambda w: ref_penalty(w, codes, shape, scope=scope), W_dec)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_scope_all_vs_active():
    W_enc, W_dec, codes = _penalty_case(active=(1,))
    vals = ref_nn(W_dec)
    f = PENALTY_SHAPES["neglog"]
    active = ortho_penalty(W_dec, codes, OrthoConfig(scope="active"), W_enc=W_enc)
    every = ortho_penalty(W_dec, codes, OrthoConfig(scope="all"), W_enc=W_enc)
    assert active.item() == pytest.approx(f(vals[1]).item(), abs=1e-12)
    assert every.item() == pytest.approx(f(vals).mean().item(), abs=1e-12)
    assert active.item() != pytest.approx(every.item(), abs=1e-6)
    # no active latent: 0 for "active", unchanged for "all"
    zero = torch.zeros_like(codes)
    assert ortho_penalty(W_dec, zero, OrthoConfig(scope="active"), W_enc=W_enc).item() == 0.0
    assert ortho_penalty(W_dec, zero, OrthoConfig(scope="all"), W_enc=W_enc).item() == pytest.approx(every.item())


def test_inactive_neighbour_gets_gradient_only_with_neighbour_grad():
    # Row 0 is active; its nearest neighbour row 1 is inactive; rows 2, 3 are far away.
    W_dec = torch.tensor(
        [[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [0.0, 0.2, 1.0], [0.1, -1.0, 0.3]], dtype=torch.float64
    )
    W_enc = W_dec.T.clone()
    codes = torch.zeros(3, 4, dtype=torch.float64)
    codes[0, 0] = 1.0
    g_on = _grad(lambda w: ortho_penalty(w, codes, OrthoConfig(neighbour_grad=True), W_enc=W_enc), W_dec)
    g_off = _grad(lambda w: ortho_penalty(w, codes, OrthoConfig(neighbour_grad=False), W_enc=W_enc), W_dec)
    assert g_on[1].abs().sum() > 1e-3
    assert torch.all(g_off[1] == 0)
    assert g_off[0].abs().sum() > 1e-3  # the active row itself still moves
    torch.testing.assert_close(g_off[0], g_on[0], rtol=0, atol=1e-12)
    # both agree with the reference (frozen = detached neighbours)
    torch.testing.assert_close(
        g_off,
        _grad(lambda w: ref_penalty(w, codes, "neglog", neighbour_grad=False), W_dec),
        rtol=0,
        atol=1e-12,
    )


def test_neighbour_grad_false_random_against_reference():
    W_enc, W_dec, codes = _penalty_case(seed=10, n=8, active=(0, 3, 4))
    for scope in ("active", "all"):
        cfg = OrthoConfig(scope=scope, neighbour_grad=False, shape="square")
        g = _grad(lambda w, cfg=cfg: ortho_penalty(w, codes, cfg, W_enc=W_enc), W_dec)
        g_ref = _grad(
            lambda w, scope=scope: ref_penalty(w, codes, "square", scope=scope, neighbour_grad=False), W_dec
        )
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_penalty_reduction_and_tie_mode_options():
    W_enc, W_dec, codes = _penalty_case(seed=11, n=7, active=(0, 1, 5))
    for kw in ({"reduction": "mean_all"}, {"tie_mode": "first"}):
        cfg = OrthoConfig(shape="linear", **kw)
        torch.testing.assert_close(
            ortho_penalty(W_dec, codes, cfg, W_enc=W_enc),
            ref_penalty(W_dec, codes, "linear", **kw),
            rtol=0,
            atol=1e-12,
        )


def test_penalty_target_encoder():
    W_enc, W_dec, codes = _penalty_case(seed=12)
    cfg = OrthoConfig(target="encoder", shape="square")
    got = ortho_penalty(W_dec, codes, cfg, W_enc=W_enc)
    torch.testing.assert_close(got, ref_penalty(W_enc.T, codes, "square"), rtol=0, atol=1e-12)
    W_enc = W_enc.clone().requires_grad_(True)
    W_dec = W_dec.clone().requires_grad_(True)
    ortho_penalty(W_dec, codes, cfg, W_enc=W_enc).backward()
    assert W_dec.grad is None and W_enc.grad.abs().sum() > 0


def test_penalty_stacked_equals_per_model():
    g = torch.Generator().manual_seed(13)
    M, n, d = 3, 6, 4
    W_dec = torch.randn(M, n, d, generator=g, dtype=torch.float64)
    W_enc = torch.randn(M, d, n, generator=g, dtype=torch.float64)
    codes = torch.relu(torch.randn(M, 4, n, generator=g, dtype=torch.float64) - 1.0)
    codes[2] = 0  # a model with no active latent
    for cfg in (OrthoConfig(), OrthoConfig(neighbour_grad=False), OrthoConfig(scope="all", shape="sigmoid")):
        stacked = ortho_penalty(W_dec, codes, cfg, W_enc=W_enc)
        assert stacked.shape == (M,)
        gs = _grad(lambda w, cfg=cfg: ortho_penalty(w, codes, cfg, W_enc=W_enc), W_dec)
        for m in range(M):
            single = ortho_penalty(W_dec[m], codes[m], cfg, W_enc=W_enc[m])
            torch.testing.assert_close(stacked[m], single, rtol=0, atol=1e-12)
            gm = _grad(lambda w, m=m, cfg=cfg: ortho_penalty(w, codes[m], cfg, W_enc=W_enc[m]), W_dec[m])
            torch.testing.assert_close(gs[m], gm, rtol=0, atol=1e-12)
    assert ortho_penalty(W_dec, codes, OrthoConfig(), W_enc=W_enc)[2].item() == 0.0


# --- penalty shapes -----------------------------------------------------------------------------


def _deriv(f, c):
    t = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    f(t).backward()
    return t.grad.item()


def test_shape_values():
    c = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64)
    torch.testing.assert_close(
        PENALTY_SHAPES["neglog"](c), torch.tensor([-math.log(1 - v) for v in c.tolist()], dtype=torch.float64)
    )
    torch.testing.assert_close(
        PENALTY_SHAPES["c2_over_1mc"](c),
        torch.tensor([v * v / (1 - v) for v in c.tolist()], dtype=torch.float64),
    )
    torch.testing.assert_close(PENALTY_SHAPES["square"](c), c * c)
    torch.testing.assert_close(PENALTY_SHAPES["linear"](c), c)
    for name, f in PENALTY_SHAPES.items():
        assert torch.isfinite(f(torch.tensor([1.0, 1.0 + 1e-7]))).all(), name  # |cos| = 1 stays finite


def test_neglog_steeper_than_sigmoid_near_one():
    neglog, sigmoid = PENALTY_SHAPES["neglog"], PENALTY_SHAPES["sigmoid"]
    assert _deriv(neglog, 0.99) > 10 * _deriv(sigmoid, 0.99)
    assert _deriv(neglog, 0.99) == pytest.approx(100.0, rel=1e-6)  # d/dc -log(1-c) = 1/(1-c)
    # neglog's slope grows towards 1, sigmoid's shrinks (it flattens)
    assert _deriv(neglog, 0.99) > _deriv(neglog, 0.9) > _deriv(neglog, 0.5)
    assert _deriv(sigmoid, 0.99) < _deriv(sigmoid, 0.9) < _deriv(sigmoid, 0.5)
    assert _deriv(PENALTY_SHAPES["c2_over_1mc"], 0.99) > _deriv(PENALTY_SHAPES["c2_over_1mc"], 0.9)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "W,exc,match",
    [
        (torch.randn(5), ValueError, "W_dec"),
        (torch.randn(2, 3, 4), ValueError, "W_dec"),
        (torch.randn(1, 3), ValueError, "W_dec"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), ValueError, "W_dec"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError, "W_dec"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), ValueError, "W_dec"),
    ],
)
def test_bad_matrix(W, exc, match):
    with pytest.raises(exc, match=match):
        nearest_neighbour_abs_cos(W)


def test_bad_matrix_messages_are_specific():
    with pytest.raises(ValueError, match="2 rows"):
        nearest_neighbour_abs_cos(torch.randn(1, 3))
    with pytest.raises(ValueError, match="norm 0"):
        nearest_neighbour_abs_cos(torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        nearest_neighbour_abs_cos(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        nn_abs_cos(torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]))


@pytest.mark.parametrize("rows", [[0, 4], [-1], [2, 100]])
def test_rows_out_of_range(rows):
    with pytest.raises(IndexError, match="rows"):
        nearest_neighbour_abs_cos(torch.randn(4, 3), torch.tensor(rows))


def test_rows_not_1d_and_bad_chunk():
    with pytest.raises(ValueError, match="rows"):
        nearest_neighbour_abs_cos(torch.randn(4, 3), torch.tensor([[0, 1]]))
    # a boolean mask (e.g. of active latents) or float indices would be silently misread
    with pytest.raises(ValueError, match="rows must be integer indices"):
        nearest_neighbour_abs_cos(torch.randn(4, 3), torch.tensor([True, False, True, False]))
    with pytest.raises(ValueError, match="rows must be integer indices"):
        nearest_neighbour_abs_cos(torch.randn(4, 3), torch.tensor([0.0, 2.0]))
    # plain Python lists of ints are fine
    W = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(nearest_neighbour_abs_cos(W, [2, 0]), ref_nn(W, [2, 0]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="chunk"):
        nn_abs_cos(torch.randn(4, 3), chunk=0)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"shape": "cubic"}, "shape"),
        ({"target": "bias"}, "target"),
        ({"scope": "some"}, "scope"),
        ({"reduction": "max"}, "reduction"),
        ({"tie_mode": "last"}, "tie_mode"),
        ({"tie_tol": -1e-3}, "tie_tol"),
        ({"tie_tol": 1.0}, "tie_tol"),
    ],
)
def test_bad_ortho_config(kw, match):
    with pytest.raises(ValueError, match=match):
        OrthoConfig(**kw)
