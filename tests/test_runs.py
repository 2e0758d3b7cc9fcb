"""Tests of sae_ortho.experiments.runs: train once per configuration, reload afterwards, resume interrupted runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from sae_ortho.experiments import runs
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.models.saelens_io import load_sae_lens
from sae_ortho.training.train import TrainConfig, train
from tests.helpers import Interrupt

D, N = 8, 16
SAE_CFG = SAEConfig(d=D, n_latents=N)
CFG = TrainConfig(steps=30, batch_size=32, lr=1e-2, l1_coeff=0.01, log_every=10)
DATA = 3.0 * torch.randn(400, D, generator=torch.Generator().manual_seed(0)) + 1.0


def sample(b: int) -> torch.Tensor:
    """Raw-unit rows drawn with the global generator (as ActivationStore.sampler)."""
    return DATA[torch.randint(len(DATA), (b,))]


def run(root, **kw):
    args = {"name": "run", "sae_cfg": SAE_CFG, "cfg": CFG, "sample": sample, "data_key": "data-A",
            "root": root, "seed": 3, "scale": 0.5, "progress": False}
    return runs.train_or_load(**(args | kw))


def files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_train_or_load_returns_raw_unit_sae(tmp_path):
    sae, history = run(tmp_path, metadata={"hook_name": "blocks.1.hook_resid_post"})
    # the same run by hand: init and data stream from the seed, trained on scale * x
    torch.manual_seed(3)
    ref = SAE(SAE_CFG, generator=torch.Generator().manual_seed(3))
    ref_hist = train(ref, lambda b: sample(b) * 0.5, CFG, progress=False).history
    x = DATA[:100]
    codes = sae.encode(x)
    assert (codes > 0).any()
    torch.testing.assert_close(codes, ref.encode(0.5 * x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sae(x)[0], ref(0.5 * x)[0] / 0.5, rtol=1e-4, atol=1e-5)
    # decoder rows of norm 1 / scale; un-folding the saved weights gives back the trained SAE
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((N,), 2.0))
    loaded, cfg = load_sae_lens(tmp_path / runs.run_key("run", SAE_CFG, CFG, "data-A", 3, 0.5) / "sae")
    assert cfg["metadata"]["input_scale_folded"] == 0.5
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    torch.testing.assert_close(loaded.W_enc / 0.5, ref.W_enc.detach())
    torch.testing.assert_close(loaded.W_dec * 0.5, ref.W_dec.detach())
    torch.testing.assert_close(loaded.b_dec * 0.5, ref.b_dec.detach())
    torch.testing.assert_close(loaded.b_enc, ref.b_enc.detach())
    # the history of the run
    assert set(history) == {"step", "loss", "recon", "l1", "ortho", "l0", "dead"}
    np.testing.assert_array_equal(history["step"], [10, 20, 30])
    for k, v in ref_hist.items():
        np.testing.assert_allclose(history[k], v, rtol=1e-6, err_msg=k)


def test_folder_layout(tmp_path):
    run(tmp_path)
    key = runs.run_key("run", SAE_CFG, CFG, "data-A", 3, 0.5)
    assert re.fullmatch(r"run-[0-9a-f]{12}", key)
    assert files(tmp_path) == [key, f"{key}/history.json", f"{key}/sae", f"{key}/sae/cfg.json",
                               f"{key}/sae/sae_weights.safetensors"]
    hist = json.loads((tmp_path / key / "history.json").read_text())
    assert hist["step"] == [10, 20, 30]


def test_second_call_loads_without_training(tmp_path, monkeypatch):
    first, h1 = run(tmp_path)

    def no_training(*a, **k):
        raise AssertionError("train() must not run for a finished run")

    monkeypatch.setattr(runs, "train", no_training)
    again, h2 = run(tmp_path)
    for name, p in first.named_parameters():
        assert torch.equal(p, getattr(again, name)), name
    assert h1.keys() == h2.keys() and all(np.array_equal(h1[k], h2[k]) for k in h1)
    with pytest.raises(AssertionError, match="must not run"):  # another key does train
        run(tmp_path, seed=4)


def test_run_key_separates_everything_that_determines_a_run():
    base = {"name": "run", "sae_cfg": SAE_CFG, "cfg": CFG, "data_key": "data-A", "seed": 3, "scale": 0.5}
    key = runs.run_key(**base)
    assert runs.run_key(**base) == key  # stable
    changes = [
        {"name": "other"}, {"sae_cfg": SAEConfig(d=D, n_latents=N + 1)}, {"sae_cfg": SAEConfig(D, N, "topk", k=2)},
        {"cfg": TrainConfig(steps=31, batch_size=32, lr=1e-2, l1_coeff=0.01, log_every=10)},
        {"cfg": TrainConfig(steps=30, batch_size=32, lr=1e-2, l1_coeff=0.02, log_every=10)},
        {"data_key": "data-B"}, {"seed": 4}, {"scale": 0.25},
    ]
    keys = {runs.run_key(**(base | c)) for c in changes}
    assert len(keys) == len(changes) and key not in keys


def test_different_seed_data_or_config_gives_another_folder(tmp_path):
    a, _ = run(tmp_path)
    b, _ = run(tmp_path, seed=4)
    c, _ = run(tmp_path, data_key="data-B")
    d, _ = run(tmp_path, cfg=TrainConfig(steps=20, batch_size=32, lr=1e-2, l1_coeff=0.01, log_every=10))
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 4
    assert not torch.equal(a.W_dec, b.W_dec)  # another seed: another init and data stream
    assert torch.equal(a.W_dec, c.W_dec)  # same seed and data, only the key differs
    assert not torch.equal(a.W_dec, d.W_dec)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=32, lr=1e-2, l1_coeff=0.01, log_every=10, checkpoint_every=5)
    full, full_hist = run(tmp_path / "full", cfg=cfg)
    broken = Interrupt(sample, at=17)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", cfg=cfg, sample=broken)
    key = runs.run_key("run", SAE_CFG, cfg, "data-A", 3, 0.5)
    assert files(tmp_path / "resumed") == [key, f"{key}/checkpoint.pt"]  # unfinished: only the checkpoint
    counted = Interrupt(sample, at=0)  # counts calls, never raises
    resumed, hist = run(tmp_path / "resumed", cfg=cfg, sample=counted)
    assert counted.calls == 30 - 15  # resumed from the checkpoint at step 15
    for name, p in full.named_parameters():
        assert torch.equal(p, getattr(resumed, name)), name
    assert all(np.array_equal(full_hist[k], hist[k]) for k in full_hist)
    assert "checkpoint.pt" not in {p.name for p in (tmp_path / "resumed").rglob("*")}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"sae_cfg": SAEConfig(d=D, n_latents=N, n_models=2)}, "train_or_load trains a single SAE; got n_models"),
        ({"scale": 0.0}, "scale must be a finite number > 0"),
        ({"scale": -1.0}, "scale must be a finite number > 0"),
        ({"scale": float("nan")}, "scale must be a finite number > 0"),
        ({"scale": float("inf")}, "scale must be a finite number > 0"),
        ({"scale": "1"}, "scale must be a finite number > 0"),
        ({"name": ""}, "name must be a plain non-empty folder name"),
        ({"name": "a/b"}, "name must be a plain non-empty folder name"),
        ({"name": ".hidden"}, "name must be a plain non-empty folder name"),
    ],
)
def test_errors_before_training(tmp_path, monkeypatch, kw, match):
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("trained despite a bad argument"))
    with pytest.raises(ValueError, match=match):
        run(tmp_path / "root", **kw)
    assert files(tmp_path / "root") == []


def test_bool_scale_rejected_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("trained despite scale=True"))
    with pytest.raises(ValueError, match="^scale must be a finite number > 0"):
        run(tmp_path / "root", scale=True)
    assert files(tmp_path / "root") == []


def test_snapshots_are_saved_and_reloaded(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=32, lr=1e-2, l1_coeff=0.01, log_every=10, snapshot_steps=(10, 30))
    sae, _ = run(tmp_path, cfg=cfg)
    folder = tmp_path / runs.run_key("run", SAE_CFG, cfg, "data-A", 3, 0.5)
    snaps = runs.load_snapshots(folder)
    assert sorted(snaps) == [10, 30]
    # training units: the final snapshot is the saved SAE before the scale was folded in
    torch.testing.assert_close(snaps[30]["W_dec"] / 0.5, sae.W_dec.detach())
    assert runs.load_snapshots(tmp_path / "nothing") == {}


def test_lm_spec_uses_the_lm_recipe_and_snapshots():
    from sae_ortho.training.recipe import Recipe, lm_recipe

    spec = runs.LMSAESpec("s", tokens=256 * 400, batch_size=256, snapshots=4)
    _, cfg = spec.configs(64)
    assert cfg.recipe == lm_recipe("relu", 400, 64)
    assert cfg.snapshot_steps == (100, 200, 300, 400)
    assert cfg.log_every == 4
    plain = runs.LMSAESpec("s", tokens=256 * 400, batch_size=256, recipe=Recipe(), snapshots=0)
    assert plain.configs(64)[1].recipe == Recipe() and plain.configs(64)[1].snapshot_steps == ()
    with pytest.raises(TypeError, match="recipe"):
        runs.LMSAESpec("s", recipe={"warmup_steps": 3})
    with pytest.raises(ValueError, match="snapshots"):
        runs.LMSAESpec("s", snapshots=-1)
