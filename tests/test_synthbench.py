"""SynthSAEBench support: config validation, proportional scaling, caching, SAELens's evaluator on
this project's SAEs (MCC agreement), peers through SyntheticSAERunner. Tiny configs only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sae_ortho import metrics
from sae_ortho.analysis import frontier
from sae_ortho.core.reproducibility import setup
from sae_ortho.data import synthbench as sb
from sae_ortho.experiments import synthbench_runs as sr
from sae_ortho.models.sae import SAE, SAEConfig

# 128 features (one full tree of 85) in 8 dims, SAE width 32, 4096 training samples.
TINY = dataclasses.replace(
    sb.SYNTHSAEBENCH_16K, n_features=128, hidden_dim=8, n_roots=1, width=32, samples=4096, batch_size=256,
    ortho_steps=5, lr=3e-3,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sb.prepare(TINY, n_eval=2048, root=tmp_path_factory.mktemp("synthbench"), progress=False)


def test_published_config_is_synthsaebench_16k():
    c = sb.SYNTHSAEBENCH_16K
    assert (c.n_features, c.hidden_dim, c.width, c.samples, c.batch_size, c.lr) == (16384, 768, 4096, 200_000_000, 1024, 3e-4)
    assert (c.n_roots, c.branching, c.depth, c.zipf_exponent, c.max_prob, c.min_prob) == (128, 4, 3, 0.5, 0.4, 5e-4)
    assert (c.corr_rank, c.corr_scale, c.ortho_steps, c.ortho_lr, c.bias, c.seed) == (25, 0.1, 100, 3e-4, 0.5, 42)
    assert c.is_published() and "SynthSAEBench-16k" in c.label()
    s = c.sae_lens_config()
    assert s.hierarchy.mutually_exclusive_portion == 1.0 and s.hierarchy.compensate_probabilities
    assert s.hierarchy.scale_children_by_parent
    assert (s.mean_firing_magnitudes.start, s.mean_firing_magnitudes.end) == (5.0, 4.0)
    assert (s.std_firing_magnitudes.mean, s.std_firing_magnitudes.std) == (0.5, 0.5)


@pytest.mark.parametrize("n", [1024, 2048, 4096])
def test_scaled_keeps_the_ratios(n):
    c = sb.scaled(n, samples=10_000)
    ref = sb.SYNTHSAEBENCH_16K
    assert c.width_ratio == ref.width_ratio == 0.25
    assert c.superposition == pytest.approx(ref.superposition, rel=0.02)
    assert c.n_roots * c.tree_size / n == pytest.approx(ref.n_roots * ref.tree_size / ref.n_features)
    same = ("zipf_exponent", "max_prob", "min_prob", "branching", "depth", "corr_rank", "corr_scale", "seed", "bias")
    assert all(getattr(c, f) == getattr(ref, f) for f in same)
    assert not c.is_published() and "scaled" in c.label()
    assert sb.scaled(16384, samples=200_000_000) == ref


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("n_features", 8, "n_features"),  # fewer features than hidden_dim=8: no superposition
        ("hidden_dim", 200, "n_features"),
        ("width", 129, "width"),
        ("max_prob", 1.5, "max_prob"),
        ("max_prob", 0.0, "max_prob"),
        ("min_prob", -0.1, "min_prob"),
        ("min_prob", 0.5, "min_prob"),  # not below max_prob
        ("n_roots", 2, "n_roots"),  # two trees of 85 do not fit in 128 features
        ("corr_scale", 0.5, "corr_scale"),
        ("batch_size", 10_000, "batch_size"),
        ("samples", 0, "samples"),
        ("lr", -1.0, "lr"),
        ("seed", True, "seed"),
    ],
)
def test_bad_config_fails_before_building(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **{field: value})


def test_bad_peer_sparsity_names_k():
    with pytest.raises(ValueError, match="k"):
        sr.peer_config("batchtopk", TINY, TINY.width + 1)
    with pytest.raises(ValueError, match="architecture"):
        sr.peer_config("gated", TINY, 4)


@pytest.mark.parametrize(
    "sweeps, match",
    [
        ({"ks": [4, TINY.width + 1]}, "ks"),  # k > width
        ({"peer_ks": [0]}, "peer_ks"),
        ({"ks": [2.5]}, "ks"),
        ({"l1_coeffs": [1.0, -1.0]}, "l1_coeffs"),
        ({"ortho_weights": [1.0, 3.0]}, "include 0"),
        ({"ortho_weights": [0.0, float("nan")]}, "ortho_weights"),
        ({"l1_coeffs": []}, "empty"),
        ({"ks": [4, 4]}, "repeated"),
    ],
)
def test_check_sweep_names_the_parameter(sweeps, match):
    with pytest.raises(ValueError, match=match):
        sr.check_sweep(TINY, **sweeps)


def test_protocol_defaults():
    assert sb.protocol(16384, 200_000_000, hidden_dim=768, width=4096) == sb.SYNTHSAEBENCH_16K
    short = sb.protocol(1024, 256_000)
    assert (short.hidden_dim, short.width, short.n_roots) == (48, 256, 8)
    assert (short.batch_size, short.lr) == (sb.SHORT_BATCH, sb.SHORT_LR)
    assert sb.protocol(1024, 256_000, batch_size=64, lr=1e-3).lr == 1e-3
    with pytest.raises(ValueError, match="width"):
        sb.protocol(1024, 256_000, width=2048)
    with pytest.raises(ValueError, match="n_features"):
        sb.protocol(1024, 256_000, hidden_dim=1024)


def test_build_is_cached_and_same(data, tmp_path):
    again = sb.build_model(TINY, data.root)
    assert torch.equal(again.feature_dict.feature_vectors, data.model.feature_dict.feature_vectors)
    fresh = sb.build_model(TINY, None)  # same config and seed, built again without the cache
    assert torch.allclose(fresh.feature_dict.feature_vectors, data.model.feature_dict.feature_vectors)
    parents = sb.hierarchy_parents(data.model)
    assert len(parents) == 1 + 4 + 16 and all(len(k) == 4 for k in parents.values())


def test_samples_cached_reproducible_and_replayed(data, tmp_path):
    s = data.train
    assert s.n == TINY.samples and s.true_l0() > 0
    again = sb.generate_samples(data.model, TINY.samples, data.data_seed, tmp_path / "again", shard=1000, progress=False)
    # other shard size: other samples, but the same per-shard seeding makes a rerun identical
    rerun = sb.generate_samples(data.model, TINY.samples, data.data_seed, tmp_path / "again", shard=1000, progress=False)
    assert torch.equal(again.col, rerun.col) and torch.equal(again.val, rerun.val)
    with pytest.raises(ValueError, match="holds"):
        sb.generate_samples(data.model, TINY.samples + 1, data.data_seed, tmp_path / "again", progress=False)
    r = sb.Replay(s, dense=True)
    first = r.sample(100)
    assert first.shape == (100, TINY.n_features) and torch.equal(first, s.rows(0, 100, dense=True))
    assert torch.equal(sb.Replay(s).sample(100).to_dense(), first)
    r.position = s.n - 10  # wraps around the end
    assert torch.equal(r.sample(20)[10:], first[:10])


def test_hidden_sampler_matches_feature_dictionary(data):
    x = sb.HiddenSampler(data.model, data.train_source(), n_models=3)(64)
    want = data.train.rows(0, 64, dense=True) @ data.model.feature_dict.feature_vectors + data.model.feature_dict.bias
    assert x.shape == (3, 64, TINY.hidden_dim)
    assert torch.allclose(x[2], want, atol=1e-5)


def _sae_at(rows: torch.Tensor) -> SAE:
    sae = SAE(SAEConfig(TINY.hidden_dim, rows.shape[0]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.copy_(rows)
        sae.W_enc.copy_(rows.T)
    return sae


def test_our_mcc_equals_saelens_mcc(data):
    from sae_lens.synthetic import mean_correlation_coefficient

    F = data.model.feature_dict.feature_vectors.detach()
    at_truth = _sae_at(F[: TINY.width])
    random = SAE(SAEConfig(TINY.hidden_dim, TINY.width), generator=torch.Generator().manual_seed(1))
    for sae in (at_truth, random):
        ev = sb.evaluate(sb.SAELensView(sae), data)
        assert ev["mcc"] == pytest.approx(metrics.mcc(sae.W_dec.detach(), F), abs=1e-5)
        assert ev["mcc"] == pytest.approx(mean_correlation_coefficient(sae.W_dec.detach(), F), abs=1e-6)
    assert sb.evaluate(sb.SAELensView(at_truth), data)["mcc"] == pytest.approx(1.0, abs=1e-5)
    assert sb.evaluate(sb.SAELensView(random), data)["mcc"] < 0.9


def test_stacked_view_scores_each_model(data):
    F = data.model.feature_dict.feature_vectors.detach()
    stack = SAE(SAEConfig(TINY.hidden_dim, TINY.width, n_models=2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stack.W_dec[0].copy_(F[: TINY.width])
        stack.W_enc[0].copy_(F[: TINY.width].T)
    a, b = (sb.evaluate(sb.SAELensView(stack, i), data) for i in range(2))
    assert a["mcc"] == pytest.approx(1.0, abs=1e-5) and b["mcc"] < 0.9
    with pytest.raises(ValueError, match="index"):
        sb.SAELensView(stack)


def test_peer_trains_on_the_cached_samples(data):
    setup(0, threads=1)
    run = sr.train_peer(sr.PeerSpec("standard", 0.5, seed=0), data)
    assert run.name == "SAELens L1" and run.samples_per_second > 0
    assert len(run.losses) == TINY.steps and sum(run.losses[-4:]) < sum(run.losses[:4])
    assert not torch.equal(run.W_init, run.sae.W_dec)
    again = sr.train_peer(sr.PeerSpec("standard", 0.5, seed=0), data)  # same seed, same samples: same SAE
    assert torch.equal(again.sae.W_dec, run.sae.W_dec)
    ev = sb.evaluate(run.sae, data)
    assert 0 <= ev["mcc"] <= 1 and ev["sae_l0"] > 0
    assert ev["mcc"] == pytest.approx(metrics.mcc(run.sae.W_dec.detach(), data.model.feature_dict.feature_vectors), abs=1e-5)


def test_train_ours_stacks_seeds_and_scores(data):
    setup(0, threads=1)
    specs = [sr.OurSpec("relu", 1.0, 0.0, 0), sr.OurSpec("relu", 1.0, 1.0, 0), sr.OurSpec("topk", 4, 0.0, 1)]
    runs = sr.train_ours(data, specs, progress=False)
    assert [(r.name, r.sparsity, r.ortho_weight, r.seed) for r in runs] == [
        ("L1", 1.0, 0.0, 0), ("L1", 1.0, 1.0, 0), ("TopK", 4, 0.0, 1)]
    assert torch.equal(runs[0].W_init, runs[1].W_init)  # a seed is the same initialisation everywhere
    single = SAE(SAEConfig(TINY.hidden_dim, TINY.width, "topk", 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(runs[2].W_init, single.W_dec.detach())
    parents = sb.hierarchy_parents(data.model)
    row = sr.Scorer(data, parents)(runs[2])
    assert row["sae_l0"] == pytest.approx(4.0) and row["our_l0"] == pytest.approx(4.0)
    assert row["mcc"] == pytest.approx(row["our_mcc"], abs=1e-5)
    assert row["our_fve"] == pytest.approx(row["explained_variance"], abs=1e-4)
    assert 0 <= row["parents_matched"] <= 1 and "absorption" in row and "plateau" in row
    assert row["cos_to_init"] < 1


def test_peer_job_in_a_second_process_equals_this_process(data):
    specs = [sr.PeerSpec("batchtopk", 4, seed=0)]
    here = sr.PeerJob(specs, data, background=False).result()
    there = sr.PeerJob(specs, data, background=True).result()
    assert torch.equal(here[0][0].sae.W_dec, there[0][0].sae.W_dec)
    assert here[1][0]["f1"] == there[1][0]["f1"] and here[1][0]["method"] == "SAELens BatchTopK"


def test_frontier_interpolation_and_paired_difference():
    import numpy as np
    import pandas as pd

    assert np.allclose(frontier.at_l0([1, 4], [0.0, 1.0], [2]), [0.5])  # halfway in log L0
    assert np.isnan(frontier.at_l0([1, 4], [0.0, 1.0], [8])).all()  # no extrapolation
    rows = [{"method": m, "seed": s, "l0": l0, "f1": base + 0.1 * s + l0 / 100}
            for m, base in (("a", 0.5), ("b", 0.4)) for s in range(3) for l0 in (2, 4, 8)]
    table = frontier.frontier_table(pd.DataFrame(rows), [4.0], ["f1"])
    diff = frontier.paired_difference(table, "f1", "a", "b")
    assert diff["n_seeds"].item() == 3 and diff["diff"].item() == pytest.approx(0.1)
    assert diff["low"].item() == pytest.approx(0.1) and diff["high"].item() == pytest.approx(0.1)


def test_live_samples_when_the_cache_would_be_too_large(data):
    live = sb.prepare(TINY, n_eval=1024, root=data.root, max_cache_gb=0.0, progress=False)
    assert not live.cached and live.train is None
    a, b = live.train_source().sample(64), live.train_source().sample(64)
    assert torch.equal(a, b)  # every consumer of the stream sees the same samples
    assert not torch.equal(a, live.eval_source().sample(64))  # evaluation has its own stream
    setup(0, threads=1)
    ours = sr.train_ours(live, [sr.OurSpec("topk", 4, 1.0, 0)], progress=False)
    _, rows = sr.PeerJob([sr.PeerSpec("standard", 0.5, 0)], live, background=False).result()
    scorer = sr.Scorer(live, sb.hierarchy_parents(live.model))
    for row in [scorer(ours[0]), rows[0]]:
        assert row["mcc"] == pytest.approx(row["our_mcc"], abs=1e-5) and row["true_l0"] > 0
