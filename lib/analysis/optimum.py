"""The SAE objective's optimum for 2-D toy data, independent of SAE training.

For a decoder ``D: [n, 2]`` (unit rows) and decoder bias ``b: [2]``, the best any encoder can do
on a sample ``x`` is the non-negative lasso

    L(x; D, b) = min_{c >= 0} ||x - b - c @ D||^2 + l1 * sum(c),

so ``E_x L`` lower-bounds the SAE objective (reconstruction + l1 * L1) of every SAE with that
decoder. In 2-D a solution with at most 2 non-zeros exists, so enumerating all supports of size
<= 2 (closed form each) gives the exact minimum. :func:`search_optimum` minimises ``E_x L`` over
decoder angles by a dense grid over sorted angle tuples (latents are interchangeable), then
refines the best grid points (angles and decoder bias) by gradient descent.

With ``ortho_weight > 0`` the searched objective is the *penalised* one,
``E_x L + ortho_weight * P(D)``, with ``P`` the orthogonality penalty of :mod:`sae_ortho.ortho` on the
decoder rows (every latent counted as active, which it is wherever every latent is used; an SAE
with a latent that never fires pays the penalty of its active latents only).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from torch import Tensor

from sae_ortho.core.validation import check_float, check_instance, check_int, check_tensor
from sae_ortho.ortho import PENALTY_SHAPES, OrthoConfig, nn_abs_cos


def best_code_loss(x: Tensor, D: Tensor, b: Tensor, l1: float) -> Tensor:
    """Mean non-negative-lasso objective per decoder.

    Args:
        x: [S, 2] samples.
        D: [..., n, 2] unit decoder rows.
        b: [..., 2] decoder bias.
        l1: L1 coefficient.

    Returns:
        [...] mean over samples of min_{c>=0} ||x - b - c D||^2 + l1 |c|_1.
    """
    x = check_tensor("x", x, 2)
    D = check_tensor("D", D, finite=True)
    b = check_tensor("b", b, finite=True)
    if x.shape[-1] != 2 or D.ndim < 2 or D.shape[-1] != 2 or b.shape[-1] != 2 or b.shape[:-1] != D.shape[:-2]:
        raise ValueError(
            f"best_code_loss needs x: [S, 2], D: [..., n, 2], b: [..., 2], got {tuple(x.shape)}, "
            f"{tuple(D.shape)}, {tuple(b.shape)}"
        )
    l1 = check_float("l1", l1, 0.0)
    y = x - b.unsqueeze(-2)  # [..., S, 2]
    yy = y.square().sum(-1)  # [..., S]
    p = y @ D.transpose(-1, -2)  # [..., S, n]
    c1 = torch.relu(p - l1 / 2)
    best = (yy.unsqueeze(-1) - c1.square()).amin(-1)  # includes c = 0 (c1 = 0)
    n = D.shape[-2]
    for k, m in combinations(range(n), 2):
        g = (D[..., k, :] * D[..., m, :]).sum(-1).unsqueeze(-1)  # [..., 1]
        det = 1 - g.square()
        ok = det > 1e-9
        safe = torch.where(ok, det, torch.ones_like(det))
        rk, rm = p[..., k] - l1 / 2, p[..., m] - l1 / 2
        ck, cm = (rk - g * rm) / safe, (rm - g * rk) / safe
        feasible = ok & (ck > 0) & (cm > 0)
        resid = y - ck.unsqueeze(-1) * D[..., k, :].unsqueeze(-2) - cm.unsqueeze(-1) * D[..., m, :].unsqueeze(-2)
        obj = resid.square().sum(-1) + l1 * (ck + cm)
        best = torch.minimum(best, torch.where(feasible, obj, torch.full_like(obj, float("inf"))))
    return best.mean(-1)


def decoder_penalty(D: Tensor, ortho: OrthoConfig) -> Tensor:
    """Orthogonality penalty of decoder rows, every row counted as active.

    D: [..., n, d] -> [...] mean over rows of ``shape(nearest-neighbour |cos|)`` (as
    :func:`sae_ortho.ortho.ortho_penalty` with all latents active; decoder target only).
    """
    if ortho.target != "decoder":
        raise ValueError(f"the optimum search penalises decoder rows; got ortho.target={ortho.target!r}")
    lead = D.shape[:-2]
    flat = D.reshape(-1, *D.shape[-2:])
    c = nn_abs_cos(flat, tie_tol=ortho.tie_tol, reduction=ortho.reduction, tie_mode=ortho.tie_mode,
                   chunk=ortho.chunk)
    return PENALTY_SHAPES[ortho.shape](c).mean(-1).reshape(lead)


@dataclass
class Optimum:
    """decoder: [n, 2] unit rows; bias: [2]; loss: the minimal mean objective found (including
    ``ortho_weight * penalty`` for a penalised search); penalty: the decoder's orthogonality
    penalty (not weighted; 0 for the vanilla objective)."""

    decoder: Tensor
    bias: Tensor
    loss: float
    penalty: float = 0.0


def _angles_to_rows(theta: Tensor) -> Tensor:
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)


def search_optimum(
    x: Tensor,
    n_latents: int,
    l1: float,
    grid_step_deg: float = 15.0,
    n_refine: int = 8,
    refine_steps: int = 200,
    grid_samples: int = 512,
    chunk: int = 1024,
    ortho_weight: float = 0.0,
    ortho: OrthoConfig | None = None,
) -> Optimum:
    """Minimise the best-code objective over decoder angles (and bias) for 2-D data.

    Args:
        x: [S, 2] samples (keep them fixed to compare SAEs on the same objective).
        n_latents: number of decoder rows.
        l1: L1 coefficient.
        grid_step_deg: spacing of the dense angle grid.
        n_refine: number of best grid points refined by gradient descent.
        refine_steps: Adam steps per refinement.
        grid_samples: samples used to rank grid points (refinement and the returned loss use all).
        ortho_weight: lambda_orth of the penalised objective (0: the vanilla objective).
        ortho: the penalty (default: the proposal, :class:`sae_ortho.ortho.OrthoConfig`).
    """
    x = check_tensor("x", x, 2)
    if x.shape[1] != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be [S, 2], got {tuple(x.shape)}")
    n_latents = check_int("n_latents", n_latents, 1)
    l1 = check_float("l1", l1, 0.0, low_open=True)
    grid_step_deg = check_float("grid_step_deg", grid_step_deg, 0.0, 90.0, low_open=True)
    n_refine = check_int("n_refine", n_refine, 1)
    refine_steps = check_int("refine_steps", refine_steps, 0)
    grid_samples = check_int("grid_samples", grid_samples, 1)
    chunk = check_int("chunk", chunk, 1)
    ortho_weight = check_float("ortho_weight", ortho_weight, 0.0)
    if ortho_weight > 0 and n_latents < 2:
        raise ValueError("a penalised search needs n_latents >= 2 (a nearest neighbour)")
    ortho = OrthoConfig() if ortho is None else check_instance("ortho", ortho, OrthoConfig)

    def objective(D: Tensor, b: Tensor, xs: Tensor) -> Tensor:
        out = best_code_loss(xs, D, b, l1)
        return out + ortho_weight * decoder_penalty(D, ortho) if ortho_weight > 0 else out

    grid = torch.deg2rad(torch.arange(0.0, 360.0, grid_step_deg))
    idx = torch.tensor(list(combinations(range(len(grid)), n_latents)))
    theta = grid[idx]  # [C, n]
    losses = []
    with torch.no_grad():
        for s in range(0, len(theta), chunk):
            D = _angles_to_rows(theta[s : s + chunk])
            losses.append(objective(D, torch.zeros(len(D), 2), x[:grid_samples]))
    losses = torch.cat(losses)
    top = losses.argsort()[: max(1, n_refine)]
    th = theta[top].clone().requires_grad_(True)
    b = torch.zeros(len(top), 2, requires_grad=True)
    opt = torch.optim.Adam([th, b], lr=1e-2)
    for _ in range(refine_steps):
        loss = objective(_angles_to_rows(th), b, x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def penalty(D: Tensor) -> float:
        return float(decoder_penalty(D, ortho)) if ortho_weight > 0 else 0.0

    with torch.no_grad():
        final = objective(_angles_to_rows(th), b, x)
        # keep the grid point if refinement did not help (the objective is only piecewise smooth)
        grid_best = objective(_angles_to_rows(theta[top]), torch.zeros(len(top), 2), x)
        i = int(final.argmin())
        if float(grid_best.min()) < float(final[i]):
            j = int(grid_best.argmin())
            D = _angles_to_rows(theta[top[j]])
            return Optimum(D, torch.zeros(2), float(grid_best[j]), penalty(D))
        D = _angles_to_rows(th[i].detach())
        return Optimum(D, b[i].detach().clone(), float(final[i]), penalty(D))


def angles_deg(rows: Tensor) -> np.ndarray:
    """Angle of each 2-D row in degrees, in [0, 360)."""
    rows = check_tensor("rows", rows, 2)
    if rows.shape[1] != 2:
        raise ValueError(f"rows must be [n, 2], got {tuple(rows.shape)}")
    return np.mod(np.rad2deg(np.arctan2(rows[:, 1].numpy(), rows[:, 0].numpy())), 360.0)
