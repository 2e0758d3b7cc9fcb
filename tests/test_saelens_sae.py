"""SAELens's training SAEs plus the orthogonality penalty (sae_ortho.training.saelens_sae)."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainStepInput
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_ortho.ortho import OrthoConfig, nearest_neighbour_abs_cos, ortho_penalty
from sae_ortho.training import saelens_sae as osae

D_IN, D_SAE = 16, 64
KINDS = {  # ours -> SAELens's own class of the same kind, and the sparsity option
    "standard_ortho": (StandardTrainingSAE, StandardTrainingSAEConfig, {"l1_coefficient": 1e-2}),
    "topk_ortho": (TopKTrainingSAE, TopKTrainingSAEConfig, {"k": 4}),
    "batchtopk_ortho": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {"k": 4.0}),
}


def _pair(name: str, ortho_coefficient: float, **ortho):
    """SAELens's SAE and ours of the same kind, with the same initial weights."""
    base_sae, base_cfg, sparsity = KINDS[name]
    ours_sae, ours_cfg = osae.ARCHITECTURES[name]
    torch.manual_seed(0)
    base = base_sae(base_cfg(d_in=D_IN, d_sae=D_SAE, **sparsity))
    torch.manual_seed(0)
    ours = ours_sae(ours_cfg(d_in=D_IN, d_sae=D_SAE, ortho_coefficient=ortho_coefficient, **sparsity, **ortho))
    return base, ours


def _step(sae, x: torch.Tensor, coefficients: dict[str, float]):
    out = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0,
                       is_logging_step=False)
    )
    out.loss.backward()
    return out


def test_registered_with_saelens():
    osae.register()  # a second registration is harmless
    for name, classes in osae.ARCHITECTURES.items():
        assert get_sae_training_class(name) == classes


@pytest.mark.parametrize("name", list(KINDS))
def test_zero_coefficient_is_saelens_own_step(name):
    base, ours = _pair(name, 0.0)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    coefficients = {k: v.value if hasattr(v, "value") else v for k, v in ours.get_coefficients().items()}
    a = _step(base, x, {k: v for k, v in coefficients.items() if k != "ortho"})
    b = _step(ours, x, coefficients)
    assert torch.equal(a.loss, b.loss)
    assert b.losses["ortho_loss"].item() == 0.0
    for (pname, pa), pb in zip(base.named_parameters(), ours.parameters()):
        assert torch.equal(pa.grad, pb.grad), pname


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("method", ["certified", "chunked"])
def test_penalty_term_is_the_exact_penalty(name, method):
    _, ours = _pair(name, 2.0, ortho_method=method)
    x = torch.randn(2, D_IN, generator=torch.Generator().manual_seed(1))  # few inputs: some latents inactive
    coefficients = {k: v.value if hasattr(v, "value") else v for k, v in ours.get_coefficients().items()}
    out = _step(ours, x, coefficients)
    codes = out.feature_acts.detach()
    codes = codes.to_dense() if codes.is_sparse else codes
    want = 2.0 * ortho_penalty(ours.W_dec.detach(), codes, OrthoConfig())
    assert out.losses["ortho_loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.losses.values()), rel=1e-6)
    # the study's proposal: gradient reaches inactive neighbours' rows too
    inactive = ~(codes != 0).any(0)
    assert inactive.any() and ours.W_dec.grad[inactive].abs().sum() > 0


def test_sparse_topk_codes_give_the_same_active_set():
    codes = torch.zeros(5, 8)
    codes[0, 1], codes[3, 6] = 1.0, 2.0
    assert osae.active_latents(codes.to_sparse()).tolist() == osae.active_latents(codes).tolist()
    assert osae.active_latents(codes).nonzero().flatten().tolist() == [1, 6]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ortho_shape": "cube"}, "ortho_shape"),
        ({"ortho_method": "fast"}, "ortho_method"),
        ({"ortho_coefficient": float("nan")}, "ortho_coefficient"),
        ({"ortho_coefficient": -1.0}, "bounded ortho_shape"),
        ({"ortho_warm_up_steps": -1}, "ortho_warm_up_steps"),
        ({"ortho_cache_k": 0}, "ortho_cache_k"),
    ],
)
def test_bad_options_are_refused_at_construction(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        osae.OrthoStandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **options)


def _runner_train(tmp_path, sae_cfg, seed: int = 0):
    """SAELens's own LanguageModelSAETrainingRunner on a tiny random transformer and token set."""
    model = HookedTransformer(HookedTransformerConfig(
        n_layers=1, d_model=D_IN, n_ctx=32, d_head=4, n_heads=4, d_vocab=64, act_fn="relu", seed=seed,
    ))
    tokens = torch.randint(0, 64, (256, 32), generator=torch.Generator().manual_seed(seed))
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name="tiny-random", hook_name="blocks.0.hook_resid_post", dataset_path="tiny-random",
        is_dataset_tokenized=True, streaming=False, context_size=32, training_tokens=8192,
        train_batch_size_tokens=256, store_batch_size_prompts=8, n_batches_in_buffer=8, lr=1e-3, device="cpu",
        seed=seed, logger=LoggingConfig(log_to_wandb=False), output_path=str(tmp_path), n_checkpoints=0,
        checkpoint_path=str(tmp_path / "checkpoints"), prepend_bos=False, n_batches_for_norm_estimate=2, verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"input_ids": tokens.tolist()}),
                                            override_model=model)
    return runner.run()


@pytest.mark.parametrize(("name", "saved_as"), [("standard_ortho", "standard"), ("batchtopk_ortho", "jumprelu")])
def test_saelens_runner_trains_with_the_penalty(tmp_path, name, saved_as):
    _, cfg_cls = osae.ARCHITECTURES[name]
    sparsity = KINDS[name][2]
    nn_cos = {}
    for coefficient in (0.0, 1.0):
        folder = tmp_path / f"lambda{coefficient}"
        trained = _runner_train(folder, cfg_cls(d_in=D_IN, d_sae=D_SAE, ortho_coefficient=coefficient, **sparsity))
        assert isinstance(trained, osae.ARCHITECTURES[name][0])
        # the saved SAE is SAELens's own kind, loaded without this package's classes
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg["architecture"] == saved_as
        assert cfg["metadata"]["training_architecture_details"]["ortho_coefficient"] == coefficient
        loaded = SAE.load_from_disk(str(folder))
        # the same decoder directions (BatchTopK's save folds the decoder norms into the encoder)
        unit = lambda w: torch.nn.functional.normalize(w.detach(), dim=-1)
        assert torch.allclose(unit(loaded.W_dec), unit(trained.W_dec), atol=1e-6)
        nn_cos[coefficient] = nearest_neighbour_abs_cos(trained.W_dec.detach()).mean().item()
    # same seed, same data: the penalty is what separates the two runs, and it pushes rows apart
    assert nn_cos[1.0] < nn_cos[0.0] - 0.01, nn_cos
