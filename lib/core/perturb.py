"""The perturbation test's hook: every tensor the analysis reads from disk passes through :func:`perturb`.

With ``SAE_STUDY_PERTURB=eps`` set (``make nbval-perturbed``), stored weights and cached activations
are multiplied by ``1 + eps * N(0, 1)``, a model of another CPU's rounding; a checked notebook output
that moves under it depends on which kernels ran and is printed too finely. Unset, it is the identity.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

PERTURB_VAR = "SAE_STUDY_PERTURB"


def perturb(t: Tensor, salt: int = 0) -> Tensor:
    """``t`` times ``1 + eps * N(0, 1)`` with ``eps`` from ``SAE_STUDY_PERTURB`` (unchanged when unset):
    the perturbation test's model of another CPU's rounding. Deterministic given ``salt``."""
    eps = float(os.environ.get(PERTURB_VAR) or 0.0)
    if eps == 0.0 or not t.is_floating_point():
        return t
    g = torch.Generator().manual_seed(12345 + salt)
    noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
    return (t.double() * (1 + eps * noise)).to(t.dtype)
