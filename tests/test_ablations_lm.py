"""run_lm_variants on a tiny GPT-NeoX: reuses shared runs, reports gates, refuses a spec that does not
train its variant (runs cached under a temporary root)."""

from __future__ import annotations

import pytest

from sae_ortho.data import lm_data
from sae_ortho.experiments import ablations, runs
from sae_ortho.ortho import OrthoConfig
from tests.helpers import tiny_gpt_neox


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tiny_gpt_neox(tmp_path_factory.mktemp("models") / "neox", n_layers=2, d_model=16)
    cfg = lm_data.LMDataConfig(model=str(folder), layers=(1,), context=16, train_tokens=1500, eval_tokens=300,
                               corpus="pydoc-topics", batch_size=32, fallback=False)
    return lm_data.prepare(cfg, root=tmp_path_factory.mktemp("cache"), progress=False)


def test_shared_runs_are_reused_and_gates_reported(data):
    common = {"n_latents": 24, "tokens": 256 * 30, "batch_size": 256, "lr": 3e-3}
    van = runs.LMSAESpec("vanilla", l1_coeff=0.5, **common)
    trained, _ = runs.train_lm_sae(data, 1, van, seed=0, progress=False)
    variants = [ablations.Variant("vanilla", "reference"),
                ablations.Variant("proposal", "reference", 1.0, OrthoConfig())]
    base = runs.LMSAESpec("t", l1_coeff=0.5, **common)
    df, _ = ablations.run_lm_variants(variants, data, 1, 1, base, data.eval[1].load(), shared={"vanilla": van})
    assert list(df.variant) == ["vanilla", "proposal"]
    # the shared run is the one trained above, not a retrained copy: only the proposal got a new run
    root = runs.lm_run_folder(data, 1, van, 0).parent
    folders = sorted(p.name.split("-L1-")[0] for p in root.iterdir() if p.is_dir())
    assert folders == ["abl-t", "vanilla"], folders
    assert df[df.variant == "vanilla"].fve.iloc[0] == pytest.approx(
        ablations.lm_eval.activation_metrics(trained, data.eval[1].load())["fve"])
    for col in ("near-init fraction", "loss change, last 20%", "gates_pass"):
        assert col in df and df[col].notna().all()
    # a spec that trains something else than its variant is refused before any training
    with pytest.raises(ValueError, match="does not train variant 'proposal'"):
        ablations.run_lm_variants(variants, data, 1, 1, base, data.eval[1].load(), shared={"proposal": van})
    with pytest.raises(ValueError, match="not one of the variants"):
        ablations.run_lm_variants(variants, data, 1, 1, base, data.eval[1].load(), shared={"TopK": van})
