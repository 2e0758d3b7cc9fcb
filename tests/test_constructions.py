"""Tests of sae_ortho.data.constructions: duplicated latents and planted blockers as starting points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_ortho.data import constructions
from sae_ortho.data.toy import random_directions
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import nearest_neighbour_abs_cos


def make_sae(d: int, n: int, n_models: int | None = None, seed: int = 0) -> SAE:
    """A fresh SAE with random, distinct encoder biases (so copying a bias is visible)."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d=d, n_latents=n, n_models=n_models), generator=g)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=g))
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=g))
    return sae


def params(sae: SAE) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in sae.named_parameters()}


def per_model(sae: SAE, p: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    if sae.stacked:
        return [{k: v[i] for k, v in p.items()} for i in range(sae.cfg.n_models)]
    return [p]


def abs_cos(W: torch.Tensor) -> np.ndarray:
    Wn = W.double() / W.double().norm(dim=1, keepdim=True)
    return (Wn @ Wn.T).abs().numpy()


# ---------------------------------------------------------------------------------- duplicate_rows


@pytest.mark.parametrize("n_models", [None, 3])
def test_duplicate_rows_groups(n_models):
    d, n, n_groups, copies, noise = 8, 12, 2, 3, 0.05
    sae = make_sae(d, n, n_models)
    before = params(sae)
    constructions.duplicate_rows(sae, n_groups, copies, noise, torch.Generator().manual_seed(1))
    after = params(sae)
    torch.testing.assert_close(after["b_dec"], before["b_dec"], rtol=0, atol=0)
    models_before, models_after = per_model(sae, before), per_model(sae, after)
    for old, new in zip(models_before, models_after):
        edited = [g * copies + j for g in range(n_groups) for j in range(1, copies)]  # 1, 2, 4, 5
        untouched = [i for i in range(n) if i not in edited]  # the sources 0, 3 and latents 6..11
        for i in untouched:
            assert torch.equal(new["W_dec"][i], old["W_dec"][i]), i
            assert torch.equal(new["W_enc"][:, i], old["W_enc"][:, i]), i
            assert new["b_enc"][i] == old["b_enc"][i], i
        c = abs_cos(new["W_dec"])
        for g in range(n_groups):
            src = g * copies
            for j in range(src + 1, src + copies):
                assert not torch.equal(new["W_dec"][j], old["W_dec"][j])
                assert float(new["W_dec"][j].norm()) == pytest.approx(1.0, abs=1e-6)
                # encoder column: the copy's decoder row at the source's encoder norm; bias copied
                torch.testing.assert_close(new["W_enc"][:, j], new["W_dec"][j] * old["W_enc"][:, src].norm())
                assert new["b_enc"][j] == old["b_enc"][src]
                # near-duplicates: the copy's nearest rows are the other members of its group
                assert c[src, j] > 0.9
                group = [k for k in range(src, src + copies) if k != j]
                assert set(np.argsort(-c[j])[1:copies]) == set(group), j
    if n_models is not None:  # every model got its own noise
        d01 = after["W_dec"][0, 1] - before["W_dec"][0, 0]
        d11 = after["W_dec"][1, 1] - before["W_dec"][1, 0]
        assert not torch.allclose(d01, d11)


def test_duplicate_rows_without_noise_are_exact_copies():
    sae = make_sae(6, 8)
    before = params(sae)
    constructions.duplicate_rows(sae, 2, 4, 0.0, torch.Generator().manual_seed(0))
    for g in range(2):
        src = 4 * g
        unit = before["W_dec"][src] / before["W_dec"][src].norm()
        for j in range(src + 1, src + 4):
            torch.testing.assert_close(sae.W_dec[j].detach(), unit)
            torch.testing.assert_close(sae.W_enc[:, j].detach(), before["W_enc"][:, src])  # tied init
    assert np.allclose(abs_cos(sae.W_dec.detach())[:4, :4], 1.0)


def test_duplicate_rows_deterministic_in_generator():
    a, b, c = make_sae(8, 8), make_sae(8, 8), make_sae(8, 8)
    constructions.duplicate_rows(a, 1, 3, 0.1, torch.Generator().manual_seed(5))
    constructions.duplicate_rows(b, 1, 3, 0.1, torch.Generator().manual_seed(5))
    constructions.duplicate_rows(c, 1, 3, 0.1, torch.Generator().manual_seed(6))
    assert torch.equal(a.W_dec, b.W_dec)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_duplicate_rows_documented_cosine():
    d, noise, groups, copies = 16, 0.05, 100, 3
    sae = make_sae(d, groups * copies)
    constructions.duplicate_rows(sae, groups, copies, noise, torch.Generator().manual_seed(2))
    c = abs_cos(sae.W_dec.detach())
    gap = np.mean([1 - c[g * copies, g * copies + j] for g in range(groups) for j in range(1, copies)])
    assert gap == pytest.approx(noise**2 / 2, rel=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_groups": 0}, "n_groups must be a positive int"),
        ({"n_groups": 1.0}, "n_groups must be a positive int"),
        ({"copies": 1}, "copies must be an int >= 2"),
        ({"n_groups": 3, "copies": 3}, r"n_groups \* copies = 9 exceeds n_latents = 8"),
        ({"noise": -0.1}, r"noise must be a number in \[0, 1\)"),
        ({"noise": 1.0}, r"noise must be a number in \[0, 1\)"),
    ],
)
def test_duplicate_rows_errors(kwargs, match):
    sae = make_sae(4, 8)
    before = params(sae)
    args = {"n_groups": 2, "copies": 2, "noise": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        constructions.duplicate_rows(sae, generator=torch.Generator(), **args)
    for name, p in params(sae).items():
        assert torch.equal(p, before[name]), name


# ---------------------------------------------------------------------------------- plant_blockers

F, D = 4, 8


def true_dirs(seed: int = 3) -> torch.Tensor:
    return random_directions(F, D, orthogonal=True, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_models", [None, 2])
@pytest.mark.parametrize("at_solution", [True, False])
def test_plant_blockers(n_models, at_solution):
    true = true_dirs()
    sae = make_sae(D, F + 2 + 2, n_models)
    before = params(sae)
    blocked, cos, bias = [1, 3], 0.9, -5.0
    out = constructions.plant_blockers(
        sae, true, blocked, cos=cos, bias=bias, generator=torch.Generator().manual_seed(0), at_solution=at_solution
    )
    assert out == [F, F + 1]
    after = params(sae)
    torch.testing.assert_close(after["b_dec"], before["b_dec"], rtol=0, atol=0)
    for old, new in zip(per_model(sae, before), per_model(sae, after)):
        for b, f in zip(out, blocked):
            row = new["W_dec"][b]
            assert float(row.norm()) == pytest.approx(1.0, abs=1e-6)
            assert float(row @ true[f]) == pytest.approx(cos, abs=1e-6)
            torch.testing.assert_close(new["W_enc"][:, b], row)
            assert float(new["b_enc"][b]) == bias
        for i in (F + 2, F + 3):  # latents after the blockers are untouched
            assert torch.equal(new["W_dec"][i], old["W_dec"][i]) and new["b_enc"][i] == old["b_enc"][i]
            assert torch.equal(new["W_enc"][:, i], old["W_enc"][:, i])
        if at_solution:
            torch.testing.assert_close(new["W_dec"][:F], true)
            torch.testing.assert_close(new["W_enc"][:, :F], true.T)
            assert torch.equal(new["b_enc"][:F], torch.zeros(F))
        else:
            assert torch.equal(new["W_dec"][:F], old["W_dec"][:F])
            assert torch.equal(new["W_enc"][:, :F], old["W_enc"][:, :F])
            assert torch.equal(new["b_enc"][:F], old["b_enc"][:F])
    if n_models is not None:  # a separate random orthogonal part per model
        assert not torch.allclose(after["W_dec"][0, F], after["W_dec"][1, F])


def test_blockers_never_fire_below_minus_bias():
    true = true_dirs()
    sae = SAE(SAEConfig(d=D, n_latents=F + 2), generator=torch.Generator().manual_seed(0))  # b_dec = 0
    blockers = constructions.plant_blockers(
        sae, true, [0, 2], bias=-3.0, generator=torch.Generator().manual_seed(1), at_solution=True
    )
    g = torch.Generator().manual_seed(2)
    u = torch.randn(500, D, generator=g)
    u = u / u.norm(dim=1, keepdim=True)
    radius = 3.0 * torch.rand(500, 1, generator=g) * 0.999
    worst = 2.997 * sae.W_dec[blockers].detach()  # inputs along the blockers' own directions
    x = torch.cat([u * radius, worst, 2.997 * true])
    assert float(x.norm(dim=1).max()) < 3.0
    assert (sae.encode(x)[:, blockers] == 0).all()
    # just above the radius they do fire: the test can see firing
    assert (sae.encode(3.01 * sae.W_dec[blockers].detach()).diagonal() > 0).all()


def test_plant_blockers_normalises_true_directions():
    true = true_dirs()
    a, b = make_sae(D, F + 1), make_sae(D, F + 1)
    constructions.plant_blockers(a, true, [2], generator=torch.Generator().manual_seed(0), at_solution=True)
    constructions.plant_blockers(b, 3.0 * true, [2], generator=torch.Generator().manual_seed(0), at_solution=True)
    torch.testing.assert_close(a.W_dec, b.W_dec)
    torch.testing.assert_close(b.W_dec.norm(dim=1), torch.ones(F + 1))


def test_blocked_latents_nearest_neighbour_is_their_blocker():
    true = true_dirs()
    sae = make_sae(D, F + 3 + 1)
    blockers = constructions.plant_blockers(
        sae, true, [0, 1, 3], cos=0.99, generator=torch.Generator().manual_seed(4), at_solution=True
    )
    W = sae.W_dec.detach()
    nn = nearest_neighbour_abs_cos(W)
    c = abs_cos(W)
    np.fill_diagonal(c, -1.0)
    for b, f in zip(blockers, [0, 1, 3]):
        assert float(nn[f]) == pytest.approx(0.99, abs=1e-5)
        assert float(nn[b]) == pytest.approx(0.99, abs=1e-5)
        assert int(c[f].argmax()) == b and int(c[b].argmax()) == f
    assert float(nn[2]) < 0.9  # the unblocked feature has no close neighbour
    assert math.isclose(float(c[2].max()), float(nn[2]), abs_tol=1e-5)


@pytest.mark.parametrize(
    ("true_shape", "blocked", "n_latents", "cos", "match"),
    [
        ((F, D + 1), [0], 8, 0.9, r"true must have shape \[F, d=8\], got \(4, 9\)"),
        ((D,), [0], 8, 0.9, r"true must have shape"),
        ((F, D), [], 8, 0.9, "blocked must name at least one feature"),
        ((F, D), [4], 8, 0.9, r"blocked must hold distinct feature indices in \[0, 4\)"),
        ((F, D), [-1], 8, 0.9, r"blocked must hold distinct feature indices in \[0, 4\)"),
        ((F, D), [1, 1], 8, 0.9, "blocked must hold distinct feature indices"),
        ((F, D), [0, 1], 5, 0.9, r"need n_latents >= F \+ len\(blocked\) = 6, got 5"),
        ((F, D), [0], 8, 0.0, r"cos must be a number in \(0, 1\)"),
        ((F, D), [0], 8, 1.0, r"cos must be a number in \(0, 1\)"),
        ((F, D), [0], 8, -0.5, r"cos must be a number in \(0, 1\)"),
    ],
)
def test_plant_blockers_errors(true_shape, blocked, n_latents, cos, match):
    sae = make_sae(D, n_latents)
    before = params(sae)
    true = torch.randn(*true_shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        constructions.plant_blockers(sae, true, blocked, cos=cos, at_solution=True)
    for name, p in params(sae).items():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("n_models", [None, 2])
@pytest.mark.parametrize("n_latents", [3, 5, 8])
def test_ground_truth_start(n_models, n_latents):
    true = random_directions(5, 6, orthogonal=False, generator=torch.Generator().manual_seed(0)) * 3.0
    sae = SAE(SAEConfig(d=6, n_latents=n_latents, n_models=n_models), generator=torch.Generator().manual_seed(1))
    before = sae.W_dec.detach().clone()
    k = constructions.ground_truth_start(sae, true)
    assert k == min(5, n_latents)
    t = true[:k] / true[:k].norm(dim=1, keepdim=True)
    models = [sae] if n_models is None else [sae.select(i) for i in range(n_models)]
    for i, m in enumerate(models):
        torch.testing.assert_close(m.W_dec[:k], t)
        torch.testing.assert_close(m.W_enc[:, :k], t.T)
        assert torch.all(m.b_enc[:k] == 0) and torch.all(m.b_dec == 0)
        rest = before if n_models is None else before[i]
        assert torch.equal(m.W_dec[k:], rest[k:])  # latents beyond F keep their random init
    with pytest.raises(ValueError, match="true must have shape"):
        constructions.ground_truth_start(sae, true[:, :4])
    with pytest.raises(ValueError, match="norm 0"):
        constructions.ground_truth_start(sae, torch.zeros(2, 6))


def test_ground_truth_start_per_model():
    a = random_directions(3, 4, orthogonal=True, generator=torch.Generator().manual_seed(0))
    b = random_directions(3, 4, orthogonal=True, generator=torch.Generator().manual_seed(1))
    sae = SAE(SAEConfig(d=4, n_latents=3, n_models=2))
    constructions.ground_truth_start(sae, [a, b])
    torch.testing.assert_close(sae.W_dec[0], a)
    torch.testing.assert_close(sae.W_dec[1], b)
    with pytest.raises(ValueError, match="one set of true directions per model"):
        constructions.ground_truth_start(sae, [a])
