"""Comparisons at matched sparsity: along each condition's L0 frontier, seed by seed.

A sweep of the L1 coefficient (or of k) traces, for every condition and seed, a curve of metrics
against L0. Two conditions are compared at the same L0 by interpolating each seed's curve at
common L0 values inside the range every curve covers (:func:`matched`), then taking paired
differences over seeds (:func:`lib.stats.compare`). This removes the confound of one fixed L1
coefficient, at which conditions reach different sparsity.

Pure numerics: nothing here trains, loads or plots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def interpolate(x: Sequence[float], y: Sequence[float], at: Sequence[float]) -> np.ndarray:
    """Piecewise-linear ``y(x)`` at ``at`` from points sorted by x; NaN outside [min x, max x].

    Repeated x values are averaged. Raises ValueError for mismatched lengths or no finite point.
    """
    x, y, at = np.asarray(x, float), np.asarray(y, float), np.asarray(at, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape}, {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        raise ValueError("no finite (x, y) point to interpolate")
    xs, inv = np.unique(x[ok], return_inverse=True)
    ys = np.bincount(inv, weights=y[ok]) / np.bincount(inv)
    out = np.interp(at, xs, ys)
    out[(at < xs[0]) | (at > xs[-1])] = np.nan
    return out


def common_range(df: pd.DataFrame, x: str, curves: Sequence[str]) -> tuple[float, float]:
    """The x range every curve (group of ``curves``) covers: (max of minima, min of maxima)."""
    g = df.groupby(list(curves))[x]
    return float(g.min().max()), float(g.max().min())


def matched(
    df: pd.DataFrame,
    x: str,
    ys: Sequence[str],
    curves: Sequence[str],
    at: Sequence[float] | None = None,
    n_points: int = 5,
) -> pd.DataFrame:
    """Every curve's metrics ``ys`` interpolated at common values of ``x``.

    Args:
        df: one row per trained model; a curve is a group of ``curves`` (e.g. condition and seed),
            its points the models of the sweep (e.g. L1 coefficients).
        x: the matching axis (e.g. ``"l0"``).
        at: the x values; default ``n_points`` evenly spaced inside :func:`common_range`.

    Returns:
        One row per (curve, x value): the ``curves`` columns, ``x`` (named as given) and ``ys``.

    Raises:
        ValueError: the curves share no x range (e.g. one condition is far sparser at every
            setting): widen the sweep.
    """
    curves = list(curves)
    if at is None:
        lo, hi = common_range(df, x, curves)
        if not lo < hi:
            raise ValueError(f"the curves share no {x} range (max of minima {lo:.3g} >= min of maxima {hi:.3g}); "
                             "widen the sweep")
        at = np.linspace(lo, hi, n_points)
    at = np.asarray(at, float)
    rows = []
    for key, g in df.groupby(curves, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = {y: interpolate(g[x], g[y], at) for y in ys}
        for j, a in enumerate(at):
            rows.append({**dict(zip(curves, key)), x: float(a), **{y: float(vals[y][j]) for y in ys}})
    return pd.DataFrame(rows)
