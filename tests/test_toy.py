"""Tests of sae_ortho.data.toy: firing statistics, correlation structure, amplitudes, embeddings, Anders toy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import (
    ANDERS_P_SINGLE,
    SphereData,
    ToyData,
    ToyDataConfig,
    anders_config,
    anders_data,
    composed_directions,
    fit_tms_embedding,
    random_directions,
    stack_sampler,
)


def _assert_rates(fired: torch.Tensor, probs: torch.Tensor, n_se: float = 4.0):
    n = fired.shape[0]
    rate = fired.double().mean(0)
    p = probs.double()
    se = torch.sqrt(p * (1 - p) / n)
    assert torch.all((rate - p).abs() <= n_se * se), (rate, p, se)


# --- firing probabilities -----------------------------------------------------------------------


def test_uniform_firing_rate():
    setup(0, threads=1)
    cfg = ToyDataConfig(n_features=8, d=8, p=0.1)
    torch.testing.assert_close(cfg.firing_probabilities(), torch.full((8,), 0.1))
    coeffs = ToyData(cfg).sample_coeffs(20000)
    _assert_rates(coeffs > 0, cfg.firing_probabilities())


def test_zipf_firing_rate():
    setup(0, threads=1)
    cfg = ToyDataConfig(n_features=10, d=10, firing="zipf", p_max=0.4, p_min=0.02, zipf_exponent=1.2)
    probs = cfg.firing_probabilities()
    # the power law written out: p_min + (p_max - p_min) * (r^-a - F^-a) / (1 - F^-a)
    r = torch.arange(1, 11, dtype=torch.float64)
    want = 0.02 + 0.38 * (r**-1.2 - 10**-1.2) / (1 - 10**-1.2)
    torch.testing.assert_close(probs.double(), want, rtol=1e-5, atol=1e-7)
    coeffs = ToyData(cfg).sample_coeffs(20000)
    _assert_rates(coeffs > 0, probs)


def test_zipf_single_feature():
    cfg = ToyDataConfig(n_features=1, d=1, firing="zipf", p_max=0.25)
    assert cfg.firing_probabilities().tolist() == [0.25]


# --- Gaussian-copula correlated firing ----------------------------------------------------------


def _indicator_corr_theory(p1: float, p2: float, rho: float) -> float:
    """Pearson correlation of 1[Z1 > t1], 1[Z2 > t2] for standard bivariate normal with corr rho."""
    t1, t2 = norm.ppf(1 - p1), norm.ppf(1 - p2)
    both_below = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([t1, t2])
    p11 = 1 - norm.cdf(t1) - norm.cdf(t2) + both_below
    return (p11 - p1 * p2) / math.sqrt(p1 * (1 - p1) * p2 * (1 - p2))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("firing", ["uniform", "zipf"])
def test_copula_firing_correlation(firing):
    setup(0, threads=1)
    n = 40000
    cfg = ToyDataConfig(
        n_features=6,
        d=6,
        firing=firing,
        **({"p": 0.2} if firing == "uniform" else {"p_max": 0.4, "p_min": 0.1}),
        structure="copula",
        rho=0.7,
        block_size=3,
    )
    corr = cfg.correlation_matrix()
    assert corr[0, 1] == pytest.approx(0.7) and corr[0, 3] == 0 and corr[4, 4] == 1
    probs = cfg.firing_probabilities().double().numpy()
    fired = (ToyData(cfg).sample_coeffs(n) > 0).double().numpy()
    _assert_rates(torch.from_numpy(fired), torch.from_numpy(probs))
    tol = 5 / math.sqrt(n)
    for i, j in ((0, 1), (0, 2), (3, 5), (4, 5)):  # same block
        want = _indicator_corr_theory(probs[i], probs[j], 0.7)
        assert 0.2 < want < 0.7  # thresholding weakens the Gaussian correlation
        assert _corr(fired[:, i], fired[:, j]) == pytest.approx(want, abs=tol), (i, j)
    for i, j in ((0, 3), (2, 3), (1, 5)):  # different blocks
        assert abs(_corr(fired[:, i], fired[:, j])) < tol, (i, j)


def test_independent_features_uncorrelated():
    setup(0, threads=1)
    fired = (ToyData(ToyDataConfig(n_features=4, d=4, p=0.3)).sample_coeffs(40000) > 0).double().numpy()
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs(_corr(fired[:, i], fired[:, j])) < 5 / math.sqrt(40000)


def test_copula_with_rho_zero_is_independent():
    assert ToyDataConfig(n_features=4, d=4, structure="copula", rho=0.0).correlation_matrix() is None
    # rho without structure="copula" would be ignored: refused instead
    with pytest.raises(ValueError, match="rho=0.5 has no effect with structure='independent'"):
        ToyDataConfig(n_features=4, d=4, rho=0.5)


def test_copula_of_blocks_of_one_feature_refuses_rho():
    """Blocks of one feature have no pairs to correlate: rho used to be ignored silently."""
    with pytest.raises(ValueError, match=r"^rho=0.5 has no effect with block_size=1 .*or use block_size >= 2$"):
        ToyDataConfig(n_features=4, d=4, structure="copula", rho=0.5, block_size=1)
    assert ToyDataConfig(n_features=4, d=4, structure="copula", block_size=1).correlation_matrix() is None


@pytest.mark.parametrize("value", ["false", "no", 0, 1, None])
def test_fast_sampler_must_be_a_bool(value):
    """fast_sampler="false" is truthy: it used to switch the fast sampler (another random stream) on."""
    with pytest.raises(TypeError, match=rf"^fast_sampler must be a bool \(True or False\), got {value!r}$"):
        ToyData(ToyDataConfig(n_features=4, d=4), fast_sampler=value)


# --- exclusive sets, amplitudes, p_single -------------------------------------------------------


def test_exclusive_sets_one_per_set():
    setup(0, threads=1)
    cfg = ToyDataConfig(n_features=9, d=9, structure="exclusive_sets", set_size=3, amplitude="constant")
    coeffs = ToyData(cfg).sample_coeffs(3000)
    per_set = (coeffs > 0).reshape(3000, 3, 3).sum(-1)
    assert torch.all(per_set == 1)
    assert set(coeffs.unique().tolist()) == {0.0, 1.0}
    # the choice within a set is uniform
    _assert_rates(coeffs > 0, cfg.firing_probabilities())
    torch.testing.assert_close(cfg.firing_probabilities(), torch.full((9,), 1 / 3))


def test_exclusive_sets_p_set():
    setup(0, threads=1)
    cfg = ToyDataConfig(n_features=4, d=4, structure="exclusive_sets", set_size=2, p_set=0.3)
    coeffs = ToyData(cfg).sample_coeffs(20000)
    per_set = (coeffs > 0).reshape(20000, 2, 2).sum(-1)
    assert per_set.max() <= 1
    _assert_rates(per_set, torch.tensor([0.3, 0.3]))
    _assert_rates(coeffs > 0, cfg.firing_probabilities())
    torch.testing.assert_close(cfg.firing_probabilities(), torch.full((4,), 0.15))


def test_amplitude_shared_uniform_constant():
    setup(0, threads=1)
    base = {"n_features": 6, "d": 6, "structure": "exclusive_sets", "set_size": 2}
    shared = ToyData(ToyDataConfig(**base, amplitude="shared")).sample_coeffs(2000)
    nz = shared[shared > 0].reshape(2000, 3)  # 3 active features per sample
    assert torch.all(nz == nz[:, :1])
    assert 0.45 < nz[:, 0].mean() < 0.55 and nz.max() < 1  # U[0, 1)
    uniform = ToyData(ToyDataConfig(**base, amplitude="uniform")).sample_coeffs(2000)
    nzu = uniform[uniform > 0].reshape(2000, 3)
    assert (nzu[:, 0] != nzu[:, 1]).float().mean() > 0.99
    assert 0.45 < nzu.mean() < 0.55 and nzu.max() < 1
    const = ToyData(ToyDataConfig(**base, amplitude="constant")).sample_coeffs(100)
    assert set(const.unique().tolist()) == {0.0, 1.0}


def test_p_single_fraction():
    setup(0, threads=1)
    n = 20000
    cfg = ToyDataConfig(n_features=4, d=4, structure="exclusive_sets", set_size=2, p_single=0.4)
    coeffs = ToyData(cfg).sample_coeffs(n)
    k = (coeffs > 0).sum(-1)
    assert set(k.unique().tolist()) <= {1, 2}
    single = k == 1
    _assert_rates(single[:, None], torch.tensor([0.4]))
    # the one-hot feature is uniform over all features
    which = coeffs[single].argmax(-1)
    counts = torch.bincount(which, minlength=4).double()
    _assert_rates(torch.nn.functional.one_hot(which, 4), torch.full((4,), 0.25))
    assert counts.min() > 0
    # and carries a U[0, 1) amplitude
    amp = coeffs[single].amax(-1)
    assert amp.max() < 1 and amp.mean().item() == pytest.approx(0.5, abs=0.02)
    assert amp.std().item() == pytest.approx(1 / math.sqrt(12), abs=0.02)


def test_x_is_coeffs_times_directions():
    setup(0, threads=1)
    for emb in ("orthogonal", "random"):
        data = ToyData(ToyDataConfig(n_features=5, d=7, embedding=emb, p=0.3))
        b = data.sample(64)
        assert b.x.shape == (64, 7) and b.coeffs.shape == (64, 5)
        torch.testing.assert_close(b.x, b.coeffs @ data.directions)
        assert torch.all(b.coeffs >= 0)


def test_embeddings():
    d_orth = ToyData(ToyDataConfig(n_features=5, d=8)).directions
    torch.testing.assert_close(d_orth @ d_orth.T, torch.eye(5), atol=1e-5, rtol=0)
    d_rand = ToyData(ToyDataConfig(n_features=20, d=4, embedding="random")).directions
    assert d_rand.shape == (20, 4)
    torch.testing.assert_close(d_rand.norm(dim=1), torch.ones(20), atol=1e-5, rtol=0)
    given = torch.randn(3, 2)
    data = ToyData(ToyDataConfig(n_features=3, d=2, embedding="given"), directions=given)
    torch.testing.assert_close(data.directions, given)
    # the generator makes the embedding reproducible
    a = random_directions(4, 6, True, torch.Generator().manual_seed(1))
    b = random_directions(4, 6, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_given_embedding_bad_input():
    cfg = ToyDataConfig(n_features=3, d=2, embedding="given")
    with pytest.raises(ValueError, match="directions"):
        ToyData(cfg)
    with pytest.raises(ValueError, match="directions"):
        ToyData(cfg, directions=torch.randn(2, 3))
    with pytest.raises(ValueError, match="directions"):
        ToyData(cfg, directions=torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="directions"):
        ToyData(ToyDataConfig(n_features=3, d=3), directions=torch.eye(3))


def test_stack_sampler():
    setup(0, threads=1)
    datasets = [ToyData(ToyDataConfig(n_features=3, d=4, p=0.5)) for _ in range(3)]
    x = stack_sampler(datasets, 16)
    assert x.shape == (3, 16, 4)
    assert not torch.equal(x[0], x[1])


def test_stack_sampler_repeated_dataset():
    # consecutive repeats of one data set are drawn in one call: still independent batches
    setup(0, threads=1)
    a = ToyData(ToyDataConfig(n_features=3, d=4, p=0.5))
    b = ToyData(ToyDataConfig(n_features=2, d=4, embedding="random", p=0.5))
    x = stack_sampler([a, a, a, b, a], 200)
    assert x.shape == (5, 200, 4)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(x[i], x[j])
    # slices of `a` lie in the span of a's (orthonormal) directions; b's slice does not
    P = a.directions.T @ a.directions
    for i in (0, 1, 2, 4):
        torch.testing.assert_close(x[i] @ P, x[i], atol=1e-5, rtol=0)
    assert (x[3] @ P - x[3]).abs().max() > 1e-2
    # with p = 0.5 per feature, about half of each slice's coefficients are active
    for i in (0, 1, 2, 4):
        active = (x[i] @ a.directions.T).abs() > 1e-6
        assert 0.4 < active.float().mean() < 0.6


def test_sphere_data():
    setup(0, threads=1)
    batch = SphereData(3).sample(20000)
    x = batch.x
    assert batch.coeffs.shape == (20000, 0)
    assert x.shape == (20000, 3)
    r = x.norm(dim=1)
    assert r.max() < 1
    assert r.mean().item() == pytest.approx(0.5, abs=0.01)  # a ~ U[0, 1)
    u = x / r[:, None]
    torch.testing.assert_close(u.mean(0), torch.zeros(3), atol=0.03, rtol=0)  # isotropic
    torch.testing.assert_close(u.T @ u / len(u), torch.eye(3) / 3, atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="batch"):
        SphereData(3).sample(0)
    with pytest.raises(ValueError, match="d"):
        SphereData(0)


def test_sampling_reproducible_with_setup():
    cfg = ToyDataConfig(n_features=6, d=6, firing="zipf", structure="copula", rho=0.5)
    setup(3, threads=1)
    a = ToyData(cfg).sample(50)
    setup(3, threads=1)
    b = ToyData(cfg).sample(50)
    assert torch.equal(a.x, b.x) and torch.equal(a.coeffs, b.coeffs)


# --- Anders et al. toy --------------------------------------------------------------------------


def test_anders_config_semantics():
    setup(0, threads=1)
    n = 4000
    for exp in (1, 2, 3):
        cfg = anders_config(exp)
        assert (cfg.n_features, cfg.structure, cfg.set_size, cfg.p_set) == (4, "exclusive_sets", 2, 1.0)
    c1 = ToyData(anders_config(1)).sample_coeffs(n)
    c2 = ToyData(anders_config(2)).sample_coeffs(n)
    c3 = ToyData(anders_config(3)).sample_coeffs(n)
    for c in (c1, c2):  # one x (features 0, 1) and one y (features 2, 3) in every sample
        assert torch.all((c[:, :2] > 0).sum(-1) == 1) and torch.all((c[:, 2:] > 0).sum(-1) == 1)
    # experiment 1: the x and y amplitudes are equal (perfect correlation); 2: independent
    assert torch.equal(c1[:, :2].sum(-1), c1[:, 2:].sum(-1))
    a2x, a2y = c2[:, :2].sum(-1).numpy(), c2[:, 2:].sum(-1).numpy()
    assert abs(_corr(a2x, a2y)) < 5 / math.sqrt(n)
    # experiment 3: a fraction 0.75 are single one-hot features
    single = ((c3 > 0).sum(-1) == 1).float()
    assert set((c3 > 0).sum(-1).unique().tolist()) == {1, 2}
    _assert_rates(single[:, None], torch.tensor([ANDERS_P_SINGLE]))
    with pytest.raises(ValueError, match="experiment"):
        anders_config(4)


@pytest.mark.parametrize("experiment", [1, 2])
def test_fit_tms_embedding_antipodal(experiment):
    setup(0, threads=1)
    W, loss = fit_tms_embedding(ToyData(anders_config(experiment)), steps=1500, batch=256)
    assert W.shape == (4, 2)
    assert loss < 1e-3
    Wn = W / W.norm(dim=1, keepdim=True)
    cos = Wn @ Wn.T
    assert cos[0, 1] < -0.95 and cos[2, 3] < -0.95  # x1 = -x2, y1 = -y2
    assert abs(cos[0, 2]) < 0.1  # the two sets take orthogonal axes
    data = anders_data(experiment, W)
    assert data.directions.shape == (4, 2) and torch.equal(data.directions, W)
    assert data.cfg.d == 2 and data.cfg.embedding == "given"
    assert data.cfg.amplitude == anders_config(experiment).amplitude


def test_fit_tms_embedding_bad_args():
    data = ToyData(anders_config(1))
    for name in ("d_hidden", "steps", "batch"):
        with pytest.raises(ValueError, match=name):
            fit_tms_embedding(data, **{name: 0})


def test_composed_directions():
    g = torch.Generator().manual_seed(2)
    dirs = torch.randn(6, 5, generator=g, dtype=torch.float64)  # 3 sets of 2
    out = composed_directions(dirs, set_size=2)
    assert out.shape == (8, 5)
    want = []
    for a in (0, 1):
        for b in (2, 3):
            for c in (4, 5):
                v = dirs[a] + dirs[b] + dirs[c]
                want.append(v / v.norm())
    torch.testing.assert_close(out, torch.stack(want))
    # Anders: x1 = -x2, y1 = -y2 gives the four diagonals
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = composed_directions(torch.stack([x, -x, y, -y]), set_size=2)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(out, torch.tensor([[s, s], [s, -s], [-s, s], [-s, -s]]))
    assert composed_directions(dirs, set_size=3).shape == (9, 5)
    with pytest.raises(ValueError, match="set_size"):
        composed_directions(dirs, set_size=4)


# --- bad configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_features": 0}, "n_features"),
        ({"n_features": 2.5}, "n_features"),
        ({"d": -1}, "d must"),
        ({"p": 1.5}, "p must"),
        ({"p": float("nan")}, "p must"),
        ({"p_set": -0.1}, "p_set"),
        ({"p_single": float("inf")}, "p_single"),
        ({"structure": "hierarchical"}, "structure"),
        ({"embedding": "sparse"}, "embedding"),
        ({"firing": "poisson"}, "firing"),
        ({"amplitude": "gaussian"}, "amplitude"),
        ({"n_features": 5, "d": 3}, "n_features"),  # orthogonal needs d >= n_features
        ({"rho": 1.0}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"zipf_exponent": 0.0}, "zipf_exponent"),
        ({"firing": "zipf", "p_min": 0.5, "p_max": 0.1}, "p_min"),
        ({"structure": "exclusive_sets", "set_size": 3}, "set_size"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_bad_config(kw, match):
    base = {"n_features": 4, "d": 4}
    with pytest.raises(ValueError, match=match):
        ToyDataConfig(**{**base, **kw})


def test_orthogonal_needs_enough_dims_message():
    with pytest.raises(ValueError, match="embedding='orthogonal' needs d >= n_features"):
        ToyDataConfig(n_features=5, d=3)
    ToyDataConfig(n_features=5, d=3, embedding="random")  # superposition is fine


def test_bad_batch():
    data = ToyData(ToyDataConfig(n_features=2, d=2))
    with pytest.raises(ValueError, match="batch"):
        data.sample(0)


def test_isometric_embedding_preserves_the_gram_matrix():
    from sae_ortho.data.toy import isometric_embedding

    base = random_directions(9, 2, orthogonal=False, generator=torch.Generator().manual_seed(0))
    for d in (2, 8, 128):
        W, Q = isometric_embedding(base, d, generator=torch.Generator().manual_seed(d))
        assert W.shape == (9, d) and Q.shape == (d, 2)
        torch.testing.assert_close(W @ W.T, base @ base.T, atol=1e-5, rtol=0)
        torch.testing.assert_close(Q.T @ Q, torch.eye(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(W @ Q, base, atol=1e-5, rtol=0)  # back to the plane's coordinates
    W, _ = isometric_embedding(base, 16, generator=torch.Generator().manual_seed(1))
    assert torch.linalg.matrix_rank(W) == 2  # the same 2-D geometry, in a plane of R^16
    with pytest.raises(ValueError, match="d must be an int >= the directions' dimension 2"):
        isometric_embedding(base, 1)
    with pytest.raises(ValueError, match="directions must be"):
        isometric_embedding(torch.zeros(3), 4)


def test_fast_sampler_matches_saelens_sampler():
    cfg = ToyDataConfig(16, 16, firing="zipf", p_max=0.3, p_min=0.01, structure="copula", rho=0.7, block_size=4)
    slow = ToyData(cfg, generator=torch.Generator().manual_seed(0))
    fast = ToyData(cfg, generator=torch.Generator().manual_seed(0), fast_sampler=True)
    assert torch.equal(slow.directions, fast.directions)
    setup(0, threads=1)
    a = slow.sample(20000)
    setup(0, threads=1)
    b = fast.sample(20000)
    # the same Gaussian draws: firing decisions differ only where a Gaussian sits within float
    # rounding of its threshold (later draws, e.g. amplitudes, then follow another stream)
    fa, fb = a.coeffs > 0, b.coeffs > 0
    assert (fa != fb).float().mean() < 1e-4
    assert abs(float(b.coeffs[fb].mean()) - 0.5) < 0.02  # U[0, 1) amplitudes
    # and the same statistics: firing rates and within-block correlation of firing
    _assert_rates(fb, cfg.firing_probabilities())
    torch.testing.assert_close(torch.corrcoef(fb.T.float()), torch.corrcoef(fa.T.float()), atol=0.02, rtol=0)
    # independent firing: U[0,1) < p, the same rates and no correlation
    ind_cfg = ToyDataConfig(8, 8, firing="zipf", p_max=0.4, p_min=0.05)
    ind = ToyData(ind_cfg, fast_sampler=True)
    assert ind._chol is None and ind.fast_sampler
    setup(0, threads=1)
    f = ind.sample(20000).coeffs > 0
    _assert_rates(f, ind_cfg.firing_probabilities())
    c = torch.corrcoef(f.T.float())
    assert (c - torch.eye(8)).abs().max() < 0.04
    # mutually exclusive sets never use SAELens's generator: the flag changes nothing there
    sets = ToyData(anders_config(1), fast_sampler=True)
    assert not sets.fast_sampler
