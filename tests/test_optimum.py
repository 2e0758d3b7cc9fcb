"""Tests of sae_ortho.analysis.optimum: the closed-form 2-D non-negative lasso and the decoder search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from sae_ortho.analysis.optimum import angles_deg, best_code_loss, search_optimum
from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import composed_directions
from sae_ortho.metrics import matched_angle_error


def _brute_force(y: np.ndarray, D: np.ndarray, l1: float, delta: float = 1e-8) -> float:
    """min_{c >= 0} ||y - c D||^2 + l1 sum(c), by NNLS on an augmented problem.

    With A = D.T, ||[y; -l1/(2 sqrt(delta)) 1] - [A; sqrt(delta) I] c||^2 equals the objective
    plus delta ||c||^2 plus a constant, so the NNLS solution is optimal up to delta ||c||^2; the
    returned value is the true objective at that solution.
    """
    n = len(D)
    A = np.vstack([D.T, math.sqrt(delta) * np.eye(n)])
    b = np.concatenate([y, np.full(n, -l1 / (2 * math.sqrt(delta)))])
    c, _ = nnls(A, b, maxiter=1000)
    r = y - c @ D
    return float(r @ r + l1 * c.sum())


def _unit_rows(theta_deg):
    t = np.deg2rad(np.asarray(theta_deg, dtype=np.float64))
    return np.stack([np.cos(t), np.sin(t)], axis=-1)


@pytest.mark.parametrize("n,l1,seed", [(1, 0.1, 0), (2, 0.3, 1), (3, 0.05, 2), (5, 0.2, 3), (4, 1.0, 4)])
def test_best_code_loss_matches_brute_force(n, l1, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(12, 2)) * 1.5
    decoders = [_unit_rows(rng.uniform(0, 360, size=n)) for _ in range(3)]
    biases = [np.zeros(2), rng.normal(size=2) * 0.3, rng.normal(size=2) * 0.3]
    D = torch.tensor(np.stack(decoders))  # [3, n, 2] leading batch dimension
    b = torch.tensor(np.stack(biases))
    got = best_code_loss(torch.tensor(x), D, b, l1)
    assert got.shape == (3,)
    for k in range(3):
        want = np.mean([_brute_force(xi - biases[k], decoders[k], l1) for xi in x])
        assert got[k].item() == pytest.approx(want, abs=1e-4)
        single = best_code_loss(torch.tensor(x), D[k], b[k], l1)  # no batch dims
        assert single.shape == () and single.item() == pytest.approx(got[k].item(), abs=1e-12)


def test_best_code_loss_degenerate_decoders():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 2))
    for rows in ([30.0, 30.0, 100.0], [30.0, 210.0], [0.0, 0.0]):  # duplicate and antiparallel rows
        D = _unit_rows(rows)
        got = best_code_loss(
            torch.tensor(x), torch.tensor(D), torch.zeros(2, dtype=torch.float64), 0.2
        ).item()
        want = np.mean([_brute_force(xi, D, 0.2) for xi in x])
        assert got == pytest.approx(want, abs=1e-4), rows


def test_best_code_loss_hand_values():
    # y along the single atom: c = |y| - l1/2, loss = |y|^2 - c^2; y opposite: c = 0, loss = |y|^2
    D = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.1, 0.0]], dtype=torch.float64)
    l1 = 0.4
    want = [(4 - 1.8**2), 1.0, 0.01]
    for xi, w in zip(x, want):
        assert best_code_loss(xi[None], D, torch.zeros(2, dtype=torch.float64), l1).item() == pytest.approx(w)


def _anders_like(S=256, offset_deg=10.0, seed=0):
    """Experiment-1-like data: x1 = -x2, y1 = -y2 orthogonal; each sample a * (x_i + y_j)."""
    setup(seed, threads=1)
    t = math.radians(offset_deg)
    x1 = torch.tensor([math.cos(t), math.sin(t)])
    y1 = torch.tensor([-math.sin(t), math.cos(t)])
    rays = composed_directions(torch.stack([x1, -x1, y1, -y1]), set_size=2)  # 4 unit rays
    which = torch.randint(4, (S,))
    amp = torch.rand(S)
    return amp[:, None] * rays[which] * math.sqrt(2), rays


def test_search_optimum_finds_rays():
    x, rays = _anders_like()
    l1 = 0.05
    opt = search_optimum(x, n_latents=4, l1=l1, grid_step_deg=15.0, n_refine=3, refine_steps=200)
    assert opt.decoder.shape == (4, 2) and opt.bias.shape == (2,)
    torch.testing.assert_close(opt.decoder.norm(dim=-1), torch.ones(4))
    # the rays (at 55, 145, ...) are off the 15-degree grid: refinement has to find them
    assert matched_angle_error(opt.decoder, rays) < 2.0
    assert opt.loss == pytest.approx(best_code_loss(x, opt.decoder, opt.bias, l1).item(), rel=1e-5)
    # the optimum is at least as good as the exact rays, and better than a rotated decoder
    at_rays = best_code_loss(x, rays, torch.zeros(2), l1).item()
    assert opt.loss <= at_rays + 1e-6
    rot = math.radians(20)
    R = torch.tensor([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    assert best_code_loss(x, rays @ R.T, torch.zeros(2), l1).item() > at_rays + 1e-3


def test_angles_deg():
    rows = torch.tensor(_unit_rows([0.0, 90.0, 181.0, 359.0, -30.0]))
    np.testing.assert_allclose(angles_deg(rows), [0.0, 90.0, 181.0, 359.0, 330.0], atol=1e-9)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"x": torch.zeros(5, 3)}, "x must"),
        ({"n_latents": 0}, "n_latents"),
        ({"l1": 0.0}, "l1"),
        ({"grid_step_deg": 0.0}, "grid_step_deg"),
        ({"grid_step_deg": 120.0}, "grid_step_deg"),
    ],
)
def test_search_optimum_bad_args(kw, match):
    args = {"x": torch.zeros(5, 2), "n_latents": 2, "l1": 0.1, **kw}
    with pytest.raises(ValueError, match=match):
        search_optimum(**args)


def _two_rays(sep_deg=40.0, S=400, seed=0):
    """Samples a * u_k with u_1, u_2 at +-sep/2 around 20 degrees and a ~ U[0, 1.5)."""
    setup(seed, threads=1)
    rays = torch.tensor(_unit_rows([20 - sep_deg / 2, 20 + sep_deg / 2]), dtype=torch.float32)
    which = torch.randint(2, (S,))
    return 1.5 * torch.rand(S)[:, None] * rays[which], rays


def test_penalised_search_finds_the_known_optimum():
    """One-hot data along two orthogonal axes: rows along the axes reconstruct it and have penalty
    -log(1 - 0) = 0, so the penalised optimum is (up to the free bias) the axes; the vanilla
    optimum splays its rows instead (it can trade alignment for a bias, the penalty cannot)."""
    from sae_ortho.analysis.optimum import decoder_penalty
    from sae_ortho.ortho import OrthoConfig

    setup(0, threads=1)
    axes = torch.tensor(_unit_rows([0.0, 90.0]), dtype=torch.float32)
    x = torch.rand(400, 1) * axes[torch.randint(2, (400,))]
    l1, w = 0.05, 0.05
    vanilla = search_optimum(x, 2, l1, grid_step_deg=5.0, n_refine=4)
    opt = search_optimum(x, 2, l1, grid_step_deg=5.0, n_refine=4, ortho_weight=w)
    assert matched_angle_error(opt.decoder, axes) < 1.0
    cos = abs(float(opt.decoder[0] @ opt.decoder[1]))
    assert cos < 0.01 and opt.penalty == pytest.approx(-math.log(1 - cos), rel=1e-4, abs=1e-7)
    assert float(decoder_penalty(opt.decoder, OrthoConfig())) == pytest.approx(opt.penalty, rel=1e-6, abs=1e-9)
    assert opt.loss == pytest.approx(best_code_loss(x, opt.decoder, opt.bias, l1).item() + w * opt.penalty, rel=1e-5)
    at_axes = best_code_loss(x, axes, torch.zeros(2), l1).item()  # the axes with zero bias, penalty 0
    assert opt.loss <= at_axes + 1e-6
    assert abs(float(vanilla.decoder[0] @ vanilla.decoder[1])) > 0.05  # the vanilla optimum is not orthogonal
    assert opt.loss > vanilla.loss


def test_penalised_search_trades_reconstruction_for_orthogonality():
    """Two rays 40 degrees apart: the penalty pushes the rows apart, at a vanilla-objective cost."""
    from sae_ortho.analysis.optimum import decoder_penalty
    from sae_ortho.ortho import OrthoConfig

    setup(0, threads=1)
    rays = torch.tensor(_unit_rows([0.0, 40.0]), dtype=torch.float32)
    x = torch.rand(400, 1) * rays[torch.randint(2, (400,))]
    l1 = 0.05
    vanilla = search_optimum(x, 2, l1, grid_step_deg=5.0, n_refine=4)
    seps = []
    sep0 = float(np.rad2deg(np.arccos(abs(float(vanilla.decoder[0] @ vanilla.decoder[1])))))
    for w in (0.001, 0.003):
        opt = search_optimum(x, 2, l1, grid_step_deg=5.0, n_refine=4, ortho_weight=w)
        seps.append(float(np.rad2deg(np.arccos(abs(float(opt.decoder[0] @ opt.decoder[1]))))))
        # better on its own objective than the vanilla optimum, worse on the vanilla objective
        pen_at_vanilla = best_code_loss(x, vanilla.decoder, vanilla.bias, l1).item() + w * float(
            decoder_penalty(vanilla.decoder, OrthoConfig()))
        assert opt.loss < pen_at_vanilla
        assert best_code_loss(x, opt.decoder, opt.bias, l1).item() > vanilla.loss
    assert sep0 + 2 < seps[0] < seps[1] - 2  # pushed apart, more so with a larger weight


def test_penalised_search_bad_args():
    from sae_ortho.ortho import OrthoConfig

    x = torch.rand(20, 2)
    with pytest.raises(ValueError, match="ortho_weight"):
        search_optimum(x, 2, 0.1, ortho_weight=-1.0)
    with pytest.raises(ValueError, match="target"):
        search_optimum(x, 2, 0.1, ortho_weight=0.1, ortho=OrthoConfig(target="encoder"))
    with pytest.raises(ValueError, match="n_latents >= 2"):
        search_optimum(x, 1, 0.1, ortho_weight=0.1)
