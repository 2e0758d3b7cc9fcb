"""Did an SAE converge? Two gates that need no ground truth.

- :func:`plateau`: the relative drop of the (smoothed) training loss over the last ``tail`` of the
  run; a run still improving by more than a few percent over its last 20% has not converged.
- :func:`moved_from_init`: how far the decoder rows moved from their initialisation (row-wise
  cosine); random rows already look like a dictionary, so a decoder still near its start has
  learnt little whatever its reconstruction.

Pure math on arrays: nothing here trains, loads or plots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def plateau(losses, tail: float = 0.2) -> float:
    """Relative loss drop over the last ``tail`` of the run: ``(L_before - L_end) / L_end``.

    ``losses``: [n_records] or [n_records, M] (one column per stacked model), in step order.
    ``L_end`` is the mean over the last half of the tail window and ``L_before`` the mean over the
    half window just before the tail starts (means, so single noisy batches do not decide).
    Returns a float, or [M] for a stack.
    """
    a = np.asarray(losses, dtype=float)
    if not 0 < tail < 1:
        raise ValueError(f"tail must be in (0, 1), got {tail!r}")
    n = a.shape[0]
    w = max(1, round(n * tail / 2))
    start = n - max(2 * w, 1)
    if start - w < 0:
        raise ValueError(f"need at least {3 * w} loss records for tail={tail}, got {n}")
    before = a[start - w : start].mean(0)
    end = a[n - w :].mean(0)
    return (before - end) / np.abs(end)


@dataclass
class Movement:
    """How far decoder rows moved from initialisation.

    Attributes:
        mean_cos: mean over rows of cos(final row, initial row).
        near_init: fraction of rows with that cosine >= ``threshold``.
        threshold: the cosine that counts as "still near its initialisation".
    """

    mean_cos: float
    near_init: float
    threshold: float


def moved_from_init(W_init: Tensor, W_final: Tensor, threshold: float = 0.7) -> Movement:
    """Row-wise cosine between initial and final decoders. W_init, W_final: [n, d]."""
    a = torch.nn.functional.normalize(torch.as_tensor(W_init).detach().double(), dim=-1)
    b = torch.nn.functional.normalize(torch.as_tensor(W_final).detach().double(), dim=-1)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"W_init and W_final must be [n, d] of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    cos = (a * b).sum(-1)
    return Movement(float(cos.mean()), float((cos >= threshold).double().mean()), threshold)
