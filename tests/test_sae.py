"""Tests of sae_ortho.models.sae: shapes, TopK sparsity, stacking, decoder normalisation, config validation."""

from __future__ import annotations

import pytest
import torch

from sae_ortho.core.reproducibility import setup
from sae_ortho.models.sae import SAE, SAEConfig


def test_single_shapes_and_forward():
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=5, n_latents=7))
    assert not sae.stacked
    assert sae.W_enc.shape == (5, 7) and sae.W_dec.shape == (7, 5)
    assert sae.b_enc.shape == (7,) and sae.b_dec.shape == (5,)
    x = torch.randn(9, 5)
    x_hat, codes = sae(x)
    assert x_hat.shape == (9, 5) and codes.shape == (9, 7)
    assert torch.all(codes >= 0)
    # forward is exactly decode(encode(x)) with the documented formulas
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(5))
        sae.b_enc.copy_(torch.randn(7))
        codes = sae.encode(x)
        want = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        torch.testing.assert_close(codes, want)
        torch.testing.assert_close(sae.decode(codes), codes @ sae.W_dec + sae.b_dec)


def test_init_unit_decoder_tied_encoder():
    sae = SAE(SAEConfig(d=6, n_latents=4, n_models=3), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(3, 4))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.transpose(-1, -2))
    assert sae.W_enc.data_ptr() != sae.W_dec.data_ptr()
    other = SAE(SAEConfig(d=6, n_latents=4, n_models=3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(sae.W_dec, other.W_dec)


def test_stacked_shapes():
    sae = SAE(SAEConfig(d=3, n_latents=8, n_models=4))
    assert sae.stacked
    assert sae.W_enc.shape == (4, 3, 8) and sae.W_dec.shape == (4, 8, 3)
    assert sae.b_enc.shape == (4, 8) and sae.b_dec.shape == (4, 3)
    x_hat, codes = sae(torch.randn(4, 10, 3))
    assert x_hat.shape == (4, 10, 3) and codes.shape == (4, 10, 8)


@pytest.mark.parametrize("kind,k", [("relu", None), ("topk", 3)])
def test_select_equals_stack_slice(kind, k):
    setup(0, threads=1)
    sae = SAE(SAEConfig(d=4, n_latents=6, kind=kind, k=k, n_models=3))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 11, 4)
    x_hat, codes = sae(x)
    for i in range(3):
        single = sae.select(i)
        assert not single.stacked and single.cfg.kind == kind and single.cfg.k == k
        xs, cs = single(x[i])
        torch.testing.assert_close(xs, x_hat[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(cs, codes[i], rtol=0, atol=1e-6)
        # the copy is independent of the stack
        with torch.no_grad():
            single.W_dec.zero_()
        assert sae.W_dec[i].abs().sum() > 0


def test_select_leaves_global_rng_alone():
    sae = SAE(SAEConfig(d=3, n_latents=5, n_models=2))
    state = torch.get_rng_state()
    sae.select(1)
    assert torch.equal(torch.get_rng_state(), state)


def test_select_errors():
    with pytest.raises(ValueError, match="stacked"):
        SAE(SAEConfig(d=2, n_latents=3)).select(0)
    sae = SAE(SAEConfig(d=2, n_latents=3, n_models=2))
    for i in (-1, 2):
        with pytest.raises(IndexError, match="model index"):
            sae.select(i)


def test_topk_exactly_k_nonzeros():
    setup(0, threads=1)
    k = 3
    sae = SAE(SAEConfig(d=5, n_latents=10, kind="topk", k=k))
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # all pre-activations positive
    x = torch.randn(20, 5)
    pre = sae.pre_acts(x)
    assert torch.all(pre > 0)
    codes = sae.encode(x)
    assert torch.all((codes != 0).sum(-1) == k)
    # the kept latents are the k largest pre-activations, with their values
    top = pre.topk(k, dim=-1)
    torch.testing.assert_close(codes.gather(-1, top.indices), top.values)
    # stacked TopK too
    st = SAE(SAEConfig(d=5, n_latents=10, kind="topk", k=k, n_models=2))
    with torch.no_grad():
        st.b_enc.fill_(100.0)
    assert torch.all((st.encode(torch.randn(2, 7, 5)) != 0).sum(-1) == k)


def test_topk_negative_preacts_are_zeroed():
    sae = SAE(SAEConfig(d=3, n_latents=4, kind="topk", k=2))
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    assert torch.all(sae.encode(torch.randn(5, 3)) == 0)


def test_normalize_decoder():
    sae = SAE(SAEConfig(d=3, n_latents=4, n_models=2))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(2, 4, 1) * 5 + 0.1)
        sae.W_dec[1, 2] = 0.0  # a dead row stays zero (no NaN)
        before = sae.W_dec.clone()
    sae.normalize_decoder()
    norms = sae.W_dec.norm(dim=-1)
    torch.testing.assert_close(norms[0], torch.ones(4))
    torch.testing.assert_close(norms[1, [0, 1, 3]], torch.ones(3))
    assert torch.all(sae.W_dec[1, 2] == 0)
    # direction preserved
    cos = torch.nn.functional.cosine_similarity(sae.W_dec[0], before[0], dim=-1)
    torch.testing.assert_close(cos, torch.ones(4))


def test_remove_parallel_decoder_grad():
    sae = SAE(SAEConfig(d=4, n_latents=3))
    sae.remove_parallel_decoder_grad()  # no grad yet: no-op
    sae.W_dec.grad = torch.randn(3, 4)
    sae.remove_parallel_decoder_grad()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(3, 4, 5), (7, 6), (5,)])
def test_bad_input_single(shape):
    sae = SAE(SAEConfig(d=5, n_latents=3))
    with pytest.raises(ValueError, match=r"x must have shape \[batch, 5\]"):
        sae(torch.randn(*shape))


def test_bad_input_stacked():
    sae = SAE(SAEConfig(d=5, n_latents=3, n_models=2))
    with pytest.raises(ValueError, match="x must"):
        sae(torch.randn(4, 5))
    with pytest.raises(ValueError, match="n_models"):
        sae(torch.randn(3, 4, 5))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"d": 0}, "d must"),
        ({"n_latents": -2}, "n_latents"),
        ({"n_latents": 3.0}, "n_latents"),
        ({"kind": "foo"}, "kind"),
        ({"kind": "topk", "k": 9}, "k must"),
        ({"kind": "topk", "k": 0}, "k must"),
        ({"kind": "topk"}, "k must"),
        ({"n_models": 0}, "n_models"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        SAEConfig(**{"d": 4, "n_latents": 8, **kw})


def test_independent_init_keeps_the_decoder_and_draws_its_own_encoder():
    tied = SAE(SAEConfig(d=6, n_latents=5, n_models=2), generator=torch.Generator().manual_seed(3))
    ind = SAE(SAEConfig(d=6, n_latents=5, n_models=2, init="independent"), generator=torch.Generator().manual_seed(3))
    assert torch.equal(ind.W_dec, tied.W_dec)  # the decoder is drawn first, as with "tied"
    assert not torch.allclose(ind.W_enc, ind.W_dec.transpose(-1, -2))
    torch.testing.assert_close(ind.W_enc.norm(dim=-2), torch.ones(2, 5))  # unit encoder columns
    # the encoder directions are random, not the decoder's: |cos| between them is ~1/sqrt(d), not 1
    cos = (ind.W_enc.transpose(-1, -2) * ind.W_dec).sum(-1).abs()
    assert cos.mean() < 0.7
    single = SAE(SAEConfig(d=4, n_latents=3, init="independent"), generator=torch.Generator().manual_seed(0))
    assert single.W_enc.shape == (4, 3)
    stack = SAE(SAEConfig(d=4, n_latents=3, n_models=2, init="independent"))
    assert stack.select(1).cfg.init == "independent"
    torch.testing.assert_close(stack.select(1).W_enc, stack.W_enc[1])


def test_init_in_keys_only_when_not_default():
    from sae_ortho.training.train import TrainConfig

    assert "init" not in SAEConfig(3, 4).key_fields()
    assert SAEConfig(3, 4, init="independent").key_fields()["init"] == "independent"
    # the checkpoint fingerprint of a tied SAE is what it was before the field existed
    fp = TrainConfig().fingerprint(SAE(SAEConfig(3, 4)))
    assert '"sae":{"d":3,"k":null,"kind":"relu","n_latents":4,"n_models":null}' in fp
    with pytest.raises(ValueError, match="init must be"):
        SAEConfig(3, 4, init="orthogonal")
