"""Tests of sae_ortho.analysis.objective: the vanilla and penalised objectives of trained SAEs, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_ortho.analysis.objective import objective_terms
from sae_ortho.models.sae import SAE, SAEConfig
from sae_ortho.ortho import OrthoConfig


def _hand_sae() -> SAE:
    """2 latents in 2-D: decoder rows e1 and (cos 60, sin 60); encoder = identity-like, no biases."""
    sae = SAE(SAEConfig(d=2, n_latents=2))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]]))
        sae.W_enc.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_objective_by_hand():
    sae = _hand_sae()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # codes = relu(x): [1,0], [0,1], [0,0]; x_hat = codes @ W_dec
    codes = torch.relu(x)
    x_hat = codes @ sae.W_dec.detach()
    recon = float((x - x_hat).square().sum(-1).mean())
    sparsity = float(codes.sum(-1).mean())  # (1 + 1 + 0) / 3
    out = objective_terms(sae, x, l1=0.2, ortho_weight=0.5)
    assert out["recon"][0] == pytest.approx(recon) and out["sparsity"][0] == pytest.approx(2 / 3)
    assert out["vanilla"][0] == pytest.approx(recon + 0.2 * sparsity)
    # both latents are active; each one's nearest neighbour is the other at |cos| = 0.5
    assert out["penalty"][0] == pytest.approx(-math.log(1 - 0.5), rel=1e-6)
    assert out["penalised"][0] == pytest.approx(recon + 0.2 * sparsity + 0.5 * -math.log(0.5), rel=1e-6)
    # another shape: linear
    lin = objective_terms(sae, x, l1=0.2, ortho_weight=0.5, ortho=OrthoConfig(shape="linear"))
    assert lin["penalty"][0] == pytest.approx(0.5, rel=1e-6)


def test_penalty_counts_active_latents_only():
    sae = _hand_sae()
    x = torch.tensor([[1.0, -1.0], [2.0, -3.0]])  # only latent 0 fires
    out = objective_terms(sae, x, l1=0.1, ortho_weight=1.0)
    # the active latent 0 is scored against its neighbour (latent 1, inactive)
    assert out["penalty"][0] == pytest.approx(-math.log(0.5), rel=1e-6)
    none = objective_terms(sae, -torch.abs(x) - 1, l1=0.1, ortho_weight=1.0)  # nothing fires
    assert none["penalty"][0] == 0.0 and none["sparsity"][0] == 0.0


def test_stack_matches_single_models_and_per_model_weights():
    torch.manual_seed(0)
    stack = SAE(SAEConfig(d=4, n_latents=6, n_models=3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stack.b_enc.fill_(0.05)
    x = torch.randn(3, 50, 4)
    l1, w = [0.1, 0.2, 0.3], [0.0, 0.01, 1.0]
    out = objective_terms(stack, x, l1=l1, ortho_weight=w)
    for i in range(3):
        single = objective_terms(stack.select(i), x[i], l1=l1[i], ortho_weight=w[i])
        for k in out:
            assert out[k][i] == pytest.approx(single[k][0], rel=1e-5, abs=1e-7), k
    np.testing.assert_allclose(out["penalised"], out["vanilla"] + np.array(w) * out["penalty"], rtol=1e-6)
    shared = objective_terms(stack, x[0], l1=0.1)  # [S, d] shared by all models
    assert shared["vanilla"].shape == (3,)


def test_topk_has_no_l1_term():
    sae = SAE(SAEConfig(d=3, n_latents=4, kind="topk", k=2), generator=torch.Generator().manual_seed(0))
    out = objective_terms(sae, torch.randn(20, 3), l1=5.0)
    assert out["vanilla"][0] == pytest.approx(out["recon"][0])


def test_errors():
    sae = _hand_sae()
    with pytest.raises(ValueError, match="x must be"):
        objective_terms(sae, torch.zeros(3, 5), l1=0.1)
    stack = SAE(SAEConfig(d=2, n_latents=2, n_models=2))
    with pytest.raises(ValueError, match="l1 needs one value or one per model"):
        objective_terms(stack, torch.zeros(2, 3, 2), l1=[0.1, 0.2, 0.3])


def test_attribution():
    from sae_ortho.analysis.objective import OPTIMISATION, OPTIMUM, UNDETERMINED, attribution

    assert attribution(-0.3, -0.1) == OPTIMISATION  # the reference (e.g. ground-truth start) is better
    assert attribution(0.1, 0.3) == OPTIMUM
    assert attribution(-0.1, 0.3) == UNDETERMINED
    assert attribution(float("nan"), float("nan")) == UNDETERMINED
