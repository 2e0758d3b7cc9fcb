"""Comparing SAEs at matched sparsity: metrics interpolated at common L0 values, seed by seed.

A sparsity sweep (L1 coefficient or k) gives each condition and seed a curve of points
``(L0, metric)``. Two conditions are compared on the L0-metric frontier rather than at one
hyperparameter value (at which they reach different sparsity):

- :func:`at_l0` / :func:`frontier_table` interpolate linearly in log L0 at a chosen grid, never
  extrapolating; :func:`paired_difference` gives a t-interval over seeds (notebook 05).
- :func:`interpolate` / :func:`matched` interpolate linearly in the matching axis inside the range
  every curve covers; paired differences then come from :func:`sae_ortho.analysis.stats.compare` (bootstrap,
  notebooks 01 and 04).

Pure math on arrays and tables: nothing here trains, loads or plots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def at_l0(l0: Sequence[float], y: Sequence[float], grid: Sequence[float]) -> np.ndarray:
    """Interpolate the curve ``(l0, y)`` at ``grid`` (linear in log L0); NaN outside its L0 range.

    Points are sorted by L0 first; the curve need not be monotone in y. Points whose y is NaN (a
    metric undefined for that SAE) are left out; with none left the result is all NaN.
    """
    x = np.asarray(l0, dtype=float)
    y = np.asarray(y, dtype=float)
    g = np.log(np.asarray(grid, dtype=float))
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"l0 and y must be 1-D of the same non-zero length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and (x > 0).all()):
        raise ValueError("l0 must be positive and finite")
    keep = ~np.isnan(y)
    if not keep.any():
        return np.full(g.shape, np.nan)
    x, y = np.log(x[keep]), y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    out = np.interp(g, x, y)
    out[(g < x[0] - 1e-12) | (g > x[-1] + 1e-12)] = np.nan
    return out


def frontier_table(
    df: pd.DataFrame, grid: Sequence[float], metrics: Sequence[str], by: Sequence[str] = ("method", "seed"),
    l0: str = "l0",
) -> pd.DataFrame:
    """Each group of ``by`` (one curve: a method and a seed) interpolated at every L0 of ``grid``.

    Returns one row per (group, grid L0) with columns ``*by, l0`` and one per metric (NaN where the
    group's sweep does not reach that L0).
    """
    rows = []
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = {m: at_l0(g[l0].to_numpy(), g[m].to_numpy(), grid) for m in metrics}
        for j, x in enumerate(grid):
            rows.append({**dict(zip(by, key)), l0: float(x), **{m: float(vals[m][j]) for m in metrics}})
    return pd.DataFrame(rows)


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of finite values and its t-interval (NaN bounds with < 2)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def paired_difference(
    table: pd.DataFrame, metric: str, a: str, b: str, method: str = "method", seed: str = "seed",
    l0: str = "l0", level: float = 0.95,
) -> pd.DataFrame:
    """``a - b`` of ``metric`` at each L0 of a :func:`frontier_table`, paired by seed.

    Returns one row per L0 with the number of seeds where both are defined, the mean difference and
    its t-interval over those seeds.
    """
    pa = table[table[method] == a].pivot_table(index=seed, columns=l0, values=metric, dropna=False)
    pb = table[table[method] == b].pivot_table(index=seed, columns=l0, values=metric, dropna=False)
    diff = pa - pb
    rows = []
    for x in diff.columns:
        d = diff[x].to_numpy()
        mean, low, high = interval(d, level)
        rows.append({l0: float(x), "n_seeds": int(np.isfinite(d).sum()), "diff": mean, "low": low, "high": high})
    return pd.DataFrame(rows)


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
