"""Tests of lib.sweep: grids, stacked training from a table, and evaluation against lib.metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lib import metrics
from lib.reproducibility import setup
from lib.sae import SAE, SAEConfig
from lib.sweep import evaluate_stack, grid, ground_truth_scores, mean_std, seeds_matrix, train_stack
from lib.toy import ToyData, ToyDataConfig
from lib.train import TrainConfig, train


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
