"""Tests of sae_ortho.analysis.stats: bootstrap intervals (coverage on a known case), paired differences, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sae_ortho.analysis import stats


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    reps, n, hits = 200, 20, 0
    for r in range(reps):
        v = rng.normal(1.5, 2.0, size=n)
        lo, hi = stats.bootstrap_ci(v, n_resamples=999, seed=r)
        assert lo < v.mean() < hi
        hits += lo <= 1.5 <= hi
    # a 95% interval from 20 normal values: BCa covers ~0.93 (slightly liberal at small n)
    assert 0.88 <= hits / reps <= 0.99, hits / reps


def test_bootstrap_interval_width_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = np.subtract(*stats.bootstrap_ci(rng.normal(size=10), n_resamples=999)[::-1])
    large = np.subtract(*stats.bootstrap_ci(rng.normal(size=160), n_resamples=999)[::-1])
    assert large < small / 2.5  # ~ sqrt(16) = 4 times narrower


def test_bootstrap_degenerate_and_small_cases():
    assert stats.bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    lo, hi = stats.bootstrap_ci([1.0])
    assert np.isnan(lo) and np.isnan(hi)
    lo, hi = stats.bootstrap_ci([1.0, np.nan, 3.0, 2.0], n_resamples=999)
    assert 1.0 <= lo < 2.0 < hi <= 3.0  # NaN dropped
    for method in stats.METHODS:
        lo, hi = stats.bootstrap_ci([0.0, 1.0, 0.0, 1.0, 1.0], method=method, n_resamples=999)
        assert 0.0 <= lo < 0.6 < hi <= 1.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"confidence": 1.0}, "confidence"), ({"n_resamples": 0}, "n_resamples"), ({"method": "t"}, "method")],
)
def test_bootstrap_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        stats.bootstrap_ci([1.0, 2.0], **kw)


def test_verdict_logic():
    assert stats.verdict(0.1, 0.5) == stats.BETTER
    assert stats.verdict(0.1, 0.5, higher_is_better=False) == stats.WORSE
    assert stats.verdict(-0.5, -0.1) == stats.WORSE
    assert stats.verdict(-0.5, -0.1, higher_is_better=False) == stats.BETTER
    assert stats.verdict(-0.1, 0.5) == stats.SAME
    assert stats.verdict(0.0, 0.5) == stats.SAME  # touching zero is not excluding it
    assert stats.verdict(0.2, 0.2) == stats.BETTER  # every seed the same non-zero difference
    assert stats.verdict(0.0, 0.0) == stats.SAME
    assert stats.verdict(np.nan, np.nan) == stats.NOT_AVAILABLE


def table() -> pd.DataFrame:
    # two conditions on the same 4 seeds; B = A + 1 + small noise (a paired improvement that the
    # spread across seeds, ~3, would hide in an unpaired comparison)
    a = np.array([0.0, 3.0, 6.0, 9.0])
    b = a + np.array([1.1, 0.9, 1.0, 1.0])
    return pd.DataFrame({"cond": ["A"] * 4 + ["B"] * 4, "seed": [0, 1, 2, 3] * 2, "x": np.r_[a, b],
                         "g": ["u"] * 8})


def test_paired_differences_arithmetic():
    d = stats.paired_differences(table(), "cond", "A", "x")
    assert list(d.columns) == ["cond", "seed", "diff"]
    np.testing.assert_allclose(d[d.cond == "B"]["diff"], [1.1, 0.9, 1.0, 1.0])
    np.testing.assert_allclose(d[d.cond == "A"]["diff"], 0.0)
    # a seed missing from the reference is dropped, not compared with another seed
    t = table().drop(index=0)
    d = stats.paired_differences(t, "cond", "A", "x")
    assert sorted(d[d.cond == "B"].seed) == [1, 2, 3]


def test_paired_differences_errors():
    with pytest.raises(ValueError, match="column 'nope'"):
        stats.paired_differences(table(), "cond", "A", "nope")
    with pytest.raises(ValueError, match="reference 'C'"):
        stats.paired_differences(table(), "cond", "C", "x")
    with pytest.raises(ValueError, match="pairs must be unique"):
        stats.paired_differences(pd.concat([table(), table()]), "cond", "A", "x")


def test_compare_is_paired():
    out = stats.compare(table(), "cond", "A", "x", n_resamples=999)
    b = out[out.cond == "B"].iloc[0]
    assert b["n"] == 4 and b["diff"] == pytest.approx(1.0) and b["reference"] == pytest.approx(4.5)
    assert b["mean"] == pytest.approx(5.5)
    assert 0.9 <= b["low"] <= 1.0 <= b["high"] <= 1.1
    assert b["verdict"] == stats.BETTER
    assert out[out.cond == "A"].iloc[0]["verdict"] == "the reference"
    worse = stats.compare(table(), "cond", "A", "x", higher_is_better=False, n_resamples=999)
    assert worse[worse.cond == "B"].iloc[0]["verdict"] == stats.WORSE


def test_compare_by_group_and_no_difference():
    v = table().assign(g="v")
    v.loc[v.cond == "B", "x"] = v.loc[v.cond == "A", "x"].to_numpy() + [0.5, -0.5, 0.4, -0.4]
    out = stats.compare(pd.concat([table(), v]), "cond", "A", ["x"], by=["g"], n_resamples=999)
    out = out.set_index(["g", "cond"])
    assert out.loc[("u", "B"), "verdict"] == stats.BETTER
    assert out.loc[("v", "B"), "verdict"] == stats.SAME
    assert out.loc[("v", "B"), "diff"] == pytest.approx(0.0)
    assert out.loc[("v", "B"), "reference"] == pytest.approx(4.5)


def test_mean_ci_and_format():
    m = stats.mean_ci(table(), ["cond"], "x", n_resamples=999).set_index("cond")
    assert m.loc["A", "mean"] == pytest.approx(4.5) and m.loc["A", "n"] == 4
    assert m.loc["A", "low"] < 4.5 < m.loc["A", "high"]
    assert stats.fmt(0.1234, 0.05, 0.2) == "0.12 [0.05, 0.20]"
    assert stats.fmt(0.1234, 0.05, 0.2, signed=True) == "+0.12 [0.05, 0.20]"
    assert stats.fmt(0.5, np.nan, np.nan) == "0.50"
    assert stats.fmt(np.nan, 0, 1) == "n/a"
