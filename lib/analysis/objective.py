"""The SAE training objective, vanilla and penalised, of trained SAEs on fixed inputs.

To tell whether an SAE's solution is what the objective asks for (the optimum) or where
optimisation stopped (a local minimum, or not yet converged), every trained SAE is scored on the
same fixed evaluation set with

- the *vanilla* objective ``||x - x_hat||^2 + l1 * sum(codes)`` (reconstruction summed over the
  input dimension, both averaged over samples; no L1 term for TopK SAEs), and
- the *penalised* objective: vanilla ``+ ortho_weight * P``, with ``P`` the orthogonality penalty
  of :func:`sae_ortho.ortho.ortho_penalty` over the latents active on the evaluation set,

the two terms the trainer (:mod:`sae_ortho.training.train`) minimises on its batches. An SAE that scores lower
on the vanilla objective than the vanilla SAEs themselves (e.g. one trained with the penalty, or
started at the ground truth, :func:`sae_ortho.data.constructions.ground_truth_start`) shows that the vanilla
SAEs did not reach the vanilla objective's optimum.

Pure math: imports nothing from training, loading or plotting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sae_ortho.models.sae import SAE
from sae_ortho.ortho import OrthoConfig, ortho_penalty


def _per_model(name: str, value: Sequence[float] | float, m: int) -> Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if t.ndim == 0:
        t = t.expand(m)
    if t.shape != (m,):
        raise ValueError(f"{name} needs one value or one per model ({m}), got shape {tuple(t.shape)}")
    return t


@torch.no_grad()
def objective_terms(
    sae: SAE,
    x: Tensor,
    l1: Sequence[float] | float,
    ortho_weight: Sequence[float] | float = 0.0,
    ortho: OrthoConfig | None = None,
) -> dict[str, np.ndarray]:
    """Both objectives of each stacked model (or of one SAE) on fixed inputs.

    Args:
        x: [M, S, d] (one evaluation set per model) or [S, d] shared by all models.
        l1: L1 coefficient, one or one per model.
        ortho_weight: lambda_orth of the penalised objective, one or one per model.
        ortho: the penalty (default: the proposal).

    Returns:
        ``recon``, ``sparsity`` (mean sum of codes), ``penalty`` (unweighted), ``vanilla``
        (recon + l1 * sparsity; recon for TopK) and ``penalised`` (vanilla + ortho_weight *
        penalty), each a [M] array ([1] for a single SAE).
    """
    single = not sae.stacked
    m = 1 if single else sae.cfg.n_models
    if x.ndim not in ((2,) if single else (2, 3)) or x.shape[-1] != sae.cfg.d:
        want = f"[S, {sae.cfg.d}]" if single else f"[{m}, S, {sae.cfg.d}] or [S, {sae.cfg.d}]"
        raise ValueError(f"x must be {want}, got {tuple(x.shape)}")
    if not single and x.ndim == 2:
        x = x.expand(m, -1, -1)
    l1_t, w_t = _per_model("l1", l1, m), _per_model("ortho_weight", ortho_weight, m)
    x_hat, codes = sae(x)
    recon = (x - x_hat).square().sum(-1).mean(-1)
    sparsity = codes.sum(-1).mean(-1)
    if sae.cfg.n_latents >= 2:
        pen = ortho_penalty(sae.W_dec, codes, ortho or OrthoConfig(), W_enc=sae.W_enc)
    else:
        pen = torch.zeros_like(recon)
    recon, sparsity, pen = (t.reshape(m) for t in (recon, sparsity, pen))
    vanilla = recon + (l1_t * sparsity if sae.cfg.kind == "relu" else 0.0)
    return {
        "recon": recon.numpy(), "sparsity": sparsity.numpy(), "penalty": pen.numpy(),
        "vanilla": vanilla.numpy(), "penalised": (vanilla + w_t * pen).numpy(),
    }


OPTIMUM, OPTIMISATION, UNDETERMINED = "optimum", "optimisation", "undetermined"


def attribution(low: float, high: float) -> str:
    """Optimum or optimisation, from the interval ``[low, high]`` of the paired difference
    *reference objective minus trained objective* (same seeds, same evaluation set), where the
    reference is e.g. an SAE started at the ground truth and trained the same way.

    - ``high < 0``: the reference reaches a lower value of the same objective, so the trained SAEs
      stopped in worse minima: their solution is an **optimisation** outcome, not the optimum.
    - ``low > 0``: the trained SAEs beat the reference: what they learn is preferred by the
      objective over the minimum nearest the ground truth (consistent with the **optimum**; a
      global optimum is only certified by an exhaustive search, as in :mod:`sae_ortho.analysis.optimum`).
    - otherwise **undetermined** at this number of seeds.
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNDETERMINED
    if high < 0:
        return OPTIMISATION
    if low > 0:
        return OPTIMUM
    return UNDETERMINED


def explain(attr: str) -> str:
    """One sentence on what :func:`attribution`'s answer means for an SAE's compositions."""
    return {
        OPTIMISATION: "the reference reaches a lower value of the same objective, so the trained SAEs' "
                      "compositions are where training from a random start stops, not the objective's optimum",
        OPTIMUM: "the trained SAEs beat the reference on their own objective, so their compositions are what the "
                 "objective prefers over the minimum next to the ground truth",
        UNDETERMINED: "the interval does not separate the two at this number of seeds",
    }[attr]
