"""Tests of sae_ortho.analysis.lm_eval: activation metrics on hand-built SAEs and CE tables on a tiny GPT-NeoX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_ortho import metrics
from sae_ortho.analysis import lm_eval
from sae_ortho.data import lm
from sae_ortho.models.sae import SAE, SAEConfig


def pm_identity(d: int) -> SAE:
    """ReLU SAE with latents +e_j and -e_j (n = 2d): reconstructs every x exactly.

    Latent j fires where x_j > 0, latent d + j where x_j < 0."""
    sae = SAE(SAEConfig(d=d, n_latents=2 * d), generator=torch.Generator())
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def random_sae(d: int, n: int, seed: int = 0, **kw) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d=d, n_latents=n, **kw), generator=g)
    with torch.no_grad():
        sae.b_enc.copy_(0.5 * torch.randn(n, generator=g))
        sae.b_dec.copy_(torch.randn(d, generator=g))
    return sae


def numpy_metrics(sae: SAE, x: torch.Tensor) -> dict[str, float]:
    """The metrics from a float64 numpy forward pass of a ReLU SAE and the textbook formulas."""
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, k).detach().double().numpy() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    xs = x.double().numpy()
    codes = np.maximum((xs - b_dec) @ W_enc + b_enc, 0.0)
    x_hat = codes @ W_dec + b_dec
    sq = ((xs - x_hat) ** 2).sum()
    freq = (codes > 0).mean(0)
    return {
        "l0": float((codes > 0).sum(1).mean()),
        "fve": float(1 - sq / ((xs - xs.mean(0)) ** 2).sum()),
        "dead": float((freq == 0).mean()),
        "dense": float((freq > 0.1).mean()),
        "mse": float(sq / len(xs)),
    }


# -------------------------------------------------------------------------------- activation_metrics


def test_exact_reconstruction():
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    out = lm_eval.activation_metrics(pm_identity(4), x, batch=32)
    assert set(out) == {"l0", "fve", "fvu_dim", "dead", "dense", "mse"}
    assert out["fve"] == pytest.approx(1.0, abs=1e-6)
    assert out["fvu_dim"] == pytest.approx(0.0, abs=1e-10)
    assert out["mse"] == pytest.approx(0.0, abs=1e-10)
    assert out["l0"] == 4.0  # one of +e_j / -e_j per coordinate
    assert out["dead"] == 0.0 and out["dense"] == 1.0  # every latent fires on ~half the rows


def test_zero_decoder_explains_nothing():
    g = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(200, 6, generator=g) + 3.0
    sae = random_sae(6, 10)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(x.mean(0))  # x_hat is the mean of x: FVU = 1
    out = lm_eval.activation_metrics(sae, x, batch=64)
    assert out["fve"] == pytest.approx(0.0, abs=1e-5)
    total = float((x.double() - x.double().mean(0)).square().sum())
    assert out["mse"] == pytest.approx(total / 200, rel=1e-5)


def test_dead_and_dense_from_constructed_codes():
    n_rows = 200
    x = torch.zeros(n_rows, 4)
    x[:, 0] = torch.rand(n_rows, generator=torch.Generator().manual_seed(2)) + 0.1  # latent 0 always, 4 never
    # column 1 stays 0: latents 1 and 5 never fire
    x[:, 2] = -1.0
    x[:10, 2] = 1.0  # latent 2 on 5% of rows (alive, not dense), latent 6 on 95% (dense)
    x[:, 3] = -2.0
    x[:20, 3] = 2.0  # latent 3 on exactly 10% (not dense: the rule is > 10%), latent 7 on 90%
    x = x[torch.randperm(n_rows, generator=torch.Generator().manual_seed(3))]  # spread over batches
    sae = pm_identity(4)
    out = lm_eval.activation_metrics(sae, x, batch=64)
    assert out["dead"] == pytest.approx(3 / 8)  # latents 1, 4, 5
    assert out["dense"] == pytest.approx(3 / 8)  # latents 0, 6, 7
    assert out["l0"] == pytest.approx(3.0)
    assert out["l0"] == pytest.approx(float(metrics.l0(sae.encode(x).detach())))
    assert out["fve"] == pytest.approx(1.0, abs=1e-6)


def test_matches_direct_formulas_and_is_batch_independent():
    g = torch.Generator().manual_seed(4)
    x = 2.0 * torch.randn(300, 6, generator=g) + 1.0
    sae = random_sae(6, 10, seed=5)
    with torch.no_grad():
        sae.b_enc[:2] = -100.0  # dead
        sae.b_enc[2:4] = -4.0  # rare
    want = numpy_metrics(sae, x)
    assert want["dead"] >= 0.2 and 0.0 < want["dense"] < 1.0  # a non-trivial case
    for batch in (7, 64, 8192):
        got = lm_eval.activation_metrics(sae, x, batch=batch)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (batch, k)
    with torch.no_grad():
        x_hat, codes = sae(x)
    assert got["l0"] == pytest.approx(float(metrics.l0(codes)))
    assert got["fve"] == pytest.approx(1 - float(metrics.fvu(x, x_hat)), abs=1e-5)


def test_topk_and_float16_input():
    x = torch.randn(120, 6, generator=torch.Generator().manual_seed(6)).half()
    sae = random_sae(6, 12, seed=7, kind="topk", k=3)
    got = lm_eval.activation_metrics(sae, x, batch=50)
    with torch.no_grad():
        _, codes = sae(x.float())
    assert got["l0"] == pytest.approx(float(metrics.l0(codes)))
    assert got["l0"] <= 3.0
    assert got == pytest.approx(lm_eval.activation_metrics(sae, x.float()))


def test_activation_metrics_errors():
    stack = SAE(SAEConfig(d=4, n_latents=8, n_models=2), generator=torch.Generator())
    with pytest.raises(ValueError, match="activation_metrics needs a single SAE"):
        lm_eval.activation_metrics(stack, torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\], got \(5, 3\)"):
        lm_eval.activation_metrics(pm_identity(4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\], got \(2, 5, 4\)"):
        lm_eval.activation_metrics(pm_identity(4), torch.zeros(2, 5, 4))


# ------------------------------------------------------------------------------------------ ce_table


def my_splice(sae: SAE):
    return lambda r: sae(r.reshape(-1, r.shape[-1]))[0].reshape(r.shape)


def test_ce_table(tiny, tokens):
    saes = {"identity": pm_identity(32), "random": random_sae(32, 64, seed=8)}
    table = lm_eval.ce_table(tiny, tokens, 1, saes)
    assert table.index.name == "sae" and list(table.index) == ["identity", "random"]
    assert list(table.columns) == ["clean", "zero", "spliced", "ce_recovered", "ce_increase"]
    direct = lm.ce_losses(tiny, tokens, 1, {name: my_splice(s) for name, s in saes.items()})
    with torch.no_grad():
        assert direct["clean"] == pytest.approx(tiny.model(tokens, labels=tokens).loss.item(), abs=1e-5)
    for name in saes:
        row = table.loc[name]
        assert row["clean"] == pytest.approx(direct["clean"], abs=1e-6)
        assert row["zero"] == pytest.approx(direct["zero"], abs=1e-6)
        assert row["spliced"] == pytest.approx(direct[name], abs=1e-6)
        recovered = (direct["zero"] - direct[name]) / (direct["zero"] - direct["clean"])
        assert row["ce_recovered"] == pytest.approx(recovered, rel=1e-6)
        assert row["ce_increase"] == pytest.approx(direct[name] - direct["clean"], abs=1e-6)
    assert table.loc["identity", "ce_recovered"] == pytest.approx(1.0, abs=1e-4)  # exact reconstruction
    assert abs(table.loc["random", "ce_increase"]) > 1e-3  # a random SAE changes the loss


def test_ce_table_keeps_position_zero_clean(tiny, tokens):
    """The splice of an SAE that breaks position 0 only does not change the loss (skip_first)."""
    zero_out = pm_identity(32)
    n_pos = tokens.shape[1]

    class FirstPositionBreaker(SAE):
        def forward(self, x):
            x_hat, codes = super().forward(x)
            x_hat = x_hat.clone()
            x_hat[::n_pos] = 0.0  # rows 0, ctx, 2 ctx ... are the position-0 residuals
            return x_hat, codes

    breaker = FirstPositionBreaker(zero_out.cfg, generator=torch.Generator())
    breaker.load_state_dict(zero_out.state_dict())
    table = lm_eval.ce_table(tiny, tokens, 0, {"breaker": breaker})
    assert table.loc["breaker", "spliced"] == pytest.approx(table.loc["breaker", "clean"], abs=1e-5)


def test_per_dimension_fvu_weighs_every_dimension_equally():
    """One high-variance dimension reconstructed perfectly, one low-variance dimension not at all:
    FVE is near 1 (the big dimension dominates), the per-dimension FVU is 0.5."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g) * torch.tensor([100.0, 1.0])
    sae = SAE(SAEConfig(d=2, n_latents=2))
    with torch.no_grad():  # latent 0 copies +x_0, latent 1 copies -x_0: dimension 1 is lost
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        sae.W_enc.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        sae.b_enc.zero_(), sae.b_dec.zero_()
    out = lm_eval.activation_metrics(sae, x)
    assert out["fve"] > 0.999
    assert out["fvu_dim"] == pytest.approx(0.5, abs=0.01)
