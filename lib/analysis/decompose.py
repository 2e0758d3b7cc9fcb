"""Sparse non-negative decomposition of directions into rows of a dictionary.

The question behind this module (study Q9/Q10): is a direction, e.g. an SAE latent's decoder row,
well explained by a *non-negative* combination of a few other directions? Non-negative, because
SAE codes are non-negative: a latent that stands for "A and B together" points along
``a_A * d_A + a_B * d_B`` with positive amplitudes, never along ``d_A - d_B``.

- :func:`decompose` / :func:`decompose_rows`: the best non-negative combination of at most
  ``max_terms`` dictionary rows (cosine of the fit, coefficients, and the best single row).
- :func:`is_combination`: the decision rule "a combination of >= 2 rows, clearly better than any
  single row".
- :func:`combination_fraction`: the fraction of a dictionary's rows that are combinations of a
  reference dictionary (or of its own other rows), the language-model measure of Q9.
- :func:`precision_recall`: for scoring a decomposition test against ground truth (Q10).

How the search works: every row of the dictionary is normalised. For each target, the
``n_candidates`` rows with the largest *signed* cosine are the candidates; every subset of at most
``max_terms`` candidates is solved at once (vectorised over targets and subsets) as an
unconstrained least-squares problem in its small Gram matrix, and kept only if all coefficients
are positive. That is exact non-negative least squares over the subsets: the optimal non-negative
fit with at most ``max_terms`` terms has some support with strictly positive coefficients, on which
it equals the unconstrained least-squares fit (KKT), so it is among the kept subsets, and every
kept subset is a feasible non-negative fit. The winning support is then refitted with
``scipy.optimize.nnls`` for the reported coefficients and cosine. Pure math: nothing here trains,
loads or plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from sae_ortho.core.validation import (
    ParameterTypeError,
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_tensor,
    is_int,
)

# A larger support must beat a smaller one by more than this (in cosine) to be preferred, so an
# exact a + b is reported as {a, b} and not as {a, b, c} with a rounding-noise coefficient on c.
_TIE = 1e-9
# Ridge on the subset Gram matrices: keeps the batched solve finite for (near-)duplicate rows. Such
# subsets never matter: a smaller subset reaches the same fit and wins the tie above.
_RIDGE = 1e-10
# Targets per vectorised block; bounds memory at about block * C(n_candidates, 3) * 9 float64.
_BLOCK = 1024


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: compare fields explicitly
class Decomposition:
    """A target direction written as a non-negative combination of dictionary rows.

    Attributes:
        support: indices of the dictionary rows used (ascending), at most ``max_terms``; empty
            when no row has a positive cosine with the target.
        coef: [len(support)] coefficients (> 0) on the *normalised* rows, for the normalised
            target; ``coef / coef.sum()`` is each row's share of the coefficient mass.
        cos: cosine between the target and its fit ``coef @ rows[support]`` (0 when empty).
        single_cos: best signed cosine of the target with one (non-excluded) dictionary row.
    """

    support: tuple[int, ...]
    coef: np.ndarray
    cos: float
    single_cos: float

    @property
    def shares(self) -> np.ndarray:
        """[len(support)] each row's fraction of the coefficient mass (empty when no support)."""
        total = self.coef.sum()
        return self.coef / total if total > 0 else self.coef


def unit_rows(name: str, a: Tensor | np.ndarray, ndim: int = 2) -> Tensor:
    """Validate and normalise. a: [rows, d] (or [d] with ndim=1) -> float64 unit rows [rows, d]."""
    a = check_tensor(name, a, finite=False, arrays=True).detach().to("cpu", torch.float64)
    shape = "[d]" if ndim == 1 else "[rows, d]"
    if a.ndim != ndim or a.numel() == 0:
        raise ValueError(f"{name} must be a non-empty {ndim}-D {shape} array, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    a = a.reshape(-1, a.shape[-1])
    norms = a.norm(dim=1, keepdim=True)
    zero = torch.nonzero(norms[:, 0] == 0).flatten().tolist()
    if zero:
        raise ValueError(f"{name} has zero rows (no direction), e.g. row(s) {zero[:5]}")
    return a / norms


def _check_search(max_terms: int, n_candidates: int) -> tuple[int, int]:
    return check_int("max_terms", max_terms, 1), check_int("n_candidates", n_candidates, 1)


def _subset_fits(G: np.ndarray, b: np.ndarray, valid: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Cosine of the best fit on each subset, -inf where not a positive fit.

    G: [m, c, c] Gram matrix of each target's candidates; b: [m, c] their cosines with the target;
    valid: [m, c] candidate exists (not excluded); subsets: [P, k] candidate positions.
    Returns [m, P].
    """
    k = subsets.shape[1]
    Gs = G[:, subsets[:, :, None], subsets[:, None, :]] + _RIDGE * np.eye(k)  # [m, P, k, k]
    bs = b[:, subsets]  # [m, P, k]
    coef = np.linalg.solve(Gs, bs[..., None])[..., 0]  # [m, P, k]
    # The cosine of *this* combination (exact even if the ridge perturbed coef slightly).
    num = (coef * bs).sum(-1)
    den = np.sqrt(np.maximum(np.einsum("mpi,mpij,mpj->mp", coef, Gs, coef), 1e-300))
    ok = (coef > 0).all(-1) & valid[:, subsets].all(-1) & np.isfinite(num)
    return np.where(ok, num / den, -np.inf)


def _search(
    targets: Tensor,
    dictionary: Tensor,
    max_terms: int,
    n_candidates: int,
    exclude: Sequence[int],
    self_index: np.ndarray | None,
) -> list[Decomposition]:
    """Decompose unit targets [m, d] into unit dictionary rows [n, d] (see module docstring).

    exclude: rows never used; self_index: [m] row of the dictionary that target i may not use.
    """
    m, n = targets.shape[0], dictionary.shape[0]
    c = min(n_candidates, n)
    # by_size[k - 1]: [C(c, k), k] candidate positions of every subset of size k
    by_size = [
        np.array(list(combinations(range(c), k)), dtype=np.int64) for k in range(1, min(max_terms, c) + 1)
    ]
    D = dictionary.numpy()
    out: list[Decomposition] = []
    for start in range(0, m, _BLOCK):
        t = targets[start : start + _BLOCK]
        cos = t @ dictionary.T  # [blk, n]
        if exclude:
            cos[:, list(exclude)] = -math.inf
        if self_index is not None:
            rows = torch.arange(t.shape[0])
            cos[rows, torch.as_tensor(self_index[start : start + _BLOCK])] = -math.inf
        b_t, cand_t = torch.topk(cos, c, dim=1)  # [blk, c], sorted by signed cosine
        b, cand = b_t.numpy(), cand_t.numpy()
        valid = np.isfinite(b)
        if not valid[:, 0].all():
            raise ValueError("no dictionary rows are left after the exclusions")
        rows_c = D[cand]  # [blk, c, d]
        G = np.einsum("mid,mjd->mij", rows_c, rows_c)
        best_per_size = []  # per size: (best cosine [blk], best subset position [blk])
        for subsets in by_size:
            fits = _subset_fits(G, np.where(valid, b, 0.0), valid, subsets)
            best_per_size.append((fits.max(1), fits.argmax(1)))
        overall = np.max([f for f, _ in best_per_size], axis=0)
        for i in range(t.shape[0]):
            support: tuple[int, ...] = ()
            for subsets, (fit, pos) in zip(by_size, best_per_size):
                # Smallest support within _TIE of the best; -inf everywhere means no positive fit.
                if np.isfinite(fit[i]) and fit[i] >= overall[i] - _TIE:
                    support = tuple(sorted(int(cand[i, j]) for j in subsets[pos[i]]))
                    break
            out.append(_refit(t[i].numpy(), D, support, float(b[i, 0])))
    return out


def _refit(target: np.ndarray, D: np.ndarray, support: tuple[int, ...], single_cos: float) -> Decomposition:
    """Final coefficients and cosine on the chosen support, by scipy's NNLS."""
    if not support:
        return Decomposition((), np.zeros(0), 0.0, single_cos)
    rows = D[list(support)]  # [k, d]
    coef, _ = nnls(rows.T, target)
    keep = coef > 0
    rows, coef = rows[keep], coef[keep]
    support = tuple(s for s, k in zip(support, keep) if k)
    if not support:
        return Decomposition((), np.zeros(0), 0.0, single_cos)
    fit = coef @ rows
    cos = float(np.clip(fit @ target / np.linalg.norm(fit), -1.0, 1.0))
    return Decomposition(support, coef, cos, single_cos)


def _check_exclude(exclude: Sequence[int], n: int) -> list[int]:
    out = []
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, (Sequence, np.ndarray, range)):
        raise ParameterTypeError(f"exclude must be a sequence of row indices, got {exclude!r}")
    for j in exclude:
        if not is_int(j) or not 0 <= j < n:
            raise ValueError(f"exclude must hold row indices in [0, {n}), got {j!r}")
        out.append(int(j))
    return sorted(set(out))


def decompose_rows(
    rows: Tensor,
    dictionary: Tensor,
    max_terms: int = 3,
    exclude_self: bool = False,
    n_candidates: int = 10,
    exclude: Sequence[int] = (),
) -> list[Decomposition]:
    """:func:`decompose` every row of ``rows`` (vectorised).

    Args:
        rows: [m, d] target directions (any norm, none zero).
        dictionary: [n, d] dictionary directions (any norm, none zero).
        exclude_self: row i of ``rows`` is row i of ``dictionary`` (needs m <= n) and may not
            explain itself, e.g. decomposing a decoder into its own other rows.
        exclude: dictionary rows that no target may use.

    Returns:
        One :class:`Decomposition` per row of ``rows``.
    """
    max_terms, n_candidates = _check_search(max_terms, n_candidates)
    exclude_self = check_bool("exclude_self", exclude_self)
    T = unit_rows("rows", rows)
    D = unit_rows("dictionary", dictionary)
    if T.shape[1] != D.shape[1]:
        raise ValueError(f"rows and dictionary must have the same d, got {T.shape[1]} and {D.shape[1]}")
    if exclude_self and T.shape[0] > D.shape[0]:
        raise ValueError(
            f"exclude_self needs row i of rows to be row i of dictionary, but rows has {T.shape[0]} "
            f"rows and dictionary only {D.shape[0]}"
        )
    self_index = np.arange(T.shape[0]) if exclude_self else None
    return _search(T, D, max_terms, n_candidates, _check_exclude(exclude, D.shape[0]), self_index)


def decompose(
    target: Tensor,
    dictionary: Tensor,
    max_terms: int = 3,
    exclude: Sequence[int] = (),
    n_candidates: int = 10,
) -> Decomposition:
    """Best non-negative combination of at most ``max_terms`` dictionary rows for one direction.

    Rows and target are normalised first. The search is exhaustive over subsets of the
    ``n_candidates`` rows with the largest signed cosine to the target (a row pointing away from
    the target rarely helps a non-negative fit); among fits equal to within 1e-9 in cosine the
    smallest support is reported.

    Args:
        target: [d] direction to explain (non-zero).
        dictionary: [n, d] rows to explain it with (none zero).
        exclude: rows never used, e.g. the target's own row when it comes from ``dictionary``.

    Returns:
        The :class:`Decomposition` (empty support and cos 0 when no row has positive cosine).
    """
    t = unit_rows("target", target, ndim=1)
    return decompose_rows(t, dictionary, max_terms, False, n_candidates, exclude)[0]


def _check_unit_interval(name: str, value: float, closed_low: bool) -> float:
    return check_float(name, value, 0.0, 1.0, low_open=not closed_low)


def is_combination(
    dec: Decomposition, fit_tol: float = 0.9, margin: float = 0.05, min_share: float = 0.15
) -> bool:
    """Is the decomposed direction a combination of several rows rather than one row?

    True when (1) at least two rows of the support each carry >= ``min_share`` of the
    coefficient mass (smaller terms are tolerated: they fit noise), (2) the fit reaches
    cos >= ``fit_tol``, and (3) the fit beats the best single row by >= ``margin`` in cosine, so a
    near-duplicate of one row, which any extra row can only polish, is not a combination.

    Fragile by construction: the sum of two rows at cosine rho has cosine sqrt((1 + rho) / 2) with
    each of them (0.95 at rho = 0.8), so sums of strongly aligned rows fail the margin.
    """
    check_instance("dec", dec, Decomposition)
    fit_tol = _check_unit_interval("fit_tol", fit_tol, closed_low=False)
    margin = _check_unit_interval("margin", margin, closed_low=True)
    min_share = check_float("min_share (two rows must be able to carry it)", min_share, 0.0, 0.5)
    major = int((dec.shares >= min_share).sum()) if len(dec.support) else 0
    return major >= 2 and dec.cos >= fit_tol and dec.cos - dec.single_cos >= margin


def combination_fraction(
    W_dec: Tensor,
    reference: Tensor | None = None,
    max_terms: int = 3,
    n_candidates: int = 10,
    fit_tol: float = 0.9,
    margin: float = 0.05,
    min_share: float = 0.15,
) -> tuple[float, np.ndarray]:
    """Fraction of the rows of ``W_dec`` that are combinations (:func:`is_combination`).

    Args:
        W_dec: [n, d] decoder rows to test.
        reference: [m, d] rows to explain them with, e.g. a vanilla SAE's decoder (Q9); when None,
            each row is explained by the *other* rows of ``W_dec``.

    Returns:
        ``(fraction, mask)`` with mask: [n] bool, True for the rows that are combinations.
    """
    if reference is None:
        decs = decompose_rows(W_dec, W_dec, max_terms, exclude_self=True, n_candidates=n_candidates)
    else:
        decs = decompose_rows(W_dec, reference, max_terms, n_candidates=n_candidates)
    mask = np.array([is_combination(d, fit_tol, margin, min_share) for d in decs], dtype=bool)
    return float(mask.mean()), mask


def precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of boolean predictions.

    precision = TP / (TP + FP), nan when nothing is predicted positive;
    recall = TP / (TP + FN), nan when there are no true positives to find.

    Args:
        predicted, truth: boolean arrays of the same shape (0/1 integers are accepted).
    """
    p, t = np.asarray(predicted), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"predicted and truth must have the same shape, got {p.shape} and {t.shape}")
    for name, a in (("predicted", p), ("truth", t)):
        if a.dtype != bool and not (np.issubdtype(a.dtype, np.integer) and np.isin(a, (0, 1)).all()):
            raise ValueError(f"{name} must be boolean (or 0/1 integers), got dtype {a.dtype}")
    p, t = p.astype(bool), t.astype(bool)
    tp = int((p & t).sum())
    n_pred, n_true = int(p.sum()), int(t.sum())
    precision = tp / n_pred if n_pred else math.nan
    recall = tp / n_true if n_true else math.nan
    return precision, recall
