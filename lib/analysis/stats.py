"""Statistics over seeds: paired differences, bootstrap intervals, and verdicts from them.

Conditions of a sweep are compared *paired*: the same seed means the same data stream and the
same initialisation in every condition (:func:`sae_ortho.experiments.sweep.train_stack` with ``paired=True``, and
:func:`sae_ortho.experiments.ablations.run_variants`), so the per-seed difference removes what the seeds share.
The interval of the mean difference is a bootstrap interval (``scipy.stats.bootstrap``, BCa by
default, percentile where BCa is undefined), and a verdict says "better" or "worse" only when the
interval excludes zero; otherwise "no detectable difference" at this number of seeds. No fixed
margin enters a verdict.

Pure statistics: nothing here trains, loads or plots.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from sae_ortho.core.validation import check_bool

BETTER, WORSE, SAME = "better", "worse", "no detectable difference"
VERDICTS = (BETTER, WORSE, SAME)
NOT_AVAILABLE = "n/a (fewer than 2 seeds)"
METHODS = ("BCa", "percentile", "basic")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of the mean of ``values`` (NaNs dropped).

    Returns ``(low, high)``; ``(v, v)`` when every value is the same (a bootstrap cannot vary
    them) and ``(nan, nan)`` with fewer than 2 values. BCa falls back to the percentile interval
    where its acceleration is undefined.

    Raises:
        ValueError: ``confidence`` outside (0, 1), ``n_resamples`` < 1 or an unknown ``method``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan"), float("nan")
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    for m in dict.fromkeys([method, "percentile"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's "degenerate distribution" warning: fall back below
            res = sps.bootstrap(
                (v,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method=m,
                rng=np.random.default_rng(seed), vectorized=True,
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, hi
    return float("nan"), float("nan")


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """"better" / "worse" when the interval ``[low, high]`` of a difference (condition minus
    reference) excludes zero, else "no detectable difference"; n/a for an undefined interval."""
    higher_is_better = check_bool("higher_is_better", higher_is_better)
    if not (np.isfinite(low) and np.isfinite(high)):
        return NOT_AVAILABLE
    if low > 0 or high < 0:
        up = low > 0
        return BETTER if up == higher_is_better else WORSE
    return SAME


def paired_differences(
    df: pd.DataFrame,
    condition: str,
    reference: str,
    value: str,
    pair_on: Sequence[str] = ("seed",),
    by: Sequence[str] = (),
) -> pd.DataFrame:
    """Per pair (``pair_on``) and group (``by``): ``value`` of every condition minus the
    reference condition's.

    Args:
        df: one row per trained model, with columns ``condition``, ``value``, ``pair_on``, ``by``.
        condition: the column naming the condition (e.g. ``"variant"``).
        reference: the reference condition's value in that column.

    Returns:
        Columns ``by``, ``condition``, ``pair_on``, ``diff`` (pairs missing the reference dropped).

    Raises:
        ValueError: a missing column, no reference rows, or two rows for one pair and condition.
    """
    by, pair_on = list(by), list(pair_on)
    for col in [condition, value, *pair_on, *by]:
        if col not in df:
            raise ValueError(f"column {col!r} is not in the table (columns: {list(df.columns)})")
    if not (df[condition] == reference).any():
        raise ValueError(f"reference {reference!r} is not a value of column {condition!r}")
    keys = [*by, condition, *pair_on]
    if df.duplicated(keys).any():
        raise ValueError(f"more than one row per {keys}: pairs must be unique")
    ref = df[df[condition] == reference].set_index([*by, *pair_on])[value].rename("_ref")
    out = df[[*keys, value]].join(ref, on=[*by, *pair_on])
    out["diff"] = out[value].astype(float) - out["_ref"].astype(float)
    return out.dropna(subset=["_ref"])[[*by, condition, *pair_on, "diff"]].reset_index(drop=True)


def compare(
    df: pd.DataFrame,
    condition: str,
    reference: str,
    values: Sequence[str] | str,
    higher_is_better: dict[str, bool] | bool = True,
    pair_on: Sequence[str] = ("seed",),
    by: Sequence[str] = (),
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """Every condition against ``reference``, paired over ``pair_on``, for each metric in ``values``.

    Returns:
        One row per (``by``, condition, metric): ``n`` pairs, ``reference`` and ``mean`` of the
        metric, ``diff`` (mean paired difference), ``low``/``high`` (bootstrap interval of the
        mean difference) and ``verdict`` (from the interval). The reference's own rows are kept
        (diff 0) so tables list every condition.
    """
    values = [values] if isinstance(values, str) else list(values)
    hib = higher_is_better if isinstance(higher_is_better, dict) else dict.fromkeys(values, higher_is_better)
    by = list(by)
    rows = []
    for metric in values:
        diffs = paired_differences(df, condition, reference, metric, pair_on, by)
        means = {_key(k): float(v) for k, v in df.groupby([*by, condition], sort=False)[metric].mean().items()}
        for key, g in diffs.groupby([*by, condition], sort=False):
            key = _key(key)
            lo, hi = bootstrap_ci(g["diff"].to_numpy(), confidence, n_resamples, seed=seed)
            rows.append({
                **dict(zip([*by, condition], key)), "metric": metric, "n": len(g),
                "reference": means[(*key[:-1], reference)], "mean": means[key],
                "diff": float(g["diff"].mean()), "low": lo, "high": hi,
                "verdict": verdict(lo, hi, hib[metric]) if key[-1] != reference else "the reference",
            })
    return pd.DataFrame(rows)


def _key(k) -> tuple:
    return k if isinstance(k, tuple) else (k,)


def mean_ci(
    df: pd.DataFrame, by: Sequence[str], values: Sequence[str] | str, confidence: float = 0.95,
    n_resamples: int = 9999, seed: int = 0,
) -> pd.DataFrame:
    """Mean and bootstrap interval of each column in ``values`` for every group of ``by`` (over its
    rows, e.g. seeds): columns ``by``, ``metric``, ``n``, ``mean``, ``low``, ``high``."""
    values = [values] if isinstance(values, str) else list(values)
    rows = []
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for metric in values:
            v = g[metric].to_numpy(dtype=float)
            lo, hi = bootstrap_ci(v, confidence, n_resamples, seed=seed)
            rows.append({**dict(zip(by, key)), "metric": metric, "n": int(np.isfinite(v).sum()),
                         "mean": float(np.nanmean(v)), "low": lo, "high": hi})
    return pd.DataFrame(rows)


def fmt(mean: float, low: float, high: float, digits: int = 2, signed: bool = False) -> str:
    """``"0.12 [0.05, 0.20]"`` (``signed``: with a leading + for positive means)."""
    signed = check_bool("signed", signed)
    if not np.isfinite(mean):
        return "n/a"
    sign = "+" if signed else ""
    m = f"{mean:{sign}.{digits}f}"
    if not (np.isfinite(low) and np.isfinite(high)):
        return m
    return f"{m} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_row(row: pd.Series, digits: int = 2, what: str = "diff") -> str:
    """:func:`fmt` of a row of :func:`compare` (``what="diff"``) or :func:`mean_ci` (``"mean"``)."""
    return fmt(row[what], row["low"], row["high"], digits, signed=what == "diff")
