"""Geometry of point clouds: the geometric median (SAELens and dictionary_learning start b_dec there)."""

from __future__ import annotations

import torch
from torch import Tensor

from sae_ortho.core.validation import check_float, check_int, check_tensor


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Geometric median of the rows of ``x: [..., S, d]`` -> ``[..., d]`` (Weiszfeld's algorithm,
    started at the mean; stops when no coordinate moves by more than ``tol`` times the scale)."""
    check_tensor("x", x)
    iters = check_int("iters", iters, 1)
    tol = check_float("tol", tol, 0.0)
    if x.ndim < 2 or x.shape[-2] == 0:
        raise ValueError(f"x must have shape [..., S, d] with S >= 1, got {tuple(x.shape)}")
    x = x.float()
    m = x.mean(-2)
    scale = x.std(-2).mean().clamp_min(1e-12) if x.shape[-2] > 1 else torch.tensor(1.0)
    for _ in range(iters):
        w = 1.0 / (x - m.unsqueeze(-2)).norm(dim=-1).clamp_min(1e-8 * float(scale))  # [..., S]
        new = (w.unsqueeze(-1) * x).sum(-2) / w.sum(-1, keepdim=True)
        done = bool((new - m).abs().max() <= tol * scale)
        m = new
        if done:
            break
    return m
