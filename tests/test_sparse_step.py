"""The sparse training step (sae_ortho.models.sparse, TrainConfig(kernel="sparse")) against the
dense reference: the same loss and gradients, deterministic, the same trained SAEs in distribution.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from sae_ortho.experiments import kernel_equivalence as ke
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.models.sparse import Entries, _transpose
from sae_ortho.ortho import OrthoConfig
from sae_ortho.training.recipe import Recipe
from sae_ortho.training.train import SPARSE_MAX_DENSITY, TrainConfig, loss_terms, train

CASES = [c for c in itertools.product(("relu", "topk"), (None, 3), ("unit", "free"), (False, True), (None, 40))
         if not (c[0] == "relu" and c[3])]  # AuxK is TopK's


def _terms_and_grads(sae, x, cfg, dead, stage, ortho_w=0.0):
    sae.zero_grad(set_to_none=True)
    t = loss_terms(sae, x, cfg, torch.tensor(0.1, dtype=x.dtype), torch.tensor(ortho_w), stage=stage, dead=dead)
    t["loss"].sum().backward()
    return {k: v.detach().clone() for k, v in t.items()}, {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("kind,n_models,decoder_norm,aux,end", CASES)
def test_sparse_step_equals_dense_in_float64(kind, n_models, decoder_norm, aux, end):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(16, 64, kind, 4 if kind == "topk" else None, n_models=n_models),
              torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        sae.b_enc.add_(-0.3 if kind == "relu" else 0.0)
        sae.b_dec.normal_()
    x = torch.randn(*(() if n_models is None else (n_models,)), 32, 16, dtype=torch.float64)
    dead = torch.rand(*sae.b_enc.shape) < 0.5
    recipe = Recipe(decoder_norm=decoder_norm, aux_k=8 if aux else None)
    got = {}
    for kernel in ("dense", "sparse"):
        cfg = TrainConfig(steps=10, recipe=recipe, kernel=kernel)
        got[kernel] = _terms_and_grads(sae, x, cfg, dead, (0, end) if end else None)
    (dt, dg), (st, sg) = got["dense"], got["sparse"]
    assert dt.keys() == st.keys()
    for k in dt:
        torch.testing.assert_close(st[k].to(dt[k].dtype), dt[k], rtol=1e-12, atol=1e-12, msg=k)
    for k in dg:
        torch.testing.assert_close(sg[k], dg[k], rtol=1e-11, atol=1e-12, msg=k)
    assert float(dt["l0"].min()) > 0 and any(float(g.abs().max()) > 0 for g in dg.values())  # not vacuous


def test_sparse_step_with_the_orthogonality_penalty_equals_dense():
    sae = SAE(SAEConfig(12, 48, "topk", 3), torch.Generator().manual_seed(2)).double()
    x = torch.randn(40, 12, dtype=torch.float64)
    out = {}
    for kernel in ("dense", "sparse"):
        cfg = TrainConfig(steps=10, kernel=kernel, ortho_weight=0.5, ortho=OrthoConfig())
        out[kernel] = _terms_and_grads(sae, x, cfg, None, None, ortho_w=0.5)
    assert float(out["dense"][0]["ortho"]) > 0
    for k, g in out["dense"][1].items():
        torch.testing.assert_close(out["sparse"][1][k], g, rtol=1e-11, atol=1e-12, msg=k)


def _train(kernel: str, kind: str = "topk", steps: int = 30) -> SAE:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(24, 96, kind, 6 if kind == "topk" else None), torch.Generator().manual_seed(0))
    directions = torch.nn.functional.normalize(torch.randn(40, 24, generator=torch.Generator().manual_seed(1)), dim=-1)

    def sample(b):
        return torch.relu(torch.randn(b, 40) - 1.0) @ directions

    cfg = TrainConfig(steps=steps, batch_size=64, lr=3e-3, l1_coeff=0.05 if kind == "relu" else 0.0, kernel=kernel,
                      recipe=Recipe(aux_k=12, dead_steps=5) if kind == "topk" else Recipe())
    train(sae, sample, cfg, progress=False)
    return sae


@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_sparse_training_is_deterministic(kind):
    a, b = _train("sparse", kind), _train("sparse", kind)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    dense = _train("dense", kind)
    assert any(not torch.equal(p, dense.state_dict()[n]) for n, p in a.state_dict().items())  # another path ran
    for name, p in a.state_dict().items():  # ... to the same place, up to rounding after 30 steps
        torch.testing.assert_close(p, dense.state_dict()[name], rtol=0, atol=1e-3, msg=name)
    assert a.W_enc.is_contiguous()


def test_entries_group_by_row_and_by_latent():
    pre = torch.randn(2, 5, 7)
    entries, values = Entries.topk(pre, 3)
    assert torch.equal(entries.rows, torch.arange(10).repeat_interleave(3))
    assert bool((entries.cols.reshape(10, 3).diff(dim=1) > 0).all())  # sorted within a row (CSR)
    assert torch.equal(values, pre.reshape(10, 7).gather(1, entries.latent(7).reshape(10, 3)).reshape(-1))
    assert bool((entries.cols[:15] < 7).all()) and bool((entries.cols[15:] >= 7).all())  # model 1 after model 0
    by = entries.cols[entries.by_col]
    assert bool((by.diff() >= 0).all())
    counts = torch.bincount(entries.cols, minlength=14)
    assert torch.equal(entries.col_offsets, torch.cumsum(counts, 0) - counts)
    pos, vals = Entries.positive(torch.tensor([[0.5, -1.0, 2.0], [-1.0, -1.0, -1.0], [0.0, 3.0, 0.1]]))
    assert pos.rows.tolist() == [0, 0, 2, 2] and pos.cols.tolist() == [0, 2, 1, 2]
    assert vals.tolist() == pytest.approx([0.5, 2.0, 3.0, 0.1]) and pos.row_offsets.tolist() == [0, 2, 2]


@pytest.mark.parametrize("shape", [(64, 32), (3, 48, 96), (10, 7), (2, 5, 40)])
def test_tiled_transpose(shape):
    t = torch.randn(*shape)
    got = _transpose(t)
    assert got.is_contiguous() and torch.equal(got, t.transpose(-1, -2))


def test_auto_uses_the_sparse_step_only_when_codes_are_sparse(monkeypatch):
    from sae_ortho.training import train as train_mod

    calls = []
    real = train_mod._sparse_terms
    monkeypatch.setattr(train_mod, "_sparse_terms", lambda *a, **k: calls.append(1) or real(*a, **k))
    sae = SAE(SAEConfig(8, 64), torch.Generator().manual_seed(0))
    x = torch.randn(32, 8)
    cfg = TrainConfig(kernel="auto")
    loss_terms(sae, x, cfg, torch.tensor(0.1), torch.tensor(0.0))  # a fresh ReLU SAE: half its codes fire
    assert calls == []
    with torch.no_grad():
        sae.b_enc.fill_(-2.0)
    density = float((sae.pre_acts(x) > 0).float().mean())
    assert 0 < density <= SPARSE_MAX_DENSITY
    loss_terms(sae, x, cfg, torch.tensor(0.1), torch.tensor(0.0))
    assert calls == [1]


def test_kernel_option_checked_and_kept_out_of_old_fingerprints():
    with pytest.raises(ValueError, match="kernel"):
        TrainConfig(kernel="fast")
    sae = SAE(SAEConfig(4, 8))
    assert "kernel" not in TrainConfig().fingerprint(sae)  # runs keyed before the option keep their keys
    assert TrainConfig(kernel="sparse").fingerprint(sae) != TrainConfig().fingerprint(sae)


def test_statistical_equivalence_and_its_positive_control():
    """The check of sae_ortho.experiments.kernel_equivalence at a small scale: the sparse step is
    "equal" to the dense one on every metric, and halving the learning rate is caught."""
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(96, 32, generator=torch.Generator().manual_seed(3)), dim=-1)

    def sample(b):
        return torch.relu(torch.randn(b, 96) - 1.5) @ directions

    torch.manual_seed(123)
    held_out = sample(2048)
    for kind in ("relu", "topk"):
        cfg = ke.EquivalenceConfig(kind=kind, k=6, n_latents=128, tokens=256 * 300, seeds=(0, 1, 2), lr=3e-3, l1_coeff=0.3)
        _, table = ke.compare(cfg, sample, held_out)
        sparse = table[table["arm"] == "sparse"].set_index("metric")["verdict"]
        control = table[table["arm"] == "control"].set_index("metric")["verdict"]
        assert (sparse == ke.EQUAL).all(), table.to_string()
        assert (control == ke.DIFFERS).any(), table.to_string()
