"""Metrics for SAEs, with and without ground truth.

Directions are always given as rows (``learned: [n_latents, d]``, ``true: [n_features, d]``).
Ground-truth metrics: :func:`mmcs` (Sharkey et al.), :func:`mcc` (Hungarian-matched, as SAELens),
:func:`feature_recovery`, :func:`matched_angle_error` and two composition detectors: geometric
(:func:`detect_compositions`, decoder directions) and by activation
(:func:`activation_compositions`, what a latent fires on), compared by :func:`detector_agreement`. Model-only metrics: :func:`l0`, :func:`fvu`, :func:`dead_fraction`,
:func:`nn_abs_cos_distribution`, :func:`histogram_peaks`. Across runs: :func:`match_fraction`
(with :func:`mcc`, seed stability). Pure math: nothing here trains, loads or plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment, nnls
from scipy.signal import find_peaks
from torch import Tensor

from sae_ortho.core.validation import (
    ParameterTypeError,
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_tensor,
)
from sae_ortho.ortho import nearest_neighbour_abs_cos

# Per-feature recovery status (see detect_compositions).
ALONE, IN_COMBINATION, MISSED = "alone", "in combination", "missed"
# Per-latent kind.
ATOM, COMPOSITION, OTHER = "atom", "composition", "other"
# By activation: a latent that fires on each of its parts alone (a union of features, not a conjunction).
MERGER = "merger"


def _rows(name: str, a: Tensor | np.ndarray) -> Tensor:
    """Directions as rows: a non-empty, finite [rows, d] tensor or array without zero rows (a zero
    row has no direction, and a cosine with it would be a made-up 0)."""
    a = check_tensor(name, a, finite=False, arrays=True).detach().to("cpu", torch.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [rows, d] array, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    zero = torch.nonzero(a.norm(dim=1) == 0).flatten().tolist()
    if zero:
        raise ValueError(f"{name} has rows of norm 0 (no direction), e.g. row(s) {zero[:5]}")
    return a


def cosine_matrix(a: Tensor, b: Tensor, names: tuple[str, str] = ("a", "b")) -> Tensor:
    """Signed cosine similarity of rows. a: [m, d], b: [n, d] -> [m, n] (float64).

    ``names`` name the two arguments in error messages."""
    a, b = _rows(names[0], a), _rows(names[1], b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"row dimensions differ: {a.shape[1]} vs {b.shape[1]} ({names[0]} vs {names[1]})")
    an = a / a.norm(dim=1, keepdim=True)
    bn = b / b.norm(dim=1, keepdim=True)
    return an @ bn.T


def mmcs(learned: Tensor, true: Tensor, signed: bool = False) -> float:
    """Mean over true directions of the max |cos| with any learned direction (both as rows).

    ``signed``: the max signed cos instead. With non-negative codes a latent pointing at -f
    cannot represent f, so the signed score tells a feature from its antipode; |cos| cannot.
    """
    signed = check_bool("signed", signed)
    c = cosine_matrix(true, learned, ("true", "learned"))
    return float((c if signed else c.abs()).max(dim=1).values.mean())


def mcc(learned: Tensor, true: Tensor, signed: bool = False) -> float:
    """Mean |cos| of a one-to-one (Hungarian) matching of learned to true directions.

    With unequal counts, the min(n_learned, n_true) matched pairs are averaged (as SAELens's
    ``mean_correlation_coefficient``). ``signed``: match and average the signed cos instead
    (see :func:`mmcs`).
    """
    signed = check_bool("signed", signed)
    c = cosine_matrix(learned, true, ("learned", "true")).numpy()
    c = c if signed else np.abs(c)
    r, k = linear_sum_assignment(-c)
    return float(c[r, k].mean())


def feature_recovery(learned: Tensor, true: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each true feature: the best |cos| with any latent and that latent's index.

    Returns ``(best_cos [n_true], best_latent [n_true])``.
    """
    c = cosine_matrix(true, learned, ("true", "learned")).abs()
    best = c.max(dim=1)
    return best.values.numpy(), best.indices.numpy()


def matched_angle_error(learned: Tensor, reference: Tensor) -> float:
    """Mean angle in degrees between Hungarian-matched learned and reference directions (signed)."""
    c = cosine_matrix(learned, reference, ("learned", "reference")).clamp(-1, 1)
    ang = torch.rad2deg(torch.arccos(c)).numpy()
    r, k = linear_sum_assignment(ang)
    return float(ang[r, k].mean())


@dataclass
class CompositionReport:
    """Result of :func:`detect_compositions`.

    Attributes:
        latent_kind: [n_latents] ``"atom"``, ``"composition"`` or ``"other"``.
        latent_parts: per latent, the true features it is made of (one for an atom).
        feature_status: [n_true] ``"alone"``, ``"in combination"`` or ``"missed"``.
    """

    latent_kind: list[str]
    latent_parts: list[tuple[int, ...]]
    feature_status: list[str]

    @property
    def n_compositions(self) -> int:
        return self.latent_kind.count(COMPOSITION)

    def fraction(self, status: str) -> float:
        return self.feature_status.count(status) / len(self.feature_status)


def _fit_cos(parts: Tensor, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Best non-negative fit of unit vector w by the rows of parts: (cos(w, fit), coefficients)."""
    coef, _ = nnls(parts.T, w)
    fit = coef @ parts
    norm = np.linalg.norm(fit)
    return (float(fit @ w / norm) if norm > 0 else 0.0), coef


def detect_compositions(
    learned: Tensor,
    true: Tensor,
    atom_tol: float = 0.9,
    fit_tol: float = 0.9,
    max_parts: int = 3,
    n_candidates: int = 5,
    min_share: float = 0.15,
) -> CompositionReport:
    """Classify latents as atoms, compositions of true features, or other.

    A latent is an *atom* of feature f when cos(latent, f) >= ``atom_tol`` (signed: codes are
    non-negative, so a latent pointing at -f cannot represent f). Otherwise it is a
    *composition* when a non-negative combination of 2..``max_parts`` true features (searched
    exhaustively among the ``n_candidates`` most aligned ones, by NNLS) reaches cos >= ``fit_tol``
    with every part carrying at least ``min_share`` of the coefficient mass; the smallest such
    set is reported. A feature is *alone* if some latent is its atom, *in combination* if it is
    only a part of compositions, else *missed*.
    """
    atom_tol = check_float("atom_tol", atom_tol, 0.0, 1.0, low_open=True)
    fit_tol = check_float("fit_tol", fit_tol, 0.0, 1.0, low_open=True)
    max_parts = check_int("max_parts", max_parts, 2)
    n_candidates = check_int("n_candidates", n_candidates, 2)
    min_share = check_float("min_share", min_share, 0.0, 1.0, high_open=True)
    c = cosine_matrix(learned, true, ("learned", "true")).numpy()  # [n_latents, n_true]
    t = _rows("true", true)
    t = (t / t.norm(dim=1, keepdim=True)).numpy()
    lw = _rows("learned", learned)
    lw = (lw / lw.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    kinds: list[str] = []
    parts: list[tuple[int, ...]] = []
    for i in range(c.shape[0]):
        best = int(c[i].argmax())
        if c[i, best] >= atom_tol:
            kinds.append(ATOM)
            parts.append((best,))
            continue
        cand = [int(j) for j in np.argsort(-c[i])[:n_candidates] if c[i, j] > 0]
        found: tuple[int, ...] = ()
        for size in range(2, min(max_parts, len(cand)) + 1):
            best_fit = (0.0, ())
            for subset in combinations(cand, size):
                fit, coef = _fit_cos(t[list(subset)], lw[i])
                share = coef / coef.sum() if coef.sum() > 0 else coef
                if fit >= fit_tol and share.min() >= min_share and fit > best_fit[0]:
                    best_fit = (fit, tuple(sorted(subset)))
            if best_fit[1]:
                found = best_fit[1]
                break
        kinds.append(COMPOSITION if found else OTHER)
        parts.append(found)
    alone = {p[0] for k, p in zip(kinds, parts) if k == ATOM}
    combined = {f for k, p in zip(kinds, parts) if k == COMPOSITION for f in p}
    status = [
        ALONE if f in alone else IN_COMBINATION if f in combined else MISSED
        for f in range(t.shape[0])
    ]
    return CompositionReport(kinds, parts, status)


def _codes(codes: Tensor) -> Tensor:
    codes = check_tensor("codes", codes, (2, 3), arrays=True)
    if codes.shape[-2] == 0:
        raise ValueError(f"codes must hold at least one input, got shape {tuple(codes.shape)}")
    return codes
@dataclass
class ActivationCompositionReport:
    """Result of :func:`activation_compositions`.

    Attributes:
        latent_kind: [n_latents] ``"composition"`` (fires on its parts together, far less apart),
            ``"merger"`` (fires on each part alone: one latent for several features) or ``"other"``.
        latent_parts: per latent, the features it composes or merges (() for "other").
        rate_together: [n_latents] firing rate on samples where all its parts are active (nan for
            "other").
        rate_apart: [n_latents] for a composition, the highest firing rate on samples where one
            part is missing and the others are active; for a merger, the lowest rate on samples where
            only one of its parts is active (nan for "other").
    """

    latent_kind: list[str]
    latent_parts: list[tuple[int, ...]]
    rate_together: np.ndarray
    rate_apart: np.ndarray

    @property
    def n_compositions(self) -> int:
        return self.latent_kind.count(COMPOSITION)

    @property
    def n_mergers(self) -> int:
        return self.latent_kind.count(MERGER)


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion p observed on n samples."""
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((centre - half) / (1 + z * z / n)), float((centre + half) / (1 + z * z / n))


def activation_compositions(
    codes: Tensor | np.ndarray,
    coeffs: Tensor | np.ndarray,
    max_parts: int = 3,
    n_candidates: int = 4,
    min_rate: float = 0.25,
    max_ratio: float = 0.25,
    min_support: int = 5,
    explained: float = 0.9,
) -> ActivationCompositionReport:
    """Which latents are compositions by what they *fire on*, whatever their decoder direction.

    A latent *composes* the features P (2..``max_parts`` of them) when it fires on samples where
    all of P are active at a rate ``r_together >= min_rate``, and on samples where any one part of
    P is missing (the others active) at most ``max_ratio * r_together``: it fires on A and B
    together and far less on either alone. "At most" is judged with the Wilson 95% upper bound of
    each "apart" rate, so a handful of rare co-occurrences cannot make a composition by chance. A
    latent that is not a composition is a *merger* of P when it fires on every part of P alone
    (only that part of P active) at a rate whose Wilson lower bound is >= ``min_rate``, and at least
    ``explained`` of its firing happens with some part of P active: one latent for "A or B", which
    a decoder-geometry detector also reports as a combination of A and B.

    Candidate parts are the ``n_candidates`` features most often active when the latent fires;
    every event needs ``min_support`` samples (pairs that never occur apart cannot be tested). The
    smallest P that passes is reported (among those of that size, the one with the largest
    contrast). :func:`detector_agreement` compares the result with :func:`detect_compositions`.

    Args:
        codes: [S, n_latents] codes on evaluation samples (> 0 = fires).
        coeffs: [S, n_features] their ground-truth coefficients (> 0 = active).
    """
    codes = np.asarray(check_tensor("codes", codes, 2, arrays=True).detach().cpu())
    coeffs = np.asarray(check_tensor("coeffs", coeffs, 2, arrays=True).detach().cpu())
    if codes.shape[0] != coeffs.shape[0] or codes.shape[0] == 0:
        raise ValueError(f"codes [S, n] and coeffs [S, F] need the same S > 0, got {codes.shape}, {coeffs.shape}")
    max_parts = check_int("max_parts", max_parts, 2)
    n_candidates = check_int("n_candidates", n_candidates, 2)
    min_rate = check_float("min_rate", min_rate, 0.0, 1.0, low_open=True)
    max_ratio = check_float("max_ratio", max_ratio, 0.0, 1.0, high_open=True)
    explained = check_float("explained", explained, 0.0, 1.0, low_open=True)
    min_support = check_int("min_support", min_support, 1)
    fires = codes > 0  # [S, n]
    active = coeffs > 0  # [S, F]
    n_fire = fires.sum(0)
    # P(feature active | latent fires): [n, F]
    given = (fires.T.astype(np.float64) @ active.astype(np.float64)) / np.maximum(n_fire, 1)[:, None]
    kinds, parts = [], []
    together = np.full(codes.shape[1], np.nan)
    apart = np.full(codes.shape[1], np.nan)
    for i in range(codes.shape[1]):
        found: tuple[int, ...] = ()
        kind = OTHER
        cand = [int(j) for j in np.argsort(-given[i], kind="stable")[:n_candidates] if given[i, j] > 0]
        if n_fire[i] >= min_support and len(cand) >= 2:
            # Every event below is a set of activity patterns of the candidates: count samples and
            # firings per pattern once (2^k patterns), then sum over patterns.
            pattern = active[:, cand].astype(np.int64) @ (1 << np.arange(len(cand)))
            n_pat = np.bincount(pattern, minlength=1 << len(cand))
            k_pat = np.bincount(pattern, weights=fires[:, i], minlength=1 << len(cand))
            pats = np.arange(len(n_pat))

            def rate(sel: np.ndarray, n_pat: np.ndarray = n_pat, k_pat: np.ndarray = k_pat) -> tuple[float, int]:
                n = int(n_pat[sel].sum())
                return (float(k_pat[sel].sum()) / n if n else float("nan")), n

            for size in range(2, min(max_parts, len(cand)) + 1):
                best_c, best_m = (-np.inf, ()), (-np.inf, ())
                for subset in combinations(range(len(cand)), size):
                    mask = sum(1 << j for j in subset)
                    inside = pats & mask
                    r_all, n_all = rate(inside == mask)
                    # composition: together, far less with one part missing
                    if n_all >= min_support:
                        r_apart, upper, ok = 0.0, 0.0, True
                        for j in subset:
                            r, n = rate(inside == (mask ^ (1 << j)))
                            if n < min_support:
                                ok = False
                                break
                            r_apart, upper = max(r_apart, r), max(upper, _wilson(r, n)[1])
                        if ok and r_all >= min_rate and upper <= max_ratio * r_all and r_all - r_apart > best_c[0]:
                            best_c = (r_all - r_apart, tuple(sorted(cand[j] for j in subset)), r_all, r_apart)
                    # merger: fires on every part alone, and its firing is mostly explained by the parts
                    alone = [rate(inside == (1 << j)) for j in subset]
                    if all(n >= min_support for _, n in alone):
                        low = min(_wilson(r, n)[0] for r, n in alone)
                        share = float(k_pat[inside != 0].sum()) / max(float(k_pat.sum()), 1.0)
                        r_min = min(r for r, _ in alone)
                        if low >= min_rate and share >= explained and r_min > best_m[0]:
                            best_m = (r_min, tuple(sorted(cand[j] for j in subset)), r_all, r_min)
                for best, k in ((best_c, COMPOSITION), (best_m, MERGER)):
                    if best[1]:
                        found, kind, together[i], apart[i] = best[1], k, best[2], best[3]
                        break
                if found:
                    break
        kinds.append(kind)
        parts.append(found)
    return ActivationCompositionReport(kinds, parts, together, apart)


def detector_agreement(geometric: CompositionReport, by_activation: ActivationCompositionReport) -> dict[str, float]:
    """How the geometric and the activation-based detector compare, latent by latent.

    Returns ``agree`` (fraction of latents both call composition or both not), ``both``,
    ``geometric_only``, ``activation_only`` (counts of latents), ``geometric_as_merger`` (latents
    the geometric detector calls compositions that fire on each part alone) and ``same_parts`` (of
    the latents both call compositions, the fraction with the same parts).
    """
    check_instance("geometric", geometric, CompositionReport)
    check_instance("by_activation", by_activation, ActivationCompositionReport)
    g = np.array([k == COMPOSITION for k in geometric.latent_kind])
    a = np.array([k == COMPOSITION for k in by_activation.latent_kind])
    m = np.array([k == MERGER for k in by_activation.latent_kind])
    if g.shape != a.shape:
        raise ValueError(f"the reports cover different latents: {g.shape} vs {a.shape}")
    both = g & a
    same = [geometric.latent_parts[i] == by_activation.latent_parts[i] for i in np.flatnonzero(both)]
    return {
        "agree": float((g == a).mean()), "both": int(both.sum()), "geometric_only": int((g & ~a).sum()),
        "activation_only": int((a & ~g).sum()), "geometric_as_merger": int((g & m).sum()),
        "same_parts": float(np.mean(same)) if same else float("nan"),
    }


def l0(codes: Tensor) -> Tensor:
    """Mean number of active latents per input. codes: [(M,) batch, n] -> [(M,)].

    Raises:
        ValueError: NaN or inf codes (a NaN is not "inactive"), or an empty batch.
    """
    return (_codes(codes) > 0).float().sum(-1).mean(-1)


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained. x, x_hat: [(M,) batch, d] -> [(M,)].

    Residual sum of squares over the total sum of squares around the batch mean. Tensors or numpy
    arrays; integer (and bool) values are converted to float64.

    Raises:
        ValueError: shapes that differ, non-finite values, fewer than 2 inputs, or inputs ``x``
            without variance (constant over the batch, up to rounding): FVU is undefined there.
    """
    x = check_tensor("x", x, (2, 3), arrays=True, to_float=True)
    x_hat = check_tensor("x_hat", x_hat, (2, 3), arrays=True, to_float=True)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.shape[-2] < 2:
        raise ValueError(f"x must hold at least 2 inputs to have a variance, got shape {tuple(x.shape)}")
    resid = (x - x_hat).square().sum((-1, -2))
    total = (x - x.mean(-2, keepdim=True)).square().sum((-1, -2))
    # Zero up to rounding: the mean itself is only known to ~eps relative, so a variance below
    # ~eps^2 times the mean square is numerically constant data.
    eps = torch.finfo(x.dtype).eps if x.is_floating_point() else torch.finfo(torch.float32).eps
    floor = 100 * eps**2 * x.square().sum((-1, -2))
    if bool((total <= floor).any()):
        bad = torch.nonzero((total <= floor).reshape(-1)).flatten().tolist()
        where = f" (models {bad[:10]})" if x.ndim == 3 else ""
        raise ValueError(f"x has no variance over the batch{where}: FVU is undefined for constant inputs")
    return resid / total


def dead_fraction(codes: Tensor) -> Tensor:
    """Fraction of latents that never fire on the batch. codes: [(M,) batch, n] -> [(M,)]."""
    return (_codes(codes).amax(-2) <= 0).float().mean(-1)


def nn_abs_cos_distribution(W_dec: Tensor) -> np.ndarray:
    """Nearest-neighbour |cos| of every decoder row. W_dec: [n, d] -> [n] numpy array."""
    W_dec = check_tensor("W_dec", W_dec, 2, finite=False, arrays=True)
    with torch.no_grad():
        return nearest_neighbour_abs_cos(W_dec.detach().float()).numpy()


def match_fraction(a: Tensor, b: Tensor, threshold: float = 0.7) -> float:
    """Fraction of the rows of ``a`` whose best cosine with a row of ``b`` is >= ``threshold``.

    A simple seed-stability measure: a latent of one run "has a match" in another run when some
    decoder row there points the same way (many-to-one, decoder only; Paulo & Belrose (2025)
    match one-to-one and require encoder and decoder agreement, so their shared fractions are not
    directly comparable). Signed cosine, since codes are non-negative. a: [n_a, d], b: [n_b, d].
    """
    threshold = check_float("threshold", threshold, 0.0, 1.0, low_open=True)
    # A small tolerance: a row's cosine with its own copy can round to just below 1.
    return float((cosine_matrix(a, b).max(dim=1).values >= threshold - 1e-12).float().mean())


def shared_fraction(
    dec_a: Tensor, dec_b: Tensor, enc_a: Tensor | None = None, enc_b: Tensor | None = None, threshold: float = 0.7
) -> float:
    """Fraction of latents shared by two runs, one-to-one (Paulo & Belrose 2025).

    Latents are matched by the Hungarian algorithm on the signed decoder cosine (the mean of the
    decoder and encoder cosines when both encoders are given); a matched pair is shared when its
    decoder cosine, and its encoder cosine when given, are >= ``threshold``. The fraction is over
    min(n_a, n_b) pairs.

    Args:
        dec_a: [n_a, d], dec_b: [n_b, d] decoder rows; enc_a: [n_a, d], enc_b: [n_b, d] encoder
            directions (columns of ``W_enc`` as rows), or None for decoder only.
    """
    threshold = check_float("threshold", threshold, 0.0, 1.0, low_open=True)
    if (enc_a is None) != (enc_b is None):
        raise ValueError("give both encoders (enc_a and enc_b) or neither")
    cd = cosine_matrix(dec_a, dec_b)
    ce = None if enc_a is None else cosine_matrix(enc_a, enc_b)
    if ce is not None and ce.shape != cd.shape:
        raise ValueError(f"encoders give a {tuple(ce.shape)} similarity, decoders {tuple(cd.shape)}")
    score = cd if ce is None else (cd + ce) / 2
    r, k = linear_sum_assignment(-score.numpy())
    ok = cd[r, k] >= threshold - 1e-12
    if ce is not None:
        ok &= ce[r, k] >= threshold - 1e-12
    return float(ok.double().mean())


def histogram_peaks(values: np.ndarray, bins: int = 50, prominence: float = 0.02) -> list[float]:
    """Centres of the peaks of the histogram of ``values`` on [0, 1] (e.g. nearest-neighbour |cos|).

    A peak is a local maximum of the normalised histogram (bin masses summing to 1) standing at
    least ``prominence`` above its surroundings (``scipy.signal.find_peaks``); edge bins count.
    """
    try:
        values = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ParameterTypeError(f"values must be an array of numbers, got {type(values).__name__}: {e}") from e
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("values must be a non-empty array of finite numbers")
    bins = check_int("bins", bins, 3)
    prominence = check_float("prominence", prominence, 0.0, 1.0)
    # |cos| of duplicated rows can round to just above 1: clip so they land in the last bin.
    mass, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    mass = mass / mass.sum()
    # Zero padding lets a maximum in the first or last bin count as a peak.
    idx, _ = find_peaks(np.concatenate([[0.0], mass, [0.0]]), prominence=prominence)
    centres = (edges[:-1] + edges[1:]) / 2
    return [float(centres[i - 1]) for i in idx]
