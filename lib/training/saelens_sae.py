"""SAELens's own training SAEs plus the decoder-orthogonality penalty.

Importing this module registers three training architectures with SAELens
(``sae_lens.registry.register_sae_training_class``), each SAELens's class of the same kind with one
more loss term, ``ortho_coefficient * ortho_penalty(W_dec, feature_acts)`` (exact nearest
neighbours, :func:`sae_ortho.ortho.ortho_penalty`):

=================== ========================================= ==========================
architecture        SAELens class it extends                  saved for inference as
=================== ========================================= ==========================
``standard_ortho``  ``StandardTrainingSAE`` (ReLU + L1)       ``standard``
``topk_ortho``      ``TopKTrainingSAE``                       ``topk``
``batchtopk_ortho`` ``BatchTopKTrainingSAE``                  ``jumprelu``
=================== ========================================= ==========================

So SAELens's runners (``LanguageModelSAETrainingRunner``, ``SyntheticSAERunner``) train them like
their own, the coefficient has a warm-up like SAELens's L1 (``ortho_warm_up_steps``), the term is
logged as ``losses/ortho_loss``, and the saved SAE is a plain SAELens SAE (``SAE.load_from_disk``
needs nothing from this package); its ``cfg.json`` metadata records the ortho settings under
``training_architecture_details``::

    import sae_ortho.training.saelens_sae as ortho_sae
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner

    sae_cfg = ortho_sae.OrthoStandardTrainingSAEConfig(
        d_in=512, d_sae=4096, l1_coefficient=5.0, ortho_coefficient=1.0
    )
    LanguageModelSAETrainingRunner(LanguageModelSAERunnerConfig(sae=sae_cfg, ...)).run()

With ``ortho_coefficient = 0`` the penalty is not computed and the step is SAELens's own, bit for
bit (``tests/test_saelens_sae.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_class, register_sae_training_class
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
from torch import Tensor

from sae_ortho.core.validation import check_choice, check_float, check_int
from sae_ortho.ortho import (
    BOUNDED_SHAPES,
    METHODS,
    PENALTY_SHAPES,
    NeighbourCache,
    OrthoConfig,
    ortho_penalty,
)

# The settings a user chooses; everything else is the study's proposal (OrthoConfig's defaults:
# active latents scored, gradient into inactive neighbours, mean over tied neighbours).
ORTHO_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("ortho_coefficient", float, 0.0),  # lambda_orth; see the README's guide to choosing it
    ("ortho_warm_up_steps", int, 0),  # linear warm-up of lambda_orth, as SAELens's l1_warm_up_steps
    ("ortho_shape", str, "neglog"),  # sae_ortho.ortho.PENALTY_SHAPES
    # "certified" is exact at every step and the cheapest exact search at large widths;
    # "chunked" is the reference exact search (no state).
    ("ortho_method", str, "certified"),
    ("ortho_cache_k", int | None, None),  # certified / cached: candidates per latent (None: DEFAULT_CACHE_K)
)


def _ortho_config(cfg: Any) -> OrthoConfig:
    """The :class:`OrthoConfig` of a training config's ``ortho_*`` fields (validated there)."""
    kw: dict[str, Any] = {"shape": cfg.ortho_shape, "method": cfg.ortho_method}
    if cfg.ortho_method in ("certified", "cached") and cfg.ortho_cache_k is not None:
        kw["cache_k"] = cfg.ortho_cache_k
    return OrthoConfig(**kw)


def _post_init(self: Any) -> None:
    self._base_post_init()
    self.ortho_coefficient = check_float("ortho_coefficient", self.ortho_coefficient)
    self.ortho_warm_up_steps = check_int("ortho_warm_up_steps", self.ortho_warm_up_steps, 0)
    self.ortho_cache_k = check_int("ortho_cache_k", self.ortho_cache_k, 1, optional=True)
    check_choice("ortho_shape", self.ortho_shape, tuple(PENALTY_SHAPES))
    check_choice("ortho_method", self.ortho_method, METHODS)
    if self.ortho_coefficient < 0 and self.ortho_shape not in BOUNDED_SHAPES:
        raise ValueError(
            f"a negative ortho_coefficient needs a bounded ortho_shape {BOUNDED_SHAPES}; "
            f"got {self.ortho_coefficient} with {self.ortho_shape!r}"
        )


class _OrthoTerm:
    """The extra loss term, mixed in before SAELens's training SAE class."""

    cfg: Any
    W_enc: Tensor
    W_dec: Tensor

    def _ortho_state(self) -> tuple[OrthoConfig, Any]:
        # Built on first use (the cache holds the neighbour candidates between steps). It is not in
        # the state dict: after a resume the certified search rebuilds it, exact either way.
        if getattr(self, "_ortho", None) is None:
            ortho = _ortho_config(self.cfg)
            self._ortho = (ortho, ortho.make_cache())
        return self._ortho

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        coefficients = super().get_coefficients()  # type: ignore[misc]
        coefficients["ortho"] = TrainCoefficientConfig(
            value=self.cfg.ortho_coefficient, warm_up_steps=self.cfg.ortho_warm_up_steps
        )
        return coefficients

    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)  # type: ignore[misc]
        if not isinstance(losses, dict):
            losses = {"aux_loss": losses}
        coefficient = step_input.coefficients["ortho"]
        if coefficient == 0:
            # Not computed: the step stays SAELens's own (adding an exact zero changes no bit).
            losses["ortho_loss"] = torch.zeros((), dtype=sae_out.dtype, device=sae_out.device)
            return losses
        ortho, cache = self._ortho_state()
        if isinstance(cache, NeighbourCache):
            cache.maybe_refresh(self.W_dec, step_input.n_training_steps)
        pen = ortho_penalty(self.W_dec, None, ortho, cache, W_enc=self.W_enc, active=active_latents(feature_acts))
        losses["ortho_loss"] = coefficient * pen
        return losses


def active_latents(feature_acts: Tensor) -> Tensor:
    """bool [n]: latents non-zero anywhere in the batch (dense or SAELens's sparse TopK codes [..., n])."""
    if feature_acts.is_sparse:
        acts = feature_acts.detach().coalesce()
        active = torch.zeros(acts.shape[-1], dtype=torch.bool, device=acts.device)
        active[acts.indices()[-1][acts.values() != 0]] = True
        return active
    return (feature_acts.detach().reshape(-1, feature_acts.shape[-1]) != 0).any(0)


def _make(architecture: str, inference: str, base_cfg: type, base_sae: type) -> tuple[type, type]:
    fields = [(name, kind, dataclasses.field(default=default)) for name, kind, default in ORTHO_FIELDS]
    stem = base_sae.__name__.removesuffix("TrainingSAE")
    cfg_cls = dataclasses.make_dataclass(
        f"Ortho{stem}TrainingSAEConfig",
        fields,
        bases=(base_cfg,),
        namespace={
            "_base_post_init": base_cfg.__post_init__,
            "__post_init__": _post_init,
            "architecture": classmethod(lambda cls: architecture),
            # Saved for inference as SAELens's own kind: loading needs nothing from this package.
            "get_inference_config_class": lambda self: get_sae_class(inference)[1],
            "__doc__": f"SAELens's ``{base_cfg.__name__}`` plus the orthogonality penalty's settings "
            f"({', '.join(name for name, _, _ in ORTHO_FIELDS)}).",
        },
    )
    sae_cls = type(
        f"Ortho{stem}TrainingSAE",
        (_OrthoTerm, base_sae),
        {"__doc__": f"SAELens's ``{base_sae.__name__}`` plus ``ortho_coefficient * ortho_penalty``."},
    )
    for cls in (cfg_cls, sae_cls):
        cls.__module__ = __name__
    return cfg_cls, sae_cls


OrthoStandardTrainingSAEConfig, OrthoStandardTrainingSAE = _make(
    "standard_ortho", "standard", StandardTrainingSAEConfig, StandardTrainingSAE
)
OrthoTopKTrainingSAEConfig, OrthoTopKTrainingSAE = _make("topk_ortho", "topk", TopKTrainingSAEConfig, TopKTrainingSAE)
OrthoBatchTopKTrainingSAEConfig, OrthoBatchTopKTrainingSAE = _make(
    "batchtopk_ortho", "jumprelu", BatchTopKTrainingSAEConfig, BatchTopKTrainingSAE
)
# architecture name -> (training SAE class, its config class), as SAELens's registry holds them.
ARCHITECTURES: dict[str, tuple[type, type]] = {
    "standard_ortho": (OrthoStandardTrainingSAE, OrthoStandardTrainingSAEConfig),
    "topk_ortho": (OrthoTopKTrainingSAE, OrthoTopKTrainingSAEConfig),
    "batchtopk_ortho": (OrthoBatchTopKTrainingSAE, OrthoBatchTopKTrainingSAEConfig),
}


def register() -> None:
    """Register the three architectures with SAELens (done on import; a second call does nothing)."""
    for name, (sae_cls, cfg_cls) in ARCHITECTURES.items():
        if name in SAE_TRAINING_CLASS_REGISTRY:
            if SAE_TRAINING_CLASS_REGISTRY[name] != (sae_cls, cfg_cls):
                raise ValueError(f"SAELens already has another training class registered as {name!r}")
            continue
        register_sae_training_class(name, sae_cls, cfg_cls)


register()
