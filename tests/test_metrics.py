"""Tests of sae_ortho.metrics on constructed cases and against SAELens's reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens.synthetic.evals import DeadLatentsCalculator, L0Calculator, mean_correlation_coefficient

from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import ToyData, ToyDataConfig
from sae_ortho.metrics import (
    ALONE,
    ATOM,
    COMPOSITION,
    IN_COMBINATION,
    MISSED,
    OTHER,
    cosine_matrix,
    dead_fraction,
    detect_compositions,
    feature_recovery,
    fvu,
    l0,
    matched_angle_error,
    mcc,
    mmcs,
    nn_abs_cos_distribution,
)
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.training.train import TrainConfig, train


def _orthonormal(n, d, seed=0):
    g = torch.randn(d, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(g)
    return q.T.contiguous()


def _rot(deg):
    t = math.radians(deg)
    return torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)


# --- mmcs / mcc -----------------------------------------------------------------------------------


def test_mmcs_mcc_one_for_permuted_sign_flipped_scaled_copy():
    true = torch.randn(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64)[:, None]
    learned = true[perm] * signs * torch.linspace(0.1, 3.0, 6, dtype=torch.float64)[:, None]
    assert mmcs(learned, true) == pytest.approx(1.0, abs=1e-12)
    assert mcc(learned, true) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("deg", [0.0, 10.0, 37.0, 60.0])
def test_mmcs_mcc_known_angle(deg):
    # True rows e0..e3 in 8 dims; learned row i is e_i rotated by `deg` towards e_{i+4}
    # (orthogonal to everything else), so every best |cos| is cos(deg).
    e = torch.eye(8, dtype=torch.float64)
    t = math.radians(deg)
    true = e[:4]
    learned = math.cos(t) * e[:4] + math.sin(t) * e[4:]
    assert mmcs(learned, true) == pytest.approx(math.cos(t), abs=1e-12)
    assert mcc(learned, true) == pytest.approx(math.cos(t), abs=1e-12)
    assert matched_angle_error(learned, true) == pytest.approx(deg, abs=1e-5)


def test_mcc_is_one_to_one():
    e = torch.eye(3, dtype=torch.float64)
    # One learned direction u halfway between the two true features is the best match of both:
    # mmcs counts it twice, mcc only once (the other true feature gets e2, |cos| = 0).
    u = (e[0] + e[1]) / math.sqrt(2)
    learned, true = torch.stack([u, e[2]]), e[:2]
    assert mmcs(learned, true) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert mcc(learned, true) == pytest.approx(1 / (2 * math.sqrt(2)), abs=1e-12)
    # mmcs = 1 but mcc < 1: two true features share a direction, and the single learned copy of
    # it can only be matched to one of them.
    true = torch.stack([e[0], e[0], e[1]])
    learned = torch.stack([e[0], e[1], e[2]])
    assert mmcs(learned, true) == pytest.approx(1.0, abs=1e-12)
    assert mcc(learned, true) == pytest.approx(2 / 3, abs=1e-12)
    # duplicate learned rows: only one of them is matched
    learned = torch.stack([e[0], e[0], 0.6 * e[0] + 0.8 * e[1]])
    assert mmcs(learned, e[:2]) == pytest.approx(0.9, abs=1e-12)
    assert mcc(learned, e[:2]) == pytest.approx(0.9, abs=1e-12)
    assert mcc(learned[:2], e[:2]) == pytest.approx(0.5, abs=1e-12)


def test_mcc_unequal_counts_averages_matched_pairs():
    e = torch.eye(4, dtype=torch.float64)
    learned = torch.stack([e[0], e[1], e[2], e[3]])
    true = torch.stack([e[1], (e[2] + e[3]) / math.sqrt(2)])
    # two pairs: e1-e1 (1) and e2 or e3 with the mixed direction (1/sqrt 2)
    assert mcc(learned, true) == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-12)
    assert mcc(true, learned) == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-12)


@pytest.fixture(scope="module")
def trained_toy_sae():
    """A tiny ReLU SAE trained briefly on toy data, with its data and true directions."""
    setup(0, threads=1)
    data = ToyData(ToyDataConfig(n_features=6, d=5, embedding="random", p=0.15))
    sae = SAE(SAEConfig(d=5, n_latents=8))
    train(
        sae,
        lambda b: data.sample(b).x,
        TrainConfig(steps=150, batch_size=128, lr=1e-2, l1_coeff=0.05),
        progress=False,
    )
    batch = data.sample(512)
    with torch.no_grad():
        x_hat, codes = sae(batch.x)
    return sae, data, batch, x_hat, codes


def test_mcc_agrees_with_saelens(trained_toy_sae):
    sae, data, *_ = trained_toy_sae
    learned = sae.W_dec.detach()
    true = data.directions
    ours = mcc(learned, true)
    assert 0.2 < ours < 1.0  # a real, imperfect SAE (not a degenerate case)
    # SAELens: mean_correlation_coefficient(features_a, features_b), both [n, hidden_dim]; symmetric.
    assert ours == pytest.approx(mean_correlation_coefficient(learned, true), abs=1e-6)
    assert ours == pytest.approx(mean_correlation_coefficient(true, learned), abs=1e-6)
    # and on random matrices of several shapes
    g = torch.Generator().manual_seed(2)
    for n_a, n_b in ((5, 5), (9, 4), (3, 7)):
        a, b = torch.randn(n_a, 6, generator=g), torch.randn(n_b, 6, generator=g)
        assert mcc(a, b) == pytest.approx(mean_correlation_coefficient(a, b), abs=1e-6)


def test_l0_dead_agree_with_saelens(trained_toy_sae):
    *_, codes = trained_toy_sae
    codes = codes.clone()
    codes[:, 3] = 0  # make sure at least one latent is dead
    calc = L0Calculator()
    calc.add_batch(codes)
    assert l0(codes).item() == pytest.approx(calc.compute(), rel=1e-6)
    dead = DeadLatentsCalculator(codes.shape[1])
    dead.add_batch(codes)
    assert dead.compute() >= 1
    assert dead_fraction(codes).item() * codes.shape[1] == pytest.approx(dead.compute(), abs=1e-9)


# --- model-only metrics -------------------------------------------------------------------------


def test_l0_by_hand():
    codes = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.1, 0.0, 5.0]])
    assert l0(codes).item() == pytest.approx((2 + 0 + 3) / 3)
    stacked = torch.stack([codes, torch.ones(3, 4)])
    torch.testing.assert_close(l0(stacked), torch.tensor([5 / 3, 4.0]))


def test_dead_fraction_by_hand():
    codes = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0, 0.0]])
    assert dead_fraction(codes).item() == pytest.approx(3 / 5)
    stacked = torch.stack([codes, torch.zeros(2, 5), torch.ones(2, 5)])
    torch.testing.assert_close(dead_fraction(stacked), torch.tensor([0.6, 1.0, 0.0]))


def test_fvu():
    g = torch.Generator().manual_seed(3)
    x = (
        torch.randn(50, 4, generator=g, dtype=torch.float64)
        * torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
        + 7
    )
    assert fvu(x, x).item() == 0.0
    assert fvu(x, x.mean(0, keepdim=True).expand_as(x)).item() == pytest.approx(1.0, abs=1e-12)
    # by hand: residual sum of squares over total sum of squares
    x_hat = x + 0.1 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    want = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu(x, x_hat).item() == pytest.approx(want.item(), rel=1e-12)
    stacked = fvu(torch.stack([x, x]), torch.stack([x, x_hat]))
    torch.testing.assert_close(stacked, torch.stack([torch.zeros((), dtype=torch.float64), want]))


def test_nn_abs_cos_distribution():
    W = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    got = nn_abs_cos_distribution(W)
    assert isinstance(got, np.ndarray) and got.shape == (4,)
    np.testing.assert_allclose(got, [1.0, 0.8, 0.8, 1.0], atol=1e-6)


# --- matched angle error, feature recovery --------------------------------------------------------


def test_matched_angle_error_rotated_and_permuted():
    angles = torch.tensor([0.0, 70.0, 150.0, 250.0], dtype=torch.float64)
    ref = torch.stack([torch.cos(torch.deg2rad(angles)), torch.sin(torch.deg2rad(angles))], dim=1)
    learned = (ref @ _rot(5.0).T)[[2, 0, 3, 1]] * 3.0
    assert matched_angle_error(learned, ref) == pytest.approx(5.0, abs=1e-6)
    # signed: a flipped row is 180 degrees off
    assert matched_angle_error(-ref[:1], ref[:1]) == pytest.approx(180.0, abs=1e-6)
    # different per-row rotations average
    learned = torch.stack([_rot(a) @ r for a, r in zip((2.0, -4.0, 6.0, 0.0), ref)])
    assert matched_angle_error(learned, ref) == pytest.approx(3.0, abs=1e-6)


def test_feature_recovery():
    e = torch.eye(3, dtype=torch.float64)
    learned = torch.stack([e[2], 0.6 * e[0] + 0.8 * e[1], -e[0]])
    best, idx = feature_recovery(learned, e)
    np.testing.assert_allclose(best, [1.0, 0.8, 1.0], atol=1e-12)
    assert idx.tolist() == [2, 1, 0]


def test_cosine_matrix_bad_input():
    with pytest.raises(ValueError, match=r"^a must be a non-empty 2-D"):
        cosine_matrix(torch.randn(3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        mcc(torch.tensor([[float("nan"), 1.0]]), torch.eye(2))
    with pytest.raises(ValueError, match="dimensions"):
        mmcs(torch.randn(2, 3), torch.randn(2, 4))


# --- composition detection ----------------------------------------------------------------------


def _unit(v):
    return v / v.norm()


def test_detect_compositions_constructed():
    f = _orthonormal(6, 32, seed=4)
    rand = _unit(torch.randn(32, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    latents = torch.stack(
        [
            _unit(f[0] + f[1]),  # composition of 0 and 1
            f[2] * 2.5,  # atom of 2 (scale does not matter)
            _unit(f[2] + f[3]),  # composition of 2 and 3 (2 is also alone)
            rand,  # other
            -f[4],  # anti-aligned: codes are non-negative, so not an atom of 4
            _unit(f[0] + f[3] + f[5]),  # a three-part composition
        ]
    )
    rep = detect_compositions(latents, f)
    assert rep.latent_kind == [COMPOSITION, ATOM, COMPOSITION, OTHER, OTHER, COMPOSITION]
    assert rep.latent_parts[0] == (0, 1)
    assert rep.latent_parts[1] == (2,)
    assert rep.latent_parts[2] == (2, 3)
    assert rep.latent_parts[3] == () and rep.latent_parts[4] == ()
    assert rep.latent_parts[5] == (0, 3, 5)
    assert rep.feature_status == [
        IN_COMBINATION,
        IN_COMBINATION,
        ALONE,
        IN_COMBINATION,
        MISSED,
        IN_COMBINATION,
    ]
    assert rep.n_compositions == 3
    assert rep.fraction(MISSED) == pytest.approx(1 / 6)
    assert rep.fraction(ALONE) == pytest.approx(1 / 6)
    # with max_parts=2 the three-part latent is not a composition
    rep2 = detect_compositions(latents, f, max_parts=2)
    assert rep2.latent_kind[5] == OTHER
    assert rep2.feature_status[5] == MISSED


def test_detect_compositions_unequal_mixture_and_min_share():
    f = _orthonormal(4, 16, seed=6)
    mostly_f0 = _unit(f[0] + 0.1 * f[1])  # cos with f0 = 0.995
    mixed = _unit(f[0] + 0.4 * f[1])  # cos with f0 = 0.93, share of f1 = 0.29
    rep = detect_compositions(torch.stack([mostly_f0, mixed]), f, atom_tol=0.999)
    assert rep.latent_kind == [OTHER, COMPOSITION]  # f1 carries < 15 % of mostly_f0
    assert rep.latent_parts[1] == (0, 1)
    rep = detect_compositions(torch.stack([mostly_f0, mixed]), f, atom_tol=0.999, min_share=0.05)
    assert rep.latent_kind == [COMPOSITION, COMPOSITION]
    rep = detect_compositions(torch.stack([mostly_f0, mixed]), f)  # default atom_tol 0.9
    assert rep.latent_kind == [ATOM, ATOM]
    assert rep.feature_status == [ALONE, MISSED, MISSED, MISSED]


def test_detect_compositions_anders_2d():
    # Anders et al.: x1 = -x2, y1 = -y2 in 2-D; a latent along x1 + y1 is a composition.
    x1, y1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    true = torch.stack([x1, -x1, y1, -y1])
    latents = torch.stack([_unit(x1 + y1), _unit(-x1 + y1), _unit(x1 - y1), _unit(-x1 - y1)])
    rep = detect_compositions(latents, true)
    assert rep.latent_kind == [COMPOSITION] * 4
    assert sorted(rep.latent_parts) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert rep.feature_status == [IN_COMBINATION] * 4


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"atom_tol": 0.0}, "atom_tol"),
        ({"fit_tol": 1.5}, "fit_tol"),
        ({"max_parts": 1}, "max_parts"),
        ({"min_share": 1.0}, "min_share"),
    ],
)
def test_detect_compositions_bad_args(kw, match):
    with pytest.raises(ValueError, match=match):
        detect_compositions(torch.eye(3), torch.eye(3), **kw)


# --- signed recovery and the activation-based composition detector ----------------------------------


def test_signed_scores_tell_a_feature_from_its_antipode():
    x1 = torch.tensor([[1.0, 0.0]])
    true = torch.cat([x1, -x1])  # antipodal true features, as in the Anders et al. toy model
    learned = torch.cat([x1, x1 * 2])  # both latents along x1: -x1 is not representable
    assert mmcs(learned, true) == pytest.approx(1.0) and mcc(learned, true) == pytest.approx(1.0)
    assert mmcs(learned, true, signed=True) == pytest.approx(0.0)  # (1 + -1) / 2
    assert mcc(learned, true, signed=True) == pytest.approx(0.0)
    assert mmcs(true, true, signed=True) == pytest.approx(1.0) and mcc(true.flip(0), true, signed=True) == pytest.approx(1.0)


def _constructed_codes(S=4000, seed=0):
    rng = np.random.default_rng(seed)
    on = rng.random((S, 8)) < 0.3
    on[:, 7] = on[:, 6]  # features 6 and 7 never occur apart
    coeffs = on * rng.uniform(0.1, 1.0, size=on.shape)
    f = on
    noise = rng.random(S) < 0.1
    fires = np.stack([
        f[:, 0] & f[:, 1],  # 0: composition of 0 and 1
        f[:, 2],  # 1: an atom of 2
        f[:, 3] | f[:, 4],  # 2: fires on either alone: not a composition
        f[:, 0] & f[:, 1] & f[:, 5],  # 3: a composition of three
        np.zeros(S, bool),  # 4: dead
        (f[:, 0] & f[:, 1]) | (f[:, 0] & noise),  # 5: together, and 10% of the time on 0 alone
        f[:, 6] & f[:, 7],  # 6: parts never apart: cannot be tested
    ], axis=1)
    codes = fires * rng.uniform(0.5, 1.0, size=fires.shape)
    return torch.tensor(codes), torch.tensor(coeffs)


def test_activation_compositions_constructed():
    from sae_ortho.metrics import MERGER, activation_compositions

    codes, coeffs = _constructed_codes()
    rep = activation_compositions(codes, coeffs)
    assert rep.latent_kind == [COMPOSITION, OTHER, MERGER, COMPOSITION, OTHER, COMPOSITION, OTHER]
    assert rep.latent_parts[0] == (0, 1) and rep.latent_parts[5] == (0, 1) and rep.latent_parts[2] == (3, 4)
    assert rep.n_compositions == 3 and rep.n_mergers == 1
    assert rep.rate_together[0] == pytest.approx(1.0) and rep.rate_apart[0] == pytest.approx(0.0)
    assert 0.05 < rep.rate_apart[5] < 0.15 and np.isnan(rep.rate_together[1])
    assert rep.rate_apart[2] == pytest.approx(1.0)  # a merger fires on each part alone
    # latent 3 fires on 0, 1 and 5 together: its pairs fire together at ~0.3 only
    three = activation_compositions(codes, coeffs, max_parts=3, min_rate=0.5)
    assert three.latent_kind[3] == COMPOSITION and three.latent_parts[3] == (0, 1, 5)
    strict = activation_compositions(codes, coeffs, max_ratio=0.05)  # latent 5 fires too often apart
    assert strict.latent_kind[5] == OTHER and strict.latent_kind[0] == COMPOSITION


def test_activation_compositions_bad_args():
    from sae_ortho.metrics import activation_compositions

    codes, coeffs = _constructed_codes(S=50)
    with pytest.raises(ValueError, match="same S"):
        activation_compositions(codes[:10], coeffs)
    with pytest.raises(ValueError, match="max_parts"):
        activation_compositions(codes, coeffs, max_parts=1)
    with pytest.raises(ValueError, match="min_rate"):
        activation_compositions(codes, coeffs, min_rate=0.0)
    with pytest.raises(ValueError, match="min_support"):
        activation_compositions(codes, coeffs, min_support=0)


def test_detector_agreement():
    from sae_ortho.metrics import ActivationCompositionReport, CompositionReport, detector_agreement

    geo = CompositionReport([ATOM, COMPOSITION, COMPOSITION, OTHER], [(0,), (0, 1), (2, 3), ()], [ALONE] * 4)
    act = ActivationCompositionReport([OTHER, COMPOSITION, OTHER, COMPOSITION], [(), (0, 1), (), (1, 2)],
                                      np.full(4, np.nan), np.full(4, np.nan))
    out = detector_agreement(geo, act)
    assert out == {"agree": 0.5, "both": 1, "geometric_only": 1, "activation_only": 1, "geometric_as_merger": 0,
                   "same_parts": 1.0}
    merged = ActivationCompositionReport([OTHER, COMPOSITION, "merger", OTHER], [(), (0, 1), (2, 3), ()],
                                         np.full(4, np.nan), np.full(4, np.nan))
    assert detector_agreement(geo, merged)["geometric_as_merger"] == 1
    with pytest.raises(ValueError, match="different latents"):
        detector_agreement(geo, ActivationCompositionReport([OTHER], [()], np.zeros(1), np.zeros(1)))


# ------------------------------------------------------------- integer and numpy inputs (issue 26)
def test_fvu_accepts_integer_tensors_and_arrays():
    """An integer x used to raise a raw RuntimeError from torch.mean; integers are converted."""
    x = torch.tensor([[1, 0], [0, 2], [3, 1]])
    x_hat = torch.tensor([[1, 0], [0, 1], [2, 1]])
    want = fvu(x.double(), x_hat.double())
    for a, b in ((x, x_hat), (x.numpy(), x_hat.numpy()), (x.numpy().astype(np.int32), x_hat.float()), (x > 0, x_hat > 0)):
        got = fvu(a, b)
        assert torch.isfinite(got).all()
    torch.testing.assert_close(fvu(x, x_hat), want)
    torch.testing.assert_close(fvu(x.numpy(), x_hat.numpy()), want)


@pytest.mark.parametrize("convert", [lambda t: t.long(), lambda t: t.numpy(), lambda t: t.numpy().astype(np.int64)])
def test_ground_truth_metrics_accept_integer_and_numpy_inputs(convert):
    W = torch.eye(3) * 2
    assert mmcs(convert(W), convert(W)) == 1.0 and mcc(convert(W), convert(W)) == 1.0
    assert l0(convert(W)).item() == 1.0 and dead_fraction(convert(W)).item() == 0.0


def test_metric_parameters_and_inputs_give_clear_errors():
    from sae_ortho.metrics import activation_compositions, detector_agreement, shared_fraction

    codes, coeffs = _constructed_codes(S=50)
    with pytest.raises(TypeError, match=r"^threshold must be a number in \(0, 1\], got '0.5'$"):
        shared_fraction(torch.eye(3), torch.eye(3), threshold="0.5")  # was: '<' not supported ...
    with pytest.raises(TypeError, match=r"^min_rate must be a number in \(0, 1\], got 'a'$"):
        activation_compositions(codes, coeffs, min_rate="a")
    with pytest.raises(TypeError, match=r"^codes must be a tensor or numpy array, got str 'ab'$"):
        activation_compositions("ab", coeffs)
    with pytest.raises(TypeError, match=r"^geometric must be a CompositionReport, got int 1$"):
        detector_agreement(1, 2)  # was: AttributeError
    activation_compositions(codes, coeffs, max_parts=np.int64(3))  # numpy ints are ints
