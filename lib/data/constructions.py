"""Starting points built on purpose for the ablations of the orthogonality loss (notebook 04).

Each function edits a (possibly stacked) :class:`sae_ortho.models.sae.SAE` in place before training, so that a
failure mode the study brief names is present from step 0 and an ablation can show which variant
of the penalty escapes it:

- :func:`duplicate_rows`: groups of latents start with (nearly) the same decoder and encoder
  rows, so each latent has several tied nearest neighbours at |cos| ~ 1 (tie handling, and the
  flattening sigmoid shape, which gives almost no gradient there);
- :func:`plant_blockers`: rarely-active "blocker" latents whose decoder rows sit next to some
  true features (the blocking failure mode: if the blocker's row cannot move, the penalty pushes
  a latent that learns the feature away from it);
- :func:`orthogonal_encoder_composed_decoder`: orthogonal encoder directions with composed
  (non-orthogonal) decoder directions, the case a penalty on encoder rows cannot see;
- :func:`ground_truth_start`: decoder rows at the true features, the reference start for telling
  an optimum of the objective from a local minimum that training from a random start ends in.

Pure math: imports nothing from training, loading or plotting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sae_ortho.core.validation import check_bool, check_float, check_instance, check_int, check_tensor
from sae_ortho.models.sae import SAE


def _models(sae: SAE) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per model: (W_enc [d, n], b_enc [n], W_dec [n, d]) views that can be edited in place."""
    if sae.stacked:
        return [(sae.W_enc[i], sae.b_enc[i], sae.W_dec[i]) for i in range(sae.cfg.n_models)]
    return [(sae.W_enc, sae.b_enc, sae.W_dec)]


@torch.no_grad()
def duplicate_rows(sae: SAE, n_groups: int, copies: int, noise: float, generator: torch.Generator) -> None:
    """Make latents ``[g * copies, (g + 1) * copies)`` copies of latent ``g * copies`` for
    ``g < n_groups`` (decoder row and encoder column), each perturbed by a random vector of norm
    ~``noise`` (Gaussian, scaled by 1/sqrt(d)) and renormalised, so a copy has |cos| ~1 - noise^2/2
    with its source and ~1 - noise^2 with another copy.

    Raises:
        ValueError: sizes that do not fit the dictionary, or a negative noise.
    """
    check_instance("sae", sae, SAE)
    n_groups = check_int("n_groups", n_groups, 1)
    copies = check_int("copies", copies, 2)
    check_instance("generator", generator, torch.Generator, optional=True)
    if n_groups * copies > sae.cfg.n_latents:
        raise ValueError(
            f"n_groups * copies = {n_groups * copies} exceeds n_latents = {sae.cfg.n_latents}"
        )
    noise = check_float("noise", noise, 0.0, 1.0, high_open=True)
    for W_enc, b_enc, W_dec in _models(sae):
        for g in range(n_groups):
            src = g * copies
            for j in range(src + 1, src + copies):
                row = W_dec[src] + noise / math.sqrt(W_dec.shape[1]) * torch.randn(W_dec.shape[1], generator=generator)
                W_dec[j] = row / row.norm()
                W_enc[:, j] = W_dec[j] * W_enc[:, src].norm()
                b_enc[j] = b_enc[src]


@torch.no_grad()
def plant_blockers(
    sae: SAE,
    true: Tensor,
    blocked: Sequence[int],
    cos: float = 0.99,
    bias: float = -10.0,
    generator: torch.Generator | None = None,
    at_solution: bool = False,
) -> list[int]:
    """Place rarely-active latents next to some true features, so they block them.

    With ``at_solution``, latents ``0..F-1`` first get the true directions as decoder rows
    (encoder = decoder transpose, zero bias); otherwise they keep their random init and must
    still learn the features. For the ``j``-th feature ``f`` in ``blocked``, latent ``F + j`` (a "blocker") gets the
    decoder row ``cos * f + sqrt(1 - cos^2) * u`` (``u`` a random unit vector orthogonal to f)
    and encoder bias ``bias``, so it never fires on inputs of norm below ``-bias``. Its row sits at
    |cos| = ``cos`` from feature f, so any latent that learns f has the blocker as its nearest
    neighbour (with ``at_solution``, latent f does from the start).

    Args:
        true: [F, d] unit true feature directions.
        blocked: indices of the features to block.

    Returns:
        The blocker latent indices (``F + j``).

    Raises:
        ValueError: shapes that do not fit, indices out of range, ``cos`` outside (0, 1).
    """
    check_instance("sae", sae, SAE)
    true = check_tensor("true", true)
    if true.ndim != 2 or true.shape[1] != sae.cfg.d:
        raise ValueError(f"true must have shape [F, d={sae.cfg.d}], got {tuple(true.shape)}")
    n_true = true.shape[0]
    cos = check_float("cos", cos, 0.0, 1.0, low_open=True, high_open=True)
    bias = check_float("bias", bias)
    at_solution = check_bool("at_solution", at_solution)
    check_instance("generator", generator, torch.Generator, optional=True)
    blocked = [check_int(f"blocked[{i}]", f) for i, f in enumerate(blocked)]
    if not blocked:
        raise ValueError("blocked must name at least one feature")
    if len(set(blocked)) != len(blocked) or not all(0 <= f < n_true for f in blocked):
        raise ValueError(f"blocked must hold distinct feature indices in [0, {n_true}), got {blocked}")
    if n_true + len(blocked) > sae.cfg.n_latents:
        raise ValueError(
            f"need n_latents >= F + len(blocked) = {n_true + len(blocked)}, got {sae.cfg.n_latents}"
        )
    t = true / true.norm(dim=1, keepdim=True)
    blockers = [n_true + j for j in range(len(blocked))]
    for W_enc, b_enc, W_dec in _models(sae):
        if at_solution:
            W_dec[:n_true] = t
            W_enc[:, :n_true] = t.T
            b_enc[:n_true] = 0.0
        for b, f in zip(blockers, blocked):
            u = torch.randn(sae.cfg.d, generator=generator)
            u = u - (u @ t[f]) * t[f]
            u = u / u.norm()
            W_dec[b] = cos * t[f] + math.sqrt(1 - cos**2) * u
            W_enc[:, b] = W_dec[b]
            b_enc[b] = bias
    return blockers


@torch.no_grad()
def orthogonal_encoder_composed_decoder(sae: SAE, true: Tensor, pairs: Sequence[tuple[int, int]]) -> None:
    """A start whose encoder directions are orthogonal while its decoder directions are not.

    Latent i gets encoder column ``true[i]`` (orthonormal true features give an orthonormal
    encoder) and decoder row ``true[i]``, except that for each pair ``(a, b)`` latent ``a``'s
    decoder row becomes the composition ``(true[a] + true[b]) / sqrt(2)``: |cos| 0.71 with
    latent ``b``'s row, while every pair of encoder columns stays orthogonal. A penalty on encoder
    directions sees nothing to correct here; one on decoder rows does.

    Args:
        true: [F, d] true feature directions, F <= n_latents.
        pairs: disjoint (a, b) feature index pairs.
    """
    check_instance("sae", sae, SAE)
    true = check_tensor("true", true)
    n_true = true.shape[0] if true.ndim else 0
    if true.ndim != 2 or true.shape[1] != sae.cfg.d or n_true > sae.cfg.n_latents:
        raise ValueError(f"true must have shape [F <= {sae.cfg.n_latents}, {sae.cfg.d}], got {tuple(true.shape)}")
    used = [i for p in pairs for i in p]
    if not pairs or len(set(used)) != len(used) or not all(0 <= i < n_true for i in used):
        raise ValueError(f"pairs must be non-empty, disjoint, with indices in [0, {n_true}), got {list(pairs)}")
    t = true / true.norm(dim=1, keepdim=True)
    for W_enc, b_enc, W_dec in _models(sae):
        W_enc[:, :n_true] = t.T
        b_enc[:n_true] = 0.0
        W_dec[:n_true] = t
        for a, b in pairs:
            W_dec[a] = (t[a] + t[b]) / (t[a] + t[b]).norm()


@torch.no_grad()
def ground_truth_start(sae: SAE, true: Tensor | Sequence[Tensor]) -> int:
    """Start at the ground truth: latent i gets decoder row ``true[i] / |true[i]|`` and encoder
    column equal to it (the tied init at the true features), with zero encoder and decoder bias,
    for ``i < min(F, n_latents)``. Latents beyond F keep their random init; with fewer latents than
    features, the first ``n_latents`` features are used. Training then continues as usual, so the
    SAE ends in the minimum nearest the ground truth.

    Args:
        true: [F, d] true feature directions, or one [F, d] per model of a stack.

    Returns:
        The number of latents placed at true features.
    """
    models = _models(sae)
    trues = [true] * len(models) if isinstance(true, Tensor) else list(true)
    if len(trues) != len(models):
        raise ValueError(f"need one set of true directions per model: {len(trues)} for {len(models)} models")
    k = 0
    for t in trues:
        if t.ndim != 2 or t.shape[1] != sae.cfg.d:
            raise ValueError(f"true must have shape [F, d={sae.cfg.d}], got {tuple(t.shape)}")
        if (t.norm(dim=1) == 0).any():
            raise ValueError("true has a direction of norm 0")
    for (W_enc, b_enc, W_dec), t in zip(models, trues):
        k = min(t.shape[0], sae.cfg.n_latents)
        u = (t / t.norm(dim=1, keepdim=True))[:k].to(W_dec.dtype)
        W_dec[:k] = u
        W_enc[:, :k] = u.T
        b_enc[:k] = 0.0
    sae.b_dec.zero_()
    return k
