"""Tests of sae_ortho.analysis.summed: the atoms-plus-sums data, and scoring learned dictionaries against it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_ortho.analysis.summed import (
    ALONE,
    AS_COMBINATION,
    INSIDE,
    MISSED,
    SPLIT,
    SummedConfig,
    SummedData,
    sum_detection,
    summed_status,
)


def _orthonormal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.randn(d, n, generator=torch.Generator().manual_seed(seed))
    q, _ = torch.linalg.qr(g)
    return q.T.contiguous()


def _data(n_atoms=24, d=32, seed=0, **cfg) -> SummedData:
    cfg = {"n_pairs": 4, "n_triples": 2, "p_atom": 0.05, "p_sum": 0.05, **cfg}
    return SummedData(_orthonormal(n_atoms, d), SummedConfig(**cfg, seed=seed))


# --- construction --------------------------------------------------------------------------------


def test_structure_of_the_ground_truth():
    data = _data()
    n_sums = 6
    assert data.n_atoms == 24 and data.n_features == 24 + n_sums and data.d == 32
    assert data.directions.shape == (30, 32)
    torch.testing.assert_close(data.directions.norm(dim=1), torch.ones(30))
    torch.testing.assert_close(data.directions[:24], data.atoms)
    assert data.parts[:24] == [(i,) for i in range(24)]
    assert [len(p) for p in data.parts[24:]] == [2, 2, 2, 2, 3, 3]
    assert data.kinds == ["atom"] * 24 + ["pair"] * 4 + ["triple"] * 2
    np.testing.assert_array_equal(data.is_sum, np.arange(30) >= 24)
    used = [a for p in data.parts[24:] for a in p]
    assert len(used) == len(set(used))  # disjoint
    for f in range(24, 30):
        s = data.atoms[list(data.parts[f])].sum(0)
        torch.testing.assert_close(data.directions[f], s / s.norm())


def test_atoms_are_normalised():
    atoms = _orthonormal(6, 8) * torch.arange(1.0, 7.0)[:, None]
    data = SummedData(atoms, SummedConfig(n_pairs=1, seed=0))
    torch.testing.assert_close(data.atoms.norm(dim=1), torch.ones(6))


def test_choice_of_sums_is_deterministic_in_the_seed():
    assert _data(seed=3).parts == _data(seed=3).parts
    assert _data(seed=3).parts != _data(seed=4).parts


def test_non_disjoint_sums_are_distinct_sets():
    data = SummedData(_orthonormal(6, 8), SummedConfig(n_pairs=15, n_triples=5, disjoint=False))
    sums = data.parts[6:]
    assert len(set(sums)) == len(sums) == 20  # all 15 pairs of 6 atoms, 5 distinct triples
    assert all(p == tuple(sorted(p)) and len(set(p)) == len(p) for p in sums)
    # many atoms: the sets are drawn by rejection instead of enumerated (C(200, 3) > 200,000)
    big = [SummedData(_orthonormal(200, 200), SummedConfig(n_pairs=0, n_triples=50, disjoint=False)) for _ in range(2)]
    assert big[0].parts == big[1].parts and len(set(big[0].parts[200:])) == 50


def test_zero_sums_is_atoms_only():
    data = _data(n_pairs=0, n_triples=0)
    assert data.n_features == 24 and not data.is_sum.any()
    assert data.sample(5).x.shape == (5, 32)


# --- sampling ------------------------------------------------------------------------------------


def test_firing_rates_match_the_configuration():
    data = _data(p_atom=0.05, p_sum=0.1, p_part=0.02)
    n = 200_000
    stats = data.stats(n, seed=1)
    in_sum = {a for p in data.parts[24:] for a in p}
    expected = [0.02 if f in in_sum else 0.05 for f in range(24)] + [0.1] * 6
    np.testing.assert_allclose(stats["p"], expected, rtol=1e-6)
    # binomial standard error; 5 sigma keeps the 60 checks below a 1e-4 false-alarm rate
    for col, p_col in (("rate", "p"), ("all_parts_rate", "p_all_parts")):
        sigma = np.sqrt(stats[p_col] * (1 - stats[p_col]) / n)
        assert (np.abs(stats[col] - stats[p_col]) < 5 * sigma).all(), stats[[col, p_col]]
    # an atom in a pair is active alone (0.02) or with its pair (0.1)
    pair_atom = data.parts[24][0]
    assert stats["p_all_parts"][pair_atom] == pytest.approx(1 - 0.98 * 0.9)
    # a pair's parts are together when the pair fires or both fire alone
    assert stats["p_all_parts"][24] == pytest.approx(0.1 + 0.9 * 0.02**2)


def test_co_occurrence_with_overlapping_sums():
    # non-disjoint sums: an atom in several sums is active when any of them (or itself) fires
    data = SummedData(
        _orthonormal(8, 8), SummedConfig(n_pairs=6, n_triples=3, p_atom=0.1, p_sum=0.1, disjoint=False)
    )
    assert max(sum(a in p for p in data.parts[8:]) for a in range(8)) >= 2  # overlaps exist
    n = 100_000
    stats = data.stats(n, seed=2)
    sigma = np.sqrt(stats["p_all_parts"] * (1 - stats["p_all_parts"]) / n)
    assert (np.abs(stats["all_parts_rate"] - stats["p_all_parts"]) < 5 * sigma).all()


def test_parts_of_a_sum_share_one_amplitude():
    # parts never fire alone; orthonormal atoms, so projecting x reads each atom's amplitude
    data = _data(p_atom=0.05, p_sum=0.3, p_part=0.0)
    torch.manual_seed(0)
    batch = data.sample(4000)
    per_atom = batch.x @ data.atoms.T  # [batch, n_atoms]
    for f in range(24, 30):
        parts = list(data.parts[f])
        torch.testing.assert_close(per_atom[:, parts], batch.coeffs[:, f : f + 1].expand(-1, len(parts)))
        assert (batch.coeffs[:, f] > 0).any()
    # and x is exactly the documented sum over feature events
    raw = torch.stack([data.atoms[list(p)].sum(0) for p in data.parts])
    torch.testing.assert_close(batch.x, batch.coeffs @ raw)


def test_amplitude_models():
    torch.manual_seed(0)
    c = _data(amplitude="constant").sample(2000).coeffs
    assert set(c.unique().tolist()) == {0.0, 1.0}
    u = _data(amplitude="uniform").sample(2000).coeffs
    on = u[u > 0]
    assert on.max() < 1 and on.min() > 0 and on.mean().item() == pytest.approx(0.5, abs=0.03)


def test_sampling_uses_the_global_generator_and_stats_leave_it_alone():
    data = _data()
    torch.manual_seed(5)
    a = data.sample(64).x
    torch.manual_seed(5)
    data.stats(1000, seed=9)  # must not advance the training stream
    b = data.sample(64).x
    torch.testing.assert_close(a, b)
    torch.manual_seed(5)
    torch.testing.assert_close(_data().sample(64).x, a)  # same config, same seed: same data


def test_works_with_the_stacked_sampler():
    from sae_ortho.data.toy import stack_sampler

    data, other = _data(), _data(seed=1)
    x = stack_sampler([data, data, other], 8)
    assert x.shape == (3, 8, 32)


# --- summed_status -------------------------------------------------------------------------------


def test_status_of_the_exact_ground_truth_is_alone():
    data = _data()
    st = summed_status(data.directions, data)
    assert (st["status"] == ALONE).all()
    np.testing.assert_array_equal(st["best_latent"], np.arange(30))
    assert list(st["kind"]) == data.kinds


def test_status_with_atoms_only_recovers_sums_via_their_parts():
    data = _data()
    st = summed_status(data.atoms, data)
    atoms, sums = st[~data.is_sum], st[data.is_sum]
    assert (atoms["status"] == ALONE).all()
    assert (sums["status"] == AS_COMBINATION).all() and (sums["route"] == SPLIT).all()
    assert sums["via_parts"].all()
    for latents, parts in zip(sums["latents"], sums["parts"]):
        assert tuple(sorted(latents)) == parts  # latent i is atom i here


def test_status_with_sum_latents_only_puts_their_parts_inside():
    data = _data()
    in_sum = sorted({a for p in data.parts[24:] for a in p})
    free = [a for a in range(24) if a not in in_sum]
    learned = torch.cat([data.directions[24:], data.atoms[free]])  # latents 0-5 are the sums
    st = summed_status(learned, data)
    assert (st.loc[free, "status"] == ALONE).all()
    assert (st.loc[24:, "status"] == ALONE).all()
    assert (st.loc[in_sum, "status"] == AS_COMBINATION).all()
    assert (st.loc[in_sum, "route"] == INSIDE).all()
    for s, parts in enumerate(data.parts[24:]):
        for a in parts:
            assert st.loc[a, "latents"] == (s,)


def test_status_missing_part_means_the_sum_is_missed():
    data = _data(n_triples=0)
    a, b = data.parts[24]
    keep = [i for i in range(24) if i != b]
    st = summed_status(data.atoms[keep], data)
    assert st.loc[b, "status"] == MISSED
    assert st.loc[24, "status"] == MISSED  # a alone has cos 0.71 with a + b
    assert st.loc[a, "status"] == ALONE
    assert (st.loc[25:, "status"] == AS_COMBINATION).all()


# --- sum_detection -------------------------------------------------------------------------------


def test_detection_on_the_exact_ground_truth_is_perfect():
    data = _data()
    det = sum_detection(data.directions, data)
    assert det.precision == 1.0 and det.recall == 1.0
    assert det.directions_precision == 1.0 and det.directions_recall == 1.0
    s = det.summary()
    assert s["n_matched"] == 30 and s["n_matched_sums"] == 6 and s["n_predicted_sums"] == 6
    for _, row in det.latents[det.latents["is_sum"]].iterrows():
        assert row["support"] == data.parts[row["feature"]]  # latent i is feature i here


def test_detection_on_non_orthogonal_atoms_upper_bound():
    # LM decoder rows are not orthogonal: random unit atoms, 256 in 64 dims
    atoms = torch.randn(256, 64, generator=torch.Generator().manual_seed(2))
    data = SummedData(atoms, SummedConfig(n_pairs=20, n_triples=10, seed=1))
    det = sum_detection(data.directions, data)
    assert det.directions_precision == 1.0 and det.directions_recall == 1.0
    assert det.precision == 1.0 and det.recall == 1.0


def test_detection_without_part_latents_cannot_find_sums():
    data = _data()
    in_sum = {a for p in data.parts[24:] for a in p}
    free = [a for a in range(24) if a not in in_sum]
    det = sum_detection(torch.cat([data.directions[24:], data.atoms[free]]), data)
    assert det.recall == 0.0
    assert math.isnan(det.precision)  # nothing predicted to be a sum
    assert det.directions_recall == 1.0  # the ground truth itself would allow it


def test_detection_with_nothing_matched():
    data = _data()
    det = sum_detection(-data.atoms, data)  # antipodal latents match nothing (signed cosine)
    assert len(det.latents) == 0
    assert math.isnan(det.precision) and math.isnan(det.recall)
    assert det.summary()["n_matched_sums"] == 0


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"n_pairs": -1}, "n_pairs must be an int >= 0"),
        ({"n_pairs": 1.5}, "n_pairs must be an int >= 0"),
        ({"n_triples": True}, "n_triples must be an int >= 0"),
        ({"p_atom": 1.5}, "p_atom must be a probability"),
        ({"p_sum": -0.1}, "p_sum must be a probability"),
        ({"p_sum": math.nan}, "p_sum must be a probability"),
        ({"p_part": 2.0}, "p_part must be a probability"),
        ({"amplitude": "shared"}, "amplitude must be one of"),
        ({"seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_invalid_config(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        SummedConfig(**kwargs)


def test_invalid_disjoint_flag():
    with pytest.raises(TypeError, match="disjoint must be a bool"):
        SummedConfig(disjoint=1)


def test_invalid_atoms_and_sizes():
    with pytest.raises(ValueError, match="atoms must be a non-empty"):
        SummedData(torch.zeros(0, 8), SummedConfig(n_pairs=0))
    bad = _orthonormal(6, 8)
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="atoms contains non-finite"):
        SummedData(bad, SummedConfig(n_pairs=1))
    zero = _orthonormal(6, 8)
    zero[4] = 0
    with pytest.raises(ValueError, match="atoms has zero rows"):
        SummedData(zero, SummedConfig(n_pairs=1))
    with pytest.raises(ValueError, match="disjoint sums need 2 \\* n_pairs \\+ 3 \\* n_triples = 9 atoms"):
        SummedData(_orthonormal(8, 8), SummedConfig(n_pairs=3, n_triples=1))
    with pytest.raises(ValueError, match="16 distinct sums of 2 atoms"):
        SummedData(_orthonormal(6, 8), SummedConfig(n_pairs=16, disjoint=False))
    antipodal = torch.cat([_orthonormal(1, 8), -_orthonormal(1, 8)])
    with pytest.raises(ValueError, match=r"the sum of atoms \(0, 1\) \(almost\) cancels"):
        SummedData(antipodal, SummedConfig(n_pairs=1))
    with pytest.raises(ValueError, match="batch must be a positive int"):
        _data().sample(0)


def test_scoring_errors():
    data = _data()
    with pytest.raises(ValueError, match="learned has d = 16 but the data have d = 32"):
        summed_status(torch.randn(10, 16), data)
    with pytest.raises(ValueError, match="learned has d = 16"):
        sum_detection(torch.randn(10, 16), data)
    with pytest.raises(ValueError, match="atom_tol must be a number in"):
        summed_status(data.directions, data, atom_tol=0.0)
    with pytest.raises(ValueError, match="atom_tol must be a number in"):
        sum_detection(data.directions, data, atom_tol=1.2)
