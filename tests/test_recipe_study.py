"""Tests of sae_ortho.experiments.recipe_study on a tiny GPT-NeoX (runs cached under a temporary root)."""

from __future__ import annotations

import pytest

from sae_ortho.data import lm_data
from sae_ortho.experiments import recipe_study, runs
from tests.helpers import tiny_gpt_neox


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tiny_gpt_neox(tmp_path_factory.mktemp("models") / "neox", n_layers=2, d_model=16)
    cfg = lm_data.LMDataConfig(model=str(folder), layers=(1,), context=16, train_tokens=1500, eval_tokens=300,
                               corpus="pydoc-topics", batch_size=32, fallback=False)
    return lm_data.prepare(cfg, root=tmp_path_factory.mktemp("cache"), progress=False)


def test_run_study_measures_every_snapshot_and_the_cross_seed_agreement(data):
    # the runs go to the private store of the tests (conftest), as notebook 02's go to results/saes
    base = {"n_latents": 24, "tokens": 256 * 24, "lr": 3e-3, "l1_coeff": 0.5, "k": 4, "snapshots": 3}
    names = ["plain, batch 256", recipe_study.DEFAULT, "TopK, LM recipe with AuxK (default)"]
    df = recipe_study.run_study(data, 1, base, names, seeds=(0, 1), eval_rows=200, progress=False)
    assert set(df.recipe) == set(names)
    assert len(df) == 3 * 2 * 3  # recipes x seeds x snapshots
    assert sorted(df.step.unique()) == [8, 16, 24]
    first = df[df.seed == 0]
    assert first.shared.notna().all() and first.match.notna().all()
    assert df[df.seed == 1].shared.isna().all()
    assert ((df.near_init >= 0) & (df.near_init <= 1)).all()
    table = recipe_study.summary(df)
    assert list(table.index) == names and {"fve", "l0", "near_init", "shared", "match"} <= set(table.columns)
    # the default recipe's runs are notebook 02's runs (same name and spec)
    spec = runs.LMSAESpec("vanilla", n_latents=24, tokens=256 * 24, batch_size=256, lr=3e-3, l1_coeff=0.5,
                          snapshots=3)
    assert runs.lm_run_folder(data, 1, spec, 0).exists()
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_study.run_study(data, 1, base, ["no such recipe"], progress=False)
    with pytest.raises(ValueError, match="2 seeds"):
        recipe_study.run_study(data, 1, base, names[:1], seeds=(0,), progress=False)


def test_random_reference_is_the_floor():
    ref = recipe_study.random_reference(256, 32)
    assert 0 <= ref["shared"] < 0.05 and 0 <= ref["match"] < 0.05
