"""Tests of sae_ortho.analysis.frontier: interpolation along L0 curves and matched comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sae_ortho.analysis import frontier, stats


def test_interpolate_known_values():
    out = frontier.interpolate([3.0, 1.0, 2.0], [30.0, 10.0, 20.0], [1.0, 1.5, 3.0, 0.5, 3.5])
    np.testing.assert_allclose(out[:3], [10.0, 15.0, 30.0])
    assert np.isnan(out[3]) and np.isnan(out[4])  # never extrapolated
    # repeated x are averaged; NaN points ignored
    np.testing.assert_allclose(frontier.interpolate([1, 1, 2, np.nan], [0, 2, 3, 9], [1, 1.5]), [1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        frontier.interpolate([1, 2], [1], [1])
    with pytest.raises(ValueError, match="no finite"):
        frontier.interpolate([np.nan], [1.0], [1])


def sweep_table() -> pd.DataFrame:
    """Two conditions x 3 seeds x 4 L1 values. Condition B is sparser at every L1 (its L0 is
    shifted by -1) but has the same FVU-vs-L0 curve, plus 0.1 lower FVU at matched L0."""
    rows = []
    for cond, shift, better in (("A", 0.0, 0.0), ("B", -1.0, 0.1)):
        for seed in range(3):
            for l1 in (0.05, 0.1, 0.2, 0.4):
                l0 = 4.0 - 4 * l1 + shift + 0.01 * seed
                rows.append({"cond": cond, "seed": seed, "l1": l1, "l0": l0, "fvu": 1.0 - 0.2 * l0 - better})
    return pd.DataFrame(rows)


def test_matched_removes_the_sparsity_confound():
    df = sweep_table()
    # at one L1 coefficient B looks worse (higher FVU: it is sparser) although it is better at equal L0
    at = df[df.l1 == 0.1].set_index(["cond", "seed"]).fvu
    assert (at["B"] > at["A"]).all()
    lo, hi = frontier.common_range(df, "l0", ["cond", "seed"])
    assert lo == pytest.approx(2.42) and hi == pytest.approx(2.8)
    m = frontier.matched(df, "l0", ["fvu"], ["cond", "seed"], n_points=4)
    assert len(m) == 2 * 3 * 4 and set(m.columns) == {"cond", "seed", "l0", "fvu"}
    np.testing.assert_allclose(np.unique(m.l0), np.linspace(lo, hi, 4))
    out = stats.compare(m, "cond", "A", "fvu", higher_is_better=False, pair_on=["seed", "l0"], n_resamples=999)
    b = out[out.cond == "B"].iloc[0]
    assert b["diff"] == pytest.approx(-0.1) and b["verdict"] == stats.BETTER
    given = frontier.matched(df, "l0", ["fvu"], ["cond", "seed"], at=[3.0])
    np.testing.assert_allclose(given[given.cond == "A"].fvu, 0.4)


def test_matched_needs_overlap():
    df = sweep_table()
    df.loc[df.cond == "B", "l0"] -= 10
    with pytest.raises(ValueError, match="share no l0 range"):
        frontier.matched(df, "l0", ["fvu"], ["cond", "seed"])
