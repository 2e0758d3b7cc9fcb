"""Tests of sae_ortho.experiments.sweep: grids, stacked training from a table, and evaluation against sae_ortho.metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sae_ortho import metrics
from sae_ortho.core.reproducibility import setup
from sae_ortho.data.toy import ToyData, ToyDataConfig
from sae_ortho.experiments.sweep import (
    evaluate_stack,
    grid,
    ground_truth_scores,
    mean_std,
    seeds_matrix,
    train_stack,
)
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.training.train import TrainConfig, train


def test_grid():
    g = grid(3, lr=[1e-3, 1e-2], l1=[0.1, 0.2, 0.3])
    assert list(g.columns) == ["lr", "l1", "seed"]
    assert len(g) == 2 * 3 * 3
    assert len(g.drop_duplicates()) == len(g)
    assert sorted(g["seed"].unique()) == [0, 1, 2]
    assert (g.groupby(["lr", "l1"]).size() == 3).all()
    assert list(grid(2).columns) == ["seed"] and len(grid(2)) == 2
    with pytest.raises(ValueError, match="n_seeds"):
        grid(0, lr=[1.0])
    with pytest.raises(ValueError, match="lr"):
        grid(1, lr=[])


def _data():
    return ToyData(
        ToyDataConfig(n_features=4, d=3, embedding="random", p=0.3),
        generator=torch.Generator().manual_seed(0),
    )


def test_train_stack_uses_table_columns():
    rows = pd.DataFrame({"lr": [1e-2, 3e-3], "l1": [0.01, 0.3], "ortho_weight": [0.0, 0.1]})
    data = _data()

    def sample(b):
        return torch.stack([data.sample(b).x for _ in range(2)])

    setup(0, threads=1)
    sae = train_stack(rows, sample, d=3, n_latents=5, steps=20, batch_size=16, seed=4)
    # the same run by hand: per-model values from the columns, init from the seed
    setup(0, threads=1)
    ref = SAE(SAEConfig(d=3, n_latents=5, n_models=2), generator=torch.Generator().manual_seed(4))
    cfg = TrainConfig(
        steps=20, batch_size=16, lr=(1e-2, 3e-3), l1_coeff=(0.01, 0.3), ortho_weight=(0.0, 0.1), log_every=2
    )
    train(ref, sample, cfg, progress=False)
    for name, p in ref.named_parameters():
        assert torch.equal(getattr(sae, name), p), name
    with pytest.raises(ValueError, match="rows"):
        train_stack(rows.iloc[:0], sample, d=3, n_latents=5)


def test_train_stack_keyword_defaults_apply_to_all():
    rows = grid(2)
    data = _data()
    setup(0, threads=1)
    sae = train_stack(
        rows,
        lambda b: torch.stack([data.sample(b).x] * 2),
        d=3,
        n_latents=4,
        steps=5,
        batch_size=8,
        lr=1e-2,
        l1=0.05,
    )
    assert sae.cfg.n_models == 2 and sae.W_dec.device.type == "cpu"
    assert not torch.equal(sae.W_dec[0], sae.W_dec[1])  # each model has its own init
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(2, 4))


def test_evaluate_stack_matches_metrics():
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=3, n_latents=5, n_models=2))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    x = torch.randn(40, 3)
    df = evaluate_stack(sae, x, l1=[0.1, 0.5])
    assert list(df.columns) == ["loss", "recon", "l0", "fvu", "dead"] and len(df) == 2
    for i in range(2):
        single = sae.select(i)
        with torch.no_grad():
            x_hat, codes = single(x)
        recon = (x - x_hat).square().sum(-1).mean().item()
        assert df["recon"][i] == pytest.approx(recon, rel=1e-5)
        assert df["loss"][i] == pytest.approx(recon + [0.1, 0.5][i] * codes.sum(-1).mean().item(), rel=1e-5)
        assert df["l0"][i] == pytest.approx(metrics.l0(codes).item())
        assert df["fvu"][i] == pytest.approx(metrics.fvu(x, x_hat).item(), rel=1e-5)
        assert df["dead"][i] == pytest.approx(metrics.dead_fraction(codes).item())
    # per-model evaluation sets
    xs = torch.randn(2, 30, 3)
    df2 = evaluate_stack(sae, xs)
    assert df2["loss"].tolist() == pytest.approx(df2["recon"].tolist())  # l1 = 0


def test_ground_truth_scores_match_metrics():
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=4, n_latents=6, n_models=2))
    true = torch.linalg.qr(torch.randn(4, 3))[0].T
    composed = torch.randn(2, 4)
    df = ground_truth_scores(sae, true, composed=composed)
    assert len(df) == 2
    for i in range(2):
        W = sae.W_dec[i].detach()
        rep = metrics.detect_compositions(W, true)
        assert df["mmcs"][i] == pytest.approx(metrics.mmcs(W, true))
        assert df["mcc"][i] == pytest.approx(metrics.mcc(W, true))
        assert df["mcc_composed"][i] == pytest.approx(metrics.mcc(W, composed))
        assert df["status"][i] == rep.feature_status
        assert df["alone"][i] + df["in_combination"][i] + df["missed"][i] == pytest.approx(1.0)
    # one truth per model
    df2 = ground_truth_scores(sae, [true, true[:2]])
    assert df2["mmcs"][1] == pytest.approx(metrics.mmcs(sae.W_dec[1].detach(), true[:2]))
    assert "mcc_composed" not in df2


def test_mean_std_and_seeds_matrix():
    df = pd.DataFrame({"a": [1, 1, 2, 2], "seed": [0, 1, 0, 1], "v": [1.0, 3.0, 5.0, 5.0]})
    out = mean_std(df, ["a"], ["v"])
    assert out.loc[1, "v"] == "2 ± 1" and out.loc[2, "v"] == "5 ± 0"
    xs, m = seeds_matrix(df, "a", "v")
    assert xs.tolist() == [1, 2]
    np.testing.assert_array_equal(m, [[1.0, 5.0], [3.0, 5.0]])
    xs, m = seeds_matrix(df, "a", "v", where={"seed": 1})
    np.testing.assert_array_equal(m, [[3.0, 5.0]])


# --- paired stacks, per-model init schemes, snapshots, evaluation batches -------------------------


def test_paired_stack_shares_init_and_batches_by_seed():
    from sae_ortho.experiments.sweep import _paired

    data = _data()
    rows = grid(3, ortho_weight=[0.0, 0.1])  # 6 models: (0, s) and (0.1, s)
    sample, index = _paired(rows, [data] * 6)
    assert index == [0, 1, 2, 0, 1, 2]
    setup(0, threads=1)
    x = sample(7)
    assert x.shape == (6, 7, 3)
    for s in range(3):
        assert torch.equal(x[s], x[3 + s])  # same seed, same batch
    assert not torch.equal(x[0], x[1])
    # seed s's batches are those of model s of an unpaired stack of [data] * n_seeds
    setup(0, threads=1)
    from sae_ortho.data.toy import stack_sampler

    assert torch.equal(stack_sampler([data] * 3, 7), x[:3])
    with pytest.raises(ValueError, match="'seed' column"):
        _paired(rows.drop(columns="seed"), [data] * 6)
    with pytest.raises(TypeError, match="one data set per row"):
        _paired(rows, lambda b: None)
    with pytest.raises(ValueError, match="need one data set per row"):
        _paired(rows, [data] * 3)


def test_paired_training_follows_the_unpaired_stack_per_seed():
    data = _data()
    kw = {"d": 3, "n_latents": 5, "steps": 15, "batch_size": 8, "lr": 1e-2, "l1": 0.05, "seed": 2}
    setup(0, threads=1)
    ref = train_stack(grid(2), [data] * 2, **kw)
    setup(0, threads=1)
    rows = grid(2, ortho_weight=[0.0, 0.0, 0.2])  # two identical conditions and one penalised
    sae = train_stack(rows, [data] * len(rows), paired=True, **kw)
    for i in range(len(rows)):
        s = int(rows.seed[i])
        if rows.ortho_weight[i] == 0:  # same init, same batches: the same run (stack sizes differ,
            for name, p in ref.named_parameters():  # so the kernels may round differently)
                torch.testing.assert_close(getattr(sae, name)[i], p[s], atol=1e-5, rtol=0, msg=f"{name} {i}")
    assert not torch.equal(sae.W_dec[4], ref.W_dec[0])  # the penalised condition moved elsewhere


def test_paired_with_two_data_sets():
    a, b = _data(), ToyData(ToyDataConfig(n_features=4, d=3, embedding="random", p=0.6),
                            generator=torch.Generator().manual_seed(1))
    rows = grid(2, amplitude=["a", "b"])
    from sae_ortho.experiments.sweep import _paired

    sample, index = _paired(rows, [a if r == "a" else b for r in rows.amplitude])
    x = sample(5)
    assert index == [0, 1, 0, 1] and not torch.equal(x[0], x[2])  # another data set: another batch


def test_init_column_sets_the_scheme_per_model():
    data = _data()
    rows = grid(2, init=["tied", "independent"])
    setup(0, threads=1)
    sae = train_stack(rows, [data] * 4, d=3, n_latents=5, steps=1, batch_size=4, lr=1e-9, seed=3, paired=True)
    tied = SAE(SAEConfig(d=3, n_latents=5, n_models=2), generator=torch.Generator().manual_seed(3))
    ind = SAE(SAEConfig(d=3, n_latents=5, n_models=2, init="independent"), generator=torch.Generator().manual_seed(3))
    for i, (scheme, s) in enumerate(zip(rows.init, rows.seed)):
        want = tied if scheme == "tied" else ind
        torch.testing.assert_close(sae.W_enc[i], want.W_enc[s], atol=1e-6, rtol=0)
        torch.testing.assert_close(sae.W_dec[i], tied.W_dec[s], atol=1e-6, rtol=0)  # same decoders


def test_fit_stack_history_and_snapshots_equal_shorter_runs():
    from sae_ortho.experiments.sweep import fit_stack

    data = _data()
    kw = {"d": 3, "n_latents": 4, "batch_size": 8, "lr": 1e-2, "l1": 0.05}
    setup(0, threads=1)
    sae, res = fit_stack(grid(2), [data] * 2, steps=20, snapshot_steps=(5, 20), log_every=5, **kw)
    assert list(res.history["step"]) == [5, 10, 15, 20] and res.history["loss"].shape == (4, 2)
    setup(0, threads=1)
    short = train_stack(grid(2), [data] * 2, steps=5, **kw)
    for name, p in short.named_parameters():
        assert torch.equal(res.snapshots[5][name], p), name
        assert torch.equal(res.snapshots[20][name], getattr(sae, name)), name


def test_eval_batches_share_samples_per_data_set():
    from sae_ortho.experiments.sweep import eval_batches

    a = _data()
    b = ToyData(ToyDataConfig(n_features=4, d=3, embedding="random", p=0.3), generator=torch.Generator().manual_seed(5))
    state = torch.get_rng_state()
    x, c = eval_batches([a, a, b], 50, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (3, 50, 3) and c.shape == (3, 50, 4)
    assert torch.equal(x[0], x[1]) and not torch.equal(x[0], x[2])
    assert torch.equal(c[0], c[2])  # another embedding of the same statistics: the same coefficients
    torch.testing.assert_close(x[2], c[2] @ b.directions)
    x2, _ = eval_batches([b, a], 50, seed=1)
    assert torch.equal(x2[1], x[0])  # the same samples whatever the order


def test_subset_and_at_step():
    from sae_ortho.experiments.sweep import at_step, subset

    sae = SAE(SAEConfig(d=3, n_latents=4, n_models=5), generator=torch.Generator().manual_seed(0))
    sub = subset(sae, [4, 1])
    assert sub.cfg.n_models == 2
    assert torch.equal(sub.W_dec, sae.W_dec[[4, 1]]) and torch.equal(sub.b_enc, sae.b_enc[[4, 1]])
    other = at_step(sae, {k: v * 2 for k, v in sae.state_dict().items()})
    assert torch.equal(other.W_enc, sae.W_enc * 2)
    with pytest.raises(ValueError, match="index is empty"):
        subset(sae, [])
