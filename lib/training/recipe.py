"""The training recipe on top of the plain loop: what SAELens and dictionary_learning do to converge.

Everything here is off by default (:class:`Recipe()` is the plain Adam loop that notebook 01's
toy results were produced with); the language-model notebooks switch it on.

- **b_dec from the data**: the decoder bias starts at the mean or the geometric median of a
  sample of inputs (Anthropic 2023, SAELens <= 5, sparsify uses the mean), so the latents start
  by explaining variation around the data's centre instead of its offset.
- **Learning-rate warm-up and decay**: linear warm-up over ``warmup_steps``, linear decay to 0
  over the last ``decay_steps`` (dictionary_learning: 1,000 warm-up steps; SAELens: decay over
  the last 20%).
- **L1 warm-up**: the sparsity coefficient ramps up linearly over ``l1_warmup_steps``
  (SAELens: 5% of training; dictionary_learning: 2,000 steps), so latents find directions before
  they are pushed to zero.
- **Gradient clipping** at global norm ``grad_clip``, per model of a stack (SAELens: 1.0).
- **Dead latents**: a latent that has not fired for ``dead_steps`` steps is dead. ReLU SAEs can
  *resample* them every ``resample_every`` steps (Anthropic 2023 / dictionary_learning: new
  direction = an input the SAE reconstructs badly, encoder at 0.2x the mean alive norm, Adam state
  reset); TopK SAEs use the *AuxK* loss (Gao et al. 2024: the top ``aux_k`` dead latents
  reconstruct the residual, weight ``aux_coeff``, scaled down when few latents are dead).
- **Decoder norms**: ``"unit"`` keeps decoder rows at unit norm (dictionary_learning);
  ``"free"`` lets them move and weights the L1 penalty by each row's norm (SAELens's standard
  SAE), optionally starting from rows of norm ``init_decoder_norm`` with the encoder tied to
  their transpose (SAELens: 0.1).

This module holds the pure pieces (schedules, geometric median, resampling, AuxK); the loop in
:mod:`sae_ortho.training.train` calls them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sae_ortho.core.validation import check_choice, check_default, check_float, check_int

B_DEC_INITS = ("zeros", "mean", "geometric_median")
DECODER_NORMS = ("unit", "free")


@dataclass(frozen=True)
class Recipe:
    """Optimisation recipe; the defaults switch everything off. Validated on construction
    (steps-dependent checks run in :class:`sae_ortho.training.train.TrainConfig`, SAE-kind checks in the trainer).

    Attributes:
        warmup_steps: linear learning-rate warm-up from ~0 over this many steps (0: none).
        decay_steps: linear learning-rate decay to 0 over the last this-many steps (0: none).
        l1_warmup_steps: linear ramp of the L1 coefficient from ~0 over this many steps (0: none).
        grad_clip: clip each model's gradient to this global norm (None: no clipping).
        b_dec_init: ``"zeros"``, ``"mean"`` or ``"geometric_median"`` of ``b_dec_init_samples``
            inputs drawn before the first step.
        b_dec_init_samples: inputs drawn for ``b_dec_init``.
        dead_steps: a latent that has not fired for this many steps counts as dead (history's
            ``dead`` and the remedies below).
        resample_every: ReLU SAEs only; resample dead latents every this-many steps (None: never).
        aux_k: TopK SAEs only; dead latents used by the AuxK loss (None: no AuxK; Gao et al. use
            d / 2).
        aux_coeff: weight of the AuxK loss (Gao et al.: 1/32).
        decoder_norm: ``"unit"`` rows or ``"free"`` rows with a norm-weighted L1 (ReLU only).
        init_decoder_norm: with ``"free"`` rows, rescale the initial rows to this norm and tie the
            encoder to their transpose (None: keep the unit-norm initialisation).
    """

    warmup_steps: int = 0
    decay_steps: int = 0
    l1_warmup_steps: int = 0
    grad_clip: float | None = None
    b_dec_init: str = "zeros"
    b_dec_init_samples: int = 8192
    dead_steps: int = 1000
    resample_every: int | None = None
    aux_k: int | None = None
    aux_coeff: float = 1 / 32
    decoder_norm: str = "unit"
    init_decoder_norm: float | None = None

    def __post_init__(self) -> None:
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        for name in ("warmup_steps", "decay_steps", "l1_warmup_steps"):
            put(name, check_int(name, getattr(self, name), 0))
        for name in ("b_dec_init_samples", "dead_steps"):
            put(name, check_int(name, getattr(self, name), 1))
        for name in ("resample_every", "aux_k"):
            put(name, check_int(name, getattr(self, name), 1, optional=True))
        put("grad_clip", check_float("grad_clip", self.grad_clip, 0.0, low_open=True, optional=True))
        put("aux_coeff", check_float("aux_coeff", self.aux_coeff, 0.0, low_open=True))
        put("init_decoder_norm", check_float("init_decoder_norm", self.init_decoder_norm, 0.0, low_open=True, optional=True))
        check_choice("b_dec_init", self.b_dec_init, B_DEC_INITS)
        check_choice("decoder_norm", self.decoder_norm, DECODER_NORMS)
        if self.init_decoder_norm is not None and self.decoder_norm != "free":
            raise ValueError("init_decoder_norm needs decoder_norm='free' (unit rows are renormalised at once)")
        # options of a remedy that is off must keep their defaults instead of being ignored
        if self.aux_k is None:
            check_default("aux_coeff", self.aux_coeff, 1 / 32, "aux_k=None (no AuxK loss)", "aux_k")
        if self.b_dec_init == "zeros":
            check_default("b_dec_init_samples", self.b_dec_init_samples, 8192, "b_dec_init='zeros'",
                          "b_dec_init='mean' or 'geometric_median'")
        if self.resample_every is not None and self.dead_steps > self.resample_every:
            raise ValueError(
                f"dead_steps={self.dead_steps} must be <= resample_every={self.resample_every}: "
                "a latent resampled at one resampling must be able to count as dead at the next"
            )

    def check_steps(self, steps: int) -> None:
        """Schedules must fit into ``steps`` (called by :class:`sae_ortho.training.train.TrainConfig`)."""
        steps = check_int("steps", steps, 1)
        if self.warmup_steps + self.decay_steps > steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} + decay_steps={self.decay_steps} must not exceed "
                f"steps={steps}"
            )
        if self.l1_warmup_steps > steps:
            raise ValueError(f"l1_warmup_steps={self.l1_warmup_steps} must not exceed steps={steps}")
        if self.resample_every is not None and self.resample_every >= steps:
            # resampling runs after steps resample_every, 2 * resample_every, ... before the last one
            raise ValueError(
                f"resample_every={self.resample_every} must be < steps={steps}: no resampling would happen "
                "(dead latents are resampled after every resample_every steps, not after the last step)"
            )

    def check_kind(self, kind: str) -> None:
        """Options that only make sense for one SAE kind (called before any training)."""
        check_choice("kind", kind, ("relu", "topk"))
        if self.resample_every is not None and kind != "relu":
            raise ValueError(f"resample_every is for ReLU SAEs (TopK uses aux_k); got kind={kind!r}")
        if self.aux_k is not None and kind != "topk":
            raise ValueError(f"aux_k is for TopK SAEs (ReLU uses resample_every); got kind={kind!r}")
        if self.decoder_norm == "free" and kind != "relu":
            raise ValueError(f"decoder_norm='free' (norm-weighted L1) is for ReLU SAEs; got kind={kind!r}")
        if self.l1_warmup_steps and kind != "relu":
            raise ValueError(
                f"l1_warmup_steps={self.l1_warmup_steps} has no effect with kind={kind!r} (no L1 term); "
                "leave it at its default 0"
            )

    def lr_factor(self, step: int, steps: int) -> float:
        """Multiplier of the learning rate at ``step`` (0-based) of ``steps``."""
        f = 1.0
        if self.warmup_steps and step < self.warmup_steps:
            f = (step + 1) / self.warmup_steps
        if self.decay_steps and step >= steps - self.decay_steps:
            f = min(f, (steps - step) / self.decay_steps)
        return f

    def l1_factor(self, step: int) -> float:
        """Multiplier of the L1 coefficient at ``step``."""
        if self.l1_warmup_steps and step < self.l1_warmup_steps:
            return (step + 1) / self.l1_warmup_steps
        return 1.0


def lm_recipe(kind: str, steps: int, d: int) -> Recipe:
    """The recipe of the study's SAEs on language-model activations (chosen by the recipe study,
    ``python -m sae_ortho.experiments.recipe_study``; see ``results/recipe_study.md``): warm-up over the first 5% of
    steps, decay over the last 20% (SAELens), the L1 coefficient ramped up over the first 5%,
    gradient clipping at 1, b_dec at the geometric median of 8,192 inputs; dead latents (no firing
    for 10% of training) resampled every 20% (ReLU) or trained by AuxK with d/2 latents (TopK)."""
    if kind not in ("relu", "topk"):
        raise ValueError(f"kind must be 'relu' or 'topk', got {kind!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    dead = max(1, steps // 10)
    return Recipe(
        warmup_steps=steps // 20,
        decay_steps=steps // 5,
        l1_warmup_steps=steps // 20 if kind == "relu" else 0,
        grad_clip=1.0,
        b_dec_init="geometric_median",
        dead_steps=dead,
        resample_every=max(dead, steps // 5) if kind == "relu" and max(dead, steps // 5) < steps else None,
        aux_k=max(1, d // 2) if kind == "topk" else None,
    )


def aux_k_loss(pre: Tensor, W_dec: Tensor, residual: Tensor, dead: Tensor, aux_k: int, coeff: float) -> Tensor:
    """AuxK loss of Gao et al. (2024): the top ``aux_k`` dead latents reconstruct the residual.

    Args:
        pre: [(M,) batch, n] encoder pre-activations (with gradient).
        W_dec: [(M,) n, d] decoder rows.
        residual: [(M,) batch, d] ``x - x_hat`` of the main reconstruction (detached).
        dead: [(M,) n] bool, latents that have not fired for the dead window.

    Returns:
        [(M,)] ``coeff * min(n_dead / aux_k, 1) * ||residual - e_hat||^2`` (summed over d, mean
        over the batch), ``e_hat`` decoded (without bias) from the top ``aux_k`` dead latents'
        pre-activations; 0 for a model without dead latents.
    """
    aux_k = check_int("aux_k", aux_k, 1)
    coeff = check_float("coeff", coeff, 0.0, low_open=True)
    k = min(aux_k, pre.shape[-1])
    masked = pre.masked_fill(~dead.unsqueeze(-2), float("-inf"))
    vals, idx = masked.topk(k, dim=-1)
    # Raw pre-activations, not their ReLU (as SAELens): a dead latent's pre-activation is usually
    # negative, and only the raw value carries gradient back to it. With fewer dead latents than
    # k the extra picks are -inf and contribute 0.
    acts = torch.zeros_like(pre).scatter(-1, idx, torch.where(torch.isfinite(vals), vals, torch.zeros_like(vals)))
    return aux_k_residual_loss(acts @ W_dec, residual, dead, aux_k, coeff)


def aux_k_residual_loss(e_hat: Tensor, residual: Tensor, dead: Tensor, aux_k: int, coeff: float) -> Tensor:
    """The AuxK loss from the dead latents' reconstruction ``e_hat: [(M,) batch, d]`` (however it
    was decoded; see :func:`aux_k_loss`): ``coeff * min(n_dead / aux_k, 1) * ||residual - e_hat||^2``."""
    scale = (dead.sum(-1).to(e_hat.dtype) / aux_k).clamp(max=1.0)
    return coeff * scale * (e_hat - residual).square().sum(-1).mean(-1)


@torch.no_grad()
def resample_dead(
    sae, x: Tensor, dead: Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator | None = None
) -> Tensor:
    """Re-initialise dead latents of a ReLU SAE from badly reconstructed inputs (in place).

    Each dead latent (up to the batch size) gets the direction of an input drawn with probability
    proportional to its squared reconstruction error (Anthropic 2023), measured from ``b_dec``; its
    encoder column is that direction at 0.2x the mean norm of the alive latents' encoder columns,
    its encoder bias 0, and its Adam moments are reset.

    Args:
        sae: the (possibly stacked) SAE.
        x: [(M,) batch, d] the current batch (training units).
        dead: [(M,) n] bool.

    Returns:
        [(M,) n] bool, the latents that were resampled.
    """
    stacked = sae.stacked
    xs, deads = (x, dead) if stacked else (x.unsqueeze(0), dead.unsqueeze(0))
    done = torch.zeros_like(deads)
    W_dec, W_enc, b_enc, b_dec = (p if stacked else p.unsqueeze(0) for p in (sae.W_dec, sae.W_enc, sae.b_enc, sae.b_dec))
    for m in range(deads.shape[0]):
        idx = deads[m].nonzero().flatten()
        if len(idx) == 0:
            continue
        xm = xs[m]
        pre = (xm - b_dec[m]) @ W_enc[m] + b_enc[m]
        err = (xm - (torch.relu(pre) @ W_dec[m] + b_dec[m])).square().sum(-1)
        k = min(len(idx), len(xm))
        weights = err + 1e-12 * err.max().clamp_min(1e-30)  # never all zero
        pick = torch.multinomial(weights, k, replacement=False, generator=generator)
        v = xm[pick] - b_dec[m]
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = ~deads[m]
        enc_norm = W_enc[m][:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        chosen = idx[:k]
        W_dec[m][chosen] = v
        W_enc[m][:, chosen] = (v * enc_norm * 0.2).T
        b_enc[m][chosen] = 0.0
        for p, sl in ((sae.W_dec, (chosen, slice(None))), (sae.W_enc, (slice(None), chosen)), (sae.b_enc, (chosen,))):
            state = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    buf = state[key] if stacked else state[key].unsqueeze(0)
                    buf[m][sl] = 0.0
        done[m, chosen] = True
    return done if stacked else done[0]
